"""Snapshot and restore of a whole hypervisor, or of one VM, to one ``.npz`` file.

The file holds the engine's canonical state (non-zero pages, line states, WPQs oldest first,
page tables, TLBs, counters) and a JSON description of the platform, costs and VMs, sealed with
a SHA-256 digest so a truncated or altered file is refused rather than half-restored.
Restoring builds a new :class:`Hypervisor`; nothing running is touched.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .config import CostModel, PlatformConfig
from .._files import atomic_write
from ..errors import ConfigError, NvemuError, SnapshotError
from .flush_hints import VirtualFlushHint
from .hypervisor import Hypervisor
from .platform import Platform
from .vm import VM, MemoryRange, VmState
from .flush_hints import FANOUTS, STRATEGIES


FORMAT = "nvemu-snapshot-1"
PAGE = 4096


def _digest(arrays: dict[str, np.ndarray], meta: str) -> str:
    h = hashlib.sha256(meta.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _inside(addrs: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    keep = np.zeros(len(addrs), bool)
    for base, size in ranges:
        keep |= (addrs >= base) & (addrs < base + size)
    return keep


def _only_vm(state: dict[str, np.ndarray], vm: VM) -> dict[str, np.ndarray]:
    """The part of an engine state that belongs to one VM: its pages, lines, queued copies and
    page-table tree (WPQ order kept; other tables become free)."""
    memory = [(r.hpa, r.size) for r in vm.dram + vm.nvdimms] + [(vm.vfha_hpa, PAGE)]
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
    tree, todo = [], [(root, 4)]
    while todo:
        t, level = todo.pop()
        tree.append(t)
        if level > 1:
            for e in rows[t].tolist():
                if e & 7 and not e & 0x80:
                    todo.append(((e & 0x000F_FFFF_FFFF_F000) >> 12, level - 1))
    tree.sort()
    out["table_ids"] = np.array(tree, np.uint32)
    out["table_data"] = np.array([rows[t] for t in tree], np.uint64).reshape(-1, 512)
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


def save_snapshot(target: Hypervisor | VM, path: str | Path) -> None:
    """Write a hypervisor (platform state, every VM) or one VM (its memory, NVDIMM media and
    lines, queued copies, page table, TLBs, counters, with the platform description) to ``path``
    (.npz); :func:`restore_snapshot` brings it back on a fresh host at the same host addresses."""
    if isinstance(target, VM):
        hv, vm = target._live().hypervisor, target
    else:
        hv, vm = target, None
    state = hv.platform.engine.get_state()
    vms = list(hv.vms.values()) if vm is None else [vm._live()]
    if vm is not None:
        state = _only_vm(state, vm)
    p = hv.platform
    meta = json.dumps({"format": FORMAT, "platform": p.config.to_dict(), "costs": p.costs.to_dict(),
                       "pool_tables": p.layout.pool_tables, "max_vms": p.layout.max_vms,
                       "vms": [_vm_meta(v) for v in vms]}, sort_keys=True)
    arrays = {f"engine_{k}": v for k, v in state.items()}
    with atomic_write(path, "wb") as f:         # a snapshot is whole or absent, never half written
        np.savez(f, meta=np.frombuffer(meta.encode(), np.uint8),
                 digest=np.frombuffer(_digest(arrays, meta).encode(), np.uint8), **arrays)


def restore_snapshot(path: str | Path, backend: str | None = None) -> Hypervisor:
    """A new Hypervisor holding what ``path`` saved; raises SnapshotError for a bad file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise SnapshotError(f"{path}: not a readable nvemu snapshot ({type(e).__name__}: {e})") from None
    try:
        meta_text = files.pop("meta").tobytes().decode()
        digest = files.pop("digest").tobytes().decode()
        meta = json.loads(meta_text)
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SnapshotError(f"{path}: snapshot description is missing or unreadable ({e})") from None
    if meta.get("format") != FORMAT:
        raise SnapshotError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    if _digest(files, meta_text) != digest:
        raise SnapshotError(f"{path}: contents do not match their digest: the file is corrupted")
    state = {k[len("engine_"):]: v for k, v in files.items() if k.startswith("engine_")}
    try:
        platform = Platform(PlatformConfig.from_dict(meta["platform"]), CostModel.from_dict(meta["costs"]),
                            pool_tables=meta["pool_tables"], max_vms=meta["max_vms"], backend=backend)
        hv = Hypervisor(platform)
        for m in meta["vms"]:
            _check_vm(m, state, platform.layout.max_vms)
            _restore_vm(hv, m)
        platform.engine.set_state(state)
    except (NvemuError, KeyError, TypeError, ValueError, IndexError) as e:
        raise SnapshotError(f"{path}: cannot restore: {type(e).__name__}: {e}") from None
    return hv


def _integer(value: Any, what: str, lo: int = 0, hi: int | None = None, align: int = 1) -> int:
    if type(value) is not int or value < lo or (hi is not None and value >= hi) or value % align:
        raise ConfigError(f"VM description: {what} {value!r} is not a valid number here")
    return value


def _mapped_bytes(state: dict[str, np.ndarray], root: int) -> int:
    """Bytes of guest-physical space the page-table tree at ``root`` maps (present leaves)."""
    rows = dict(zip(state["table_ids"].tolist(), state["table_data"]))
    total, todo = 0, [(root, 4)]
    while todo:
        t, level = todo.pop()
        row = rows[t]
        present = (row & 7) != 0
        leaf = present & (((row & 0x80) != 0) | (level == 1) | ((row & 3) == 2))
        total += int(leaf.sum()) << (12 + 9 * (level - 1))
        todo += [(int(e & 0x000F_FFFF_FFFF_F000) >> 12, level - 1) for e in row[present & ~leaf].tolist()]
    return total


def _check_vm(m: dict[str, Any], state: dict[str, np.ndarray], max_vms: int) -> None:
    """A VM description must be well formed and agree with the engine state it comes with: a
    resealed file with a doctored description is refused, not half-restored."""
    vm_id = _integer(m["id"], "id", 0, max_vms)
    if vm_id not in state["vm_ids"].tolist():
        raise ConfigError(f"VM description: vm {vm_id} has no engine state")
    root, nvcpus, tlb_entries, _, fha_vpn, _ = state[f"vm{vm_id}_meta"].tolist()
    if _integer(m["vcpus"], "vcpus", 1, 257) != nvcpus or _integer(m["tlb_entries"], "tlb_entries", 1) != tlb_entries:
        raise ConfigError(f"VM description: vm {vm_id}'s vCPUs or TLB size differ from its engine state")
    vfha = _integer(m["vfha_gpa"], "vfha_gpa", 0, 1 << 48, PAGE)
    _integer(m["vfha_hpa"], "vfha_hpa", 0, 1 << 52, PAGE)
    if fha_vpn != 2**64 - 1 and vfha >> 12 != fha_vpn:
        raise ConfigError(f"VM description: vm {vm_id}'s vFHA {vfha:#x} is not the one its engine state traps")
    if m["strategy"] not in STRATEGIES or m["fanout"] not in FANOUTS or m["page_size"] not in (PAGE, 2 << 20):
        raise ConfigError(f"VM description: vm {vm_id} has an unknown strategy, fan-out or page size")
    VmState(m["state"])
    sizes = 0
    for kind in ("dram", "nvdimms"):
        for r in m[kind]:
            _integer(r["gpa"], f"{kind} gpa", 0, 1 << 48, PAGE)
            _integer(r["hpa"], f"{kind} hpa", 0, 1 << 52, PAGE)
            sizes += _integer(r["size"], f"{kind} size", PAGE, None, PAGE)
    for r in m["reserved"]:
        if not isinstance(r, list) or len(r) != 2:
            raise ConfigError(f"VM description: reserved range {r!r} is not [gpa, size]")
        _integer(r[0], "reserved gpa")
        _integer(r[1], "reserved size", 1)
    if _mapped_bytes(state, root) != sizes + PAGE:
        raise ConfigError(f"VM description: vm {vm_id}'s ranges do not match what its page table maps")


def _restore_vm(hv: Hypervisor, m: dict[str, Any]) -> None:
    p = hv.platform
    dram = [MemoryRange(r["gpa"], r["size"], r["hpa"], "dram") for r in m["dram"]]
    nvdimms = [MemoryRange(r["gpa"], r["size"], r["hpa"], "nvdimm") for r in m["nvdimms"]]
    for r in dram:
        p.dram.claim(r.hpa, r.size)
    for r in nvdimms:
        p.claim_pmem(r.hpa, r.size)
    p.dram.claim(m["vfha_hpa"], PAGE)
    vm = VM(hv, m["id"], dram=dram, nvdimms=nvdimms, vcpus=m["vcpus"], strategy=m["strategy"],
            fanout=m["fanout"], fanout_controllers=tuple(m["fanout_controllers"]),
            reserved=[tuple(r) for r in m["reserved"]], vfha_gpa=m["vfha_gpa"], vfha_hpa=m["vfha_hpa"],
            vfha_table=[VirtualFlushHint(h["nvdimm"], h["gpa"], tuple(h["physical"])) for h in m["vfha_table"]],
            tlb_entries=m["tlb_entries"], page_size=m["page_size"])
    vm.state = VmState(m["state"])
    hv.vms[vm.id] = vm
