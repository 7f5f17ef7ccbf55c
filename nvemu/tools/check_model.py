"""The checker's model of a trace (plain Python, the oracle): when each store completes its
persistence protocol, *which store's bytes are durable* in each tracked line (provenance), and at
each crash point which completed stores a power failure would lose.

Provenance, not values. The engine moves whole lines: a write-back (CLWB, CLFLUSHOPT or CLFLUSH of
a DIRTY line, or any NT_STORE) queues a copy of the line as it is in memory at that op; a full WPQ
first drains its oldest copy; a vFHA write that the VM's strategy handles (write-protect, mmio,
hypercall, native; not drop or writable) drains every WPQ of the VM's fan-out, oldest first
(SPEC 1, 4, 7.3; ``_reference.Engine._enqueue``, ``_drain_one``, ``_handle_fha_exit``). So every
copy holds, byte for byte, the latest store made before it was taken, and it is named by the op
index ``t`` that took it (an NT_STORE's copy includes the NT_STORE). A line's durable bytes are
those of one copy, its *durable version* ``T``:

* media only (domain ``none``, an ADR failure, or an NVDIMM that is not armed): the last copy
  drained (-1: nothing of the trace);
* ``adr``: the newest copy still queued, else the media's;
* ``eadr``: the cache counts, so every store made so far (nothing completed is ever lost).

A completed store ``i`` is lost at byte ``b`` exactly when ``T < lc[b]``, where ``lc[b]`` is the
op index of the last completed store to ``b``: the durable copy was taken before that store. No
value is compared, so a store of zeros, or of the value media already held, is lost like any
other. ``T`` never decreases (a line's copies drain in the order they were taken), so a completed
store older than ``T`` is never lost again and is forgotten.

The model follows the WPQs itself, op by op, so the engine runs the trace in long chunks and is
never stopped at a crash point; after each chunk the engine's per-controller counts of lines
queued and drained and the contents of its WPQs (lines and bytes) must equal the model's, or
the check stops with an error (a model that fell out of step never passes silently). The model
also shadows each tracked line's bytes in memory and on media (taken from the engine when the
line is first seen) to report what a lost store's bytes hold.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from collections.abc import Callable
from typing import Any

import numpy as np

from .._constants import EPT_ADDR_MASK, EPT_RWX, LINE_BYTES as LINE, PAGE_MASK, PAGE_SHIFT, FhaMode, LineState, Op
from ..machine.hypervisor import Hypervisor
from .check_report import Violation

_LOAD, _STORE, _NT_STORE, _SFENCE = int(Op.LOAD), int(Op.STORE), int(Op.NT_STORE), int(Op.SFENCE)
_SPAN_SHIFT = 21
MEDIA, QUEUE, CACHE = 0, 1, 2       # what survives a power failure for a line: media; + WPQs; + caches
COUNTS = ("stores", "nt_stores", "write_backs", "fences", "vfha_writes")
"""What :attr:`Model.counts` counts: stores to a vNVDIMM (the checked stores; NT_STOREs among them),
write-backs of vNVDIMM lines, fences and vFHA writes, leaving out the ops an exit handler skipped."""


DRAINING = (FhaMode.WRITE_PROTECT, FhaMode.MMIO, FhaMode.HYPERCALL, FhaMode.NATIVE)
"""vFHA modes whose write drains the VM's fan-out (drop traps and drains nothing; writable and
none leave the write to memory or to Python)."""
# a pending store: (op index, line slot, offset in the line, size, vm, vcpu, op, GPA, value)
Rec = tuple[int, int, int, int, int, int, int, int, int]


def vfha_table(hv: Hypervisor) -> np.ndarray:
    """vm id -> its vFHA's GPA page (-1: none)."""
    table = np.full(max(hv.vms, default=-1) + 1, -1, np.int64)
    for vm in hv.vms.values():
        table[vm.id] = vm.vfha_gpa >> PAGE_SHIFT
    return table


class Lines:
    """Per 64-byte host line the trace stores to: per byte the last completed store (op index) and
    the op its protocol completed at; the line's controller, what survives for it (MEDIA, QUEUE,
    CACHE), whether it is DIRTY, its bytes in memory and on media, the version on media, the
    newest queued version and how many copies are queued; the completed stores not yet known
    durable (for reports)."""

    def __init__(self) -> None:
        self.slot: dict[int, int] = {}
        self.n = 0
        cap = 256
        self.hpa = np.zeros(cap, np.int64)
        self.lc = np.full((cap, LINE), -1, np.int64)        # op index of the last completed store
        self.done = np.full((cap, LINE), -1, np.int64)      # ... and where its protocol completed
        self.top = np.full(cap, -1, np.int64)               # the latest completed store of the line
        self.mem = np.zeros((cap, LINE), np.uint8)          # the line as the CPUs see it
        self.media = np.zeros((cap, LINE), np.uint8)        # ... and on media
        self.media_v = np.full(cap, -1, np.int64)           # version of the copy last drained
        self.newest_v = np.full(cap, -1, np.int64)          # version of the newest queued copy
        self.queued = np.zeros(cap, np.int64)               # copies queued
        self.mode = np.zeros(cap, np.int8)
        self.dirty = np.zeros(cap, bool)
        self.ctrl = np.zeros(cap, np.int64)
        self.newest: dict[int, bytes] = {}                  # slot -> bytes of its newest queued copy
        self.pending: dict[int, list[Rec]] = {}             # slot -> completed stores newer than T

    def add(self, line: int, ctrl: int, mode: int, mem: bytes, media: bytes) -> int:
        s = self.slot[line] = self.n
        if s == len(self.hpa):
            self._grow()
        self.hpa[s], self.ctrl[s], self.mode[s] = line, ctrl, mode
        self.mem[s] = np.frombuffer(mem, np.uint8)
        self.media[s] = np.frombuffer(media, np.uint8)
        self.n += 1
        return s

    def _grow(self) -> None:
        cap = 2 * len(self.hpa)
        for name in ("hpa", "lc", "done", "top", "mem", "media", "media_v", "newest_v", "queued", "mode", "dirty",
                     "ctrl"):
            old = getattr(self, name)
            new = np.full((cap,) + old.shape[1:], -1 if name in ("lc", "done", "top", "media_v", "newest_v") else 0,
                          old.dtype)
            new[:len(old)] = old
            setattr(self, name, new)

    def complete(self, rec: Rec, at: int) -> bool:
        i, s, off, size = rec[:4]
        lc = self.lc[s, off:off + size]
        newer = lc < i
        if newer.all():
            lc[:] = i
            self.done[s, off:off + size] = at
        elif newer.any():
            lc[newer] = i
            self.done[s, off:off + size][newer] = at
        else:
            return False                    # every byte already has a later completed store
        if i > self.top[s]:
            self.top[s] = i
        self.pending.setdefault(s, []).append(rec)
        return True

    def version(self, s: int) -> int:
        """The durable version of line ``s`` (CACHE lines: the largest int64)."""
        mode = self.mode[s]
        if mode == CACHE:
            return int(np.iinfo(np.int64).max)
        if mode == QUEUE and self.queued[s]:
            return int(self.newest_v[s])
        return int(self.media_v[s])

    def durable(self, s: int) -> bytes:
        """The bytes of line ``s`` a power failure now would leave (not for CACHE lines)."""
        if self.mode[s] == QUEUE and self.queued[s]:
            return self.newest[s]
        return self.media[s].tobytes()


class Model:
    """Follows the trace op by op (see the module text). ``emit`` receives each violation when its
    run of crash points ends (or, for "unfenced", at once)."""

    def __init__(self, hv: Hypervisor, protocol: str, fence_scope: str, ordering: bool, survives: str,
                 emit: Callable[[Violation], None]) -> None:
        self.hv = hv
        self.protocol = protocol
        self.ordering = ordering and protocol == "deep"
        self.flagged: set[int] = set()
        self.per_vcpu = fence_scope == "vcpu"
        self.emit = emit
        p = hv.platform
        self.platform, self.engine = p, p.engine
        self.pmem_lo, self.pmem_hi = p.pmem_base, p.pmem_base + p.pmem_bytes
        self.vfha_page = {vm.id: vm.vfha_gpa >> PAGE_SHIFT for vm in hv.vms.values()}
        self.drains: dict[int, list[int]] = {}
        for vm in hv.vms.values():
            slot = p.engine.vm_slot(vm.id)
            self.drains[vm.id] = (np.flatnonzero(np.asarray(slot.fanout)).tolist() if slot.fha_mode in DRAINING
                                  else [])
        self.pages: dict[tuple[int, int], int] = {}       # (vm, GPA page) -> HPA page, -1: not NVDIMM
        base = {"none": MEDIA, "adr": QUEUE, "eadr": CACHE}[survives]
        self.armed = survives == "none" or all(d.armed for d in p.config.nvdimms)
        self.base_mode = base
        self.lines = Lines()
        self.wb: dict[tuple[int, int], list[Rec]] = {}    # (vm, line slot) -> stores awaiting a write-back
        self.fence: dict[Any, list[Rec]] = {}             # fence key -> stores awaiting the fence
        self.fha: dict[int, list[Rec]] = {}               # vm -> fenced stores awaiting a vFHA write
        self.fha_fence: dict[Any, list[Rec]] = {}         # fence key -> stores awaiting the final fence
        self.touched: set[int] = set()                    # line slots whose verdict may have changed
        self.completed = 0
        self.counts = dict.fromkeys(COUNTS, 0)          # what the trace did (for a vacuous check's report)
        self.depth = int(p.engine.wpq_depth)
        self.queues: list[deque[tuple[int, int, bytes]]] = [deque() for _ in range(p.n_controllers)]
        self.enqueued = np.zeros(p.n_controllers, np.int64)     # copies queued and drained, per controller
        self.drained = np.zeros(p.n_controllers, np.int64)
        self.open: dict[int, dict[int, tuple[Violation, int]]] = {}   # slot -> {store: (its run, first rank)}
        self.rank = -1                                    # crash points judged so far, less one
        self.last = -1                                    # the last of them
        self._adopt()

    def _adopt(self) -> None:
        """Take over the dirty lines and queued copies the machine has when the check starts."""
        p = self.platform
        for line, state in p.line_states().items():
            if state == LineState.DIRTY:
                self.lines.dirty[self._slot(line)] = True
        for c in range(p.n_controllers):
            for line, data in p.wpq(c):
                s = self._slot(line)
                self.queues[c].append((s, -1, bytes(data)))
                self.lines.queued[s] += 1
                self.lines.newest[s] = bytes(data)

    # ---- lines and addresses ----

    def _slot(self, line: int) -> int:
        """The slot of ``line``, added (its bytes read from the engine as they are now) if new."""
        s = self.lines.slot.get(line)
        if s is None:
            p = self.platform
            mode = self.base_mode if self.armed or p.adr_holds(line) else MEDIA
            s = self._add(line, p.controller_of(line), mode, p.read_memory(line, LINE), p.read_media(line, LINE))
        return s

    def _add(self, line: int, ctrl: int, mode: int, mem: bytes, media: bytes) -> int:
        return self.lines.add(line, ctrl, mode, mem, media)

    def forget_translations(self) -> None:
        self.pages.clear()

    def _span(self, vm: int, span: int) -> int:
        """HPA of the 2 MiB at GPA ``span << 21`` when one large leaf maps it all to vNVDIMM
        space, -1 when it maps it all elsewhere or not at all, -3 when 4 KiB leaves do."""
        key = (vm, -1 - span)
        base = self.pages.get(key)
        if base is None:
            base = -3
            if vm not in self.hv.vms:
                base = -1
            else:
                level, _, _, entry = self.hv.vms[vm].page_table.walk(span << _SPAN_SHIFT)[-1]
                if not entry & EPT_RWX or entry & 3 == 2:
                    base = -1 if level >= 2 else -3
                elif level >= 2:
                    size = 1 << (12 + 9 * (level - 1))
                    hpa = (entry & EPT_ADDR_MASK & ~(size - 1)) | ((span << _SPAN_SHIFT) & (size - 1))
                    base = hpa if self.pmem_lo <= hpa and hpa + (1 << _SPAN_SHIFT) <= self.pmem_hi else -1
                    if base >= 0 and self.vfha_page.get(vm, -1) >> 9 == span:
                        base = -3               # never expected: the vFHA page gets its own leaf
            self.pages[key] = base
        return base

    def _page(self, vm: int, gpa_page: int) -> int:
        key = (vm, gpa_page)
        page = self.pages.get(key)
        if page is None:
            hpa = self.hv.vms[vm].gpa_to_hpa(gpa_page << PAGE_SHIFT) if vm in self.hv.vms else None
            page = hpa if hpa is not None and self.pmem_lo <= hpa < self.pmem_hi else -1
            self.pages[key] = page
        return page

    def translate(self, ops: np.ndarray) -> np.ndarray:
        """Per record: its HPA on a vNVDIMM, -1 elsewhere (DRAM, unmapped, a fence) and -2 for a
        vFHA write; and every line a STORE or NT_STORE reaches gets its slot now (its bytes read
        while the engine has not yet run these records)."""
        op = ops["op"].astype(np.int64)
        vm = ops["vm"].astype(np.int64)
        gpa = ops["gpa"].astype(np.int64)
        keep = (op >= _STORE) & (op < _SFENCE)
        out = np.full(len(ops), -1, np.int64)
        if not keep.any():
            return out
        vm, gpa = vm[keep], gpa[keep]
        span = (vm << 40) | (gpa >> _SPAN_SHIFT)            # 2 MiB spans: one walk each when a large page
        uspan = np.unique(span)                             # by hashing; few spans: searchsorted inverts
        sinv = np.searchsorted(uspan, span)
        bases = np.array([self._span(k >> 40, k & ((1 << 40) - 1)) for k in uspan.tolist()], np.int64)
        base = bases[sinv]
        hpa = np.where(base >= 0, base + (gpa & ((1 << _SPAN_SHIFT) - 1)), -1)
        small = base == -3                                  # 4 KiB leaves (the vFHA's among them)
        if small.any():                                     # page by page
            key = (vm[small] << 52) | (gpa[small] >> PAGE_SHIFT)
            uniq, inverse = np.unique(key, return_inverse=True)
            pages = np.array([self._page(k >> 52, k & ((1 << 52) - 1)) for k in uniq.tolist()], np.int64)
            page = pages[inverse]
            hpa[small] = np.where(page >= 0, page | (gpa[small] & PAGE_MASK), -1)
        writes = op[keep] <= _NT_STORE
        for v, fha_page in self.vfha_page.items():
            hpa[writes & (vm == v) & ((gpa >> PAGE_SHIFT) == fha_page)] = -2
        out[keep] = hpa
        new = self._unknown(hpa[writes & (hpa >= 0)] & ~(LINE - 1))
        if len(new):
            self._add_lines(new.tolist())
        return out

    def _unknown(self, lines: np.ndarray) -> np.ndarray:
        """Those of ``lines`` that have no slot yet, ascending and distinct."""
        slot = self.lines.slot
        return np.array([line for line in np.unique(lines).tolist() if line not in slot], np.int64)

    def _add_lines(self, lines: list[int]) -> None:
        """Give each of ``lines`` (new, ascending) a slot."""
        for line in lines:
            self._slot(line)

    def _key(self, vm: int, vcpu: int) -> Any:
        return (vm, vcpu) if self.per_vcpu else vm

    # ---- the WPQs ----

    def _enqueue(self, s: int, version: int) -> None:
        L = self.lines
        c = int(L.ctrl[s])
        q = self.queues[c]
        if len(q) == self.depth:
            self._drain_one(c)
        data = L.mem[s].tobytes()
        q.append((s, version, data))
        self.enqueued[c] += 1
        L.newest_v[s] = version
        L.newest[s] = data
        L.queued[s] += 1
        L.dirty[s] = False
        self.touched.add(s)

    def _drain_one(self, c: int) -> None:
        L = self.lines
        s, version, data = self.queues[c].popleft()
        L.media_v[s] = version
        L.media[s] = np.frombuffer(data, np.uint8)
        L.queued[s] -= 1
        if not L.queued[s]:
            del L.newest[s]
        self.drained[c] += 1
        self.touched.add(s)

    def same_queues(self) -> str | None:
        """What differs between the engine's WPQs and the model's (None: nothing)."""
        L = self.lines
        for c, q in enumerate(self.queues):
            if [(line, bytes(d)) for line, d in self.platform.wpq(c)] != [(int(L.hpa[s]), d) for s, _, d in q]:
                return f"the WPQ of controller {c} holds other lines or bytes than the model's"
        return None

    # ---- the trace ----

    def run(self, ops: np.ndarray, base: int, hpas: np.ndarray, skipped: set[int], points: np.ndarray,
            full: Callable[[int], bool]) -> None:
        """Follow ``ops`` (records ``base``, ``base+1``, ...; ``hpas`` from :meth:`translate`),
        leaving out the ``skipped`` indices, judging the crash points ``points`` (op indices,
        ascending; ``full(rank)``: judge every line at the crash point of that rank)."""
        if not len(ops):
            return
        L = self.lines
        dirty, slot_of, counts, mem = L.dirty, L.slot, self.counts, L.mem
        deep, fence_only = self.protocol == "deep", self.protocol == "fence"
        pts = iter(points.tolist())
        next_point = next(pts, -1)
        cols = zip(ops["op"].tolist(), ops["vcpu"].tolist(), ops["vm"].tolist(), ops["size"].tolist(),
                   ops["gpa"].tolist(), ops["value"].tolist(), hpas.tolist())
        for k, (op, cpu, vm, size, gpa, value, hpa) in enumerate(cols):
            i = base + k
            if op != _LOAD and not (skipped and i in skipped):
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
                elif hpa == -2:                                         # a vFHA write
                    counts["vfha_writes"] += 1
                    if self.ordering:
                        self._overtaken(vm, cpu, i)
                    waiting = self.fha.pop(vm, None)
                    if waiting:
                        self.fha_fence.setdefault(self._key(vm, cpu), []).extend(waiting)
                    for c in self.drains.get(vm, ()):
                        while self.queues[c]:
                            self._drain_one(c)
                elif hpa >= 0 and op <= _NT_STORE:
                    s = slot_of[hpa & ~(LINE - 1)]
                    off = hpa & (LINE - 1)
                    mem[s, off:off + size] = np.frombuffer(value.to_bytes(8, "little"), np.uint8, size)
                    rec = (i, s, off, size, vm, cpu, op, gpa, value)
                    counts["stores"] += 1
                    if op == _NT_STORE:
                        counts["nt_stores"] += 1
                        self._enqueue(s, i)             # straight to the WPQ, the whole line as it is now
                    else:
                        dirty[s] = True
                    if op == _NT_STORE or fence_only:
                        self.fence.setdefault(self._key(vm, cpu), []).append(rec)
                    else:
                        self.wb.setdefault((vm, s), []).append(rec)
                elif hpa >= 0:                                           # CLWB, CLFLUSHOPT, CLFLUSH
                    counts["write_backs"] += 1
                    s = slot_of.get(hpa & ~(LINE - 1), -1)
                    if s >= 0:
                        if dirty[s]:
                            self._enqueue(s, i)
                        waiting = self.wb.pop((vm, s), None)
                        if waiting:             # ordered by a fence of the vCPU issuing the write-back (SDM)
                            self.fence.setdefault(self._key(vm, cpu), []).extend(waiting)
            if i == next_point:
                self.judge(i, full(self.rank + 1))
                next_point = next(pts, -1)

    def _overtaken(self, vm: int, cpu: int, at: int) -> None:
        """The vFHA write at ``at`` passes write-backs (and NT stores) the writing vCPU issued and
        has not fenced yet."""
        for rec in self.fence.get(self._key(vm, cpu), ()):
            if rec[0] not in self.flagged:
                self.flagged.add(rec[0])
                self.emit(self._violation(rec, at, None, [], b""))

    def _complete(self, stores: list[Rec], at: int) -> None:
        lines, touched = self.lines, self.touched
        for rec in stores:
            if lines.complete(rec, at):
                touched.add(rec[1])
        self.completed += len(stores)

    # ---- crash points ----

    def judge(self, point: int, full: bool) -> None:
        """At crash point ``point``: which completed stores of the lines that changed (all lines
        when ``full``) are lost; a run opens for each newly lost store and ends for each store no
        longer lost."""
        L = self.lines
        previous, self.last = self.last, point
        self.rank += 1
        slots = range(L.n) if full else sorted(self.touched)
        self.touched = set()
        for s in slots:
            if L.top[s] < 0:
                continue
            version = L.version(s)
            lost: dict[int, list[int]] = {}
            if L.top[s] > version:
                lc = L.lc[s]
                for b in np.flatnonzero(lc > version).tolist():
                    lost.setdefault(int(lc[b]), []).append(b)
            pending = L.pending.get(s)
            if pending:                         # T only grows: what it passed is never lost again
                lc = L.lc[s]
                L.pending[s] = [r for r in pending if r[0] > version and (lc[r[2]:r[2] + r[3]] == r[0]).any()]
            runs = self.open.get(s)
            if runs:
                for store in [x for x in runs if x not in lost]:
                    self._close(runs.pop(store), previous)
                if not runs:
                    del self.open[s]
            if lost:
                runs = self.open.setdefault(s, {})
                durable = None
                recs = {r[0]: r for r in L.pending.get(s, ())}
                for store, offsets in sorted(lost.items()):
                    if store not in runs:
                        durable = durable if durable is not None else L.durable(s)
                        v = self._violation(recs[store], point, int(L.done[s, offsets[0]]), offsets, durable)
                        runs[store] = (v, self.rank)

    def _close(self, run: tuple[Violation, int], until: int) -> None:
        v, first = run
        self.emit(replace(v, until=until, points=self.rank - first))

    def finish(self) -> None:
        """End every open run at the last crash point."""
        self.rank += 1
        for runs in self.open.values():
            for run in runs.values():
                self._close(run, self.last)
        self.open = {}

    def _violation(self, rec: Rec, point: int, completed: int | None, offsets: list[int],
                   durable: bytes) -> Violation:
        """A lost store (``completed``: where its protocol completed; ``durable``: its line's
        durable bytes) or, with ``completed`` None, an unfenced one."""
        i, s, off, size, vm, cpu, op, gpa, value = rec
        common: dict[str, Any] = {
            "store": i, "point": point, "vm": vm, "vcpu": cpu, "op": Op(op).name, "size": size, "gpa": gpa,
            "hpa": int(self.lines.hpa[s]) + off, "expected": value.to_bytes(8, "little")[:size]}
        if completed is None:
            return Violation(completed=-1, found=b"", lost=0, kind="unfenced", until=point, **common)
        return Violation(completed=completed, found=durable[off:off + size],
                         lost=sum(1 << (b - off) for b in offsets), **common)


__all__ = ["CACHE", "COUNTS", "DRAINING", "Lines", "MEDIA", "Model", "QUEUE"]
