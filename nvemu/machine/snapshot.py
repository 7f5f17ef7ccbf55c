"""Snapshot and restore of a whole hypervisor, or of one VM, to one ``.npz`` file.

The file holds the engine's canonical state (non-zero pages, line states, WPQs oldest first,
page tables, TLBs, counters) and a JSON description of the platform, timing model and VMs, sealed with
a digest so a truncated or damaged file is refused rather than half-restored. Restoring builds a
new :class:`Hypervisor`; nothing running is touched.

The plain digest (SHA-256) guards against corruption, not forgery: anyone can edit a file and
recompute it. So restore trusts nothing in the file: array sizes are checked against the
description before anything is allocated, and each VM's page table and TLBs must reach only the
host ranges its description gives it (SPEC 7.8). For authenticity, save and restore with a
``key``: the file is then sealed with HMAC-SHA-256 and only a holder of the key can produce it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .._constants import (CLOCK, CLOCK_FIELDS, CTRL_STAT_NAMES, EPT_ACCESSED, EPT_ADDR_MASK, EPT_DIRTY, EPT_ENTRIES,
                          EPT_INDEX_BITS, EPT_LARGE, EPT_LEVELS, EPT_R, EPT_RWX, EPT_W, GPA_LIMIT, HPA_LIMIT, NO_LINE,
                          NO_VPN, PAGE_BYTES, PAGE_SHIFT, PAGE_SIZES, STAT_NAMES)
from .config import PlatformConfig, TimingModel
from .._files import atomic_write
from ..errors import ConfigError, NvemuError, SnapshotError
from . import snapshot_file
from .flush_hints import VirtualFlushHint
from .hypervisor import Hypervisor
from .platform import Platform
from .vm import VM, MemoryRange, VmState
from .flush_hints import FANOUTS, STRATEGIES


FORMAT = "nvemu-snapshot-1"


def _digest(arrays: dict[str, np.ndarray], meta: str) -> str:
    """The plain (unkeyed) seal: SHA-256 over the description and every array."""
    return snapshot_file.seal(arrays, meta)


def _inside(addrs: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    keep = np.zeros(len(addrs), bool)
    for base, size in ranges:
        keep |= (addrs >= base) & (addrs < base + size)
    return keep


def _only_vm(state: dict[str, np.ndarray], vm: VM) -> dict[str, np.ndarray]:
    """The part of an engine state that belongs to one VM: its pages, lines, queued copies and
    page-table tree (WPQ order kept; other tables become free)."""
    memory = [(r.hpa, r.size) for r in vm.dram + vm.nvdimms] + [(vm.vfha_hpa, PAGE_BYTES)]
    pmem = [(r.hpa, r.size) for r in vm.nvdimms]
    out = {k: v for k, v in state.items() if not k.startswith("vm")}
    for prefix, ranges in (("memory", memory), ("media", pmem)):
        keep = _inside(state[f"{prefix}_hpa"], ranges)
        out[f"{prefix}_hpa"], out[f"{prefix}_data"] = state[f"{prefix}_hpa"][keep], state[f"{prefix}_data"][keep]
    keep = _inside(state["line_hpa"], pmem)
    out["line_hpa"], out["line_state"] = state["line_hpa"][keep], state["line_state"][keep]
    keep = _inside(state["wpq_line"], pmem)
    for k in ("wpq_ctrl", "wpq_line", "wpq_data"):
        out[k] = state[k][keep]
    rows = dict(zip(state["table_ids"].tolist(), state["table_data"]))
    root = int(state[f"vm{vm.id}_meta"][0])
    tree, todo = [], [(root, EPT_LEVELS)]
    while todo:
        t, level = todo.pop()
        tree.append(t)
        if level > 1:
            for e in rows[t].tolist():
                if e & EPT_RWX and not e & EPT_LARGE:
                    todo.append(((e & EPT_ADDR_MASK) >> PAGE_SHIFT, level - 1))
    tree.sort()
    out["table_ids"] = np.array(tree, np.uint32)
    out["table_data"] = np.array([rows[t] for t in tree], np.uint64).reshape(-1, EPT_ENTRIES)
    others = [t for t in rows if t not in set(tree)]
    out["free_tables"] = np.array(state["free_tables"].tolist() + sorted(others, reverse=True), np.uint32)
    out["vm_ids"] = np.array([vm.id], np.uint32)
    for k, v in state.items():
        if k.startswith(f"vm{vm.id}_"):
            out[k] = v
    return out


def _vm_meta(vm: VM) -> dict[str, Any]:
    return {"id": vm.id, "state": vm.state.value, "strategy": vm.strategy, "fanout": vm.fanout,
            "fanout_controllers": list(vm.fanout_controllers), "reserved": vm.reserved,
            "dram": [r.to_dict() for r in vm.dram], "nvdimms": [r.to_dict() for r in vm.nvdimms],
            "vfha_gpa": vm.vfha_gpa, "vfha_hpa": vm.vfha_hpa, "tlb_entries": vm.tlb_entries,
            "page_size": vm.page_size, "vcpus": len(vm.vcpus),
            "vfha_table": [{"nvdimm": h.nvdimm, "gpa": h.gpa, "physical": list(h.physical)} for h in vm.vfha_table]}


def save_snapshot(target: Hypervisor | VM, path: str | Path, *, key: bytes | None = None) -> None:
    """Write a hypervisor (platform state, every VM) or one VM (its memory, NVDIMM media and
    lines, queued copies, page table, TLBs, counters, with the platform description) to ``path``
    (.npz); :func:`restore_snapshot` brings it back on a fresh host at the same host addresses.

    Parameters
    ----------
    key
        Seal with HMAC-SHA-256 under this key (bytes) instead of plain SHA-256, so that a restore
        given the same key refuses a file edited by anyone without it.
    """
    key = snapshot_file.check_key(key)
    if isinstance(target, VM):
        hv, vm = target._live().hypervisor, target
    else:
        hv, vm = target, None
    state = hv.platform.engine.get_state()
    vms = list(hv.vms.values()) if vm is None else [vm._live()]
    if vm is not None:
        state = _only_vm(state, vm)
    p = hv.platform
    meta = json.dumps({"format": FORMAT, "platform": p.config.to_dict(), "timing": p.timing.to_dict(),
                       "pool_tables": p.layout.pool_tables, "max_vms": p.layout.max_vms,
                       "vms": [_vm_meta(v) for v in vms]}, sort_keys=True)
    arrays = {f"engine_{k}": v for k, v in state.items()}
    with atomic_write(path, "wb") as f:         # a snapshot is whole or absent, never half written
        np.savez(f, meta=np.frombuffer(meta.encode(), np.uint8),
                 digest=np.frombuffer(snapshot_file.seal(arrays, meta, key).encode(), np.uint8), **arrays)


def restore_snapshot(path: str | Path, backend: str | None = None, *, key: bytes | None = None) -> Hypervisor:
    """A new Hypervisor holding what ``path`` saved; raises SnapshotError for a bad file.

    With ``key``, the file must be sealed with HMAC-SHA-256 under that key (see
    :func:`save_snapshot`); without it, a keyed file is refused (it cannot be verified) and a plain
    seal proves only that the file is intact, not who wrote it.
    """
    key = snapshot_file.check_key(key)
    try:
        return _restore(path, backend, key)
    except MemoryError:
        raise SnapshotError(f"{path}: cannot restore: the snapshot needs more memory than this machine "
                            "has") from None
    except OverflowError as e:
        raise SnapshotError(f"{path}: cannot restore: a number is out of range ({e})") from None


def _restore(path: str | Path, backend: str | None, key: bytes | None) -> Hypervisor:
    z, members = snapshot_file.open_members(path)
    with z:
        for name in ("meta", "digest"):
            if name not in members:
                raise SnapshotError(f"{path}: snapshot description is missing (no member {name})")
        snapshot_file.check_shape(path, members["meta"], snapshot_file.MAX_META_BYTES)
        snapshot_file.check_shape(path, members["digest"], 2 * len(snapshot_file.KEYED) + 64)
        try:
            meta_text = snapshot_file.read(path, z, members.pop("meta")).tobytes().decode()
            digest = snapshot_file.read(path, z, members.pop("digest")).tobytes().decode()
            meta = json.loads(meta_text)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SnapshotError(f"{path}: snapshot description is unreadable ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise SnapshotError(f"{path}: format {meta.get('format') if isinstance(meta, dict) else None!r} "
                                f"is not {FORMAT!r}")
        try:
            limits = _limits(meta)
        except (NvemuError, KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise SnapshotError(f"{path}: cannot restore: {type(e).__name__}: {e}") from None
        files = snapshot_file.read_all(path, z, members.values(), lambda m: _check_member(path, m, limits))
    snapshot_file.verify(path, files, meta_text, digest, key)
    state = {k[len("engine_"):]: v for k, v in files.items()}
    try:
        # snapshots from before the timing model carry "costs" (cycles) and no clocks: migrate them
        timing = TimingModel.from_dict(meta["timing"] if "timing" in meta else meta["costs"])
        _add_clocks(state, sum(len(s.dimms) for s in PlatformConfig.from_dict(meta["platform"]).interleave_sets))
        platform = Platform(PlatformConfig.from_dict(meta["platform"]), timing,
                            pool_tables=meta["pool_tables"], max_vms=meta["max_vms"], backend=backend)
        hv = Hypervisor(platform)
        rows = _table_rows(state)
        claimed: dict[int, int] = {}
        for m in meta["vms"]:
            _check_vm(m, state, platform.layout.max_vms, rows, claimed)
            _restore_vm(hv, m)
        platform.engine.set_state(state)
    except (NvemuError, KeyError, TypeError, ValueError, IndexError) as e:
        raise SnapshotError(f"{path}: cannot restore: {type(e).__name__}: {e}") from None
    return hv


def _limits(meta: dict[str, Any]) -> dict[str, tuple[int, tuple[int, ...] | None, int | None]]:
    """{member: (most rows, shape of a row, exact rows or None)} for every array the description
    allows, from the host it describes: checked before any array is read."""
    config = PlatformConfig.from_dict(meta["platform"])
    pool = _integer(meta["pool_tables"], "pool_tables", 1, (1 << 24) + 1)
    max_vms = _integer(meta["max_vms"], "max_vms", 1, (1 << 16) + 1)
    nctl = len(config.controllers)
    ndimms = sum(len(s.dimms) for s in config.interleave_sets)
    pmem_pages = sum(config.set_bytes(s) for s in config.interleave_sets) // PAGE_BYTES
    host_pages = config.dram_bytes // PAGE_BYTES + pmem_pages
    queued = nctl * _integer(config.wpq_depth, "wpq_depth", 1, 4097)
    out: dict[str, tuple[int, tuple[int, ...] | None, int | None]] = {
        "memory_hpa": (host_pages, None, None), "memory_data": (host_pages, (PAGE_BYTES,), None),
        "media_hpa": (pmem_pages, None, None), "media_data": (pmem_pages, (PAGE_BYTES,), None),
        "line_hpa": (pmem_pages * 64, None, None), "line_state": (pmem_pages * 64, None, None),
        "wpq_ctrl": (queued, None, None), "wpq_line": (queued, None, None), "wpq_data": (queued, (64,), None),
        "ctrl_stats": (nctl, (len(CTRL_STAT_NAMES),), nctl), "ctrl_busy": (nctl, None, nctl),
        "dimm_busy": (ndimms, None, ndimms), "dimm_read_busy": (ndimms, None, ndimms),
        "table_ids": (pool, None, None), "table_data": (pool, (EPT_ENTRIES,), None), "free_tables": (pool, None, None),
        "scalars": (16, None, None),
        "vm_ids": (max_vms, None, len(meta["vms"])),
    }
    if len(meta["vms"]) > max_vms:
        raise ConfigError(f"{len(meta['vms'])} VMs where the host takes at most {max_vms}")
    for m in meta["vms"]:
        vm = _integer(m["id"], "id", 0, max_vms)
        nvcpus = _integer(m["vcpus"], "vcpus", 1, 257)
        entries = _integer(m["tlb_entries"], "tlb_entries", 1, (1 << 20) + 1)
        out.update({f"vm{vm}_meta": (16, None, None), f"vm{vm}_fanout": (nctl, None, nctl),
                    f"vm{vm}_drained": (nctl, None, nctl),
                    f"vm{vm}_stats": (nvcpus, (len(STAT_NAMES),), nvcpus),
                    f"vm{vm}_tlb": (nvcpus * entries, (4,), nvcpus * entries),
                    f"vm{vm}_clock": (nvcpus, (len(CLOCK_FIELDS),), nvcpus)})
    return {f"engine_{k}": v for k, v in out.items()}


def _add_clocks(state: dict[str, np.ndarray], ndimms: int) -> None:
    """Give a snapshot saved before the timing model its clocks: controllers idle, vCPUs at time
    0 with nothing pending (what a fresh VM has)."""
    # the WPQ busy times were per controller before they were per NVDIMM: an older snapshot's
    # controllers restart idle, as a fresh platform's
    state.pop("ctrl_busy", None)
    for name in ("dimm_busy", "dimm_read_busy"):
        if name not in state:
            state[name] = np.zeros(ndimms, np.uint64)
    for vm in np.asarray(state.get("vm_ids", [])).tolist():
        if f"vm{vm}_clock" not in state and f"vm{vm}_stats" in state:
            clock = np.zeros((len(state[f"vm{vm}_stats"]), len(CLOCK_FIELDS)), np.uint64)
            clock[:, CLOCK["load_line"]:CLOCK["load_done"]] = NO_LINE
            state[f"vm{vm}_clock"] = clock


def _check_member(path: str | Path, m: snapshot_file.Member, limits: dict[str, Any]) -> None:
    if m.name not in limits:
        raise SnapshotError(f"{path}: member {m.name} is not part of the snapshot its description gives")
    max_rows, tail, rows = limits[m.name]
    snapshot_file.check_shape(path, m, max_rows, tail, rows)


def _integer(value: Any, what: str, lo: int = 0, hi: int | None = None, align: int = 1) -> int:
    if type(value) is not int or value < lo or (hi is not None and value >= hi) or value % align:
        raise ConfigError(f"VM description: {what} {value!r} is not a valid number here")
    return value


def _table_rows(state: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    """{table id: its 512 entries as uint64}, from the state's tables (ids unique)."""
    ids = np.asarray(state["table_ids"])
    data = np.asarray(state["table_data"])
    if ids.ndim != 1 or data.ndim != 2 or len(ids) != len(data) or len(np.unique(ids)) != len(ids):
        raise ConfigError("engine state: table ids and table rows do not pair up")
    return {int(t): row.astype(np.uint64) for t, row in zip(ids.tolist(), data)}


def _owned_tree(rows: dict[int, np.ndarray], root: int, ranges: list[tuple[int, int, int]], vm_id: int,
                claimed: dict[int, int]) -> int:
    """Walk the page-table tree at ``root``: every table must be this VM's alone (``claimed``:
    {table: VM}, filled in), and every present leaf must map a guest range onto the host range
    the description gives it (``ranges``: (gpa, size, hpa)). Returns the guest bytes mapped."""
    total, todo = 0, [(root, EPT_LEVELS, 0)]
    while todo:
        t, level, base = todo.pop()
        if t not in rows:
            raise ConfigError(f"vm {vm_id}'s page table points at table {t}, which is not in the state")
        if t in claimed:
            raise ConfigError(f"vm {vm_id}'s page table reaches table {t}, which belongs to vm {claimed[t]}'s tree")
        claimed[t] = vm_id
        row = rows[t]
        shift = PAGE_SHIFT + EPT_INDEX_BITS * (level - 1)
        present = (row & np.uint64(EPT_RWX)) != 0
        misconfig = present & ((row & np.uint64(EPT_R | EPT_W)) == EPT_W)         # W without R: exits, maps nothing
        large = (row & np.uint64(EPT_LARGE)) != 0 if level in (2, 3) else np.zeros(EPT_ENTRIES, bool)
        leaves = present & ~misconfig & (large | (level == 1))
        total += int((leaves | misconfig).sum()) << shift
        idx = np.flatnonzero(leaves).astype(np.uint64)
        gpa = np.uint64(base) + (idx << np.uint64(shift))
        hpa = row[leaves] & np.uint64(EPT_ADDR_MASK & ~((1 << shift) - 1))
        owned = np.zeros(len(idx), bool)
        for r_gpa, r_size, r_hpa in ranges:
            inside = (gpa >= np.uint64(r_gpa)) & (gpa + np.uint64(1 << shift) <= np.uint64(r_gpa + r_size))
            owned |= inside & (hpa == gpa - np.uint64(r_gpa) + np.uint64(r_hpa))
        if not owned.all():
            k = int(np.flatnonzero(~owned)[0])
            raise ConfigError(f"vm {vm_id}'s page table maps GPA {int(gpa[k]):#x} to HPA {int(hpa[k]):#x}, "
                              "which is not the host memory the VM owns there")
        for i in np.flatnonzero(present & ~misconfig & ~leaves).tolist():
            todo.append((int(row[i] & np.uint64(EPT_ADDR_MASK)) >> PAGE_SHIFT, level - 1, base + (i << shift)))
    return total


def _check_tlb(rows: dict[int, np.ndarray], root: int, tlb: np.ndarray, entries: int, vm_id: int) -> None:
    """Every valid TLB row (vpn, entry, host page, leaf slot) must be what a walk of the VM's own
    (already checked) tree gives, in the slot that vpn indexes; the A and D bits may lag."""
    tlb = np.asarray(tlb, np.uint64)
    valid = np.flatnonzero(tlb[:, 0] != np.uint64(NO_VPN))
    vpn, entry, page, slot = (tlb[valid, k] for k in range(4))
    bad = (vpn & np.uint64(entries - 1)) != (valid % entries).astype(np.uint64)
    bad |= vpn >= np.uint64(1 << 36)
    ad = np.uint64(EPT_ACCESSED | EPT_DIRTY)
    for k in np.flatnonzero(~bad).tolist():
        gpa = int(vpn[k]) << 12
        t = root
        for level in (4, 3, 2, 1):
            shift = PAGE_SHIFT + EPT_INDEX_BITS * (level - 1)
            i = (gpa >> shift) & 511
            e = rows[t][i]
            if not int(e) & EPT_RWX or int(e) & 3 == 2:
                bad[k] = True
                break
            if level == 1 or int(e) & EPT_LARGE:
                mask = (1 << shift) - 1
                want = (int(e) & EPT_ADDR_MASK & ~mask) | (gpa & mask & ~0xFFF)
                bad[k] = (entry[k] | ad) != (e | ad) or int(page[k]) != want or int(slot[k]) != t * EPT_ENTRIES + i
                break
            t = (int(e) & EPT_ADDR_MASK) >> PAGE_SHIFT
    if bad.any():
        k = int(valid[np.flatnonzero(bad)[0]])
        raise ConfigError(f"vm {vm_id}'s TLB row {k} (vpn {int(tlb[k, 0]):#x}) is not what a walk of its page "
                          "table gives")


def _check_vm(m: dict[str, Any], state: dict[str, np.ndarray], max_vms: int, rows: dict[int, np.ndarray],
              claimed: dict[int, int]) -> None:
    """A VM description must be well formed and agree with the engine state it comes with: a
    resealed file with a doctored description is refused, not half-restored. Its page table and
    TLBs may reach only the host memory the description gives it."""
    vm_id = _integer(m["id"], "id", 0, max_vms)
    if vm_id not in state["vm_ids"].tolist():
        raise ConfigError(f"VM description: vm {vm_id} has no engine state")
    root, nvcpus, tlb_entries, _, fha_vpn, _ = state[f"vm{vm_id}_meta"].tolist()
    if _integer(m["vcpus"], "vcpus", 1, 257) != nvcpus or _integer(m["tlb_entries"], "tlb_entries", 1) != tlb_entries:
        raise ConfigError(f"VM description: vm {vm_id}'s vCPUs or TLB size differ from its engine state")
    vfha = _integer(m["vfha_gpa"], "vfha_gpa", 0, GPA_LIMIT, PAGE_BYTES)
    _integer(m["vfha_hpa"], "vfha_hpa", 0, HPA_LIMIT, PAGE_BYTES)
    if fha_vpn != NO_VPN and vfha >> PAGE_SHIFT != fha_vpn:
        raise ConfigError(f"VM description: vm {vm_id}'s vFHA {vfha:#x} is not the one its engine state traps")
    if m["strategy"] not in STRATEGIES or m["fanout"] not in FANOUTS or m["page_size"] not in PAGE_SIZES:
        raise ConfigError(f"VM description: vm {vm_id} has an unknown strategy, fan-out or page size")
    VmState(m["state"])
    sizes, ranges = 0, [(vfha, PAGE_BYTES, m["vfha_hpa"])]
    for kind in ("dram", "nvdimms"):
        for r in m[kind]:
            gpa = _integer(r["gpa"], f"{kind} gpa", 0, GPA_LIMIT, PAGE_BYTES)
            hpa = _integer(r["hpa"], f"{kind} hpa", 0, HPA_LIMIT, PAGE_BYTES)
            size = _integer(r["size"], f"{kind} size", PAGE_BYTES, GPA_LIMIT, PAGE_BYTES)
            sizes += size
            ranges.append((gpa, size, hpa))
    for r in m["reserved"]:
        if not isinstance(r, list) or len(r) != 2:
            raise ConfigError(f"VM description: reserved range {r!r} is not [gpa, size]")
        _integer(r[0], "reserved gpa")
        _integer(r[1], "reserved size", 1)
    if _owned_tree(rows, root, ranges, vm_id, claimed) != sizes + PAGE_BYTES:
        raise ConfigError(f"VM description: vm {vm_id}'s ranges do not match what its page table maps")
    _check_tlb(rows, root, state[f"vm{vm_id}_tlb"], tlb_entries, vm_id)


def _restore_vm(hv: Hypervisor, m: dict[str, Any]) -> None:
    p = hv.platform
    dram = [MemoryRange(r["gpa"], r["size"], r["hpa"], "dram") for r in m["dram"]]
    nvdimms = [MemoryRange(r["gpa"], r["size"], r["hpa"], "nvdimm") for r in m["nvdimms"]]
    for r in dram:
        p.dram.claim(r.hpa, r.size)
    for r in nvdimms:
        p.claim_pmem(r.hpa, r.size)
    p.dram.claim(m["vfha_hpa"], PAGE_BYTES)
    vm = VM(hv, m["id"], dram=dram, nvdimms=nvdimms, vcpus=m["vcpus"], strategy=m["strategy"],
            fanout=m["fanout"], fanout_controllers=tuple(m["fanout_controllers"]),
            reserved=[tuple(r) for r in m["reserved"]], vfha_gpa=m["vfha_gpa"], vfha_hpa=m["vfha_hpa"],
            vfha_table=[VirtualFlushHint(h["nvdimm"], h["gpa"], tuple(h["physical"])) for h in m["vfha_table"]],
            tlb_entries=m["tlb_entries"], page_size=m["page_size"])
    vm.state = VmState(m["state"])
    hv.vms[vm.id] = vm
