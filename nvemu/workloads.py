"""Workload generators: deterministic (per seed) TRACE_DTYPE arrays of guest behaviour."""

from __future__ import annotations

import numpy as np

from ._constants import TRACE_DTYPE, Op

LINE = 64
LINES_PER_FENCE = 8
LINES_PER_VFHA = 64


def _persist_loop_block() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One block of the persist loop: (op, line slot 0..63 or -1, byte offset) per record.
    Per line: 8 stores covering it, a load, a clwb; an sfence every 8 lines; after 64 lines a
    vFHA write and an sfence (Linux's nvdimm_flush barrier)."""
    ops, slots, offs = [], [], []
    for line in range(LINES_PER_VFHA):
        for k in range(8):
            ops.append(Op.STORE); slots.append(line); offs.append(8 * k)
        ops.append(Op.LOAD); slots.append(line); offs.append(0)
        ops.append(Op.CLWB); slots.append(line); offs.append(0)
        if line % LINES_PER_FENCE == LINES_PER_FENCE - 1:
            ops.append(Op.SFENCE); slots.append(-1); offs.append(0)
    ops += [Op.STORE, Op.SFENCE]
    slots += [-2, -1]                  # -2: the vFHA
    offs += [0, 0]
    return np.array(ops, np.uint8), np.array(slots, np.int64), np.array(offs, np.uint64)


def persist_loop(n_ops: int, nvdimm_gpa: int, nvdimm_bytes: int, vfha_gpa: int, seed: int = 0,
                 vm: int = 0, vcpu: int = 0) -> np.ndarray:
    """The benchmark pattern (SPEC, core issue): per random line of the vNVDIMM, 8 stores, a load
    and a clwb; an sfence every 8 lines; a vFHA write every 64 lines.

    Examples
    --------
    >>> t = persist_loop(650, 1 << 32, 1 << 20, (1 << 32) + (1 << 20))
    >>> int((t["gpa"] == (1 << 32) + (1 << 20)).sum()), len(t)
    (1, 650)
    """
    if n_ops < 0 or nvdimm_bytes < LINE or nvdimm_gpa % LINE:
        raise ValueError("persist_loop needs n_ops >= 0 and a line-aligned vNVDIMM of at least one line")
    op, slot, off = _persist_loop_block()
    blocks = -(-n_ops // len(op)) if n_ops else 0
    rng = np.random.default_rng(seed)
    lines = rng.integers(0, nvdimm_bytes // LINE, size=(blocks, LINES_PER_VFHA), dtype=np.uint64)
    out = np.zeros(blocks * len(op), TRACE_DTYPE)
    out["op"] = np.tile(op, blocks)
    out["vm"] = vm
    out["vcpu"] = vcpu
    tiled_slot = np.tile(slot, blocks)
    block_of = np.repeat(np.arange(blocks), len(op))
    data = tiled_slot >= 0
    gpa = np.zeros(len(out), np.uint64)
    gpa[data] = nvdimm_gpa + lines[block_of[data], tiled_slot[data]] * LINE + np.tile(off, blocks)[data]
    gpa[tiled_slot == -2] = vfha_gpa
    out["gpa"] = gpa
    is_store = out["op"] == Op.STORE
    out["size"][is_store | (out["op"] == Op.LOAD)] = 8
    values = rng.integers(0, 1 << 63, size=len(out), dtype=np.uint64) * 2 + 1
    out["value"][is_store] = values[is_store]
    out["value"][tiled_slot == -2] = 1
    return out[:n_ops]
