"""The reference model's EPT tables and VM slots: the table pool, map/protect/unmap, the hardware
walk and the software TLB (a part of ``nvemu._reference.Engine``, which holds the state these
methods work on)."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ._constants import (CLOCK_FIELDS, MAX_FILL_BUFFERS, NO_LINE, EPT_ACCESSED,
                         EPT_ADDR_MASK, EPT_DIRTY, EPT_LARGE, EPT_MEMTYPE_WB, EPT_R, EPT_RWX, EPT_W, ExitReason,
                         FhaMode, GPA_LIMIT, QUAL_ENTRY_SHIFT, QUAL_FINAL_TRANSLATION,
                         QUAL_LINEAR_VALID, QUAL_READ, QUAL_WRITE, STAT, STAT_NAMES)
from . import _state
from ._constants import PAGE_BYTES as PAGE
from .errors import ConfigError, GuestFault, ResourceError

STAT_COUNT = len(STAT_NAMES)
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
        # clock[vcpu] = [now ps, pending ps, last load line, last write-back line, open nt line,
        #                last load's data ps, all loads' data ps, then each line buffer's free time ps]
        self.clock = [[0, 0, NO_LINE, NO_LINE, NO_LINE, 0, 0] + [0] * MAX_FILL_BUFFERS for _ in range(nvcpus)]
        self.running = True


class PageTables:
    """What the reference Engine does to page tables, TLBs and VM slots."""

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
        out = [0] * self.n_controllers
        for d, c in enumerate(self._dimm_controllers()):
            out[c] = max(out[c], self.busy[d])
        return np.array(out, dtype=np.uint64)

    def dimm_busy(self) -> np.ndarray:
        return np.array(self.busy, dtype=np.uint64)

    def dimm_read_busy(self) -> np.ndarray:
        return np.array(self.read_busy, dtype=np.uint64)

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
