"""The reference model: the emulated machine written plainly (dicts, lists, Python ints).

This is the readable specification of what ``nvemu._core.Engine`` does fast. It has the same
class name, methods and results; the differential tests run both on the same inputs and demand
identical state and stats. Keep it naive: a reference that shares the fast path's tricks cannot
catch the fast path's bugs.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable

import numpy as np

from ._constants import (COST_FIELDS, BadRecord, CTRL_STAT, Domain, EPT_ACCESSED, EPT_ADDR_MASK, EPT_DIRTY, EPT_LARGE,
                         EPT_MEMTYPE_WB, EPT_R, EPT_RWX, EPT_W, ExitReason, FhaMode, GPA_LIMIT, LineState,
                         Op, QUAL_FINAL_TRANSLATION, QUAL_LINEAR_VALID, QUAL_READ, QUAL_WRITE, RunStatus, STAT,
                         STAT_NAMES, CTRL_STAT_NAMES, TRACE_DTYPE)
from ._layout import EngineLayout
from .errors import ConfigError, GuestFault, ResourceError, TraceError

CAPI_VERSION = 1
STAT_COUNT = len(STAT_NAMES)
CTRL_STAT_COUNT = len(CTRL_STAT_NAMES)
PAGE = 4096
LINE = 64


def exit_qualification(reason: int, write: bool, entry: int) -> int:
    """The exit qualification of a guest data access that exits (SDM Vol. 3C 27.2.1): an EPT
    violation reports the access, the entry's R/W/X and bits 7-8; a misconfiguration reports 0."""
    if reason == ExitReason.EPT_MISCONFIG:
        return 0
    access = QUAL_WRITE if write else QUAL_READ
    return access | ((entry & EPT_RWX) << 3) | QUAL_LINEAR_VALID | QUAL_FINAL_TRANSLATION


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
        self.running = True


class Engine:
    """One host machine, plainly: memory, media, line states, WPQs, EPT tables, VMs."""

    def __init__(self, layout: EngineLayout) -> None:
        if not 1 <= layout.n_controllers <= 256:
            raise ConfigError(f"n_controllers={layout.n_controllers}: must be 1..256")
        if not 1 <= layout.wpq_depth <= 4096:
            raise ConfigError(f"wpq_depth={layout.wpq_depth}: must be 1..4096")
        if not 1 <= layout.max_vms <= 65536:
            raise ConfigError(f"max_vms={layout.max_vms}: must be 1..65536")
        if not 1 <= layout.pool_tables <= 1 << 24:
            raise ConfigError(f"pool_tables={layout.pool_tables}: must be 1..2**24")
        if layout.domain not in (Domain.NONE, Domain.ADR, Domain.EADR):
            raise ConfigError(f"domain={layout.domain}: must be 0 (none), 1 (adr) or 2 (eadr)")
        if layout.dram_bytes % PAGE or layout.pmem_base % PAGE or layout.dram_bytes > layout.pmem_base:
            raise ConfigError("DRAM must be 4 KiB aligned and lie below pmem_base")
        self.dram_bytes = layout.dram_bytes
        self.pmem_base = layout.pmem_base
        self.pmem_bytes = layout.pmem_bytes
        self.n_controllers = layout.n_controllers
        self.wpq_depth = layout.wpq_depth
        self.domain = layout.domain
        self.pool_tables = layout.pool_tables
        self.max_vms = layout.max_vms
        self.cost = dict(zip(COST_FIELDS, layout.costs))
        offset = 0
        for s in layout.sets:
            if s.hpa_base != self.pmem_base + offset or s.length % s.granularity:
                raise ConfigError("interleave sets must lie back to back from pmem_base, "
                                  "each a whole number of granules")
            if any(not 0 <= c < self.n_controllers for c in s.controllers):
                raise ConfigError(f"interleave set at {s.hpa_base:#x} names a controller that does not exist")
            offset += s.length
        self.sets = layout.sets
        self.mem: dict[int, bytearray] = {}     # page HPA -> 4096 bytes (absent pages are zero)
        self.med: dict[int, bytearray] = {}     # NVDIMM page HPA -> 4096 bytes
        self.state: dict[int, int] = {}         # line HPA -> LineState (absent = CLEAN)
        self.copies: dict[int, int] = {}        # line HPA -> copies of it in WPQs
        self.wpq: list[deque[tuple[int, bytes]]] = [deque() for _ in range(self.n_controllers)]
        self.ctrl = [[0] * CTRL_STAT_COUNT for _ in range(self.n_controllers)]
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

    def _fan_out(self, vm: _Vm, st: list[int]) -> None:
        total = 0
        for c in range(self.n_controllers):
            if c in vm.fanout:
                st[STAT["fha_writes"]] += 1
                st[STAT["cycles_fha"]] += self.cost["fha_write"]
                self.ctrl[c][CTRL_STAT["fha_writes"]] += 1
                n = self._drain_controller(c)
                vm.drained[c] += n
                total += n
        st[STAT["lines_drained"]] += total
        st[STAT["cycles_drain"]] += total * self.cost["drain_line"]

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
            st[STAT["cycles_walk"]] += self.cost["walk_level"]
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

    def _handle_fha_exit(self, v: _Vm, st: list[int], reason: int, write: bool, op: int) -> bool:
        mode, cost = v.fha_mode, self.cost
        if reason == ExitReason.EPT_MISCONFIG and mode == FhaMode.MMIO:
            st[STAT["exits_ept_misconfig"]] += 1
            st[STAT["cycles_exit"]] += cost["exit"]
            st[STAT["cycles_mmio"]] += cost["mmio"]
            if write:
                st[STAT["vfha_writes"]] += 1
                self._fan_out(v, st)
            elif op == Op.LOAD:
                st[STAT["vfha_reads"]] += 1
                self.last_value = 0      # an emulated MMIO read returns 0
            return True
        if reason != ExitReason.EPT_VIOLATION or not write:
            return False
        if mode in (FhaMode.WRITE_PROTECT, FhaMode.DROP):
            st[STAT["exits_ept_violation"]] += 1
            st[STAT["cycles_exit"]] += cost["exit"]
            st[STAT["cycles_write_protect"]] += cost["write_protect"]
            st[STAT["vfha_writes"]] += 1
            if mode == FhaMode.WRITE_PROTECT:
                self._fan_out(v, st)
            return True
        if mode == FhaMode.HYPERCALL:
            st[STAT["exits_vmcall"]] += 1
            st[STAT["cycles_exit"]] += cost["exit"]
            st[STAT["cycles_hypercall"]] += cost["hypercall"]
            st[STAT["vfha_writes"]] += 1
            self._fan_out(v, st)
            return True
        return False

    def _check_record(self, op: int, vm: int, cpu: int, size: int, gpa: int, value: int) -> BadRecord:
        if vm not in self.vms or not self.vms[vm].running:
            return BadRecord.VM
        if cpu >= self.vms[vm].nvcpus:
            return BadRecord.VCPU
        if op > Op.MFENCE:
            return BadRecord.OP
        if op not in (Op.SFENCE, Op.MFENCE) and gpa >= GPA_LIMIT:
            return BadRecord.GPA
        if op in (Op.LOAD, Op.STORE, Op.NT_STORE):
            if size not in (1, 2, 4, 8):
                return BadRecord.SIZE
            if gpa % LINE + size > LINE:
                return BadRecord.CROSSES_LINE
            if op != Op.LOAD and value >= 1 << (8 * size):
                return BadRecord.VALUE
        elif op in (Op.CLWB, Op.CLFLUSHOPT, Op.CLFLUSH) and size not in (0, 64):
            return BadRecord.SIZE
        return BadRecord.NONE

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
        st = v.stats[cpu]
        st[op] += 1
        st[STAT["ops"]] += 1
        st[STAT["cycles_ops"]] += self.cost["op"]
        if op in (Op.SFENCE, Op.MFENCE):
            return True                      # fences are counted; nothing is reordered here
        write = op in (Op.STORE, Op.NT_STORE)
        on_fha = (gpa >> 12) == v.fha_vpn
        rc, result = self._translate(v, cpu, gpa, write, st)
        if rc:
            if on_fha and self._handle_fha_exit(v, st, rc, write, op):
                return True
            st[STAT["exits_ept_misconfig" if rc == ExitReason.EPT_MISCONFIG else "exits_ept_violation"]] += 1
            st[STAT["cycles_exit"]] += self.cost["exit"]
            self.exit = (rc, exit_qualification(rc, write, result), gpa, i, vm, cpu, op)
            return False
        hpa = result
        if on_fha:
            if write:
                st[STAT["vfha_writes"]] += 1
                if v.fha_mode == FhaMode.NATIVE:
                    self._fan_out(v, st)   # the physical FHAs, written directly
                    return True
            elif op == Op.LOAD:
                st[STAT["vfha_reads"]] += 1
        line = hpa - hpa % LINE
        if op == Op.LOAD:
            loaded = int.from_bytes(self._get(self.mem, hpa, size), "little")
            st[STAT["load_sum"]] = (st[STAT["load_sum"]] + loaded) % (1 << 64)
            self.last_value = loaded
        elif write:
            self._put(self.mem, hpa, value.to_bytes(size, "little"))
            if self._is_pmem(hpa):
                if op == Op.STORE:
                    self.state[line] = LineState.DIRTY
                else:
                    self._enqueue(line)      # a non-temporal store goes straight to the WPQ
        elif self._is_pmem(hpa) and self.state.get(line) == LineState.DIRTY:
            self._enqueue(line)
            st[STAT["lines_flushed"]] += 1
        return True

    @property
    def last_exit(self) -> tuple[int, int, int, int, int, int, int]:
        return self.exit

    # ---- state -----------------------------------------------------------------------------------

    def prefault(self, hpa: int, n: int) -> None:
        self._check_hpa(hpa, n)     # dict pages need no touching

    def read_memory(self, hpa: int, n: int) -> bytes:
        self._check_hpa(hpa, n)
        return self._get(self.mem, hpa, n)

    def read_media(self, hpa: int, n: int) -> bytes:
        if not (hpa >= self.pmem_base and hpa + n <= self.pmem_base + self.pmem_bytes):
            raise ConfigError(f"HPA range at {hpa:#x} is not NVDIMM space")
        return self._get(self.med, hpa, n)

    def write_memory(self, hpa: int, data: bytes) -> None:
        self._check_hpa(hpa, len(data))
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
        media = bytearray(self.read_media(hpa, n))
        survivors: list[tuple[int, bytes]] = []
        if self.domain >= Domain.ADR:
            survivors += [entry for q in self.wpq for entry in q]
        if self.domain == Domain.EADR:
            survivors += [(line, self._get(self.mem, line, LINE)) for line, state in sorted(self.state.items())
                          if state == LineState.DIRTY]
        for line, data in survivors:
            for k in range(LINE):
                if hpa <= line + k < hpa + n:
                    media[line + k - hpa] = data[k]
        return bytes(media)

    def get_state(self) -> dict[str, np.ndarray]:
        """Everything that evolves, in the canonical form the core uses too."""
        mem, med, lines = self.memory_pages(), self.media_pages(), self.line_states()
        wpq = [(c, line, data) for c in range(self.n_controllers) for line, data in self.wpq[c]]
        out = {
            "memory_hpa": np.array(list(mem), np.uint64),
            "memory_data": np.frombuffer(b"".join(mem.values()), np.uint8).reshape(-1, PAGE),
            "media_hpa": np.array(list(med), np.uint64),
            "media_data": np.frombuffer(b"".join(med.values()), np.uint8).reshape(-1, PAGE),
            "line_hpa": np.array(list(lines), np.uint64),
            "line_state": np.array([int(s) for s in lines.values()], np.uint8),
            "wpq_ctrl": np.array([w[0] for w in wpq], np.uint32),
            "wpq_line": np.array([w[1] for w in wpq], np.uint64),
            "wpq_data": np.frombuffer(b"".join(w[2] for w in wpq), np.uint8).reshape(-1, LINE),
            "ctrl_stats": np.array(self.ctrl, np.uint64),
            "table_ids": np.array(sorted(self.pool), np.uint32),
            "table_data": np.array([self.pool[t] for t in sorted(self.pool)], np.uint64).reshape(-1, 512),
            "free_tables": np.array(self.free_tables, np.uint32),
            "scalars": np.array([self.next_table, self.last_value], np.uint64),
            "vm_ids": np.array(sorted(self.vms), np.uint32),
        }
        for vm_id in sorted(self.vms):
            v = self.vms[vm_id]
            none = 2**64 - 1
            out[f"vm{vm_id}_meta"] = np.array([v.root, v.nvcpus, v.tlb_entries, int(v.running),
                                               none if v.fha_vpn is None else v.fha_vpn, int(v.fha_mode)],
                                              np.uint64)
            out[f"vm{vm_id}_fanout"] = np.array([int(c in v.fanout) for c in range(self.n_controllers)], np.uint8)
            out[f"vm{vm_id}_stats"] = np.array(v.stats, np.uint64)
            out[f"vm{vm_id}_drained"] = np.array(v.drained, np.uint64)
            rows = []
            for cpu in range(v.nvcpus):
                for entry in v.tlb[cpu]:
                    if entry is None:
                        rows.append((none, 0, 0, 0))
                    else:
                        vpn, e, page, (t, i) = entry
                        rows.append((vpn, e, page, t * 512 + i))
            out[f"vm{vm_id}_tlb"] = np.array(rows, np.uint64).reshape(-1, 4)
        return out

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        def pages(addrs, data):
            return {int(a): bytearray(d.tobytes()) for a, d in zip(addrs, data)}
        self.mem = pages(state["memory_hpa"], state["memory_data"])
        self.med = pages(state["media_hpa"], state["media_data"])
        self.state = {int(a): LineState(int(s)) for a, s in zip(state["line_hpa"], state["line_state"])}
        self.wpq = [deque() for _ in range(self.n_controllers)]
        self.copies = {}
        for c, line, data in zip(state["wpq_ctrl"].tolist(), state["wpq_line"].tolist(), state["wpq_data"]):
            self.wpq[c].append((line, data.tobytes()))
            self.copies[line] = self.copies.get(line, 0) + 1
        self.ctrl = state["ctrl_stats"].astype(np.uint64).tolist()
        self.pool = {int(t): [int(e) for e in row] for t, row in zip(state["table_ids"], state["table_data"])}
        self.free_tables = state["free_tables"].tolist()
        self.next_table, self.last_value = (int(x) for x in state["scalars"])
        self.vms = {}
        for vm_id in state["vm_ids"].tolist():
            root, nvcpus, tlb_entries, running, fha_vpn, fha_mode = state[f"vm{vm_id}_meta"].tolist()
            v = _Vm(root, nvcpus, tlb_entries, self.n_controllers)
            v.running = bool(running)
            v.fha_vpn = None if fha_vpn == 2**64 - 1 else fha_vpn
            v.fha_mode = FhaMode(fha_mode)
            v.fanout = [c for c, on in enumerate(state[f"vm{vm_id}_fanout"].tolist()) if on]
            v.stats = state[f"vm{vm_id}_stats"].astype(np.uint64).tolist()
            v.drained = state[f"vm{vm_id}_drained"].astype(np.uint64).tolist()
            rows = state[f"vm{vm_id}_tlb"].tolist()
            for cpu in range(nvcpus):
                for k in range(tlb_entries):
                    vpn, e, page, slot = rows[cpu * tlb_entries + k]
                    v.tlb[cpu][k] = None if vpn == 2**64 - 1 else (vpn, e, page, (slot // 512, slot % 512))
            self.vms[vm_id] = v

    def power_fail(self) -> np.ndarray:
        if self.domain >= Domain.ADR:
            for q in self.wpq:
                for line, data in q:        # FIFO: a later copy of a line wins
                    self._put(self.med, line, data)
        if self.domain == Domain.EADR:
            for line, state in self.state.items():
                if state == LineState.DIRTY:
                    self._put(self.med, line, self._get(self.mem, line, LINE))
        self.mem = {a: bytearray(p) for a, p in self.med.items()}
        self.state, self.copies = {}, {}
        self.wpq = [deque() for _ in range(self.n_controllers)]
        for v in self.vms.values():
            self._flush_tlbs(v)
        image = bytearray(self.pmem_bytes)
        for a, p in self.med.items():
            off = a - self.pmem_base
            image[off:off + PAGE] = p
        return np.frombuffer(bytes(image), dtype=np.uint8)
