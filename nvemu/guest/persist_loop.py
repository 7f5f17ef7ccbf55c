"""The persist loop, the core benchmark's trace: per random line 8 stores, a load and a clwb; an
sfence every 8 lines; a vFHA write and an sfence every 64 lines (Linux's ``nvdimm_flush`` barrier).

Its output and signature are fixed (``tests/test_workloads.py`` pins digests): benchmarks compare
figures across versions on it. :func:`persist_loop_chunks` yields the same records chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .._constants import LINE_BYTES, TRACE_DTYPE, Op

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


def _persist_loop_records(lines: np.ndarray, values: np.ndarray, nvdimm_gpa: int, vfha_gpa: int,
                          vm: int, vcpu: int) -> np.ndarray:
    """The records of ``len(lines)`` whole persist-loop blocks: ``lines[b]`` the 64 line numbers of
    block ``b``, ``values`` one random draw per record."""
    op, slot, off = _persist_loop_block()
    blocks = len(lines)
    out = np.zeros(blocks * len(op), TRACE_DTYPE)
    out["op"] = np.tile(op, blocks)
    out["vm"] = vm
    out["vcpu"] = vcpu
    tiled_slot = np.tile(slot, blocks)
    block_of = np.repeat(np.arange(blocks), len(op))
    data = tiled_slot >= 0
    gpa = np.zeros(len(out), np.uint64)
    gpa[data] = nvdimm_gpa + lines[block_of[data], tiled_slot[data]] * LINE_BYTES + np.tile(off, blocks)[data]
    gpa[tiled_slot == -2] = vfha_gpa
    out["gpa"] = gpa
    is_store = out["op"] == Op.STORE
    out["size"][is_store | (out["op"] == Op.LOAD)] = 8
    out["value"][is_store] = values[is_store]
    out["value"][tiled_slot == -2] = 1
    return out


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
    if n_ops < 0 or nvdimm_bytes < LINE_BYTES or nvdimm_gpa % LINE_BYTES:
        raise ValueError("persist_loop needs n_ops >= 0 and a line-aligned vNVDIMM of at least one line")
    block_len = len(_persist_loop_block()[0])
    blocks = -(-n_ops // block_len) if n_ops else 0
    rng = np.random.default_rng(seed)
    lines = rng.integers(0, nvdimm_bytes // LINE_BYTES, size=(blocks, LINES_PER_VFHA), dtype=np.uint64)
    values = rng.integers(0, 1 << 63, size=blocks * block_len, dtype=np.uint64) * 2 + 1
    return _persist_loop_records(lines, values, nvdimm_gpa, vfha_gpa, vm, vcpu)[:n_ops]


def persist_loop_chunks(n_ops: int, nvdimm_gpa: int, nvdimm_bytes: int, vfha_gpa: int, seed: int = 0,
                        vm: int = 0, vcpu: int = 0, chunk_blocks: int = 2048) -> Iterator[np.ndarray]:
    """:func:`persist_loop`'s output, bit for bit, in chunks of ``chunk_blocks`` 650-record blocks,
    so a trace of any length needs memory for one chunk only. persist_loop draws every block's
    lines first and the values after them; numpy draws bounded 64-bit integers one at a time, so
    drawing in pieces gives the same numbers, and a second generator skipped past all the line
    draws yields the values."""
    if n_ops < 0 or nvdimm_bytes < LINE_BYTES or nvdimm_gpa % LINE_BYTES:
        raise ValueError("persist_loop needs n_ops >= 0 and a line-aligned vNVDIMM of at least one line")
    block_len = len(_persist_loop_block()[0])
    blocks = -(-n_ops // block_len) if n_ops else 0
    n_lines = nvdimm_bytes // LINE_BYTES
    skip = np.random.default_rng(seed)
    for lo in range(0, blocks, chunk_blocks):
        skip.integers(0, n_lines, size=(min(chunk_blocks, blocks - lo), LINES_PER_VFHA), dtype=np.uint64)
    line_rng, value_rng = np.random.default_rng(seed), np.random.default_rng(seed)
    value_rng.bit_generator.state = skip.bit_generator.state
    done = 0
    for lo in range(0, blocks, chunk_blocks):
        cb = min(chunk_blocks, blocks - lo)
        lines = line_rng.integers(0, n_lines, size=(cb, LINES_PER_VFHA), dtype=np.uint64)
        values = value_rng.integers(0, 1 << 63, size=cb * block_len, dtype=np.uint64) * 2 + 1
        out = _persist_loop_records(lines, values, nvdimm_gpa, vfha_gpa, vm, vcpu)[:n_ops - done]
        done += len(out)
        yield out


__all__ = ["LINES_PER_FENCE", "LINES_PER_VFHA", "persist_loop", "persist_loop_chunks"]
