"""Crash-consistency checking across the virtualization boundary: did every store the guest had
finished persisting survive a power failure at each of its persist points?

The guest's side is a *persistence protocol* (SPEC 1, 3, 7.3). A STORE or NT_STORE by vCPU ``c`` of
VM ``v`` to its vNVDIMM has *completed* it when

1. after the store its line was written back (a CLWB, CLFLUSHOPT or CLFLUSH of the line by any vCPU
   ``w`` of ``v``; an NT_STORE writes itself back, ``w = c``),
2. then vCPU ``w``, the one that *issued the write-back*, executed a fence (SFENCE or MFENCE) -- with
   ``fence_scope="vm"``, a fence by any vCPU of ``v`` counts. The Intel SDM (Vol. 2A, CLWB and
   CLFLUSHOPT) orders these write-backs only "with respect to ... fencing instructions executed by
   the same logical processor": a fence of the storing vCPU does not order another vCPU's CLWB,
3. and, where the platform's persistence domain is ``none``, after that fence some vCPU of ``v``
   wrote the vFHA (a STORE or NT_STORE to any byte of the vFHA page) and then that vCPU fenced
   (``fence_scope="vm"``: any vCPU of ``v``), as Linux's ``nvdimm_flush()`` does.

``protocol`` names the ladder: ``"flush"`` is steps 1-2 (PMDK's ``pmem_persist``), ``"deep"`` steps
1-3 (``pmem_deep_persist``), ``"fence"`` only a fence after the store (what a guest written for
eADR does) and ``"auto"`` (the default) is ``deep`` on a ``none`` platform and ``flush`` otherwise.
Choosing a protocol other than ``auto`` checks a guest against what *it* believes: a guest that
skips the flush-hint write and its fence on a ``none`` host, checked with ``protocol="flush"``,
shows exactly the stores it would lose.

*Crash points* are the op indices after which the guest could observe persistence: after each fence
and after each vFHA write (``points="all"``), or ``N`` evenly sampled among them, or a list. The
trace is replayed in segments up to each point (``Hypervisor.replay``); nothing is failed. Every
byte of every completed store must be durable as the *last completed* store to the byte wrote it,
or as a later store did (later stores may legitimately have reached the media too). This is
decided by *provenance*, not by value (:mod:`nvemu.tools.check_model`): the model knows which
write-back's copy of each line a power failure would leave (media; under ``adr`` also the WPQs,
under ``eadr`` also the caches, as ``Platform.durable_read``) and a store is lost when that copy
was taken before it, so a store of zeros, or of the value the media already held, is lost like any
other. Anything lost is a :class:`Violation`, reported with the op index of the store, the crash
point, the line (GPA and HPA) and the durable bytes ``Platform.durable_read`` gives there.

A second kind of violation needs no crash: under the ``deep`` protocol, a vFHA write by a vCPU while a
write-back (or NT store) *it issued* is not yet fenced by it is an *ordering* violation (``kind
"unfenced"``, reported at the vFHA write). x86 orders CLWB/CLFLUSHOPT/NT stores before a later store
only through a fence, which is why ``nvdimm_flush()`` fences before the flush-hint write: on hardware
the drain may miss such a write-back. The emulator performs write-backs at once (fences move no
data), so the durable image alone can never show this guest bug; the ordering check does.

Stores are tracked by host address, so two VMs mapping one host page are handled; a VM's DRAM and
its vFHA page are never checked. The engine runs the trace in chunks of ``CHUNK_OPS`` records and is
never stopped at a crash point: the model follows the WPQs itself and must agree with the engine
after every chunk (:mod:`nvemu.tools.check_model`). A line is judged at a point when its durable
copy or its completed stores changed since the last point, and every line at 16 points spread
over the run (``full_every``) and at the last one. ``verify`` also checks that many points of
``Platform.durable_read`` against a real ``power_fail()`` of a snapshot-restored copy (the engine
stops there).

The model runs in the compiled kernel ``nvemu._checkcore`` (:mod:`nvemu.tools.check_fast`; about
220 bytes per distinct line the trace stores to, and one record per store until it is known
durable) or, in a pure install or with ``model="python"``, in plain Python (the oracle the
differential tests compare the kernel with; about 1.2 KiB per line).

Examples
--------
>>> from nvemu import Hypervisor
>>> from nvemu.guest.drivers import TraceWriter, write_persist
>>> hv = Hypervisor(build_platform("small", domain="none"))
>>> vm = hv.create_vm(dram=1 << 20, nvdimms=[1 << 20], strategy="drop").start()
>>> t = TraceWriter()
>>> write_persist(t, vm.nvdimms[0].gpa, b"hello!!!", deep_flush=vm.vfha_gpa)
>>> result = check(hv, t.to_array())      # store, clwb, sfence, sfence, vFHA write, sfence
>>> result.points, [(v.store, v.point) for v in result.violations]
([2, 3, 4, 5], [(0, 5)])
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from .._constants import DOMAIN_NAMES, PAGE_SHIFT, TRACE_DTYPE, Op
from ..machine.config import PlatformConfig, preset
from ..errors import ConfigError, GuestFault, LifecycleError, TraceError
from ..machine.hypervisor import ExitHandler, Hypervisor, raise_fault
from ..machine.platform import Platform
from ..machine.snapshot import restore_snapshot, save_snapshot
from ..formats.trace import TraceSource
from .._backend import COMPILED
from .check_fast import AVAILABLE, FastModel
from .check_model import Model, vfha_table
from .check_report import CheckResult, CrashPoints, KeptViolations, Violation, ViolationCounts
from .prepare import prepare, relocated, unmapped_error

PROTOCOLS = ("auto", "fence", "flush", "deep")
FENCE_SCOPES = ("vcpu", "vm")
MODELS = ("auto", "compiled", "python")
COMPILED_MODEL = AVAILABLE and COMPILED
"""Does ``check(model="auto")`` use the compiled kernel? Not in a pure install."""
CHUNK_OPS = 1 << 16            # records the engine runs between two looks of the model



# ---- the checker ---------------------------------------------------------------------------------

def _persist_points(table: np.ndarray, ops: np.ndarray) -> np.ndarray:
    """Indices in ``ops`` of every fence and every vFHA write (a STORE/NT_STORE to its VM's vFHA page)."""
    op = np.asarray(ops["op"], np.uint8)
    points = (op - np.uint8(Op.SFENCE)) < 2                 # SFENCE or MFENCE (uint8 arithmetic wraps)
    if len(table) and len(ops):
        pages = table.astype(np.uint64)                     # -1 (no vFHA) becomes 2**64 - 1: no GPA page
        vm = np.asarray(ops["vm"])
        vfha = pages[0] if len(pages) == 1 else pages[np.minimum(vm, len(pages) - 1)]   # one VM: no gather
        hit = ((np.asarray(ops["gpa"]) >> np.uint64(PAGE_SHIFT)) == vfha) & (vm < len(pages))
        points |= ((op - np.uint8(Op.STORE)) < 2) & hit     # STORE or NT_STORE
    return np.flatnonzero(points)


def persist_points(hv: Hypervisor, ops: np.ndarray) -> np.ndarray:
    """Op indices of every fence and every vFHA write (a STORE/NT_STORE to its VM's vFHA page)."""
    return _persist_points(vfha_table(hv), ops)


def _choose_points(n_candidates: int, points: str | int | Iterable[int],
                   n_ops: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(ranks among the persist points, or None for all of them; or the op indices given)."""
    if isinstance(points, str):
        if points == "all":
            return None, None
        try:
            points = int(points)
        except ValueError:
            raise ConfigError(f"points={points!r}: 'all', a count or a list of op indices") from None
    if isinstance(points, (int, np.integer)) and not isinstance(points, bool):
        if points <= 0:
            raise ConfigError(f"points={points}: must be positive (or 'all')")
        if points >= n_candidates:
            return None, None
        return np.unique(np.linspace(0, n_candidates - 1, int(points)).round().astype(np.int64)), None
    chosen = np.array(sorted({int(p) for p in points}), np.int64)
    if len(chosen) and not (0 <= chosen[0] and chosen[-1] < n_ops):
        raise ConfigError(f"crash points must be op indices 0..{n_ops - 1}")
    return None, chosen


class _Checker:
    """Runs the trace chunk by chunk: the model translates a chunk (seeing new lines as they are
    before it), the engine runs it, the model follows it and judges its crash points; then the
    engine's WPQs must agree with the model's."""

    def __init__(self, hv: Hypervisor, protocol: str, fence_scope: str, handler: ExitHandler, full_every: int,
                 ordering: bool, adr_failure: bool, emit: Callable[[Violation], None], model: str) -> None:
        self.hv, self.handler = hv, handler
        self.platform = hv.platform
        self.adr_failure = adr_failure
        self.domain = "none" if adr_failure else self.platform.domain     # what survives: media only
        self.model = (FastModel if model == "compiled" else Model)(hv, protocol, fence_scope, ordering, self.domain,
                                                                    emit)
        self.full_every = full_every
        self.n_points = 0                                   # crash points in the whole run
        stats = self.platform.engine.controller_stats()
        self.enqueued, self.drained = stats[:, 0].astype(np.int64), stats[:, 1].astype(np.int64)
        self.skipped: set[int] = set()

    def full(self, rank: Any) -> Any:
        """Is the crash point of rank ``rank`` (an int or an array of them) a full one?"""
        return ((rank + 1) % self.full_every == 0) | (rank == self.n_points - 1)

    def run(self, seg: np.ndarray, a: int, points: np.ndarray) -> None:
        """Run records ``a, a+1, ...`` (``seg``) and judge the crash points among them."""
        model = self.model
        hpas = model.translate(seg)
        exits = []

        def handle(fault: GuestFault) -> str:
            f = fault.shifted(a)
            action = self.handler(f)
            exits.append(f.op_index)
            if action == "skip":
                self.skipped.add(f.op_index)
            return action
        try:
            self.hv.run(seg, handle)
        except (TraceError, LifecycleError) as e:
            raise e.shifted(a) from None
        if exits:
            model.forget_translations()       # the handler may have changed mappings
            hpas = model.translate(seg)
        model.run(seg, a, hpas, self.skipped, points, self.full)
        self._agree()

    def _agree(self) -> None:
        """The engine queued and drained, per controller, what the model did, and its WPQs hold
        the same copies."""
        stats = self.platform.engine.controller_stats()
        enqueued, drained = stats[:, 0].astype(np.int64), stats[:, 1].astype(np.int64)
        model = self.model
        for name, engine, mine in (("queued", enqueued - self.enqueued, model.enqueued),
                                   ("drained", drained - self.drained, model.drained)):
            if not np.array_equal(engine, mine):
                c = int(np.flatnonzero(engine != mine)[0])
                raise LifecycleError(f"checker: controller {c} {name} {int(engine[c])} lines where the trace's "
                                     f"model says {int(mine[c])} (was the machine changed behind the checker?)")
        differs = model.same_queues()
        if differs:
            raise LifecycleError(f"checker: {differs} (was the machine changed behind the checker?)")
        model.enqueued[:] = 0
        model.drained[:] = 0
        self.enqueued, self.drained = enqueued, drained

    def verify(self, point: int) -> int | None:
        """Compare durable_read with a real power failure of a snapshot-restored copy over every
        vNVDIMM range; the first differing HPA, or None."""
        tmp = tempfile.mkdtemp(prefix="nvemu-check-")
        try:
            path = os.path.join(tmp, "point.npz")
            save_snapshot(self.hv, path)
            copy = restore_snapshot(path, backend=self.platform.backend)
            image = copy.platform.power_fail(self.adr_failure)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        base = self.platform.pmem_base
        for vm in self.hv.vms.values():
            for r in vm.nvdimms:
                probe = np.frombuffer(self.platform.durable_read(r.hpa, r.size, self.adr_failure), np.uint8)
                real = image[r.hpa - base:r.hpa - base + r.size]
                diff = np.flatnonzero(probe != real)
                if len(diff):
                    return r.hpa + int(diff[0])
        return None


def check(hv: Hypervisor, ops: np.ndarray | TraceSource, points: str | int | Iterable[int] = "all", *,
          protocol: str = "auto", fence_scope: str = "vcpu", handler: ExitHandler = raise_fault,
          verify: int = 0, full_every: int | None = None, ordering: bool = True,
          adr_failure: bool = False, on_violation: Callable[[Violation], None] | None = None,
          progress: Callable[[int, int], None] | None = None, model: str = "auto",
          keep_violations: int | None = None, keep_points: bool = True) -> CheckResult:
    """Replay ``ops`` (TRACE_DTYPE, or a :class:`~nvemu.formats.trace.TraceSource`, read in chunks of
    CHUNK_OPS records, twice) on ``hv``'s running VMs and check crash consistency at its
    persist points (see the module text). ``points``: ``"all"``, a count to sample evenly, or op
    indices. ``protocol``: auto, fence, flush or deep; ``fence_scope``: vcpu or vm. ``handler``
    sees exits the core does not handle (op_index in the whole trace); ops it skips are not
    stores. ``verify``: also compare that many of the points (evenly spread) with a real power
    failure of a snapshot-restored copy. ``full_every``: re-read every tracked line at every so
    many points and at the last (default: 16 times over the run, at least 64 points apart). ``ordering``:
    report vFHA writes that overtake unfenced write-backs (deep protocol only). ``adr_failure``: the
    power failure also defeats ADR, so only media survives (``Platform.durable_read``) and ``auto``
    means the deep protocol. ``on_violation`` is called with each violation as soon as its run of
    crash points ends (to stream them), ``progress`` with the number of ops replayed since its last
    call and the trace's length. ``model``: "compiled" (the kernel in ``nvemu._checkcore``), "python"
    (:class:`~nvemu.tools.check_model.Model`, the oracle) or "auto": compiled when built and the
    engine is not the pure reference (NVEMU_PUREPYTHON=1). ``keep_violations``: None keeps every
    violation in the result; N keeps only those of the N lowest-numbered stores of each kind (what a
    report of N stores shows) and counts the rest (``CheckResult.counts``), so that memory does not
    grow with the violations (stream them with ``on_violation``). ``keep_points=False`` counts the
    crash points (``CheckResult.n_points``) instead of listing them. Afterwards ``hv`` has replayed the
    whole trace.

    Raises TraceError for a malformed trace (naming the record), GuestFault for an exit the
    handler refuses, ConfigError for bad options."""
    if isinstance(ops, TraceSource):
        source = ops
        chunks: Callable[[], Iterator[tuple[int, np.ndarray]]] = lambda: source.chunks(CHUNK_OPS)  # noqa: E731
        n_ops = len(source)
    elif not isinstance(ops, np.ndarray) or ops.dtype != TRACE_DTYPE or ops.ndim != 1:
        raise TraceError("a trace must be a one-dimensional numpy array of TRACE_DTYPE")
    else:
        array = ops
        chunks = lambda: ((lo, array[lo:lo + CHUNK_OPS]) for lo in range(0, len(array), CHUNK_OPS))  # noqa: E731
        n_ops = len(ops)
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if fence_scope not in FENCE_SCOPES:
        raise ConfigError(f"unknown fence scope {fence_scope!r}; known: {', '.join(FENCE_SCOPES)}")
    if full_every is not None and (not isinstance(full_every, int) or full_every < 1):
        raise ConfigError(f"full_every={full_every!r}: must be a positive integer")
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    if model == "compiled" and not COMPILED_MODEL:
        raise ConfigError("model='compiled': nvemu._checkcore is not built (a pure install)")
    if model == "auto":
        model = "compiled" if COMPILED_MODEL else "python"
    if keep_violations is not None and (isinstance(keep_violations, bool) or not isinstance(keep_violations, int)
                                        or keep_violations < 0):
        raise ConfigError(f"keep_violations={keep_violations!r}: None (all) or a count >= 0")
    return _check_chunks(hv, chunks, n_ops, points, protocol, fence_scope, handler, verify, full_every, ordering,
                         adr_failure, on_violation, progress, model, KeptViolations(keep_violations), keep_points)


def _check_chunks(hv: Hypervisor, chunks: Callable[[], Iterator[tuple[int, np.ndarray]]], n_ops: int,
                  points: str | int | Iterable[int], protocol: str, fence_scope: str, handler: ExitHandler,
                  verify: int, full_every: int | None, ordering: bool, adr_failure: bool,
                  on_violation: Callable[[Violation], None] | None,
                  progress: Callable[[int, int], None] | None, model: str, kept: KeptViolations,
                  keep_points: bool) -> CheckResult:
    """:func:`check` of the trace ``chunks()`` yields as (first index, records), ``n_ops`` records
    in all: one pass counts the persist points, a second runs the check."""
    domain = hv.platform.domain
    survives = "none" if adr_failure else domain
    resolved = protocol if protocol != "auto" else ("deep" if survives == "none" else "flush")
    table = vfha_table(hv)
    n_candidates = sum(len(_persist_points(table, c)) for _, c in chunks())
    ranks, given = _choose_points(n_candidates, points, n_ops)
    n_points = len(ranks) if ranks is not None else len(given) if given is not None else n_candidates
    verify_ranks = set()
    if verify and n_points:
        verify_ranks = set(np.unique(np.linspace(0, n_points - 1, min(verify, n_points)).round()
                                     .astype(np.int64)).tolist())
    if full_every is None:
        full_every = max(64, -(-n_points // 16))
    def emit(v: Violation) -> None:
        kept.add(v)
        if on_violation is not None:
            on_violation(v)
    checker = _Checker(hv, resolved, fence_scope, handler, full_every, ordering, adr_failure, emit, model)
    checker.n_points = n_points
    chosen: list[np.ndarray] = []            # each chunk's crash points (op indices)
    n_chosen = 0
    verified, mismatches = [], []
    seen = 0                                  # persist points before this chunk
    for lo, chunk in chunks():
        cand = _persist_points(table, chunk) + lo
        if ranks is not None:
            take = ranks[(ranks >= seen) & (ranks < seen + len(cand))] - seen
            mine = cand[take]
        elif given is not None:
            mine = given[(given >= lo) & (given < lo + len(chunk))]
        else:
            mine = cand
        seen += len(cand)
        first = n_chosen
        if keep_points:
            chosen.append(mine.astype(np.int64, copy=False))
        n_chosen += len(mine)
        cuts = [p for k, p in enumerate(mine.tolist()) if first + k in verify_ranks] if verify_ranks else []
        a = lo
        for stop in sorted({p + 1 for p in cuts} | {lo + len(chunk)}):
            if stop > a:
                checker.run(chunk[a - lo:stop - lo], a, mine[(mine >= a) & (mine < stop)])
                a = stop
            if stop - 1 in cuts:
                verified.append(stop - 1)
                bad = checker.verify(stop - 1)
                if bad is not None:
                    mismatches.append((stop - 1, bad))
        if progress is not None:
            progress(len(chunk), n_ops)
    checker.model.finish()
    model = checker.model
    points_checked = CrashPoints(np.concatenate(chosen) if chosen else np.zeros(0, np.int64))
    return CheckResult(ops=n_ops, points=points_checked, candidates=n_candidates, violations=kept.violations(),
                       completed_stores=model.completed, trace_counts=dict(model.counts),
                       protocol=resolved, fence_scope=fence_scope,
                       domain=domain, platform=hv.platform.name,
                       strategies={vm.id: vm.strategy for vm in hv.vms.values()},
                       fanouts={vm.id: vm.fanout for vm in hv.vms.values()},
                       verified=verified, verify_mismatches=mismatches, adr_failure=adr_failure,
                       n_points=n_chosen, counts=kept.counts)


# ---- a trace file on a fresh machine -------------------------------------------------------------

def build_platform(platform: str | PlatformConfig | Platform = "default", domain: str | None = None,
                   backend: str | None = None) -> Platform:
    """The platform a preset name, a config or a Platform describes, its domain replaced by
    ``domain`` when given (``PlatformConfig.with_``)."""
    if domain is not None and domain not in DOMAIN_NAMES:
        raise ConfigError(f"unknown persistence domain {domain!r}; known: {', '.join(DOMAIN_NAMES)}")
    if isinstance(platform, Platform):
        if domain is None or domain == platform.domain:
            return platform
        return Platform(platform.config.with_(domain=domain), platform.timing, backend=backend or platform.backend)
    config = preset(platform) if isinstance(platform, str) else platform
    if domain is not None:
        config = config.with_(domain=domain)
    return Platform(config, backend=backend)


def check_trace(trace: str | os.PathLike[str] | np.ndarray, points: str | int | Iterable[int] = "all", *,
                platform: str | PlatformConfig | Platform = "default", domain: str | None = None,
                strategy: str = "auto", fanout: str = "broadcast", vms: int | None = None,
                vcpus: int | None = None, dram: int | None = None, nvdimm: int | None = None,
                format: str | None = None, unregistered: str = "error", deep_flush: bool = False,
                backend: str | None = None, **options: Any) -> CheckResult:
    """:func:`check` a trace file (npy, text or pmemcheck, by content unless ``format``) or array
    on a fresh hypervisor: ``platform`` (domain replaced by ``domain``) with ``vms`` VMs of
    ``vcpus`` vCPUs (default: as many as the trace names; a pmemcheck log: one), each with
    ``dram``/``nvdimm`` bytes (default as ``nvemu replay``), flushing by ``strategy``/``fanout``.
    A pmemcheck log lands on the first VM's vNVDIMM (``deep_flush``: a vFHA write and fence after
    each persist). ``options`` go to :func:`check`."""
    hv = Hypervisor(build_platform(platform, domain, backend))
    _, source = prepare(hv, trace, vms=vms, vcpus=vcpus, strategy=strategy, fanout=fanout, dram=dram,
                        nvdimm=nvdimm, format=format, unregistered=unregistered, deep_flush=deep_flush)
    try:
        return check(hv, source, points, **options)
    except (TraceError, LifecycleError) as e:
        raise relocated(e, 0, source) from None
    except GuestFault as f:
        if f.unmapped:
            raise relocated(unmapped_error(f), 0, source) from None
        raise


PROTOCOL_NAMES = PROTOCOLS


__all__ = ["FENCE_SCOPES", "PROTOCOLS", "CheckResult", "CrashPoints", "Violation", "ViolationCounts", "build_platform",
           "check", "check_trace", "persist_points"]
