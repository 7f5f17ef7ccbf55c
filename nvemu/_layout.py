"""The flat machine description both engines (``_core`` and ``_reference``) are built from."""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass
from typing import Any

from ._constants import MAX_FILL_BUFFERS, TIMING_FIELDS
from .errors import ConfigError

HPA_LIMIT = 1 << 52
"""An EPT entry holds host address bits 12-51."""
LEAF_BYTES = 1 << 30
"""Memory index space covered by one leaf of the chunk directory; NVDIMM space starts on such a boundary."""

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
    timing: tuple[int, ...]       # picoseconds per event, in the order of _constants.TIMING_FIELDS
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


def integer(x: Any, name: str, lo: int = 0, hi: int | None = None) -> int:
    """``x`` as a Python int (integers only: no float truncation), at least ``lo`` and below
    ``hi`` when given; TypeError or ConfigError naming ``name`` otherwise."""
    try:
        v = operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(x).__name__}") from None
    if v < lo or (hi is not None and v >= hi):
        bound = f"{lo}..{hi - 1}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{name}={v} is out of range ({bound})")
    return v


@dataclass(frozen=True)
class CheckedLayout:
    """An :class:`EngineLayout` whose every number was checked, as both engines take it."""

    n_controllers: int
    wpq_depth: int
    max_vms: int
    pool_tables: int
    domain: int
    dram_bytes: int
    pmem_base: int
    pmem_bytes: int
    pmem_index: int          # memory index of NVDIMM byte 0: DRAM rounded up to LEAF_BYTES
    chunk_shift: int
    memory_budget: int
    huge_pages: bool
    timing: tuple[int, ...]  # picoseconds per event, in the order of _constants.TIMING_FIELDS
    sets: tuple[tuple[int, int, int, tuple[int, ...]], ...]   # (hpa_base, length, granularity, controllers)


def check_layout(layout: Any) -> CheckedLayout:
    """Every number of ``layout`` (an EngineLayout or alike) checked: ConfigError naming what is wrong."""
    try:
        nctl = integer(layout.n_controllers, "n_controllers", 1, 257)
        out = dict(
            n_controllers=nctl, wpq_depth=integer(layout.wpq_depth, "wpq_depth", 1, 4097),
            max_vms=integer(layout.max_vms, "max_vms", 1, 65537),
            pool_tables=integer(layout.pool_tables, "pool_tables", 1, (1 << 24) + 1),
            domain=integer(layout.domain, "domain", 0, 3), dram_bytes=integer(layout.dram_bytes, "dram_bytes"),
            pmem_base=integer(layout.pmem_base, "pmem_base"),
            chunk_shift=integer(layout.chunk_shift, "chunk_shift", 12, 31),
            memory_budget=integer(layout.budget(), "memory_budget"), huge_pages=bool(layout.huge_pages),
            timing=tuple(integer(t, "timing") for t in layout.timing))
        sets = tuple((integer(s.hpa_base, "set hpa_base"), integer(s.length, "set length", 1),
                      integer(s.granularity, "set granularity", 64),
                      tuple(integer(c, "set controller", 0, nctl) for c in s.controllers)) for s in layout.sets)
    except (AttributeError, TypeError) as e:
        raise ConfigError(f"not an engine layout: {e}") from None
    dram, base = out["dram_bytes"], out["pmem_base"]
    pmem_bytes = sum(length for _, length, _, _ in sets)
    if len(out["timing"]) != len(TIMING_FIELDS) or any(t >= 1 << 40 for t in out["timing"]):
        raise ConfigError(f"timing must be {len(TIMING_FIELDS)} non-negative picosecond counts below 2**40")
    if not 1 <= out["timing"][TIMING_FIELDS.index("fill_buffers")] <= MAX_FILL_BUFFERS:
        raise ConfigError(f"timing fill_buffers must be 1..{MAX_FILL_BUFFERS} line buffers")
    if dram % 4096 or base % 4096 or dram > base:
        raise ConfigError("DRAM must be 4 KiB aligned and lie below pmem_base")
    if base + pmem_bytes > HPA_LIMIT:
        raise ConfigError(f"NVDIMM space ends at {base + pmem_bytes:#x}, beyond the 52 address bits "
                          f"an EPT entry holds")
    offset = 0
    for hpa, length, g, ctls in sets:
        if g & (g - 1) or not ctls or hpa != base + offset or length % g or len(ctls) > 4096:
            raise ConfigError("interleave sets must lie back to back from pmem_base, each a whole "
                              "number of power-of-two granules of at least 64 bytes over some controllers")
        offset += length
    return CheckedLayout(**out, pmem_bytes=pmem_bytes, pmem_index=-(-dram // LEAF_BYTES) * LEAF_BYTES, sets=sets)
