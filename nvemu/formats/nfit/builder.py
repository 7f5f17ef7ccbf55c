"""Building NFITs: a host's from its :class:`~nvemu.machine.config.PlatformConfig`, and the virtual
NFIT a VM is shown (one range per vNVDIMM, flush hint structures naming the single vFHA)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from ...errors import ConfigError
from ..._constants import PAGE_BYTES
from ...machine.config import DOMAINS, PlatformConfig, device_handle
from ...machine.vm import VM
from .codec import Nfit
from .tables import (
    DEFAULT_GRANULARITY,
    DOMAIN_CAPABILITIES,
    EFI_MEMORY_NV,
    EFI_MEMORY_WB,
    FORMAT_INTERFACE_CODE,
    MEM_NOT_ARMED,
    ControlRegion,
    FlushHintAddress,
    Interleave,
    MemoryMap,
    PlatformCapabilities,
    SpaRange,
    Subtable,
)

# ---------------------------------------------------------------------------------------------
# Building tables


def _capabilities(domain: str) -> PlatformCapabilities:
    if domain not in DOMAINS:
        raise ConfigError(f"persistence domain {domain!r} is not one of {DOMAINS}")
    return PlatformCapabilities(highest_capability=1, capabilities=DOMAIN_CAPABILITIES[domain])


def _control_region(index: int, serial: int) -> ControlRegion:
    return ControlRegion(region_index=index, serial_number=serial, code=FORMAT_INTERFACE_CODE)


def nfit_from_platform_config(cfg: PlatformConfig) -> Nfit:
    """The host NFIT for a platform description (the inverse of :func:`platform_config_from_nfit`).

    Subtables, grouped by type: a "pm" SPA range per interleave set (range index = set number + 1);
    a memory device map per NVDIMM (member ``k`` of a set at ``region_offset = k * granularity``;
    an NVDIMM in no set is mapped to range index 0; flags bit 3 "not armed" for an NVDIMM that is
    not ``armed``); an Interleave structure per set when it has more than one member or a
    granularity other than 4 KiB (``line_size`` = granularity, one line per period at offset 0);
    a control region per NVDIMM (serial number = NVDIMM number + 1); a
    flush hint structure per NVDIMM that has hints; platform capabilities with the domain's bits
    (:data:`DOMAIN_CAPABILITIES`) and highest valid capability 1.
    """
    spas: list[Subtable] = []
    maps: dict[int, MemoryMap] = {}
    interleaves: list[Subtable] = []
    for k, s in enumerate(cfg.interleave_sets):
        length = cfg.set_bytes(s)
        spas.append(SpaRange(range_index=k + 1, range_type="pm", address=s.spa_base, length=length,
                             memory_mapping=EFI_MEMORY_WB | EFI_MEMORY_NV))
        il_index = 0
        if len(s.dimms) > 1 or s.granularity != DEFAULT_GRANULARITY:
            il_index = len(interleaves) + 1
            interleaves.append(Interleave(interleave_index=il_index, line_size=s.granularity,
                                          line_offsets=(0,)))
        for pos, d in enumerate(s.dimms):
            maps[d] = MemoryMap(device_handle=cfg.handle(d), physical_id=d, range_index=k + 1,
                                region_index=d + 1, region_size=cfg.nvdimms[d].size,
                                region_offset=pos * s.granularity, interleave_index=il_index,
                                interleave_ways=len(s.dimms), flags=0 if cfg.nvdimms[d].armed else MEM_NOT_ARMED)
    for d, nv in enumerate(cfg.nvdimms):
        if d not in maps:
            maps[d] = MemoryMap(device_handle=cfg.handle(d), physical_id=d, range_index=0, region_index=d + 1,
                                region_size=nv.size, flags=0 if nv.armed else MEM_NOT_ARMED)
    subtables: list[Subtable] = [*spas, *(maps[d] for d in sorted(maps)), *interleaves]
    subtables += [_control_region(d + 1, d + 1) for d in range(len(cfg.nvdimms))]
    subtables += [FlushHintAddress(device_handle=cfg.handle(d), hint_addresses=nv.flush_hints)
                  for d, nv in enumerate(cfg.nvdimms) if nv.flush_hints]
    subtables.append(_capabilities(cfg.domain))
    return Nfit(subtables=tuple(subtables), oem_table_id="NVEMUHST")


def vnvdimm_handle(i: int) -> int:
    """The device handle nvemu gives vNVDIMM ``i`` in a virtual NFIT: node 0, socket 0, imc 0,
    channel ``i % 16``, dimm ``i // 16`` (so 256 vNVDIMMs at most)."""
    if not 0 <= i < 256:
        raise ConfigError(f"vNVDIMM {i}: at most 256 vNVDIMMs fit the handle scheme")
    return device_handle(0, 0, 0, i % 16, i // 16)


def virtual_nfit(vnvdimms: Sequence[tuple[int, int]] | Iterable[tuple[int, int]], vfha_gpa: int | None,
                 domain: str) -> Nfit:
    """The NFIT a VM sees (SPEC 1, step 1).

    One "pm" SPA range per vNVDIMM ``(gpa_base, size)`` (range index i + 1), a memory device map and
    a control region per vNVDIMM (handle :func:`vnvdimm_handle`), one flush hint structure per
    vNVDIMM naming the single vFHA at ``vfha_gpa`` (none when it is None), and platform
    capabilities with ``domain``'s bits. Bad arguments raise :class:`~nvemu.errors.ConfigError`.
    """
    ranges = [(int(b), int(s)) for b, s in vnvdimms]
    caps = _capabilities(domain)
    spans = []
    for i, (base, size) in enumerate(ranges):
        if base < 0 or base % PAGE_BYTES:
            raise ConfigError(f"vNVDIMM {i}: GPA base {base:#x} must be a non-negative multiple of 4 KiB")
        if size <= 0 or size % PAGE_BYTES:
            raise ConfigError(f"vNVDIMM {i}: size {size:#x} must be a positive multiple of 4 KiB")
        if base + size > 1 << 64:
            raise ConfigError(f"vNVDIMM {i}: {base:#x}+{size:#x} runs past the 64-bit address space")
        spans.append((base, base + size, i))
    spans.sort()
    for (_, e0, i0), (b1, _, i1) in itertools.pairwise(spans):
        if b1 < e0:
            raise ConfigError(f"vNVDIMMs {i0} and {i1} overlap at GPA {b1:#x}")
    if vfha_gpa is not None:
        if not 0 <= vfha_gpa < 1 << 64:
            raise ConfigError(f"vFHA GPA {vfha_gpa:#x} is not a 64-bit address")
        for b, e, i in spans:
            if b <= vfha_gpa < e:
                raise ConfigError(f"vFHA GPA {vfha_gpa:#x} lies inside vNVDIMM {i}")
    handles = [vnvdimm_handle(i) for i in range(len(ranges))]
    subtables: list[Subtable] = [SpaRange(range_index=i + 1, range_type="pm", address=b, length=s,
                                          memory_mapping=EFI_MEMORY_WB | EFI_MEMORY_NV)
                                 for i, (b, s) in enumerate(ranges)]
    subtables += [MemoryMap(device_handle=h, physical_id=i, range_index=i + 1, region_index=i + 1,
                            region_size=ranges[i][1]) for i, h in enumerate(handles)]
    subtables += [_control_region(i + 1, i + 1) for i in range(len(ranges))]
    if vfha_gpa is not None:
        subtables += [FlushHintAddress(device_handle=h, hint_addresses=(vfha_gpa,)) for h in handles]
    subtables.append(caps)
    return Nfit(subtables=tuple(subtables), oem_table_id="NVEMUVM ")




def virtual_nfit_of(vm: VM) -> bytes:
    """``vm``'s virtual NFIT as an ACPI binary: SPA ranges and memory-device maps of its vNVDIMMs,
    one flush hint structure per vNVDIMM naming the vFHA, and a platform capabilities structure
    no stronger than the host's domain."""
    platform = vm._live().hypervisor.platform
    table = virtual_nfit([(r.gpa, r.size) for r in vm.nvdimms], vm.vfha_gpa if vm.vfha_table else None,
                         platform.domain)
    return table.to_bytes()
