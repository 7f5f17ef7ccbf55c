"""The ACPI NVDIMM Firmware Interface Table (NFIT): parse, build, and discover a platform from it.

A physical NFIT tells nvemu what the host has: which NVDIMMs hang off which memory controllers,
where their persistent-memory ranges sit, which flush hint addresses drain each controller's WPQ,
and which persistence domain the platform guarantees (SPEC 1-2). A virtual NFIT is what a VM is
shown: one range per vNVDIMM and flush hint structures that all name the single vFHA.

The layout is the one in ACPI 6.x section 5.2.25 (field names follow ACPICA's ``actbl2.h``, in
snake_case). Everything is little-endian. The table is a 36-byte ACPI header, 4 reserved bytes,
then subtables that each start with ``type: u16, length: u16``.

:func:`parse` turns bytes into an :class:`Nfit` of frozen dataclasses, :func:`build` (or
:meth:`Nfit.to_bytes`) turns it back, with lengths, counts and the checksum computed:
``parse(build(x)) == x`` and ``build(parse(b)) == b`` for a valid table ``b``. Bytes a subtable
has past the layout nvemu knows are kept in its ``tail``, and subtables of unknown types as
:class:`RawSubtable`, so that a table from a newer ACPI revision still round-trips. Malformed input
raises :class:`~nvemu.errors.NfitError` naming the byte offset and the field, and nothing else.

Examples
--------
>>> from nvemu.formats.nfit import *
>>> from nvemu.machine.config import preset
>>> table = nfit_from_platform_config(preset("default"))
>>> data = table.to_bytes()
>>> parse(data) == table and build(parse(data)) == data
True
>>> info = discover(data)
>>> info["persistence_domain"], info["wpq_flush"], len(info["controllers"])
('adr', True, 4)
"""

from __future__ import annotations

from .builder import nfit_from_platform_config, virtual_nfit, virtual_nfit_of, vnvdimm_handle
from .codec import Nfit, build, parse
from .discovery import discover, persistence_domain, platform_config_from_nfit, platform_from_nfit
from .tables import (
                     CAP_CACHE_FLUSH,
                     CAP_MEM_FLUSH,
                     CAP_MEM_MIRRORING,
                     DEFAULT_GRANULARITY,
                     DOMAIN_CAPABILITIES,
                     EFI_MEMORY_NV,
                     EFI_MEMORY_WB,
                     FORMAT_INTERFACE_CODE,
                     GUIDS,
                     HEADER_BYTES,
                     SIGNATURE,
                     SPA_FLAG_LOCATION_COOKIE_VALID,
                     ControlRegion,
                     DataRegion,
                     FlushHintAddress,
                     Interleave,
                     MemoryMap,
                     PlatformCapabilities,
                     RawSubtable,
                     Smbios,
                     SpaRange,
                     Subtable,
)

__all__ = [
    "SIGNATURE", "HEADER_BYTES", "GUIDS", "CAP_CACHE_FLUSH", "CAP_MEM_FLUSH", "CAP_MEM_MIRRORING",
    "DOMAIN_CAPABILITIES", "DEFAULT_GRANULARITY", "EFI_MEMORY_NV", "EFI_MEMORY_WB", "FORMAT_INTERFACE_CODE",
    "SPA_FLAG_LOCATION_COOKIE_VALID", "platform_from_nfit", "virtual_nfit_of",
    "SpaRange", "MemoryMap", "Interleave", "Smbios", "ControlRegion", "DataRegion", "FlushHintAddress",
    "PlatformCapabilities", "RawSubtable", "Subtable", "Nfit",
    "parse", "build", "persistence_domain", "platform_config_from_nfit", "discover",
    "nfit_from_platform_config", "virtual_nfit", "vnvdimm_handle",
]
