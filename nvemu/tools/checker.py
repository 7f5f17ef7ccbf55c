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
its vFHA page are never checked. A line is judged at a point when its durable copy or its
completed stores changed since the last point, and every line at 16 points spread over the run
(``full_every``) and at the last one, where the model's WPQs are also compared with the engine's.
``verify`` also checks that many points of ``Platform.durable_read`` against a real
``power_fail()`` of a snapshot-restored copy.

Memory: about 1.1 KiB per distinct 64-byte line the trace stores to, plus the pending stores.

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
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import numpy as np

from .._constants import DOMAIN_NAMES, LINE_BYTES as LINE, PAGE_SHIFT, TRACE_DTYPE, Op
from ..machine.config import PlatformConfig, preset
from ..errors import ConfigError, GuestFault, LifecycleError, TraceError
from ..machine.hypervisor import ExitHandler, Hypervisor, raise_fault
from ..machine.platform import Platform
from ..machine.snapshot import restore_snapshot, save_snapshot
from .check_model import Model
from .check_report import CheckResult, Violation
from .prepare import prepare, relocated, unmapped_error

PROTOCOLS = ("auto", "fence", "flush", "deep")
FENCE_SCOPES = ("vcpu", "vm")
_SPAN_LIMIT = 64 << 20          # never read more than this in one durable_read to probe sparse lines
_RUN_COST = 4096                # one durable_read call costs about as much as reading this many bytes



# ---- the checker ---------------------------------------------------------------------------------

def persist_points(hv: Hypervisor, ops: np.ndarray) -> np.ndarray:
    """Op indices of every fence and every vFHA write (a STORE/NT_STORE to its VM's vFHA page)."""
    op = np.asarray(ops["op"])
    points = (op == Op.SFENCE) | (op == Op.MFENCE)
    if hv.vms:
        table = np.full(max(max(hv.vms) + 1, int(ops["vm"].max()) + 1 if len(ops) else 0), -1, np.int64)
        for vm in hv.vms.values():
            table[vm.id] = vm.vfha_gpa >> PAGE_SHIFT
        page = (np.asarray(ops["gpa"]) >> np.uint64(12)).astype(np.int64)
        points |= ((op == Op.STORE) | (op == Op.NT_STORE)) & (page == table[np.asarray(ops["vm"], np.int64)])
    return np.flatnonzero(points)


def _choose_points(candidates: np.ndarray, points: str | int | Iterable[int], n_ops: int) -> list[int]:
    if isinstance(points, str):
        if points == "all":
            return candidates.tolist()
        try:
            points = int(points)
        except ValueError:
            raise ConfigError(f"points={points!r}: 'all', a count or a list of op indices") from None
    if isinstance(points, (int, np.integer)) and not isinstance(points, bool):
        if points <= 0:
            raise ConfigError(f"points={points}: must be positive (or 'all')")
        if points >= len(candidates):
            return candidates.tolist()
        pick = np.unique(np.linspace(0, len(candidates) - 1, int(points)).round().astype(np.int64))
        return candidates[pick].tolist()
    chosen = sorted({int(p) for p in points})
    if chosen and not (0 <= chosen[0] and chosen[-1] < n_ops):
        raise ConfigError(f"crash points must be op indices 0..{n_ops - 1}")
    return chosen


class _Checker:
    def __init__(self, hv: Hypervisor, ops: np.ndarray, protocol: str, fence_scope: str,
                 handler: ExitHandler, full_every: int, ordering: bool = True, adr_failure: bool = False) -> None:
        self.hv, self.ops, self.handler = hv, ops, handler
        self.platform = hv.platform
        self.adr_failure = adr_failure
        self.domain = "none" if adr_failure else self.platform.domain     # what survives: media only
        self.model = Model(hv, protocol, fence_scope, ordering, self.domain)
        self.full_every = full_every
        self.open: dict[int, dict[int, Violation]] = {}    # line slot -> {store: its run of lost points}
        self.violations: list[Violation] = []
        self.points: dict[int, int] = {}                    # crash points probed so far -> their rank
        self.last = -1
        stats = self.platform.engine.controller_stats()
        self.enqueued, self.drained = stats[:, 0].astype(np.int64), stats[:, 1].astype(np.int64)
        self.skipped: set[int] = set()
        self.pos = 0
        self.on_violation: Callable[[Violation], None] | None = None
        self.progress: Callable[[int, int], None] | None = None

    def _replay(self, stop: int) -> None:
        """Run ops[pos:stop] on the hypervisor, then follow them in the model."""
        a = self.pos
        if stop <= a:
            return
        seg = self.ops[a:stop]
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
            self.model.forget_translations()       # the handler may have changed mappings
        self.model.run(seg, a, self.skipped)
        self._drains()
        self.pos = stop
        if self.progress is not None:
            self.progress(stop - a, len(self.ops))
        for store, at, s in self.model.unfenced:
            self._emit(replace(self._violation(store, at, s, [], None), until=at))
        self.model.unfenced = []

    def _drains(self) -> None:
        """Hand the model the lines each WPQ drained since the last segment (they leave oldest
        first), after checking that the engine queued exactly the copies the trace's write-backs
        queue in the model."""
        stats = self.platform.engine.controller_stats()
        enqueued, drained = stats[:, 0].astype(np.int64), stats[:, 1].astype(np.int64)
        model = self.model
        if not np.array_equal(enqueued - self.enqueued, model.enqueued):
            c = int(np.flatnonzero(enqueued - self.enqueued != model.enqueued)[0])
            raise LifecycleError(f"checker: controller {c} queued {int(enqueued[c] - self.enqueued[c])} lines where "
                                 f"the trace's write-backs queue {int(model.enqueued[c])} (was the machine changed "
                                 f"behind the checker?)")
        model.enqueued[:] = 0
        model.drained(drained - self.drained)
        self.enqueued, self.drained = enqueued, drained

    def _durable(self, lines: np.ndarray) -> np.ndarray:
        """The durable 64 bytes of each line (sorted, distinct HPAs) as uint8[len(lines), 64]: per
        block of at most _SPAN_LIMIT bytes, one read of the whole span or one per run of adjacent
        lines, whichever reads less (a call costs about _RUN_COST bytes)."""
        def read(hpa: int, n: int) -> bytes:
            return self.platform.durable_read(hpa, n, self.adr_failure)
        out = np.empty((len(lines), LINE), np.uint8)
        i = 0
        while i < len(lines):
            j = int(np.searchsorted(lines, lines[i] + _SPAN_LIMIT - LINE, side="right"))
            block = lines[i:j]
            breaks = np.flatnonzero(np.diff(block) != LINE) + 1
            starts, ends = np.r_[0, breaks], np.r_[breaks, len(block)]
            span = int(block[-1] - block[0]) + LINE
            if span <= len(starts) * _RUN_COST + LINE * len(block):
                buf = np.frombuffer(read(int(block[0]), span), np.uint8).reshape(-1, LINE)
                out[i:j] = buf[(block - block[0]) // LINE]
            else:
                for a, b in zip(starts.tolist(), ends.tolist()):
                    out[i + a:i + b] = np.frombuffer(read(int(block[a]), LINE * (b - a)), np.uint8).reshape(-1, LINE)
            i = j
        return out

    def probe(self, point: int, full: bool) -> None:
        """Judge the lines whose durable version or completed stores changed since the last point
        (all of them when ``full``, after checking the model's WPQs against the engine's): open a
        run for each store newly lost, end the run of each store no longer lost."""
        model = self.model
        L = model.lines
        previous = self.last
        self.points[point] = len(self.points)
        self.last = point
        if full:
            if not model.same_queues():
                raise LifecycleError("checker: the engine's WPQs hold other lines than the trace's write-backs "
                                     "queued (was the machine changed behind the checker?)")
            slots = np.flatnonzero(L.active[:L.n])
        else:
            slots = np.array(sorted(s for s in model.touched if L.active[s]), np.int64)
        model.touched = set()
        if not len(slots):
            return
        version = L.durable_version(slots)
        behind = np.flatnonzero(L.lc[slots].max(axis=1) > version)
        lost_now = {int(slots[r]): L.lost(int(slots[r]), int(version[r])) for r in behind.tolist()}
        for s in [s for s in slots.tolist() if s in self.open]:    # probed lines with stores lost so far
            now = lost_now.get(s, {})
            runs = self.open[s]
            for store in [x for x in runs if x not in now]:
                self._close(runs.pop(store), previous)
            if not runs:
                del self.open[s]
        fresh = [s for s, lost in lost_now.items() if any(store not in self.open.get(s, {}) for store in lost)]
        durable: dict[int, np.ndarray] = {}
        if fresh:
            order = sorted(fresh, key=lambda s: int(L.hpa[s]))
            durable = dict(zip(order, self._durable(L.hpa[np.array(order, np.int64)])))
        for s, lost in lost_now.items():
            runs = self.open.setdefault(s, {})
            for store, offsets in sorted(lost.items()):
                if store not in runs:
                    runs[store] = self._violation(store, point, s, offsets, durable[s])

    def _close(self, v: Violation, until: int) -> None:
        self._emit(replace(v, until=until, points=self.points[until] - self.points[v.point] + 1))

    def _emit(self, v: Violation) -> None:
        self.violations.append(v)
        if self.on_violation is not None:
            self.on_violation(v)

    def finish(self) -> None:
        """End every open run at the last crash point."""
        for runs in self.open.values():
            for v in runs.values():
                self._close(v, self.last)
        self.open = {}

    def _violation(self, store: int, point: int, s: int, offsets: list[int],
                   durable: np.ndarray | None) -> Violation:
        """A lost store (``durable``: its line's durable bytes) or, without ``durable``, an unfenced one."""
        rec = self.ops[store]
        size, gpa, value = int(rec["size"]), int(rec["gpa"]), int(rec["value"])
        L = self.model.lines
        off = gpa & (LINE - 1)              # the store's offset in its line (stores never cross lines)
        common: dict[str, Any] = {
            "store": store, "point": point, "vm": int(rec["vm"]), "vcpu": int(rec["vcpu"]),
            "op": Op(int(rec["op"])).name, "size": size, "gpa": gpa, "hpa": int(L.hpa[s]) + off,
            "expected": value.to_bytes(8, "little")[:size]}
        if durable is None:
            return Violation(completed=-1, found=b"", lost=0, kind="unfenced", **common)
        return Violation(completed=int(L.done[s, offsets[0]]), found=durable[off:off + size].tobytes(),
                         lost=sum(1 << (b - off) for b in offsets), **common)

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


def check(hv: Hypervisor, ops: np.ndarray, points: str | int | Iterable[int] = "all", *,
          protocol: str = "auto", fence_scope: str = "vcpu", handler: ExitHandler = raise_fault,
          verify: int = 0, full_every: int | None = None, ordering: bool = True,
          adr_failure: bool = False, on_violation: Callable[[Violation], None] | None = None,
          progress: Callable[[int, int], None] | None = None) -> CheckResult:
    """Replay ``ops`` (TRACE_DTYPE) on ``hv``'s running VMs and check crash consistency at its
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
    call and the trace's length. Afterwards ``hv`` has replayed the whole trace.

    Raises TraceError for a malformed trace (naming the record), GuestFault for an exit the
    handler refuses, ConfigError for bad options."""
    if not isinstance(ops, np.ndarray) or ops.dtype != TRACE_DTYPE or ops.ndim != 1:
        raise TraceError("a trace must be a one-dimensional numpy array of TRACE_DTYPE")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if fence_scope not in FENCE_SCOPES:
        raise ConfigError(f"unknown fence scope {fence_scope!r}; known: {', '.join(FENCE_SCOPES)}")
    if full_every is not None and (not isinstance(full_every, int) or full_every < 1):
        raise ConfigError(f"full_every={full_every!r}: must be a positive integer")
    domain = hv.platform.domain
    survives = "none" if adr_failure else domain
    resolved = protocol if protocol != "auto" else ("deep" if survives == "none" else "flush")
    candidates = persist_points(hv, ops)
    chosen = _choose_points(candidates, points, len(ops))
    verify_at = set()
    if verify and chosen:
        verify_at = {chosen[int(k)] for k in np.unique(np.linspace(0, len(chosen) - 1, min(verify, len(chosen)))
                                                        .round().astype(np.int64))}
    if full_every is None:
        full_every = max(64, -(-len(chosen) // 16))
    checker = _Checker(hv, ops, resolved, fence_scope, handler, full_every, ordering, adr_failure)
    checker.on_violation, checker.progress = on_violation, progress
    verified, mismatches = [], []
    for n, p in enumerate(chosen):
        checker._replay(p + 1)
        checker.probe(p, full=(n + 1) % full_every == 0 or n == len(chosen) - 1)
        if p in verify_at:
            verified.append(p)
            bad = checker.verify(p)
            if bad is not None:
                mismatches.append((p, bad))
    checker.finish()
    checker._replay(len(ops))
    violations = sorted(checker.violations, key=lambda v: (v.point, v.store, v.kind))
    return CheckResult(ops=len(ops), points=chosen, candidates=len(candidates), violations=violations,
                       completed_stores=checker.model.completed, trace_counts=dict(checker.model.counts),
                       protocol=resolved, fence_scope=fence_scope,
                       domain=domain, platform=hv.platform.name,
                       strategies={vm.id: vm.strategy for vm in hv.vms.values()},
                       fanouts={vm.id: vm.fanout for vm in hv.vms.values()},
                       verified=verified, verify_mismatches=mismatches, adr_failure=adr_failure)


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
    records = source.array()
    try:
        return check(hv, records, points, **options)
    except (TraceError, LifecycleError) as e:
        raise relocated(e, 0, source) from None
    except GuestFault as f:
        if f.unmapped:
            raise relocated(unmapped_error(f), 0, source) from None
        raise


PROTOCOL_NAMES = PROTOCOLS


__all__ = ["FENCE_SCOPES", "PROTOCOLS", "CheckResult", "Violation", "build_platform", "check",
           "check_trace", "persist_points"]
