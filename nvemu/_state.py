"""Canonical engine state: captured, and checked once, for both engines.

The compiled core and the reference model keep the machine in different shapes; both offer the
same accessors (``memory_pages``, ``media_pages``, ``line_states``, ``wpq_entries``, ``table_rows``,
``vm_slot`` ...), so :func:`capture` and :func:`check` are written here once; each engine's
``set_state`` loads what :func:`check` returned into its own structures. The canonical form
is a dict of numpy arrays: non-zero 4 KiB pages of memory and media (so its size follows what was
touched, not the host), non-clean lines, WPQ entries oldest first, allocated page tables, counters,
and per VM its meta numbers, fan-out, stats, drained lines, clocks and TLB rows ``(vpn, entry, hpa,
leaf slot)``; the controllers' busy-until times. :func:`check` validates everything the unchecked
kernels will index by before changing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ._constants import (CLOCK_FIELDS, CTRL_STAT_NAMES, Domain, EPT_ADDR_MASK, EPT_LARGE, EPT_RWX, EPT_W, FhaMode,
                         LineState, STAT_NAMES)
from ._constants import EPT_ENTRIES as ENTRIES, LINE_BYTES as LINE, NO_VPN, PAGE_BYTES as PAGE
from .errors import ConfigError

STAT_COUNT = len(STAT_NAMES)
CTRL_STAT_COUNT = len(CTRL_STAT_NAMES)
CLOCK_COUNT = len(CLOCK_FIELDS)

_TOP = (("memory_hpa", np.uint64, None), ("memory_data", np.uint8, (PAGE,)),
        ("media_hpa", np.uint64, None), ("media_data", np.uint8, (PAGE,)),
        ("line_hpa", np.uint64, None), ("line_state", np.uint8, None),
        ("wpq_ctrl", np.uint32, None), ("wpq_line", np.uint64, None), ("wpq_data", np.uint8, (LINE,)),
        ("ctrl_stats", np.uint64, (CTRL_STAT_COUNT,)), ("dimm_busy", np.uint64, None),
        ("dimm_read_busy", np.uint64, None), ("table_ids", np.uint32, None),
        ("table_data", np.uint64, (ENTRIES,)), ("free_tables", np.uint32, None),
        ("scalars", np.uint64, None), ("vm_ids", np.uint32, None))


@dataclass
class VmSlot:
    """One VM as the engines hold it, by name (what ``vm_slot`` returns and ``_load_state`` takes)."""

    vm: int
    root: int
    nvcpus: int
    tlb_entries: int
    running: bool
    fha_vpn: int            # NO_VPN when the VM has no vFHA
    fha_mode: int
    tlb: np.ndarray         # uint64[nvcpus * tlb_entries, 4]: vpn (NO_VPN = invalid), entry, hpa, leaf slot
    stats: np.ndarray       # uint64[nvcpus, STAT_COUNT]
    fanout: np.ndarray      # uint8[n_controllers]
    drained: np.ndarray     # uint64[n_controllers]
    clock: np.ndarray       # uint64[nvcpus, CLOCK_COUNT]: each vCPU's clock words (_constants.CLOCK_FIELDS)

    def meta(self) -> np.ndarray:
        return np.array([self.root, self.nvcpus, self.tlb_entries, int(self.running), self.fha_vpn,
                         self.fha_mode], np.uint64)


def _pages(pages: dict[int, bytes]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array(list(pages), np.uint64),
            np.frombuffer(b"".join(pages.values()), np.uint8).reshape(-1, PAGE))


def capture(engine: Any) -> dict[str, np.ndarray]:
    """Everything that evolves in ``engine``, in the canonical form (one consistent moment)."""
    with engine.lock:
        mem, med = _pages(engine.memory_pages()), _pages(engine.media_pages())
        lines = engine.line_states()
        wpq = [(c, line, data) for c in range(engine.n_controllers) for line, data in engine.wpq_entries(c)]
        ids, rows = engine.table_rows()
        out = {
            "memory_hpa": mem[0], "memory_data": mem[1], "media_hpa": med[0], "media_data": med[1],
            "line_hpa": np.array(list(lines), np.uint64),
            "line_state": np.array([int(s) for s in lines.values()], np.uint8),
            "wpq_ctrl": np.array([w[0] for w in wpq], np.uint32),
            "wpq_line": np.array([w[1] for w in wpq], np.uint64),
            "wpq_data": np.frombuffer(b"".join(w[2] for w in wpq), np.uint8).reshape(-1, LINE),
            "ctrl_stats": np.asarray(engine.controller_stats(), np.uint64).copy(),
            "dimm_busy": np.asarray(engine.dimm_busy(), np.uint64).copy(),
            "dimm_read_busy": np.asarray(engine.dimm_read_busy(), np.uint64).copy(),
            "table_ids": np.asarray(ids, np.uint32),
            "table_data": np.asarray(rows, np.uint64).reshape(-1, ENTRIES),
            "free_tables": np.array(engine.free_table_list(), np.uint32),
            "scalars": np.array([engine.next_table, engine.last_value], np.uint64),
            "vm_ids": np.array(engine.vm_ids(), np.uint32),
        }
        for vm in engine.vm_ids():
            s = engine.vm_slot(vm)
            tlb = np.array(s.tlb, np.uint64).reshape(-1, 4)
            tlb[tlb[:, 0] == NO_VPN, 1:] = 0            # an invalid entry's other words mean nothing
            out[f"vm{vm}_meta"] = s.meta()
            out[f"vm{vm}_fanout"] = np.array(s.fanout, np.uint8)
            out[f"vm{vm}_stats"] = np.array(s.stats, np.uint64)
            out[f"vm{vm}_drained"] = np.array(s.drained, np.uint64)
            out[f"vm{vm}_tlb"] = tlb
            out[f"vm{vm}_clock"] = np.array(s.clock, np.uint64).reshape(-1, CLOCK_COUNT)
    return out


def durable_read(engine: Any, hpa: int, n: int, held: Callable[[int], bool] | None = None) -> bytes:
    """``n`` bytes at ``hpa`` as a power failure now would leave them (SPEC 7.3), without one:
    media, then under adr/eadr the queued copies oldest first (controller by controller: a line
    has one controller), then under eadr the dirty lines as CPUs see them. ``held(line)`` says
    whether ADR holds for a line (default: everywhere); where it does not, only media survives
    (``Platform.durable_read``: an NVDIMM whose NFIT flags say not armed)."""
    with engine.lock:
        out = bytearray(engine.read_media(hpa, n))
        end = hpa + n
        if engine.domain >= Domain.ADR:
            for c in range(engine.n_controllers):
                for line, data in engine.wpq_entries(c):
                    lo, hi = max(line, hpa), min(line + LINE, end)
                    if lo < hi and (held is None or held(line)):
                        out[lo - hpa:hi - hpa] = data[lo - line:hi - line]
        if engine.domain == Domain.EADR:
            for line, state in engine.line_states().items():
                lo, hi = max(line, hpa), min(line + LINE, end)
                if state == LineState.DIRTY and lo < hi and (held is None or held(line)):
                    out[lo - hpa:hi - hpa] = engine.read_memory(lo, hi - lo)
        return bytes(out)


def hpa_ok(engine: Any, hpa: int, length: int) -> bool:
    """Is ``[hpa, hpa+length)`` wholly host DRAM or wholly NVDIMM space?"""
    return (hpa + length <= engine.dram_bytes or
            (hpa >= engine.pmem_base and hpa + length <= engine.pmem_base + engine.pmem_bytes))


def _in_host(engine: Any, addrs: np.ndarray, size: int) -> np.ndarray:
    a = addrs.astype(np.uint64)
    dram = a <= np.uint64(engine.dram_bytes - size) if engine.dram_bytes >= size else np.zeros(len(a), bool)
    pmem = (a >= np.uint64(engine.pmem_base)) & (a <= np.uint64(engine.pmem_base + engine.pmem_bytes - size)) \
        if engine.pmem_bytes >= size else np.zeros(len(a), bool)
    return dram | pmem


def check_vm_slot(engine: Any, s: VmSlot) -> None:
    """Everything the nogil loop indexes by, for one VM slot: ConfigError otherwise."""
    vm, n = s.vm, s.nvcpus * s.tlb_entries
    if s.root >= engine.pool_tables or not 1 <= s.nvcpus <= 256 or s.tlb_entries < 1 or \
            s.tlb_entries & (s.tlb_entries - 1) or s.tlb_entries > (1 << 20):
        raise ConfigError(f"vm {vm}: root table {s.root}, {s.nvcpus} vCPUs, {s.tlb_entries} TLB entries are not valid")
    if not FhaMode.NONE <= s.fha_mode <= FhaMode.NATIVE:
        raise ConfigError(f"vm {vm}: fha mode {s.fha_mode} is not an FhaMode")
    nctl = engine.n_controllers
    for a, shape in ((s.tlb, (n, 4)), (s.stats, (s.nvcpus, STAT_COUNT)), (s.fanout, (nctl,)), (s.drained, (nctl,)),
                     (s.clock, (s.nvcpus, CLOCK_COUNT))):
        if not isinstance(a, np.ndarray) or a.shape != shape:
            raise ConfigError(f"vm {vm}: state array of shape {getattr(a, 'shape', None)} where {shape} is needed")


def _check_tree(engine: Any, rows: dict[int, np.ndarray], root: int) -> None:
    """Every entry reachable from ``root`` points at a table in ``rows`` or maps host memory that
    exists: what the unchecked walk relies on."""
    if root not in rows:
        raise ConfigError(f"engine state: root table {root!r} is not among the tables")
    todo, seen = [(root, 4)], set()
    while todo:
        t, level = todo.pop()
        if (t, level) in seen:
            continue
        seen.add((t, level))
        row = rows[t]
        present = (row & EPT_RWX) != 0
        usable = present & ((row & 3) != EPT_W)
        large = usable & ((row & EPT_LARGE) != 0) if level in (2, 3) else np.zeros(ENTRIES, bool)
        if level == 4 and (usable & ((row & EPT_LARGE) != 0)).any():
            raise ConfigError(f"engine state: table {t} has a large page at level 4")
        leaves = usable & (large | (level == 1))
        size = 1 << (12 + 9 * (level - 1))
        addrs = row[leaves] & np.uint64(EPT_ADDR_MASK & ~(size - 1))
        bad = ~_in_host(engine, addrs, size)
        if bad.any():
            hpa = int(addrs[bad][0])
            raise ConfigError(f"HPA range [{hpa:#x}, {hpa + size:#x}) is not host DRAM or NVDIMM space")
        for e in row[usable & ~leaves].tolist():
            child = (e & EPT_ADDR_MASK) >> 12
            if child not in rows:
                raise ConfigError(f"engine state: table {t} points at table {child}, which is not in the state")
            todo.append((child, level - 1))


def check(engine: Any, state: Any) -> tuple[dict[str, np.ndarray], list[VmSlot]]:
    """``state`` as arrays of the right kinds and shapes, every address and index in range, or
    ConfigError naming what is not. Nothing is changed."""
    if not isinstance(state, dict):
        raise ConfigError(f"engine state must be a dict of arrays, not {type(state).__name__}")

    def get(name: str, dtype: Any, tail: tuple[int, ...] | None = None) -> np.ndarray:
        try:
            a = np.asarray(state[name])
        except (KeyError, TypeError):
            raise ConfigError(f"engine state lacks {name!r}") from None
        if a.dtype.kind not in "ui" or (tail is not None and a.shape[1:] != tail) or \
                (tail is None and a.ndim != 1):
            raise ConfigError(f"engine state {name!r}: {a.dtype} array of shape {a.shape} is not what it needs")
        if a.size and (int(a.min()) < 0 or int(a.max()) > np.iinfo(dtype).max):
            raise ConfigError(f"engine state {name!r}: values outside {np.dtype(dtype).name}")
        return a.astype(dtype)

    s = {k: get(k, t, tail) for k, t, tail in _TOP}
    pmem_end = engine.pmem_base + engine.pmem_bytes
    for a, b in (("memory_hpa", "memory_data"), ("media_hpa", "media_data"), ("line_hpa", "line_state"),
                 ("wpq_line", "wpq_data"), ("wpq_line", "wpq_ctrl"), ("table_ids", "table_data")):
        if len(s[a]) != len(s[b]):
            raise ConfigError(f"engine state: {a} and {b} differ in length")
    pages = s["memory_hpa"]
    bad = (pages % PAGE != 0) | ~_in_host(engine, pages, PAGE)
    if bad.any():
        hpa = int(pages[bad][0])
        raise ConfigError(f"engine state: page {hpa:#x} is not an aligned page of host DRAM or NVDIMM space")
    for name, align in (("media_hpa", PAGE), ("line_hpa", LINE), ("wpq_line", LINE)):
        bad = (s[name] < engine.pmem_base) | (s[name] >= pmem_end) | (s[name] % align != 0)
        if bad.any():
            raise ConfigError(f"engine state: {name} {int(s[name][bad][0]):#x} is not an aligned NVDIMM address")
    if (s["line_state"] > LineState.QUEUED).any():
        raise ConfigError("engine state: a line state is not CLEAN, DIRTY or QUEUED")
    if (s["wpq_ctrl"] >= engine.n_controllers).any() or \
            (np.bincount(s["wpq_ctrl"], minlength=engine.n_controllers) > engine.wpq_depth).any():
        raise ConfigError("engine state: WPQ entries name a missing controller or overfill a queue")
    if s["ctrl_stats"].shape[0] != engine.n_controllers:
        raise ConfigError("engine state: ctrl_stats has the wrong number of controllers")
    if len(s["dimm_busy"]) != engine.n_dimms or len(s["dimm_read_busy"]) != engine.n_dimms:
        raise ConfigError("engine state: dimm_busy or dimm_read_busy has the wrong number of NVDIMMs")
    if len(s["scalars"]) != 2 or s["scalars"][0] > engine.pool_tables:
        raise ConfigError("engine state: scalars are not (next_table, last_value)")
    tables = np.concatenate([s["table_ids"], s["free_tables"]])
    if (tables >= s["scalars"][0]).any() or len(np.unique(tables)) != len(tables):
        raise ConfigError("engine state: table ids are out of range or repeated")
    rows = dict(zip(s["table_ids"].tolist(), s["table_data"]))
    vms = []
    for vm in s["vm_ids"].tolist():
        if vm >= engine.max_vms:
            raise ConfigError(f"engine state: vm id {vm} is out of range")
        meta = get(f"vm{vm}_meta", np.uint64)
        if len(meta) != 6:
            raise ConfigError(f"engine state: vm{vm}_meta needs 6 numbers")
        root, nvcpus, tlb_entries, running, fha_vpn, fha_mode = meta.tolist()
        if root not in rows:
            raise ConfigError(f"engine state: vm {vm}'s root table {root} is not among the tables")
        slot = VmSlot(vm, root, nvcpus, tlb_entries, bool(running), fha_vpn, fha_mode,
                      get(f"vm{vm}_tlb", np.uint64, (4,)), get(f"vm{vm}_stats", np.uint64, (STAT_COUNT,)),
                      get(f"vm{vm}_fanout", np.uint8), get(f"vm{vm}_drained", np.uint64),
                      get(f"vm{vm}_clock", np.uint64, (CLOCK_COUNT,)))
        check_vm_slot(engine, slot)
        valid = slot.tlb[:, 0] != NO_VPN
        if (slot.tlb[valid, 3] >= s["scalars"][0] * ENTRIES).any():
            raise ConfigError(f"engine state: vm {vm}'s TLB names a table that does not exist")
        hpas = slot.tlb[valid, 2]
        bad = (hpas % PAGE != 0) | ~_in_host(engine, hpas, PAGE)
        if bad.any():
            raise ConfigError(f"engine state: vm {vm}'s TLB caches host page {int(hpas[bad][0]):#x}, "
                              f"which is not host memory")
        _check_tree(engine, rows, root)
        vms.append(slot)
    return s, vms


__all__ = ["VmSlot", "capture", "check", "check_vm_slot", "durable_read", "hpa_ok", "NO_VPN"]
