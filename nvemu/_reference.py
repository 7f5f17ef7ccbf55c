"""The reference model: the emulated machine written plainly (dicts, lists, Python ints).

This is the readable specification of what ``nvemu._core.Engine`` does fast. It has the same
class name, methods and results; the differential tests run both on the same inputs and demand
identical state and stats. Keep it naive: a reference that shares the fast path's tricks cannot
catch the fast path's bugs.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Iterable

import numpy as np

from ._constants import (CLOCK, CLOCK_FIELDS, NO_LINE, TIMING_FIELDS, BadRecord, CTRL_STAT, Domain, EPT_ACCESSED,
                         EPT_ADDR_MASK, EPT_DIRTY, EPT_LARGE, EPT_MEMTYPE_WB, EPT_R, EPT_RWX, EPT_W, ExitReason,
                         FhaMode, GPA_LIMIT, LineState, Op, QUAL_ENTRY_SHIFT, QUAL_FINAL_TRANSLATION,
                         QUAL_LINEAR_VALID, QUAL_READ, QUAL_WRITE, RunStatus, STAT, STAT_NAMES, CTRL_STAT_NAMES,
                         TRACE_DTYPE)
from . import _state
from ._image import DurableImage
from ._constants import LINE_BYTES as LINE, PAGE_BYTES as PAGE
from ._layout import EngineLayout, InterleaveLayout, budget_message, check_layout
from ._records import record_code
from .errors import ConfigError, GuestFault, ResourceError, TraceError

CAPI_VERSION = 4
STAT_COUNT = len(STAT_NAMES)
CTRL_STAT_COUNT = len(CTRL_STAT_NAMES)
CLOCK_COUNT = len(CLOCK_FIELDS)


def exit_qualification(reason: int, write: bool, entry: int) -> int:
    """The exit qualification of a guest data access that exits (SDM Vol. 3C 27.2.1): an EPT
    violation reports the access, the entry's R/W/X and bits 7-8; a misconfiguration reports 0."""
    if reason == ExitReason.EPT_MISCONFIG:
        return 0
    access = QUAL_WRITE if write else QUAL_READ
    return access | ((entry & EPT_RWX) << QUAL_ENTRY_SHIFT) | QUAL_LINEAR_VALID | QUAL_FINAL_TRANSLATION


class _Vm:
    def __init__(self, root: int, nvcpus: int, tlb_entries: int, n_controllers: int) -> None:
        self.root = root
        self.nvcpus = nvcpus
        self.tlb_entries = tlb_entries
        # tlb[vcpu][slot] = None or (vpn, entry, host page address, (table, index) of the leaf)
        self.tlb: list[list[Any]] = [[None] * tlb_entries for _ in range(nvcpus)]
        self.stats = [[0] * STAT_COUNT for _ in range(nvcpus)]
        self.fha_vpn: int | None = None
        self.fha_mode = FhaMode.NONE
        self.fanout: list[int] = []
        self.drained = [0] * n_controllers      # lines this VM's flushes drained, per controller
        # clock[vcpu] = [now ps, pending ps, last load line, last write-back line, open nt line]
        self.clock = [[0, 0, NO_LINE, NO_LINE, NO_LINE] for _ in range(nvcpus)]
        self.running = True


class Engine:
    """One host machine, plainly: memory, media, line states, WPQs, EPT tables, VMs."""

    def __init__(self, layout: EngineLayout) -> None:
        L = check_layout(layout)
        self.dram_bytes, self.pmem_base, self.pmem_bytes = L.dram_bytes, L.pmem_base, L.pmem_bytes
        self.n_controllers, self.wpq_depth, self.domain = L.n_controllers, L.wpq_depth, L.domain
        self.pool_tables, self.max_vms = L.pool_tables, L.max_vms
        self.tm = dict(zip(TIMING_FIELDS, L.timing))
        self.sets = [InterleaveLayout(*s) for s in L.sets]
        self.chunk_shift, self.memory_budget, self.pmem_index = L.chunk_shift, L.memory_budget, L.pmem_index
        self.touched: set[int] = set()          # memory index of every chunk written (the directory)
        self.touched_bytes = 0
        self.lock = threading.RLock()
        # Pages exist only inside touched chunks.
        self.mem: dict[int, bytearray] = {}     # page HPA -> 4096 bytes (absent pages are zero)
        self.med: dict[int, bytearray] = {}     # NVDIMM page HPA -> 4096 bytes
        self.state: dict[int, int] = {}         # line HPA -> LineState (absent = CLEAN)
        self.copies: dict[int, int] = {}        # line HPA -> copies of it in WPQs
        self.wpq: list[deque[tuple[int, bytes]]] = [deque() for _ in range(self.n_controllers)]
        self.ctrl = [[0] * CTRL_STAT_COUNT for _ in range(self.n_controllers)]
        self.busy = [0] * self.n_controllers    # ps at which each WPQ has drained all it accepted
        self.pool: dict[int, list[int]] = {}    # table index -> 512 entries
        self.free_tables: list[int] = []
        self.next_table = 0
        self.vms: dict[int, _Vm] = {}
        self.exit = (0, 0, 0, 0, 0, 0, 0)
        self.bad_record = BadRecord.NONE
        self.last_value = 0

    # ---- host memory -----------------------------------------------------------------------

    def _is_pmem(self, hpa: int) -> bool:
        return self.pmem_base <= hpa < self.pmem_base + self.pmem_bytes

    def _check_hpa(self, hpa: int, length: int) -> None:
        if hpa + length <= self.dram_bytes:
            return
        if hpa >= self.pmem_base and hpa + length <= self.pmem_base + self.pmem_bytes:
            return
        raise ConfigError(f"HPA range [{hpa:#x}, {hpa + length:#x}) is not host DRAM or NVDIMM space")

    @property
    def chunk_bytes(self) -> int:
        return 1 << self.chunk_shift

    def _chunk(self, hpa: int) -> int:
        """Memory index of the chunk holding ``hpa`` (DRAM at its address, NVDIMM from pmem_index)."""
        idx = hpa if hpa < self.pmem_base else hpa - self.pmem_base + self.pmem_index
        return idx - idx % self.chunk_bytes

    def _chunk_cost(self, idx: int) -> int:
        c = self.chunk_bytes
        return c + (c + 2 * c // 64 if idx >= self.pmem_index else 0)

    def _touch(self, hpa: int) -> None:
        """Allocate the chunk holding ``hpa`` unless it is (ResourceError beyond the budget)."""
        idx = self._chunk(hpa)
        if idx in self.touched:
            return
        cost = self._chunk_cost(idx)
        if self.touched_bytes + cost > self.memory_budget:
            raise ResourceError(budget_message(self.memory_budget, self.touched_bytes,
                                               self._chunk_cost(self.pmem_index)))
        self.touched.add(idx)
        self.touched_bytes += cost

    def _chunk_hpa(self, idx: int) -> tuple[int, int]:
        """(HPA, bytes of host space) of the chunk at memory index ``idx``."""
        if idx < self.pmem_index:
            return idx, min(self.chunk_bytes, self.dram_bytes - idx)
        return idx - self.pmem_index + self.pmem_base, min(self.chunk_bytes, self.pmem_index + self.pmem_bytes - idx)

    def set_memory_budget(self, budget: int) -> None:
        if not isinstance(budget, int) or budget < 0:
            raise ConfigError(f"memory_budget={budget!r} is out of range (>= 0)")
        self.memory_budget = budget

    def touched_ranges(self) -> list[tuple[int, int]]:
        return [self._chunk_hpa(i) for i in sorted(self.touched)]

    @staticmethod
    def _get(pages: dict[int, bytearray], addr: int, n: int) -> bytes:
        out = bytearray()
        for a in range(addr, addr + n):
            page = pages.get(a - a % PAGE)
            out.append(page[a % PAGE] if page is not None else 0)
        return bytes(out)

    @staticmethod
    def _put(pages: dict[int, bytearray], addr: int, data: bytes) -> None:
        for k, byte in enumerate(data):
            a = addr + k
            page = pages.setdefault(a - a % PAGE, bytearray(PAGE))
            page[a % PAGE] = byte

    def controller_of(self, hpa: int) -> int:
        """The interleave rule: granule k of a set belongs to member k mod ways."""
        for s in self.sets:
            if s.hpa_base <= hpa < s.hpa_base + s.length:
                member = (hpa - s.hpa_base) // s.granularity % len(s.controllers)
                return s.controllers[member]
        raise ConfigError(f"HPA {hpa:#x} is not NVDIMM space")

    # ---- WPQs --------------------------------------------------------------------------------

    def _enqueue(self, line: int) -> None:
        c = self.controller_of(line)
        if len(self.wpq[c]) == self.wpq_depth:
            self._drain_one(c)
            self.ctrl[c][CTRL_STAT["drained_full"]] += 1
        self.wpq[c].append((line, self._get(self.mem, line, LINE)))
        self.copies[line] = self.copies.get(line, 0) + 1
        self.state[line] = LineState.QUEUED
        self.ctrl[c][CTRL_STAT["enqueued"]] += 1

    def _drain_one(self, c: int) -> None:
        line, data = self.wpq[c].popleft()
        self._put(self.med, line, data)
        self.copies[line] -= 1
        if self.copies[line] == 0:
            del self.copies[line]
            if self.state.get(line) == LineState.QUEUED:
                del self.state[line]
        self.ctrl[c][CTRL_STAT["drained"]] += 1

    def _drain_controller(self, c: int) -> int:
        n = 0
        while self.wpq[c]:
            self._drain_one(c)
            n += 1
        return n

    def _wpq_accept(self, c: int, arrival: int, st: list[int], clock: list[int]) -> None:
        """A write-back reaches controller c at ``arrival``. The controller writes one line to media
        every ``drain_line`` ps, without pause while it has any; so at time t its WPQ holds
        ceil((busy - t) / drain_line) lines. When that is the whole depth the writer stalls."""
        per_line = self.tm["drain_line"]
        wait = 0
        if per_line:
            slot_free = self.busy[c] - (self.wpq_depth - 1) * per_line
            wait = max(0, slot_free - arrival)
        clock[CLOCK["now"]] += wait
        st[STAT["wpq_stall_ps"]] += wait
        self.busy[c] = max(self.busy[c], arrival + wait) + per_line
        clock[CLOCK["pending"]] = max(clock[CLOCK["pending"]], arrival + wait)

    def _write_back(self, hpa: int, nt: bool, st: list[int], clock: list[int]) -> None:
        """Timing of a line leaving the vCPU: travel (sequential when it follows the vCPU's last
        write-back), then the WPQ; an nt-store to the open write-combining line merges."""
        line = hpa // LINE
        if nt:
            if clock[CLOCK["nt_line"]] == line:
                return
            clock[CLOCK["nt_line"]] = line
        last = clock[CLOCK["wb_line"]]
        seq = last != NO_LINE and line in (last, last + 1)
        clock[CLOCK["wb_line"]] = line
        if not self._is_pmem(hpa):
            travel = self.tm["dram_nt" if nt else "dram_wb"]
            clock[CLOCK["pending"]] = max(clock[CLOCK["pending"]], clock[CLOCK["now"]] + travel)
            return
        travel = self.tm[("nt_" if nt else "wb_") + ("seq" if seq else "rand")]
        self._wpq_accept(self.controller_of(hpa), clock[CLOCK["now"]] + travel, st, clock)

    def _fan_out(self, vm: _Vm, st: list[int], clock: list[int]) -> None:
        total = 0
        issued = clock[CLOCK["now"]] + self.tm["fha_write"]
        done = None
        for c in range(self.n_controllers):
            if c in vm.fanout:
                st[STAT["fha_writes"]] += 1
                self.ctrl[c][CTRL_STAT["fha_writes"]] += 1
                n = self._drain_controller(c)
                vm.drained[c] += n
                total += n
                finished = max(issued, self.busy[c])    # the hint write returns once the WPQ is empty
                done = finished if done is None else max(done, finished)
        st[STAT["lines_drained"]] += total
        if done is not None:                            # the slowest controller, not the sum
            st[STAT["fha_ps"]] += self.tm["fha_write"]
            st[STAT["drain_wait_ps"]] += done - issued
            clock[CLOCK["now"]] = done

    def drain(self, controllers: Iterable[int]) -> int:
        total = 0
        for c in controllers:
            if not 0 <= c < self.n_controllers:
                raise ConfigError(f"controller {c} does not exist")
            self.ctrl[c][CTRL_STAT["fha_writes"]] += 1
            total += self._drain_controller(c)
        return total

    # ---- page tables ------------------------------------------------------------------------

    @property
    def tables_in_use(self) -> int:
        return len(self.pool)

    def _alloc_table(self) -> int:
        if self.free_tables:
            t = self.free_tables.pop()
        elif self.next_table < self.pool_tables:
            t = self.next_table
            self.next_table += 1
        else:
            raise ResourceError(f"the page-table pool is exhausted ({self.pool_tables} tables of 4 KiB)")
        self.pool[t] = [0] * 512
        return t

    def _free_tree(self, t: int, level: int) -> int:
        n = 1
        if level > 1:
            for e in self.pool[t]:
                if e & EPT_RWX and not e & EPT_LARGE:
                    n += self._free_tree((e & EPT_ADDR_MASK) >> 12, level - 1)
        del self.pool[t]
        self.free_tables.append(t)
        return n

    def _vm(self, vm: Any) -> _Vm:
        if not isinstance(vm, int) or vm not in self.vms:
            raise ConfigError(f"vm {vm!r} does not exist in the engine")
        return self.vms[vm]

    def add_vm(self, vm: int, nvcpus: int, tlb_entries: int = 256) -> int:
        if not 0 <= vm < self.max_vms or vm in self.vms:
            raise ConfigError(f"vm id {vm} is out of range or in use")
        if not 1 <= nvcpus <= 256:
            raise ConfigError(f"nvcpus={nvcpus}: must be 1..256")
        if tlb_entries < 1 or tlb_entries & (tlb_entries - 1) or tlb_entries > 1 << 20:
            raise ConfigError(f"tlb_entries={tlb_entries}: must be a power of two up to 2**20")
        root = self._alloc_table()
        self.vms[vm] = _Vm(root, nvcpus, tlb_entries, self.n_controllers)
        return root

    def remove_vm(self, vm: int) -> int:
        v = self._vm(vm)
        freed = self._free_tree(v.root, 4)
        del self.vms[vm]
        return freed

    def set_fha(self, vm: int, fha_gpa: int | None, mode: int, fanout: Iterable[int]) -> None:
        v = self._vm(vm)
        if not FhaMode.NONE <= mode <= FhaMode.NATIVE:
            raise ConfigError(f"fha mode {mode} is not an FhaMode")
        if fha_gpa is not None and not 0 <= fha_gpa < GPA_LIMIT:
            raise ConfigError(f"vFHA GPA {fha_gpa:#x} is outside the 48-bit guest-physical space")
        controllers = []
        for c in fanout:
            if not 0 <= c < self.n_controllers:
                raise ConfigError(f"fan-out names controller {c}, which does not exist")
            controllers.append(c)
        v.fanout = controllers
        v.fha_vpn = None if fha_gpa is None else fha_gpa >> 12
        v.fha_mode = FhaMode(mode) if fha_gpa is not None else FhaMode.NONE

    def set_running(self, vm: int, running: bool) -> None:
        self._vm(vm).running = bool(running)

    def stats(self, vm: int) -> np.ndarray:
        return np.array(self._vm(vm).stats, dtype=np.uint64)

    def drained_by_controller(self, vm: int) -> np.ndarray:
        return np.array(self._vm(vm).drained, dtype=np.uint64)

    def reset_stats(self, vm: int) -> None:
        v = self._vm(vm)
        v.stats = [[0] * STAT_COUNT for _ in range(v.nvcpus)]
        v.drained = [0] * self.n_controllers

    def clock(self, vm: int) -> np.ndarray:
        return np.array(self._vm(vm).clock, dtype=np.uint64)

    def controller_busy(self) -> np.ndarray:
        return np.array(self.busy, dtype=np.uint64)

    def _flush_tlbs(self, v: _Vm) -> None:
        for cpu in range(v.nvcpus):
            v.tlb[cpu] = [None] * v.tlb_entries
            v.stats[cpu][STAT["tlb_flushes"]] += 1

    @staticmethod
    def _index(gpa: int, level: int) -> int:
        return (gpa >> (12 + 9 * (level - 1))) & 511

    def _split(self, table: int, index: int, level: int) -> int:
        """Replace a large leaf by a table of 512 leaves one level down, same attributes."""
        e = self.pool[table][index]
        t = self._alloc_table()
        child = 1 << (12 + 9 * (level - 2))
        base = (e & EPT_ADDR_MASK) & ~(child * 512 - 1)
        attrs = e & 0xFFF
        if level == 2:
            attrs &= ~EPT_LARGE
        for i in range(512):
            self.pool[t][i] = (base + i * child) | attrs
        self.pool[table][index] = (t << 12) | EPT_RWX
        return t

    def _leaf(self, v: _Vm, gpa: int, target: int, create: bool, span: int) -> tuple[int, int, int] | None:
        """(level, table, index) of the entry mapping gpa at the target level (see the core)."""
        t = v.root
        for level in (4, 3, 2):
            if level == target:
                break
            i = self._index(gpa, level)
            e = self.pool[t][i]
            size = 1 << (12 + 9 * (level - 1))
            if not e & EPT_RWX:
                if not create:
                    return None
                nt = self._alloc_table()
                self.pool[t][i] = (nt << 12) | EPT_RWX
                t = nt
            elif e & EPT_LARGE:
                if not create and gpa % size == 0 and span >= size:
                    return (level, t, i)
                t = self._split(t, i, level)
            else:
                t = (e & EPT_ADDR_MASK) >> 12
        return (target, t, self._index(gpa, target))

    def map(self, vm: int, gpa: int, hpa: int, length: int, perms: int, page_size: int = PAGE) -> None:
        v = self._vm(vm)
        if page_size not in (PAGE, 2 << 20):
            raise ConfigError(f"page_size {page_size:#x}: must be 4 KiB or 2 MiB")
        target = 1 if page_size == PAGE else 2
        if gpa % page_size or hpa % page_size or length % page_size or length <= 0 or gpa < 0 or hpa < 0:
            raise ConfigError(f"map of {length:#x} bytes at GPA {gpa:#x} -> HPA {hpa:#x} is not "
                              f"aligned to its {page_size:#x}-byte pages")
        if gpa + length > GPA_LIMIT:
            raise ConfigError(f"GPA range ending at {gpa + length:#x} exceeds the 48-bit guest-physical space")
        if not 1 <= perms <= 7:
            raise ConfigError(f"perms {perms}: must be a non-empty R/W/X mask (use unmap to remove)")
        self._check_hpa(hpa, length)
        try:
            for off in range(0, length, page_size):
                level, t, i = self._leaf(v, gpa + off, target, True, page_size)
                old = self.pool[t][i]
                if target == 2 and old & EPT_RWX and not old & EPT_LARGE:
                    raise ConfigError(f"GPA {gpa + off:#x} is already mapped with 4 KiB pages")
                entry = (hpa + off) | EPT_MEMTYPE_WB | perms
                if target == 2:
                    entry |= EPT_LARGE
                self.pool[t][i] = entry
        finally:
            self._flush_tlbs(v)

    def _each_leaf(self, vm: int, gpa: int, length: int) -> list[tuple[int, int]]:
        v = self._vm(vm)
        if gpa < 0 or gpa % PAGE or length % PAGE or length <= 0 or gpa + length > GPA_LIMIT:
            raise ConfigError(f"range of {length:#x} bytes at GPA {gpa:#x} is not whole 4 KiB pages "
                              f"inside the 48-bit guest-physical space")
        pos, end, leaves = gpa, gpa + length, []
        while pos < end:
            found = self._leaf(v, pos, 1, False, end - pos)
            if found is None or not self.pool[found[1]][found[2]] & EPT_RWX:
                raise ConfigError(f"GPA {pos:#x} is not mapped")
            leaves.append((found[1], found[2]))
            pos += 1 << (12 + 9 * (found[0] - 1))
        return leaves

    def protect(self, vm: int, gpa: int, length: int, perms: int) -> None:
        v = self._vm(vm)
        if not 0 <= perms <= 7:
            raise ConfigError(f"perms {perms}: must be an R/W/X mask 0..7")
        try:
            for t, i in self._each_leaf(vm, gpa, length):
                self.pool[t][i] = (self.pool[t][i] & ~EPT_RWX) | perms
        finally:
            self._flush_tlbs(v)

    def unmap(self, vm: int, gpa: int, length: int) -> None:
        v = self._vm(vm)
        try:
            for t, i in self._each_leaf(vm, gpa, length):
                self.pool[t][i] = 0
        finally:
            self._flush_tlbs(v)

    def walk(self, vm: int, gpa: int) -> list[tuple[int, int, int, int]]:
        v = self._vm(vm)
        if not 0 <= gpa < GPA_LIMIT:
            raise ConfigError(f"GPA {gpa:#x} is outside the 48-bit guest-physical space")
        path, t = [], v.root
        for level in (4, 3, 2, 1):
            i = self._index(gpa, level)
            e = self.pool[t][i]
            path.append((level, t, i, e))
            if not e & EPT_RWX or e & 3 == EPT_W or level == 1 or e & EPT_LARGE:
                break
            t = (e & EPT_ADDR_MASK) >> 12
        return path

    def tables(self) -> dict[int, dict[int, int]]:
        return {t: {i: e for i, e in enumerate(row) if e} for t, row in sorted(self.pool.items())}

    # ---- translation -------------------------------------------------------------------------

    def _hw_walk(self, v: _Vm, gpa: int, st: list[int]) -> tuple[int, int, int, tuple[int, int]]:
        """A hardware walk: (exit reason or 0, entry, host page address, leaf location)."""
        t = v.root
        for level in (4, 3, 2, 1):
            i = self._index(gpa, level)
            e = self.pool[t][i]
            st[STAT["walk_refs"]] += 1
            if not e & EPT_RWX:
                return ExitReason.EPT_VIOLATION, e, 0, (0, 0)
            if e & (EPT_R | EPT_W) == EPT_W:
                return ExitReason.EPT_MISCONFIG, e, 0, (0, 0)
            e |= EPT_ACCESSED
            self.pool[t][i] = e
            if level == 1 or e & EPT_LARGE:
                size = 1 << (12 + 9 * (level - 1))
                page = (e & EPT_ADDR_MASK & ~(size - 1)) + (gpa % size) // PAGE * PAGE
                return 0, e, page, (t, i)
            t = (e & EPT_ADDR_MASK) >> 12
        raise AssertionError("unreachable")

    def _translate(self, v: _Vm, cpu: int, gpa: int, write: bool, st: list[int]) -> tuple[int, int]:
        """(exit reason or 0, HPA or the entry whose permissions an exit reports)."""
        vpn = gpa >> 12
        slot = vpn % v.tlb_entries
        cached = v.tlb[cpu][slot]
        if cached is not None and cached[0] == vpn:
            st[STAT["tlb_hits"]] += 1
            _, e, page, where = cached
        else:
            st[STAT["tlb_misses"]] += 1
            rc, e, page, where = self._hw_walk(v, gpa, st)
            if rc:
                return rc, e
            v.tlb[cpu][slot] = (vpn, e, page, where)
        if write:
            if not e & EPT_W:
                return ExitReason.EPT_VIOLATION, e
            if not e & EPT_DIRTY:
                t, i = where
                self.pool[t][i] |= EPT_DIRTY
                v.tlb[cpu][slot] = (vpn, e | EPT_DIRTY, page, where)
        elif not e & EPT_R:
            return ExitReason.EPT_VIOLATION, e
        return 0, page + gpa % PAGE

    def translate(self, vm: int, vcpu: int, gpa: int, write: bool = False) -> int:
        v = self._vm(vm)
        if not 0 <= vcpu < v.nvcpus:
            raise ConfigError(f"vcpu {vcpu} does not exist in vm {vm}")
        if not 0 <= gpa < GPA_LIMIT:
            raise ConfigError(f"GPA {gpa:#x} is outside the 48-bit guest-physical space")
        rc, result = self._translate(v, vcpu, gpa, write, v.stats[vcpu])
        if rc:
            raise GuestFault(rc, exit_qualification(rc, write, result), gpa, 0, vm, vcpu, 1 if write else 0)
        return result

    # ---- the replay loop ----------------------------------------------------------------------

    def _handle_fha_exit(self, v: _Vm, st: list[int], clock: list[int], reason: int, write: bool, op: int) -> bool:
        mode, tm = v.fha_mode, self.tm
        if reason == ExitReason.EPT_MISCONFIG and mode == FhaMode.MMIO:
            path = "mmio"
        elif reason != ExitReason.EPT_VIOLATION or not write:
            return False
        elif mode in (FhaMode.WRITE_PROTECT, FhaMode.DROP):
            path = "write_protect"
        elif mode == FhaMode.HYPERCALL:
            path = "hypercall"
        else:
            return False
        st[STAT[{"mmio": "exits_ept_misconfig", "write_protect": "exits_ept_violation",
                 "hypercall": "exits_vmcall"}[path]]] += 1
        clock[CLOCK["now"]] += tm["exit"] + tm[path]
        st[STAT["exit_ps"]] += tm["exit"]
        st[STAT[path + "_ps"]] += tm[path]
        if write:
            st[STAT["vfha_writes"]] += 1
            if mode != FhaMode.DROP:
                self._fan_out(v, st, clock)
        elif op == Op.LOAD:
            st[STAT["vfha_reads"]] += 1
            self.last_value = 0      # an emulated MMIO read returns 0
        return True

    def _check_record(self, op: int, vm: int, cpu: int, size: int, gpa: int, value: int) -> BadRecord:
        if vm not in self.vms or not self.vms[vm].running:
            return BadRecord.VM
        if cpu >= self.vms[vm].nvcpus:
            return BadRecord.VCPU
        return record_code(op, size, gpa, value)

    def run(self, ops: np.ndarray, start: int = 0) -> tuple[int, int]:
        if not isinstance(ops, np.ndarray):
            raise TraceError(f"a trace must be a numpy array of TRACE_DTYPE, not {type(ops).__name__}")
        if ops.dtype != TRACE_DTYPE:
            raise TraceError(f"trace dtype {ops.dtype} is not TRACE_DTYPE {TRACE_DTYPE}")
        if ops.ndim != 1:
            raise TraceError(f"a trace must be one-dimensional, not of shape {ops.shape}")
        if not 0 <= start <= len(ops):
            raise TraceError(f"start index {start} is outside the trace of {len(ops)} records")
        self.bad_record = BadRecord.NONE
        for i in range(start, len(ops)):
            rec = ops[i]
            op, vm, cpu = int(rec["op"]), int(rec["vm"]), int(rec["vcpu"])
            size, gpa, value = int(rec["size"]), int(rec["gpa"]), int(rec["value"])
            bad = self._check_record(op, vm, cpu, size, gpa, value)
            if bad:
                self.bad_record = bad
                return i, RunStatus.BAD_RECORD
            if not self._step(i, op, vm, cpu, size, gpa, value):
                return i, RunStatus.EXIT
        return len(ops), RunStatus.DONE

    def _step(self, i: int, op: int, vm: int, cpu: int, size: int, gpa: int, value: int) -> bool:
        """Execute one valid record; False when it exits to Python (``self.exit`` says why)."""
        v = self.vms[vm]
        st, clock = v.stats[cpu], v.clock[cpu]
        tm = self.tm
        st[op] += 1
        st[STAT["ops"]] += 1
        st[STAT["ops_ps"]] += tm["op"]
        if op in (Op.SFENCE, Op.MFENCE):
            # wait until every write-back of this vCPU is accepted, then close its WC buffer
            start = clock[CLOCK["now"]]
            ready = max(start + tm["op"], clock[CLOCK["pending"]])
            clock[CLOCK["now"]] = ready + tm["fence"]
            st[STAT["fence_ps"]] += ready + tm["fence"] - start - tm["op"]
            clock[CLOCK["nt_line"]] = NO_LINE
            return True
        clock[CLOCK["now"]] += tm["op"]
        write = op in (Op.STORE, Op.NT_STORE)
        on_fha = (gpa >> 12) == v.fha_vpn
        refs = st[STAT["walk_refs"]]
        rc, result = self._translate(v, cpu, gpa, write, st)
        walk = (st[STAT["walk_refs"]] - refs) * tm["walk_ref"]
        st[STAT["walk_ps"]] += walk
        clock[CLOCK["now"]] += walk
        if rc:
            if on_fha and self._handle_fha_exit(v, st, clock, rc, write, op):
                return True
            st[STAT["exits_ept_misconfig" if rc == ExitReason.EPT_MISCONFIG else "exits_ept_violation"]] += 1
            st[STAT["exit_ps"]] += tm["exit"]
            clock[CLOCK["now"]] += tm["exit"]
            self.exit = (rc, exit_qualification(rc, write, result), gpa, i, vm, cpu, op)
            return False
        hpa = result
        if on_fha:
            if write:
                st[STAT["vfha_writes"]] += 1
                if v.fha_mode == FhaMode.NATIVE:
                    self._fan_out(v, st, clock)   # the physical FHAs, written directly
                    return True
            elif op == Op.LOAD:
                st[STAT["vfha_reads"]] += 1
        line = hpa - hpa % LINE
        if op == Op.LOAD:
            loaded = int.from_bytes(self._get(self.mem, hpa, size), "little")
            st[STAT["load_sum"]] = (st[STAT["load_sum"]] + loaded) % (1 << 64)
            self.last_value = loaded
            last = clock[CLOCK["load_line"]]
            seq = last != NO_LINE and hpa // LINE in (last, last + 1)
            latency = tm[("" if self._is_pmem(hpa) else "dram_") + ("load_seq" if seq else "load_rand")]
            clock[CLOCK["load_line"]] = hpa // LINE
            clock[CLOCK["now"]] += latency
            st[STAT["load_ps"]] += latency
        elif write:
            try:
                self._touch(hpa)
            except ResourceError as e:
                raise ResourceError.at_record(i, str(e), "gpa") from None
            self._put(self.mem, hpa, value.to_bytes(size, "little"))
            if self._is_pmem(hpa):
                if op == Op.STORE:
                    self.state[line] = LineState.DIRTY
                else:
                    self._enqueue(line)      # a non-temporal store goes straight to the WPQ
            if op == Op.NT_STORE:
                self._write_back(hpa, True, st, clock)
        else:
            clock[CLOCK["now"]] += tm["flush_issue"]
            st[STAT["flush_ps"]] += tm["flush_issue"]
            if not self._is_pmem(hpa):
                self._write_back(hpa, False, st, clock)     # DRAM lines are not tracked: always written back
            elif self.state.get(line) == LineState.DIRTY:
                self._enqueue(line)
                st[STAT["lines_flushed"]] += 1
                self._write_back(hpa, False, st, clock)
        return True

    @property
    def last_exit(self) -> tuple[int, int, int, int, int, int, int]:
        return self.exit

    # ---- state -----------------------------------------------------------------------------------

    def prefault(self, hpa: int, n: int) -> None:
        self._check_hpa(hpa, n)
        for a in range(hpa - hpa % PAGE, hpa + n, PAGE):
            self._touch(a)

    def discard(self, hpa: int, n: int) -> None:
        """Scrub ``[hpa, hpa+n)``: queued copies removed, memory, media and lines zero, the
        chunks it covers wholly forgotten."""
        self._check_hpa(hpa, n)
        if hpa % PAGE or n % PAGE:
            raise ConfigError(f"discard of {n:#x} bytes at {hpa:#x} is not whole 4 KiB pages")
        inside = range(hpa, hpa + n)
        for c in range(self.n_controllers):
            kept = deque()
            for line, data in self.wpq[c]:
                if line in inside:
                    self.copies[line] -= 1
                    if not self.copies[line]:
                        del self.copies[line]
                else:
                    kept.append((line, data))
            self.wpq[c] = kept
        for table in (self.mem, self.med, self.state, self.copies):
            for a in [a for a in table if a in inside]:
                del table[a]
        for idx in sorted(self.touched):
            start, size = self._chunk_hpa(idx)
            if hpa <= start and start + size <= hpa + n:
                self.touched.discard(idx)
                self.touched_bytes -= self._chunk_cost(idx)

    def read_memory(self, hpa: int, n: int) -> bytes:
        self._check_hpa(hpa, n)
        return self._get(self.mem, hpa, n)

    def read_media(self, hpa: int, n: int) -> bytes:
        if not (hpa >= self.pmem_base and hpa + n <= self.pmem_base + self.pmem_bytes):
            raise ConfigError(f"HPA range at {hpa:#x} is not NVDIMM space")
        return self._get(self.med, hpa, n)

    def write_memory(self, hpa: int, data: bytes) -> None:
        self._check_hpa(hpa, len(data))
        for a in range(hpa - hpa % PAGE, hpa + len(data), PAGE):
            self._touch(a)
        self._put(self.mem, hpa, bytes(data))

    def line_states(self) -> dict[int, int]:
        return dict(sorted(self.state.items()))

    def wpq_entries(self, c: int) -> list[tuple[int, bytes]]:
        if not 0 <= c < self.n_controllers:
            raise ConfigError(f"controller {c} does not exist")
        return list(self.wpq[c])

    def controller_stats(self) -> np.ndarray:
        return np.array(self.ctrl, dtype=np.uint64)

    @staticmethod
    def _nonzero(pages: dict[int, bytearray]) -> dict[int, bytes]:
        return {a: bytes(p) for a, p in sorted(pages.items()) if any(p)}

    def memory_pages(self) -> dict[int, bytes]:
        return self._nonzero(self.mem)

    def media_pages(self) -> dict[int, bytes]:
        return self._nonzero(self.med)

    def durable_read(self, hpa: int, n: int) -> bytes:
        """What ``[hpa, hpa+n)`` would hold after a power failure now (SPEC 7.3), without one."""
        self.read_media(hpa, n)                     # NVDIMM space only
        return _state.durable_read(self, hpa, n)

    def table_rows(self) -> tuple[list[int], np.ndarray]:
        ids = sorted(self.pool)
        return ids, np.array([self.pool[t] for t in ids], np.uint64).reshape(-1, 512)

    def free_table_list(self) -> list[int]:
        return list(self.free_tables)

    def vm_ids(self) -> list[int]:
        return sorted(self.vms)

    def vm_slot(self, vm: int) -> _state.VmSlot:
        v = self._vm(vm)
        rows = []
        for cpu in range(v.nvcpus):
            for entry in v.tlb[cpu]:
                if entry is None:
                    rows.append((_state.NO_VPN, 0, 0, 0))
                else:
                    vpn, e, page, (t, i) = entry
                    rows.append((vpn, e, page, t * 512 + i))
        return _state.VmSlot(vm, v.root, v.nvcpus, v.tlb_entries, v.running,
                             _state.NO_VPN if v.fha_vpn is None else v.fha_vpn, int(v.fha_mode),
                             np.array(rows, np.uint64).reshape(-1, 4), np.array(v.stats, np.uint64),
                             np.array([int(c in v.fanout) for c in range(self.n_controllers)], np.uint8),
                             np.array(v.drained, np.uint64), np.array(v.clock, np.uint64).reshape(-1, CLOCK_COUNT))

    def get_state(self) -> dict[str, np.ndarray]:
        """Everything that evolves, in the canonical form (``nvemu._state``)."""
        return _state.capture(self)

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Replace everything with a checked ``state`` (ConfigError and no change when it is bad)."""
        with self.lock:
            s, vms = _state.check(self, state)
            self._load_state(s, vms)

    def _load_state(self, s: dict[str, np.ndarray], vms: list[_state.VmSlot]) -> None:
        need = {self._chunk(int(a)) for k in ("memory_hpa", "media_hpa", "line_hpa", "wpq_line") for a in s[k]}
        cost = sum(self._chunk_cost(i) for i in need)
        if cost > self.memory_budget:
            raise ResourceError(budget_message(self.memory_budget, 0, cost))
        self.touched, self.touched_bytes = need, cost

        def pages(addrs: np.ndarray, data: np.ndarray) -> dict[int, bytearray]:
            return {int(a): bytearray(d.tobytes()) for a, d in zip(addrs, data)}
        self.mem = pages(s["memory_hpa"], s["memory_data"])
        self.med = pages(s["media_hpa"], s["media_data"])
        self.state = {int(a): LineState(int(st)) for a, st in zip(s["line_hpa"], s["line_state"]) if st}
        self.wpq = [deque() for _ in range(self.n_controllers)]
        self.copies = {}
        for c, line, data in zip(s["wpq_ctrl"].tolist(), s["wpq_line"].tolist(), s["wpq_data"]):
            self.wpq[c].append((line, data.tobytes()))
            self.copies[line] = self.copies.get(line, 0) + 1
        self.ctrl = s["ctrl_stats"].tolist()
        self.busy = s["ctrl_busy"].tolist()
        self.pool = {int(t): [int(e) for e in row] for t, row in zip(s["table_ids"], s["table_data"])}
        self.free_tables = s["free_tables"].tolist()
        self.next_table, self.last_value = (int(x) for x in s["scalars"])
        self.vms = {}
        for slot in vms:
            v = _Vm(slot.root, slot.nvcpus, slot.tlb_entries, self.n_controllers)
            v.running = slot.running
            v.fha_vpn = None if slot.fha_vpn == _state.NO_VPN else slot.fha_vpn
            v.fha_mode = FhaMode(slot.fha_mode)
            v.fanout = [c for c, on in enumerate(slot.fanout.tolist()) if on]
            v.stats = slot.stats.tolist()
            v.drained = slot.drained.tolist()
            v.clock = slot.clock.tolist()
            rows = slot.tlb.tolist()
            for cpu in range(slot.nvcpus):
                for k in range(slot.tlb_entries):
                    vpn, e, page, where = rows[cpu * slot.tlb_entries + k]
                    v.tlb[cpu][k] = None if vpn == _state.NO_VPN else (vpn, e, page, (where // 512, where % 512))
            self.vms[slot.vm] = v

    def power_fail(self, lost: Any = None) -> DurableImage:
        """Lose power and reboot; the durable image (SPEC 7.3), sparse, chunk by chunk. ``lost``:
        HPAs of lines ADR does not protect this time, whose queued copies and dirty data are lost."""
        gone = set() if lost is None else {int(a) for a in lost}
        if self.domain >= Domain.ADR:
            for q in self.wpq:
                for line, data in q:        # FIFO: a later copy of a line wins
                    if line not in gone:
                        self._put(self.med, line, data)
        if self.domain == Domain.EADR:
            for line, state in self.state.items():
                if state == LineState.DIRTY and line not in gone:
                    self._put(self.med, line, self._get(self.mem, line, LINE))
        for a in [a for a in self.mem if a not in self.med]:      # DRAM, and lines never written back
            del self.mem[a]
        for a, p in self.med.items():                # memory shows media, rewritten in place (no copy)
            if a in self.mem:
                self.mem[a][:] = p
            else:
                self.mem[a] = bytearray(p)
        self.state, self.copies = {}, {}
        self.wpq = [deque() for _ in range(self.n_controllers)]
        for v in self.vms.values():
            self._flush_tlbs(v)
        for idx in [i for i in self.touched if i < self.pmem_index]:   # DRAM is gone
            self.touched.discard(idx)
            self.touched_bytes -= self._chunk_cost(idx)
        chunks = {}
        for idx in sorted(self.touched):
            start, size = self._chunk_hpa(idx)
            chunks[start - self.pmem_base] = self._get(self.med, start, size)
        return DurableImage(self.pmem_base, self.pmem_bytes, self.chunk_bytes, chunks)


def _locked(method: Any) -> Any:
    def call(self: Engine, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)
    call.__name__, call.__doc__, call.__wrapped__ = method.__name__, method.__doc__, method  # type: ignore[attr-defined]
    return call


# One lock per engine around everything that reads or changes the machine, as in the core.
for _name in ("add_vm", "remove_vm", "set_fha", "set_running", "stats", "drained_by_controller", "reset_stats",
              "map", "protect", "unmap", "walk", "tables", "translate", "run", "drain", "prefault", "discard",
              "read_memory", "read_media", "write_memory", "line_states", "wpq_entries", "controller_stats",
              "memory_pages", "media_pages", "durable_read", "table_rows", "vm_slot", "get_state", "power_fail",
              "set_memory_budget", "touched_ranges"):
    setattr(Engine, _name, _locked(getattr(Engine, _name)))
