"""Virtual flush hint addresses: allocation (the patent's steps), the VM's virtual FHA table,
and how each flushing strategy maps and handles the vFHA page (SPEC 4)."""

from __future__ import annotations

from dataclasses import dataclass

from .._constants import EPT_R, EPT_W, FhaMode
from ..errors import ConfigError, ResourceError

PAGE = 4096

# strategy -> (how the core handles the vFHA page, the R/W/X bits of its EPT leaf)
STRATEGIES: dict[str, tuple[FhaMode, int]] = {
    "write-protect": (FhaMode.WRITE_PROTECT, EPT_R),      # the patent: reads free, writes trap
    "mmio": (FhaMode.MMIO, EPT_W),                        # W without R: EPT misconfiguration, as KVM marks MMIO
    "writable": (FhaMode.WRITABLE, EPT_R | EPT_W),        # no WPQ flush on the host: nothing to do
    "hypercall": (FhaMode.HYPERCALL, EPT_R),              # the write stands for a flush hypercall
    "drop": (FhaMode.DROP, EPT_R),                        # broken on purpose: traps, drains nothing
    "native": (FhaMode.NATIVE, EPT_R | EPT_W),            # no virtualization: physical FHAs written directly
}
FANOUTS = ("broadcast", "targeted")
PLACEMENTS = ("above-nvdimms", "above-dram")


def resolve_strategy(strategy: str, wpq_flush: bool) -> str:
    """``auto`` is the patent's capability branch: write-protect when the host NVDIMMs support
    WPQ flushing, a writable page when they do not."""
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
                  gpa_limit: int = 1 << 48) -> int:
    """Step 1 of the technique: select a free, page-aligned GPA outside every occupied range
    (DRAM, vNVDIMMs, reserved). ``placement``: ``above-nvdimms`` (first free page above the
    highest vNVDIMM), ``above-dram`` (first free page above the highest DRAM range), or an
    explicit GPA, which must be free and page aligned."""
    if isinstance(placement, int) and not isinstance(placement, bool):
        if placement % PAGE or not 0 <= placement < gpa_limit:
            raise ConfigError(f"vFHA GPA {placement:#x} is not a page-aligned guest-physical address")
        if _overlaps(placement, PAGE, occupied):
            raise ResourceError(f"vFHA GPA {placement:#x} overlaps DRAM, a vNVDIMM or a reserved range")
        return placement
    if placement == "above-nvdimms":
        anchor = nvdimm_ranges or dram_ranges
    elif placement == "above-dram":
        anchor = dram_ranges
    else:
        raise ConfigError(f"unknown vFHA placement {placement!r}; known: {', '.join(PLACEMENTS)} or a GPA")
    gpa = max((a + n for a, n in anchor), default=0)
    gpa = -(-gpa // PAGE) * PAGE
    while _overlaps(gpa, PAGE, occupied):
        gpa = min(a + n for a, n in occupied if gpa < a + n and a < gpa + PAGE)
        gpa = -(-gpa // PAGE) * PAGE
    if gpa >= gpa_limit:
        raise ResourceError("no free guest-physical page for the vFHA")
    return gpa
