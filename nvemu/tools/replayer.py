"""Streaming replay: a trace of any format through a hypervisor's VMs, chunk by chunk, with summary stats.

:func:`replay` is the one-call form (what ``nvemu replay`` runs); :class:`Replayer` is the same run as
an iterator of per-chunk stats, for notebooks and simulators that watch a long replay as it goes.

A native ``.npy`` trace is never read whole: each chunk is mapped from the file on its own and
unmapped once replayed (:meth:`nvemu.formats.trace.NpyTrace.chunks`), so resident memory stays that of the
emulated machine plus one chunk however long the trace. Text traces and pmemcheck logs are parsed
into memory first. Unless told how many, the driver creates as many VMs and vCPUs as the trace's
``vm`` and ``vcpu`` fields name (a pmemcheck log: one of each), all alike: the default VM (256 MiB
DRAM, one 256 MiB vNVDIMM), shrunk to fit smaller platforms.

Errors name the global record index (and, for text and pmemcheck input, the line or log record it
came from): a malformed record or a ``vm``/``vcpu`` with no VM raises TraceError, so does an access
to a GPA outside every mapping of its VM; nothing past that record has been replayed.
"""

from __future__ import annotations

import gc
import itertools
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .._constants import DEFAULT_CHUNK, ExitReason
from ..errors import ConfigError, GuestFault, LifecycleError, TraceError
from ..machine.config import DEFAULT_TIMING, PlatformConfig, TimingModel
from ..machine.hypervisor import ExitHandler, Hypervisor
from ..machine.platform import Platform
from ..machine.stats import Stats
from .prepare import prepare, relocated, unmapped_error
from .vocabulary import exit_columns, exits_by_name

EXIT_REASONS = tuple(ExitReason)


# ---- results --------------------------------------------------------------------------------------

def _vm_counters(vm: int, s: Stats) -> dict[str, Any]:
    t = s.total
    return {"vm": vm, "ops": t["ops"], "loads": t["loads"], "stores": t["stores"] + t["nt_stores"],
            "flushes": t["clwb"] + t["clflushopt"] + t["clflush"], "fences": t["sfence"] + t["mfence"],
            "exits": {r: s.exits[r] for r in EXIT_REASONS}, "vfha_writes": t["vfha_writes"],
            "fha_writes": t["fha_writes"], "lines_drained": t["lines_drained"], "time_ps": s.time_ps,
            "tlb_hits": t["tlb_hits"], "tlb_misses": t["tlb_misses"]}


_SUMMED = ("ops", "loads", "stores", "flushes", "fences", "vfha_writes", "fha_writes", "lines_drained", "time_ps",
           "tlb_hits", "tlb_misses")


def _total(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: sum(r[k] for r in rows) for k in _SUMMED}
    out["exits"] = {r: sum(row["exits"][r] for row in rows) for r in EXIT_REASONS}
    return out


def _rates(row: dict[str, Any]) -> dict[str, Any]:
    looked = row["tlb_hits"] + row["tlb_misses"]
    return {**row, "ns_per_op": row["time_ps"] / 1000 / row["ops"] if row["ops"] else 0.0,
            "tlb_hit_rate": row["tlb_hits"] / looked if looked else 0.0}


@dataclass
class ChunkStats:
    """What one chunk of a replay did (counters are the chunk's own, summed over VMs)."""

    index: int
    start: int                  # index of the chunk's first record in the trace
    ops: int
    seconds: float
    exits: dict[int, int]
    flushes: int
    vfha_writes: int
    lines_drained: int
    time_ps: int

    @property
    def mops(self) -> float:
        return self.ops / self.seconds / 1e6 if self.seconds else 0.0


@dataclass
class ReplayReport:
    """A finished replay: the fields of ``nvemu replay --json``. ``seconds`` counts the replay
    loop only (not building the platform or reading a text/pmemcheck trace); ``lines_drained`` are
    lines the VMs' flushes drained to media, ``wpq_full_drains`` lines a full WPQ drained on its
    own. ``per_vm`` has the same counters for each VM; ``hypervisor`` is the machine afterwards."""

    ops: int
    seconds: float
    mops: float
    exits: dict[int, int]
    loads: int
    stores: int
    flushes: int
    fences: int
    vfha_writes: int
    fha_writes: int
    lines_drained: int
    wpq_full_drains: int
    time_ps: int
    ns_per_op: float
    tlb_hit_rate: float
    python_exits: int
    chunks: int
    trace: str | None
    format: str
    platform: str
    strategy: str
    fanout: str
    vms: int
    vcpus: int
    per_vm: list[dict[str, Any]] = field(default_factory=list)
    hypervisor: Hypervisor | None = field(default=None, repr=False, compare=False)
    native_ns_per_op: float | None = None
    overhead_vs_native: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: exits keyed by name with their reason numbers (``{"ept_violation":
        {"reason": 48, "count": n}, ...}``), no hypervisor."""
        def clean(row: dict[str, Any]) -> dict[str, Any]:
            out = {k: v for k, v in row.items() if k not in ("hypervisor", "tlb_hits", "tlb_misses")}
            out["exits"] = exits_by_name(row["exits"])
            return out
        out = clean(self.__dict__)
        out["per_vm"] = [clean(r) for r in self.per_vm]
        return out

    CSV_COLUMNS = ("vm", "ops", "seconds", "mops", "exits", "exits_ept_violation", "exits_ept_misconfig",
                   "exits_vmcall", "loads", "stores", "flushes", "fences", "vfha_writes", "fha_writes",
                   "lines_drained", "time_ps", "ns_per_op", "native_ns_per_op", "overhead_vs_native",
                   "tlb_hit_rate")

    def csv_rows(self) -> list[dict[str, Any]]:
        """One row per VM and a ``total`` row, with :attr:`CSV_COLUMNS`."""
        rows = []
        for row in [*self.per_vm, {**self.__dict__, "vm": "total"}]:
            flat = {**row, **exit_columns(row["exits"])}
            flat.setdefault("seconds", self.seconds)
            flat["mops"] = flat["ops"] / self.seconds / 1e6 if self.seconds else 0.0
            rows.append({c: flat.get(c) for c in self.CSV_COLUMNS})
        return rows


# ---- the driver -----------------------------------------------------------------------------------

class Replayer:
    """One replay of one trace, run chunk by chunk.

    ``trace``: a path (npy, text or pmemcheck, recognised by content unless ``format`` is given)
    or a TRACE_DTYPE array. The machine is ``hypervisor`` with its running VMs if given, else a new
    ``platform`` (preset name, PlatformConfig or Platform) with ``vms`` VMs of ``vcpus`` vCPUs
    (default: what the trace names) of ``dram``/``nvdimm`` bytes (default :func:`vm_sizes`), flush
    ``strategy`` and ``fanout``, their vNVDIMMs prefaulted (up to ``PREFAULT_LIMIT``) so timing
    skips first-touch faults.
    A pmemcheck log lands on the first VM's vNVDIMM (``unregistered``, and ``deep_flush`` for a
    vFHA write after each persist, as :func:`nvemu.formats.trace.import_pmemcheck`). ``handler`` sees
    exits the core does not handle (op_index counted in the whole trace); by
    default an access outside every mapping raises TraceError and any other such exit GuestFault.
    ``progress``: a tqdm bar on stderr for runs over a second (None: when stderr is a terminal).

    Examples
    --------
    >>> from nvemu.guest.workloads import generate
    >>> r = Replayer(generate("seq-log", 5000), chunk_ops=2000)
    >>> [c.ops for c in r.chunks()], r.result().ops
    ([2000, 2000, 1000], 5000)
    """

    def __init__(self, trace: str | os.PathLike[str] | np.ndarray, *,
                 platform: str | PlatformConfig | Platform = "default", strategy: str = "auto",
                 fanout: str = "broadcast", vms: int | None = None, vcpus: int | None = None,
                 dram: int | None = None, nvdimm: int | None = None, timing: TimingModel = DEFAULT_TIMING,
                 prefault: bool = True, chunk_ops: int = DEFAULT_CHUNK, hypervisor: Hypervisor | None = None,
                 format: str | None = None, unregistered: str = "error", deep_flush: bool = False,
                 handler: ExitHandler | None = None, progress: bool | None = False) -> None:
        if chunk_ops <= 0:
            raise ConfigError(f"chunk_ops={chunk_ops!r}: must be positive")
        self.chunk_ops = chunk_ops
        self.handler = handler
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.hv = hypervisor if hypervisor is not None else Hypervisor(platform, timing)
        self.vms, self.source = prepare(self.hv, trace, create=hypervisor is None, vms=vms, vcpus=vcpus,
                                        strategy=strategy, fanout=fanout, dram=dram, nvdimm=nvdimm,
                                        prefault=prefault, format=format, unregistered=unregistered,
                                        deep_flush=deep_flush)
        self._before = {vm.id: vm.stats() for vm in self.vms}
        self._full_before = self._full_drains()
        self._seconds = 0.0
        self._ops = self._python_exits = self._chunks = 0
        self._ran = False

    def _full_drains(self) -> int:
        return sum(c["drained_full"] for c in self.hv.platform.controller_stats())

    def _counters(self) -> list[dict[str, Any]]:
        return [{**_vm_counters(vm.id, vm.stats() - self._before[vm.id]), "strategy": vm.strategy,
                 "fanout": vm.fanout} for vm in self.vms]

    def _handle(self, offset: int) -> ExitHandler:
        """The exit handler for a chunk starting at record ``offset``: faults re-indexed into the
        whole trace, then the user's handler or the default policy."""
        def handle(fault: GuestFault) -> str:
            if self.handler is not None:
                return self.handler(fault.shifted(offset))
            if fault.unmapped:
                raise unmapped_error(fault)          # named for the whole trace where the chunk fails
            raise fault.shifted(offset)
        return handle

    def chunks(self) -> Iterator[ChunkStats]:
        """Replay the trace, yielding each chunk's stats as it finishes (once per Replayer)."""
        if self._ran:
            raise LifecycleError("this Replayer has already run; make a new one")
        self._ran = True
        bar = self._bar()
        before = _total(self._counters())
        chunks = self.source.chunks(self.chunk_ops)
        try:
            for index in itertools.count():
                t0 = time.perf_counter()            # the timed loop: mapping a chunk, then replaying it
                start, records = next(chunks, (-1, None))
                if records is None:
                    break
                if self.source.stream is not None:
                    t0 = time.perf_counter()        # a pmemcheck chunk was parsed, not mapped: not replay time
                try:
                    done = self.hv.run(records, self._handle(start))
                except (TraceError, LifecycleError) as e:
                    raise relocated(e, start, self.source) from None
                seconds = time.perf_counter() - t0
                del records
                self._seconds += seconds
                self._ops += done.ops
                self._python_exits += done.python_exits
                self._chunks += 1
                now = _total(self._counters())
                delta = {k: now[k] - before[k] for k in _SUMMED}
                exits = {r: now["exits"][r] - before["exits"][r] for r in EXIT_REASONS}
                before = now
                if bar is not None:
                    bar.update(done.ops)
                yield ChunkStats(index, start, done.ops, seconds, exits, delta["flushes"], delta["vfha_writes"],
                                 delta["lines_drained"], delta["time_ps"])
        finally:
            if bar is not None:
                bar.close()

    def _bar(self) -> Any:
        if not self.progress:
            return None
        from tqdm import tqdm
        return tqdm(total=self.source.known_length, unit="op", unit_scale=True, delay=1.0, file=sys.stderr,
                    leave=False, dynamic_ncols=True, desc="replay")

    def run(self) -> ReplayReport:
        """Replay the whole trace and return the result."""
        for _ in self.chunks():
            pass
        return self.result()

    def result(self) -> ReplayReport:
        """The summary of what has been replayed so far."""
        per_vm = [_rates(row) for row in self._counters()]
        total = _rates(_total(per_vm))
        return ReplayReport(ops=self._ops, seconds=self._seconds,
                      mops=self._ops / self._seconds / 1e6 if self._seconds else 0.0, exits=total["exits"],
                      loads=total["loads"], stores=total["stores"], flushes=total["flushes"],
                      fences=total["fences"], vfha_writes=total["vfha_writes"], fha_writes=total["fha_writes"],
                      lines_drained=total["lines_drained"], wpq_full_drains=self._full_drains() - self._full_before,
                      time_ps=total["time_ps"], ns_per_op=total["ns_per_op"],
                      tlb_hit_rate=total["tlb_hit_rate"], python_exits=self._python_exits, chunks=self._chunks,
                      trace=self.source.path, format=self.source.format, platform=self.hv.platform.name,
                      strategy=",".join(sorted({vm.strategy for vm in self.vms})),
                      fanout=",".join(sorted({vm.fanout for vm in self.vms})), vms=len(self.vms),
                      vcpus=max(len(vm.vcpus) for vm in self.vms), per_vm=per_vm, hypervisor=self.hv)


def with_native(result: ReplayReport, trace: str | os.PathLike[str] | np.ndarray, *, release: bool = False,
                **options: Any) -> ReplayReport:
    """``result`` with the native baseline beside its emulated time: the same trace replayed again
    on a fresh platform of the same configuration and engine, the same VMs with strategy ``native`` (the
    guest writes the physical flush hints itself: no exits) and ``walk_ref_cycles = 0`` (no
    second-level walk). Adds ``native_ns_per_op`` and ``overhead_vs_native`` (``ns_per_op`` over
    it) to the total and to each VM. ``options`` are the first replay's :class:`Replayer` options.
    With ``release`` the report lets go of its hypervisor (``result.hypervisor`` becomes None) before
    the native run, so that a caller holding no other reference to it never has both hosts in memory
    at once (``nvemu replay`` does: its peak RSS is one host's, not two).
    """
    hv = result.hypervisor
    if hv is None:
        raise ConfigError("with_native needs the report of a replay that kept its hypervisor")
    options = {k: v for k, v in options.items() if k not in ("hypervisor", "platform", "strategy", "timing",
                                                             "progress", "vms", "vcpus")}
    config, timing, backend = hv.platform.config, hv.platform.timing, hv.platform.backend
    if release:
        result.hypervisor = hv = None
        gc.collect()                            # VMs and their hypervisor refer to each other
    bare = Platform(config, replace(timing, walk_ref_cycles=0), backend=backend)
    native = Replayer(trace, platform=bare, strategy="native", vms=result.vms, vcpus=result.vcpus, **options).run()

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")
    for row, base in zip(result.per_vm, native.per_vm):
        row["native_ns_per_op"] = base["ns_per_op"]
        row["overhead_vs_native"] = ratio(row["ns_per_op"], base["ns_per_op"])
    result.native_ns_per_op = native.ns_per_op
    result.overhead_vs_native = ratio(result.ns_per_op, native.ns_per_op)
    return result


def replay(trace: str | os.PathLike[str] | np.ndarray, *, native: bool = False, **options: Any) -> ReplayReport:
    """Replay a trace (path of any format, or a TRACE_DTYPE array) and return its :class:`ReplayReport`;
    ``options`` are :class:`Replayer`'s; ``native=True`` adds the native baseline (:func:`with_native`).

    Examples
    --------
    >>> from nvemu.guest.workloads import generate
    >>> r = replay(generate("linux-fsync", 10_000, seed=1), strategy="write-protect")
    >>> r.ops, r.exits[ExitReason.EPT_VIOLATION] == r.vfha_writes > 0
    (10000, True)
    >>> r = replay(generate("kv-put", 10_000, seed=1), strategy="mmio", native=True)
    >>> r.overhead_vs_native > 1.0
    True
    """
    result = Replayer(trace, **options).run()
    return with_native(result, trace, **options) if native else result


__all__ = ["ChunkStats", "Replayer", "ReplayReport", "replay", "with_native"]
