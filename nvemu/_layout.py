"""The flat machine description both engines (``_core`` and ``_reference``) are built from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InterleaveLayout:
    """One interleave set in host-physical space: line ``k`` of granule ``g`` belongs to
    controller ``controllers[(offset // granularity) % len(controllers)]``."""

    hpa_base: int
    length: int
    granularity: int
    controllers: tuple[int, ...]   # controller of each member NVDIMM, in interleave order


@dataclass(frozen=True)
class EngineLayout:
    """Host DRAM at HPA ``[0, dram_bytes)``; NVDIMM space at ``[pmem_base, pmem_base + pmem_bytes)``,
    the interleave sets back to back. Everything the engines need, nothing they don't."""

    dram_bytes: int
    pmem_base: int
    sets: tuple[InterleaveLayout, ...]
    n_controllers: int
    wpq_depth: int
    domain: int
    costs: tuple[int, ...]
    pool_tables: int = 4096
    max_vms: int = 256

    @property
    def pmem_bytes(self) -> int:
        return sum(s.length for s in self.sets)
