"""Guest driver models: trace records emitted the way Linux and PMDK write and flush pmem (issue 16, item 5).

Sources: Linux drivers/nvdimm/region_devs.c (``nd_region_activate``, ``generic_nvdimm_flush``,
``nvdimm_has_flush``, the ``deep_flush`` region attribute) and drivers/nvdimm/pmem.c
(``pmem_submit_bio``); PMDK 2.1 src/libpmem/pmem.c (``pmem_init``: on eADR ``Funcs.flush`` is
``flush_empty`` while ``deep_flush`` keeps the real write-back; ``pmem_deep_persist`` =
``pmem_deep_flush`` + ``pmem_deep_drain``), src/common/os_deep_linux.c (``os_deep_type``: Device DAX
-> ``pmem_drain`` then the region's ``deep_flush`` write) and src/libpmem2/deep_flush_linux.c
(``pmem2_deep_flush_write``: reads ``deep_flush`` first and skips the write when it reads "0").

- :class:`NvdimmRegion` / :func:`nvdimm_flush`: Linux's ``generic_nvdimm_flush()``: a barrier, one
  8-byte write per DIMM of the region to hint ``idx & ((1 << ilog2(min num_flush)) - 1)`` of that
  DIMM, ``idx`` a per-CPU counter advanced by ``hash_32(pid + idx, 8)`` each call, a barrier. A DIMM
  whose slot-0 hint equals an earlier DIMM's slot-0 hint is skipped (the de-duplication looks at
  slot 0 only), so a VM whose virtual NFIT names one vFHA for every vNVDIMM makes one store.
- :func:`pmem_submit_bio`: ``nvdimm_flush`` before the data for REQ_PREFLUSH and after it for
  REQ_FUA; a journalled fsync's commit block carries both (jbd2), so it costs two flushes.
- :func:`pmem_persist`: PMDK's ``pmem_persist()`` (a write-back per line, sfence; on eADR no
  write-back, the fence stays); :func:`pmem_deep_persist`: PMDK's deep persist on Device DAX.
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


def hash_32(value: int, bits: int) -> int:
    """Linux ``hash_32`` (include/linux/hash.h): the top ``bits`` of ``value * GOLDEN_RATIO_32``."""
    return ((value * 0x61C88647) & 0xFFFF_FFFF) >> (32 - bits)


class NvdimmRegion:
    """A guest's view of one region for flushing: the flush hints of each of its DIMMs (as the
    NFIT lists them), the hint slots ``nd_region_activate`` keeps, and the per-CPU ``flush_idx``.

    Examples
    --------
    >>> r = NvdimmRegion([[0x100, 0x140], [0x200, 0x240, 0x280]])
    >>> r.hints_used, r.deep_flush
    (2, 1)
    """

    def __init__(self, flush_hints: Sequence[Sequence[int]], pid: int = 1) -> None:
        counts = [len(h) for h in flush_hints if h]
        num_flush = min(counts) if counts else 0                 # min_not_zero over the DIMMs
        self.hints_used = 1 << (num_flush.bit_length() - 1) if num_flush else 0   # 1 << ilog2(num_flush)
        self.slots: list[list[int]] = [list(h) for h in flush_hints]
        for i, hints in enumerate(self.slots):                    # duplicates of slot 0 only
            if hints and any(other and other[0] == hints[0] for other in self.slots[:i]):
                self.slots[i] = []
        self.has_flush = bool(counts)                             # nvdimm_has_flush
        self.pid = pid
        self.flush_idx: dict[int, int] = {}

    @property
    def deep_flush(self) -> int:
        """What the region's sysfs ``deep_flush`` attribute reads (``nvdimm_has_flush``)."""
        return int(self.has_flush)

    def flush(self, t: TraceWriter, cpu: int | None = None) -> None:
        """``generic_nvdimm_flush()`` on ``cpu`` (default: the writer's vCPU)."""
        cpu = t.vcpu if cpu is None else cpu
        idx = self.flush_idx.get(cpu, 0)
        idx = (idx + hash_32((self.pid + idx) & 0xFFFF_FFFF, 8)) & 0xFFFF_FFFF
        self.flush_idx[cpu] = idx
        t.sfence()                                                # pmem_wmb()
        if self.hints_used:
            for hints in self.slots:
                if hints:
                    t.store(hints[idx & (self.hints_used - 1)], 1)     # writeq(1, ...)
        t.sfence()                                                # wmb()


def nvdimm_flush(t: TraceWriter, flush_hints: Sequence[Sequence[int]] | NvdimmRegion,
                 cpu: int | None = None) -> None:
    """Linux ``nvdimm_flush()`` of a region given as its DIMMs' flush hints (a fresh per-CPU index,
    as on a CPU's first flush) or as an :class:`NvdimmRegion` (whose index moves on)."""
    region = flush_hints if isinstance(flush_hints, NvdimmRegion) else NvdimmRegion(flush_hints)
    region.flush(t, cpu)


def pmem_submit_bio(t: TraceWriter, region: NvdimmRegion, gpa: int, length: int, *, preflush: bool = False,
                    fua: bool = False) -> None:
    """Linux ``pmem_submit_bio()`` for a write bio: ``nvdimm_flush`` first for REQ_PREFLUSH, the
    data by ``memcpy_flushcache`` (8-byte non-temporal stores), ``nvdimm_flush`` after for REQ_FUA."""
    if preflush:
        region.flush(t)
    for off in range(0, length, 8):
        t.nt_store(gpa + off, 0)
    if fua:
        region.flush(t)


def pmem_persist(t: TraceWriter, gpa: int, length: int, deep_flush: int | NvdimmRegion | None = None,
                 flush: int = Op.CLWB, eadr: bool = False) -> None:
    """PMDK ``pmem_persist()``: write back every line of the range (nothing on eADR, where PMDK's
    flush is ``flush_empty``), sfence. With ``deep_flush`` (the vFHA GPA, or a region) it is
    :func:`pmem_deep_persist` instead."""
    if deep_flush is not None:
        region = deep_flush if isinstance(deep_flush, NvdimmRegion) else NvdimmRegion([[deep_flush]])
        pmem_deep_persist(t, gpa, length, region, flush)
        return
    if not eadr:
        for line in lines_of(gpa, length):
            t.op(flush, line)
    t.sfence()


def pmem_deep_persist(t: TraceWriter, gpa: int, length: int, region: NvdimmRegion,
                      flush: int = Op.CLWB) -> None:
    """PMDK ``pmem_deep_persist()`` on Device DAX: ``pmem_deep_flush`` writes back every line (also
    on eADR), ``pmem_drain`` fences, then the region's ``deep_flush`` attribute is read and, when it
    does not read 0, written: the kernel's ``nvdimm_flush()``."""
    for line in lines_of(gpa, length):
        t.op(flush, line)
    t.sfence()
    if region.deep_flush:
        region.flush(t)


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
