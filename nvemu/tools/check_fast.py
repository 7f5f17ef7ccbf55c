"""The checker's model on the compiled kernel (``nvemu._checkcore``): the same rules as
:class:`~nvemu.tools.check_model.Model`, which stays the oracle and the model of a pure install.

For each chunk the kernel's :class:`SpanMap` gives every record its HPA, line slot and kind (fence,
vFHA write, store, NT store, write-back of a tracked line, or nothing) in one pass, adding the new
lines; Python resolves only the 2 MiB spans it has not seen from the page tables. The kernel then
follows the records without the GIL and judges the crash points, and the violations it settled
come back as tuples. Per tracked line the kernel holds versions, not bytes (about 53 bytes, plus 8
to 16 in its HPA -> slot hash table) and it drops settled lines. Bytes live only for a chunk:
before the engine runs one, the lines it reaches and the lines in the WPQs are read from the
engine, and the kernel moves them through the chunk; a lost store's durable bytes on any other
line are the engine's media after the chunk (nothing changed them in it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._constants import EPT_ADDR_MASK, EPT_RWX, LINE_BYTES as LINE, TRACE_DTYPE, LineState, Op
from ..machine.hypervisor import Hypervisor
from .check_model import COUNTS, DRAINING, MEDIA, Model, vfha_table
from .check_report import Violation

try:
    from .._checkcore import CheckKernel, SpanMap
    from .._core import Engine as CoreEngine
except ImportError:             # a pure install (NVEMU_PUREPYTHON=1): the plain-Python model only
    CheckKernel = CoreEngine = SpanMap = None

AVAILABLE = CheckKernel is not None
"""True when the compiled kernel is built (not in a pure install)."""

SWEEP_MIN_LINES = 1 << 16
"""The kernel drops settled lines once this many are tracked and their number doubled since the
last sweep (a free parameter: memory against sweep time; the tests set 0 to sweep often)."""


def _kept_by_kernel(read: Callable[[Any], Any]) -> Any:
    """A Model attribute the kernel keeps: reads come from the kernel, assignments are ignored."""
    return property(read, lambda self, value: None)


class _KernelSlots:
    """Line HPA -> slot in the kernel's hash table (8 to 16 bytes a line): what :class:`Model`
    asks of ``lines.slot`` (``get``, ``in``) and a vectorised :meth:`lookup`. Lines enter it as the
    kernel adds them."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel

    def lookup(self, lines: np.ndarray) -> np.ndarray:
        """The slot of each of ``lines`` (-1: none)."""
        return self.kernel.slot_lookup(np.ascontiguousarray(lines, np.int64))

    def get(self, line: int, default: int | None = None) -> int | None:
        s = int(self.lookup(np.array([line], np.int64))[0])
        return default if s < 0 else s

    def __contains__(self, line: int) -> bool:
        return self.get(line) is not None


class _Slots:
    """What :class:`Model` needs of its lines when the kernel holds them: HPA -> slot."""

    def __init__(self, kernel: Any) -> None:
        self.slot = _KernelSlots(kernel)


class FastModel(Model):
    """:class:`Model` with the per-record work and the crash points in the compiled kernel."""

    def __init__(self, hv: Hypervisor, protocol: str, fence_scope: str, ordering: bool, survives: str,
                 emit: Callable[[Violation], None]) -> None:
        if CheckKernel is None:
            raise ImportError("nvemu._checkcore is not built (a pure install): use the plain-Python model")
        p = hv.platform
        n_vms = max(hv.vms, default=-1) + 1
        max_cpus = max((len(vm.vcpus) for vm in hv.vms.values()), default=1) or 1
        mask = np.zeros((max(n_vms, 1), p.n_controllers), np.uint8)
        for vm in hv.vms.values():
            slot = p.engine.vm_slot(vm.id)
            if slot.fha_mode in DRAINING:
                mask[vm.id] = np.asarray(slot.fanout) != 0
        self.kernel = CheckKernel(p.n_controllers, int(p.engine.wpq_depth), max(n_vms, 1), max_cpus,
                                  fence_scope == "vcpu", protocol, ordering, mask[:max(n_vms, 1)])
        self.kernel.sweep_min = SWEEP_MIN_LINES
        self._dirty_at_start: set[int] = set()
        self._translated: tuple[np.ndarray, ...] = ()     # the last translate(): hpas, records, slots, kinds
        self._bulk = isinstance(p.engine, CoreEngine)     # new lines' bytes read in C (not on the reference)
        self.spans = SpanMap(vfha_table(hv))
        super().__init__(hv, protocol, fence_scope, ordering, survives, emit)
        self.lines = _Slots(self.kernel)     # type: ignore[assignment]
        self._adopt()

    def _adopt(self) -> None:
        if not hasattr(self, "kernel") or not isinstance(getattr(self, "lines", None), _Slots):
            return                   # Model.__init__ calls this before the slots exist
        p = self.platform
        self._dirty_at_start = {line for line, state in p.line_states().items() if state == LineState.DIRTY}
        for line in self._dirty_at_start:
            self._slot(line)
        for c in range(p.n_controllers):
            for line, data in p.wpq(c):
                self.kernel.queue_initial(self._slot(line), bytes(data))
        self._dirty_at_start = set()         # every such line has its slot; a line added later starts clean

    def _add(self, line: int, ctrl: int, mode: int, mem: bytes, media: bytes) -> int:
        return int(self.kernel.add_line(line, ctrl, mode, line in self._dirty_at_start))

    def _add_lines(self, lines: list[int]) -> None:
        if not self._bulk:
            return super()._add_lines(lines)
        p = self.platform
        modes = np.full(len(lines), self.base_mode, np.int8)
        if not self.armed:
            modes[[not p.adr_holds(line) for line in lines]] = MEDIA
        engine = p.engine
        with engine.lock:
            self.kernel.add_lines(engine, np.asarray(lines, np.int64), modes)

    def translate(self, ops: np.ndarray) -> np.ndarray:
        """:meth:`Model.translate` in one pass of the kernel over the records (the spans it has not
        seen resolved here first), then the bytes of the lines these records store to or write
        back, and of the lines queued now, go to the kernel as the engine has them before it runs
        the records (again after an exit's re-translation: only lines not yet given)."""
        if ops.dtype != TRACE_DTYPE:
            raise TypeError(f"records of dtype {ops.dtype}, not TRACE_DTYPE")
        raw = np.ascontiguousarray(ops).view(np.uint8)
        for key in self.spans.missing(raw).tolist():
            vm, span = key >> 40, key & ((1 << 40) - 1)
            base = self._span(vm, span)
            if base == -3:
                self.spans.set_row(key, self._span_row(vm, span))
            else:
                self.spans.set_base(key, base)
        hpas = np.empty(len(ops), np.int64)
        slot = np.empty(len(ops), np.int32)
        kind = np.empty(len(ops), np.int8)
        if self._bulk and self.armed:           # new lines added in the pass (all of one mode)
            with self.platform.engine.lock:
                self.spans.translate(self.kernel, raw, hpas, slot, kind, self.platform.engine, self.base_mode)
        else:
            new = self.spans.translate(self.kernel, raw, hpas, slot, kind)
            if len(new):
                self._add_lines(np.unique(new).tolist())
                self.spans.translate(self.kernel, raw, hpas, slot, kind, refill=True)
        self._translated = (hpas, raw, slot, kind)
        missing = self.kernel.chunk_missing(slot)
        if not len(missing):
            return hpas
        engine = self.platform.engine
        if self._bulk:
            with engine.lock:
                self.kernel.chunk_add(engine, missing)
        else:
            lines = self.kernel.slot_hpas(missing).tolist()
            mem = np.frombuffer(b"".join(self.platform.read_memory(h, LINE) for h in lines), np.uint8)
            media = np.frombuffer(b"".join(self.platform.read_media(h, LINE) for h in lines), np.uint8)
            self.kernel.chunk_add_bytes(missing, mem.reshape(-1, LINE), media.reshape(-1, LINE))
        return hpas

    def forget_translations(self) -> None:
        super().forget_translations()
        self.spans.clear()

    def _span_row(self, vm: int, span: int) -> np.ndarray:
        """HPA pages of the 512 GPA pages of 2 MiB span ``span`` (-1: not vNVDIMM): its leaf
        table read whole from the core engine's pool, else page by page."""
        if self._bulk and vm in self.hv.vms:
            level, table, _, _ = self.hv.vms[vm].page_table.walk(span << 21)[-1]
            if level == 1:
                entries = np.asarray(self.platform.engine.pool[table * 512:(table + 1) * 512], np.uint64)
                present = ((entries & np.uint64(EPT_RWX)) != 0) & ((entries & np.uint64(3)) != 2)
                pages = (entries & np.uint64(EPT_ADDR_MASK)).astype(np.int64)
                return np.where(present & (pages >= self.pmem_lo) & (pages < self.pmem_hi), pages, -1)
        return np.array([self._page(vm, (span << 9) + i) for i in range(512)], np.int64)

    # Model's counters, which the kernel keeps: read from it (Model.__init__'s assignments are dropped)
    completed = _kept_by_kernel(lambda self: int(self.kernel.completed))
    counts = _kept_by_kernel(lambda self: dict(zip(COUNTS, self.kernel.counts_arr.tolist())))
    enqueued = _kept_by_kernel(lambda self: self.kernel.enqueued_arr)
    drained = _kept_by_kernel(lambda self: self.kernel.drained_arr)

    def same_queues(self) -> str | None:
        for c in range(self.platform.n_controllers):
            if [(line, bytes(d)) for line, d in self.platform.wpq(c)] != self.kernel.queue_lines(c):
                return f"the WPQ of controller {c} holds other lines or bytes than the model's"
        return None

    def run(self, ops: np.ndarray, base: int, hpas: np.ndarray, skipped: set[int], points: np.ndarray,
            full: Callable[[Any], Any]) -> None:
        n = len(ops)
        if not n:
            self.kernel.end_chunk()
            return
        if not self._translated or self._translated[0] is not hpas:
            raise ValueError("run() takes the HPAs the last translate() returned")
        _, raw, slot, kind = self._translated
        if skipped:
            kind[[i - base for i in skipped if base <= i < base + n]] = 0
        point = np.zeros(n, np.uint8)
        if len(points):
            ranks = int(self.kernel.rank) + 1 + np.arange(len(points))
            point[points - base] = np.where(full(ranks), 2, 1)
        self.kernel.run(base, kind, raw, hpas, slot, point)
        engine = self.platform.engine
        if self._bulk:
            with engine.lock:
                self.kernel.found_from(engine)
        else:
            self.kernel.found_give([int.from_bytes(self.platform.read_media(hpa, size), "little")
                                    for hpa, size in self.kernel.found_wanted()])
        self._events()
        self.kernel.end_chunk()

    def _events(self) -> None:
        for (kind, store, point, until, points, completed, vm, cpu, op, size, gpa, hpa, value, found,
             lost) in self.kernel.events():
            common = {"store": store, "point": point, "vm": vm, "vcpu": cpu, "op": Op(op).name, "size": size,
                      "gpa": gpa, "hpa": hpa, "expected": int(value).to_bytes(8, "little")[:size],
                      "until": until, "points": points}
            if kind == 1:
                self.emit(Violation(completed=-1, found=b"", lost=0, kind="unfenced", **common))
            else:
                self.emit(Violation(completed=completed, found=int(found).to_bytes(8, "little")[:size], lost=lost,
                                    **common))

    def finish(self) -> None:
        self.kernel.finish()
        self._events()


__all__ = ["AVAILABLE", "FastModel"]
