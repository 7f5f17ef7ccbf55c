"""Virtual flush hint addresses: allocation (the patent's steps), the VM's virtual FHA table,
and how each flushing strategy maps and handles the vFHA page (SPEC 4)."""

from __future__ import annotations

from dataclasses import dataclass

from .._constants import EPT_R, EPT_W, GPA_LIMIT, PAGE_BYTES, FhaMode
from ..errors import ConfigError, ResourceError


@dataclass(frozen=True)
class Strategy:
    """How a hypervisor virtualizes the flush hint: how the core handles the vFHA page (``mode``),
    the R/W/X bits of its EPT leaf (``perms``), and whether the strategy is one the benchmarks
    compare (``compared``; ``drop`` is broken on purpose, ``native`` the baseline)."""

    name: str
    mode: FhaMode
    perms: int
    compared: bool
    help: str


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("write-protect", FhaMode.WRITE_PROTECT, EPT_R, True, "the patent: reads free, writes trap"),
    Strategy("mmio", FhaMode.MMIO, EPT_W, True, "W without R: an EPT misconfiguration, as KVM marks MMIO"),
    Strategy("hypercall", FhaMode.HYPERCALL, EPT_R, True, "the write stands for a flush hypercall"),
    Strategy("writable", FhaMode.WRITABLE, EPT_R | EPT_W, True, "no WPQ flush on the host: nothing to do"),
    Strategy("drop", FhaMode.DROP, EPT_R, False, "broken on purpose: traps, drains nothing"),
    Strategy("native", FhaMode.NATIVE, EPT_R | EPT_W, False,
             "no virtualization: the guest writes the physical FHAs directly"),
)}
"""The registry: strategy name -> :class:`Strategy` (``auto`` resolves to one of them)."""
COMPARED_STRATEGIES = tuple(name for name, s in STRATEGIES.items() if s.compared)
FANOUTS = ("broadcast", "targeted")
PLACEMENTS = ("above-nvdimms", "above-dram")


def resolve_strategy(strategy: str, wpq_flush: bool) -> str:
    """``auto`` is the patent's capability branch: write-protect when the NVDIMMs backing the VM
    support WPQ flushing (``wpq_flush``: one of its regions lists a flush hint), a writable page
    when they do not."""
    if strategy == "auto":
        return "write-protect" if wpq_flush else "writable"
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; known: auto, {', '.join(STRATEGIES)}")
    return strategy


@dataclass(frozen=True)
class VirtualFlushHint:
    """One row of a VM's virtual FHA table: the vNVDIMM it serves, the vFHA's guest-physical
    address, and the physical flush hints (SPA) a write to it is propagated to."""

    nvdimm: int
    gpa: int
    physical: tuple[int, ...]


def _overlaps(a: int, n: int, ranges: list[tuple[int, int]]) -> bool:
    return any(a < b + m and b < a + n for b, m in ranges)


def allocate_vfha(occupied: list[tuple[int, int]], placement: str | int = "above-nvdimms",
                  nvdimm_ranges: list[tuple[int, int]] = (), dram_ranges: list[tuple[int, int]] = (),
                  gpa_limit: int = GPA_LIMIT) -> int:
    """Step 1 of the technique: select a free, page-aligned GPA outside every occupied range
    (DRAM, vNVDIMMs, reserved). ``placement``: ``above-nvdimms`` (first free page above the
    highest vNVDIMM), ``above-dram`` (first free page above the highest DRAM range), or an
    explicit GPA, which must be free and page aligned."""
    if isinstance(placement, int) and not isinstance(placement, bool):
        if placement % PAGE_BYTES or not 0 <= placement < gpa_limit:
            raise ConfigError(f"vFHA GPA {placement:#x} is not a page-aligned guest-physical address")
        if _overlaps(placement, PAGE_BYTES, occupied):
            raise ResourceError(f"vFHA GPA {placement:#x} overlaps DRAM, a vNVDIMM or a reserved range")
        return placement
    if placement == "above-nvdimms":
        anchor = nvdimm_ranges or dram_ranges
    elif placement == "above-dram":
        anchor = dram_ranges
    else:
        raise ConfigError(f"unknown vFHA placement {placement!r}; known: {', '.join(PLACEMENTS)} or a GPA")
    gpa = max((a + n for a, n in anchor), default=0)
    gpa = -(-gpa // PAGE_BYTES) * PAGE_BYTES
    while _overlaps(gpa, PAGE_BYTES, occupied):
        gpa = min(a + n for a, n in occupied if gpa < a + n and a < gpa + PAGE_BYTES)
        gpa = -(-gpa // PAGE_BYTES) * PAGE_BYTES
    if gpa >= gpa_limit:
        raise ResourceError("no free guest-physical page for the vFHA")
    return gpa
