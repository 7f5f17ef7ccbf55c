"""The flat machine description both engines (``_core`` and ``_reference``) are built from."""

from __future__ import annotations

import os
from dataclasses import dataclass

CHUNK_SHIFT = 21
"""Host memory is allocated in chunks of 2 MiB (see bench/chunk_size.py for the measurement): the
size of an x86 huge page, so the kernel can back a chunk with one TLB entry; large enough that the
directory stays small (16 KiB per GiB of host) and a replay's first touches cost little; small
enough that scattered writes cost 4 MiB (memory + media) each, not more."""

BUDGET_SHARE = 2
"""Default memory budget: 1/BUDGET_SHARE of the machine's physical memory."""


def physical_memory() -> int:
    """Bytes of physical memory of this machine (0 when the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def parse_size(text: str) -> int:
    """``"12G"``, ``"512M"``, ``"4096"``: a byte count (binary K/M/G/T); ValueError otherwise."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    number = t[:-1] if scale > 1 else t
    value = int(float(number) * scale)
    if value < 0:
        raise ValueError(f"{text!r} is negative")
    return value


def default_memory_budget() -> int:
    """``NVEMU_MEMORY_BUDGET`` (bytes, or with K/M/G/T) when set, else half the physical memory
    (at least 1 GiB): what an emulator may touch without the OOM killer ending it."""
    env = os.environ.get("NVEMU_MEMORY_BUDGET")
    if env:
        try:
            return parse_size(env)
        except ValueError:
            from .errors import ConfigError
            raise ConfigError(f"NVEMU_MEMORY_BUDGET={env!r} is not a size (for example 16G)") from None
    return max(1 << 30, physical_memory() // BUDGET_SHARE)


def _gib(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} bytes"


def budget_message(budget: int, touched: int, needed: int) -> str:
    """The ResourceError text for touched memory that would pass ``budget``."""
    return (f"touched host memory would exceed the memory budget of {_gib(budget)} ({budget} bytes; "
            f"{_gib(touched)} in use, {needed} more bytes needed); raise it with "
            f"Platform(..., memory_budget=BYTES) or the NVEMU_MEMORY_BUDGET environment variable "
            f"(for example NVEMU_MEMORY_BUDGET=32G)")


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
    chunk_shift: int = CHUNK_SHIFT      # log2 of the bytes of one chunk of host memory
    memory_budget: int | None = None    # bytes of chunks the engine may allocate; None: the default
    huge_pages: bool = True             # advise chunks of 2 MiB and more for transparent huge pages

    def budget(self) -> int:
        """The memory budget in bytes (``memory_budget``, or :func:`default_memory_budget`)."""
        return default_memory_budget() if self.memory_budget is None else self.memory_budget

    @property
    def pmem_bytes(self) -> int:
        return sum(s.length for s in self.sets)
