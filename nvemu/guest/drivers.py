"""Guest driver models: trace records emitted the way real guests write and flush pmem.

- :func:`nvdimm_flush`: Linux libnvdimm's ``nvdimm_flush()`` (barrier, one 8-byte write to one
  flush hint per DIMM of the region, the hint picked per CPU, barrier). Linux de-duplicates
  identical hints, so a VM whose virtual NFIT names one vFHA for every vNVDIMM makes one store.
- :func:`pmem_persist`: PMDK's ``pmem_persist()`` (a clwb per line, sfence), optionally followed
  by the vFHA write of a "deep flush".
- :func:`write_persist`: a plain writer: stores, then a persist.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .._constants import LINE_BYTES, TRACE_DTYPE, Op



class TraceWriter:
    """Accumulates records for one (vm, vcpu) and returns them as a TRACE_DTYPE array.

    Examples
    --------
    >>> t = TraceWriter(vm=0, vcpu=0)
    >>> t.store(0x1_0000_0000, 7); pmem_persist(t, 0x1_0000_0000, 8)
    >>> [Op(r).name for r in t.to_array()["op"]]
    ['STORE', 'CLWB', 'SFENCE']
    """

    def __init__(self, vm: int = 0, vcpu: int = 0) -> None:
        self.vm = vm
        self.vcpu = vcpu
        self._records: list[tuple[int, int, int, int, int, int]] = []

    def __len__(self) -> int:
        return len(self._records)

    def op(self, op: int, gpa: int = 0, size: int = 0, value: int = 0) -> None:
        """Append one record of op ``op`` for this writer's VM and vCPU."""
        self._records.append((int(op), self.vcpu, self.vm, size, gpa, value))

    def load(self, gpa: int, size: int = 8) -> None:
        """Append a LOAD of ``size`` bytes at ``gpa``."""
        self.op(Op.LOAD, gpa, size)

    def store(self, gpa: int, value: int, size: int = 8) -> None:
        """Append a STORE of ``value`` as ``size`` bytes at ``gpa``."""
        self.op(Op.STORE, gpa, size, value)

    def nt_store(self, gpa: int, value: int, size: int = 8) -> None:
        """Append a non-temporal STORE."""
        self.op(Op.NT_STORE, gpa, size, value)

    def clwb(self, gpa: int) -> None:
        """Append a CLWB of the line holding ``gpa``."""
        self.op(Op.CLWB, gpa)

    def clflushopt(self, gpa: int) -> None:
        """Append a CLFLUSHOPT of the line holding ``gpa``."""
        self.op(Op.CLFLUSHOPT, gpa)

    def clflush(self, gpa: int) -> None:
        """Append a CLFLUSH of the line holding ``gpa``."""
        self.op(Op.CLFLUSH, gpa)

    def sfence(self) -> None:
        """Append an SFENCE."""
        self.op(Op.SFENCE)

    def mfence(self) -> None:
        """Append an MFENCE."""
        self.op(Op.MFENCE)

    def to_array(self) -> np.ndarray:
        """The records so far as a TRACE_DTYPE array."""
        return np.array(self._records, dtype=TRACE_DTYPE)


def lines_of(gpa: int, length: int) -> range:
    """Start addresses of the 64-byte lines that ``[gpa, gpa+length)`` touches."""
    first = gpa - gpa % LINE_BYTES
    return range(first, gpa + max(length, 1), LINE_BYTES)


def nvdimm_flush(t: TraceWriter, flush_hints: Sequence[Sequence[int]], cpu: int | None = None) -> None:
    """Linux ``nvdimm_flush()``: wmb, one 8-byte write per DIMM of the region to that DIMM's hint
    chosen by CPU number, identical addresses written once, wmb."""
    cpu = t.vcpu if cpu is None else cpu
    targets: list[int] = []
    for hints in flush_hints:
        if hints:
            h = hints[cpu % len(hints)]
            if h not in targets:
                targets.append(h)
    t.sfence()
    for h in targets:
        t.store(h, 1)
    t.sfence()


def pmem_persist(t: TraceWriter, gpa: int, length: int, deep_flush: int | None = None,
                 flush: int = Op.CLWB) -> None:
    """PMDK ``pmem_persist()``: flush every line of the range, sfence; with ``deep_flush`` (the
    vFHA GPA) also write the flush hint and fence, as PMDK's deep flush does."""
    for line in lines_of(gpa, length):
        t.op(flush, line)
    t.sfence()
    if deep_flush is not None:
        t.store(deep_flush, 1)
        t.sfence()


def write_persist(t: TraceWriter, gpa: int, data: bytes, deep_flush: int | None = None) -> None:
    """Store ``data`` at ``gpa`` in naturally aligned pieces of up to 8 bytes that stay inside
    their line, then persist it."""
    pos, end = gpa, gpa + len(data)
    while pos < end:
        size = 8
        while pos % size or pos + size > end:
            size //= 2
        t.store(pos, int.from_bytes(data[pos - gpa:pos - gpa + size], "little"), size)
        pos += size
    pmem_persist(t, gpa, len(data), deep_flush)
