"""The checker's model of a trace (plain Python, the oracle): when each store completes its
persistence protocol, and *which store's bytes are durable* in each tracked line (provenance).

Provenance, not values. The engine moves whole lines: a write-back (CLWB, CLFLUSHOPT or CLFLUSH of
a DIRTY line, or any NT_STORE) queues a copy of the line as it is in memory at that op; a drain
writes queued copies to media oldest first (SPEC 1, 7.3; ``_reference.Engine._enqueue`` and
``_drain_one``). So every copy holds, byte for byte, the latest store made before it was taken,
and it is named by the op index ``t`` that took it (an NT_STORE's copy includes the NT_STORE). A
line's durable bytes are then those of one copy, its *durable version* ``T``:

* media only (domain ``none``, an ADR failure, or an NVDIMM that is not armed): the last copy
  drained (-1: nothing of the trace);
* ``adr``: the newest copy still queued, else the media's;
* ``eadr``: the cache counts, so every store made so far (nothing completed is ever lost).

A completed store ``i`` is lost at byte ``b`` exactly when ``T < lc[b]``, where ``lc[b]`` is the
op index of the last completed store to ``b``: then the durable copy was taken before that store.
No value is compared, so a store of zeros, or of the value media already held, is lost like any
other. The model keeps one FIFO per controller of (line, version) as the trace's write-backs fill
it and pops as many entries as the engine reports drained (``controller_stats``: a line leaves
its queue only in FIFO order, whether a vFHA fan-out, a full queue or a handler drained it); the
engine's count of lines queued is compared with the model's after every segment, and its queues
line by line at every full probe, so a model that fell out of step is an error, never a silent
pass.

Memory per tracked line: the last completed store and its completion op per byte (two int64[64])
and a few scalars.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from .._constants import LINE_BYTES as LINE, PAGE_MASK, PAGE_SHIFT, LineState, Op
from ..errors import LifecycleError
from ..machine.hypervisor import Hypervisor

_LOAD, _STORE, _NT_STORE, _SFENCE = int(Op.LOAD), int(Op.STORE), int(Op.NT_STORE), int(Op.SFENCE)
MEDIA, QUEUE, CACHE = 0, 1, 2       # what survives a power failure for a line: media; + WPQs; + caches
COUNTS = ("stores", "nt_stores", "write_backs", "fences", "vfha_writes")
"""What :attr:`Model.counts` counts: stores to a vNVDIMM (the checked stores; NT_STOREs among them),
write-backs of vNVDIMM lines, fences and vFHA writes, leaving out the ops an exit handler skipped."""


class Lines:
    """Per 64-byte host line the trace stores to: per byte the last completed store (op index) and
    the op its protocol completed at; the line's controller, what survives for it (MEDIA, QUEUE,
    CACHE), whether the model holds it DIRTY, the version on media, the newest queued version and
    how many copies are queued."""

    def __init__(self, survives: Any) -> None:
        self.survives = survives            # line HPA -> MEDIA, QUEUE or CACHE
        self.slot: dict[int, int] = {}
        self.n = 0
        cap = 256
        self.hpa = np.zeros(cap, np.int64)
        self.lc = np.full((cap, LINE), -1, np.int64)        # op index of the last completed store
        self.done = np.full((cap, LINE), -1, np.int64)      # ... and where its protocol completed
        self.active = np.zeros(cap, bool)                   # some byte has a completed store
        self.mode = np.zeros(cap, np.int8)
        self.ctrl: list[int] = []
        self.dirty: list[bool] = []
        self.media = np.full(cap, -1, np.int64)             # version of the copy last drained
        self.queued_new = np.full(cap, -1, np.int64)        # version of the newest queued copy
        self.queued = np.zeros(cap, np.int64)               # copies queued

    def get(self, line: int, ctrl: int) -> int:
        s = self.slot.get(line)
        if s is None:
            s = self.slot[line] = self.n
            if s == len(self.hpa):
                self._grow()
            self.hpa[s] = line
            self.mode[s] = self.survives(line)
            self.ctrl.append(ctrl)
            self.dirty.append(False)
            self.n += 1
        return s

    def _grow(self) -> None:
        cap = 2 * len(self.hpa)
        for name, fill in (("hpa", 0), ("lc", -1), ("done", -1), ("active", False), ("mode", 0), ("media", -1),
                           ("queued_new", -1), ("queued", 0)):
            old = getattr(self, name)
            new = np.full((cap,) + old.shape[1:], fill, old.dtype)
            new[:len(old)] = old
            setattr(self, name, new)

    def complete(self, s: int, i: int, off: int, size: int, at: int) -> None:
        lc = self.lc[s, off:off + size]
        newer = lc < i
        if newer.all():
            lc[:] = i
            self.done[s, off:off + size] = at
        elif newer.any():
            lc[newer] = i
            self.done[s, off:off + size][newer] = at
        else:
            return                          # every byte already has a later completed store
        self.active[s] = True

    def durable_version(self, slots: np.ndarray) -> np.ndarray:
        """The durable version of each line (int64; CACHE lines: the largest int64)."""
        mode = self.mode[slots]
        version = np.where((mode == QUEUE) & (self.queued[slots] > 0), self.queued_new[slots], self.media[slots])
        return np.where(mode == CACHE, np.iinfo(np.int64).max, version)

    def lost(self, s: int, version: int) -> dict[int, list[int]]:
        """{store: its byte offsets in the line} of the completed stores older than ``version``."""
        lc = self.lc[s]
        out: dict[int, list[int]] = {}
        for b in np.flatnonzero(lc > version).tolist():
            out.setdefault(int(lc[b]), []).append(b)
        return out


class Model:
    """Follows the trace op by op: when each store completes its protocol (see checker), and
    which copy of each line is durable (the module text)."""

    def __init__(self, hv: Hypervisor, protocol: str, fence_scope: str, ordering: bool = True,
                 survives: str = "none") -> None:
        self.hv = hv
        self.protocol = protocol
        self.ordering = ordering and protocol == "deep"
        self.unfenced: list[tuple[int, int, int]] = []     # (store, vFHA write, line slot)
        self.flagged: set[int] = set()
        self.per_vcpu = fence_scope == "vcpu"
        p = hv.platform
        self.platform = p
        self.pmem_lo, self.pmem_hi = p.pmem_base, p.pmem_base + p.pmem_bytes
        self.vfha_page = {vm.id: vm.vfha_gpa >> PAGE_SHIFT for vm in hv.vms.values()}
        self.pages: dict[tuple[int, int], int] = {}       # (vm, GPA page) -> HPA page, -1: not NVDIMM
        base = {"none": MEDIA, "adr": QUEUE, "eadr": CACHE}[survives]
        armed = survives == "none" or all(d.armed for d in p.config.nvdimms)
        self.lines = Lines((lambda line: base) if armed else (lambda line: base if p.adr_holds(line) else MEDIA))
        self.wb: dict[tuple[int, int], list] = {}         # (vm, line HPA) -> stores awaiting a write-back
        self.fence: dict[Any, list] = {}                  # fence key -> stores awaiting the fence
        self.fha: dict[int, list] = {}                    # vm -> fenced stores awaiting a vFHA write
        self.fha_fence: dict[Any, list] = {}              # fence key -> stores awaiting the final fence
        self.touched: set[int] = set()                    # line slots whose verdict may have changed
        self.completed = 0
        self.counts = dict.fromkeys(COUNTS, 0)          # what the trace did (for a vacuous check's report)
        self.queues: list[deque[tuple[int, int]]] = [deque() for _ in range(p.n_controllers)]
        self.enqueued = np.zeros(p.n_controllers, np.int64)     # copies the model queued, per controller
        for line, state in p.line_states().items():      # the machine as the check finds it
            if state == LineState.DIRTY:
                self.lines.dirty[self._slot(line)] = True
        for c in range(p.n_controllers):
            for line, _ in p.wpq(c):
                s = self._slot(line)
                self.queues[c].append((s, -1))
                self.lines.queued[s] += 1

    def _slot(self, line: int) -> int:
        s = self.lines.slot.get(line)
        return s if s is not None else self.lines.get(line, self.platform.controller_of(line))

    def forget_translations(self) -> None:
        self.pages.clear()

    def _hpa(self, vm: int, gpa: int) -> int:
        """HPA of an NVDIMM GPA (a fresh walk, cached per page), or -1 for DRAM and unmapped GPAs."""
        key = (vm, gpa >> PAGE_SHIFT)
        page = self.pages.get(key)
        if page is None:
            hpa = self.hv.vms[vm].gpa_to_hpa(gpa & ~PAGE_MASK) if vm in self.hv.vms else None
            page = hpa if hpa is not None and self.pmem_lo <= hpa < self.pmem_hi else -1
            self.pages[key] = page
        return -1 if page < 0 else page | (gpa & PAGE_MASK)

    def _key(self, vm: int, vcpu: int) -> Any:
        return (vm, vcpu) if self.per_vcpu else vm

    def _enqueue(self, s: int, version: int) -> None:
        L = self.lines
        c = L.ctrl[s]
        self.queues[c].append((s, version))
        self.enqueued[c] += 1
        L.queued_new[s] = version
        L.queued[s] += 1
        L.dirty[s] = False
        self.touched.add(s)

    def drained(self, counts: np.ndarray) -> None:
        """The engine drained ``counts[c]`` more lines from controller ``c``'s WPQ: its oldest."""
        L = self.lines
        for c in np.flatnonzero(counts).tolist():
            q = self.queues[c]
            if counts[c] > len(q):
                raise LifecycleError(f"checker: controller {c} drained {int(counts[c])} lines where the trace "
                                     f"queued {len(q)} (was the machine changed behind the checker?)")
            for _ in range(int(counts[c])):
                s, version = q.popleft()
                L.media[s] = version
                L.queued[s] -= 1
                self.touched.add(s)

    def same_queues(self) -> bool:
        """Does every WPQ of the engine hold the lines the model's queues hold, in order?"""
        L = self.lines
        return all([line for line, _ in self.platform.wpq(c)] == [int(L.hpa[s]) for s, _ in q]
                   for c, q in enumerate(self.queues))

    def run(self, ops: np.ndarray, base: int, skipped: set[int]) -> None:
        """Follow ``ops`` (records ``base``, ``base+1``, ...), leaving out the ``skipped`` indices."""
        if not len(ops):
            return
        lines = self.lines
        dirty, slot_of, counts = lines.dirty, lines.slot, self.counts
        deep, fence_only = self.protocol == "deep", self.protocol == "fence"
        cols = zip(ops["op"].tolist(), ops["vcpu"].tolist(), ops["vm"].tolist(), ops["size"].tolist(),
                   ops["gpa"].tolist())
        for k, (op, cpu, vm, size, gpa) in enumerate(cols):
            if op == _LOAD:
                continue
            i = base + k
            if skipped and i in skipped:
                continue
            if op >= _SFENCE:
                counts["fences"] += 1
                key = self._key(vm, cpu)
                if deep:
                    done = self.fha_fence.pop(key, None)
                    if done:
                        self._complete(done, i)
                    fenced = self.fence.pop(key, None)
                    if fenced:
                        self.fha.setdefault(vm, []).extend(fenced)
                else:
                    done = self.fence.pop(key, None)
                    if done:
                        self._complete(done, i)
                continue
            if op <= _NT_STORE:
                if gpa >> PAGE_SHIFT == self.vfha_page.get(vm):
                    counts["vfha_writes"] += 1
                    if self.ordering:
                        self._overtaken(vm, cpu, i)
                    waiting = self.fha.pop(vm, None)
                    if waiting:
                        self.fha_fence.setdefault(self._key(vm, cpu), []).extend(waiting)
                    continue
                hpa = self._hpa(vm, gpa)
                if hpa < 0:
                    continue
                line = hpa & ~(LINE - 1)
                s = slot_of.get(line)
                if s is None:
                    s = self._slot(line)
                rec = (i, s, hpa & (LINE - 1), size)
                counts["stores"] += 1
                if op == _NT_STORE:
                    counts["nt_stores"] += 1
                    self._enqueue(s, i)             # straight to the WPQ, the whole line as it is now
                else:
                    dirty[s] = True
                if op == _NT_STORE or fence_only:
                    self.fence.setdefault(self._key(vm, cpu), []).append(rec)
                else:
                    self.wb.setdefault((vm, line), []).append(rec)
                continue
            hpa = self._hpa(vm, gpa)                       # CLWB, CLFLUSHOPT, CLFLUSH
            if hpa < 0:
                continue
            line = hpa & ~(LINE - 1)
            counts["write_backs"] += 1
            s = slot_of.get(line)
            if s is not None and dirty[s]:
                self._enqueue(s, i)
            waiting = self.wb.pop((vm, line), None)
            if waiting:                     # ordered by a fence of the vCPU issuing the write-back (SDM)
                self.fence.setdefault(self._key(vm, cpu), []).extend(waiting)

    def _overtaken(self, vm: int, cpu: int, at: int) -> None:
        """The vFHA write at ``at`` passes write-backs (and NT stores) the writing vCPU issued and
        has not fenced yet."""
        for rec in self.fence.get(self._key(vm, cpu), ()):
            if rec[0] not in self.flagged:
                self.flagged.add(rec[0])
                self.unfenced.append((rec[0], at, rec[1]))

    def _complete(self, stores: list, at: int) -> None:
        lines = self.lines
        for i, s, off, size in stores:
            lines.complete(s, i, off, size, at)
            self.touched.add(s)
        self.completed += len(stores)


__all__ = ["CACHE", "COUNTS", "Lines", "MEDIA", "Model", "QUEUE"]
