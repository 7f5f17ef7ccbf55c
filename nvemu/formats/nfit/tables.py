"""NFIT subtables as frozen dataclasses (ACPI 6.x section 5.2.25; field names follow ACPICA's
``actbl2.h`` in snake_case) and what they share."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, Union

from ...errors import NfitError
from ...machine.config import KiB, decode_handle

SIGNATURE = b"NFIT"
ACPI_HEADER_BYTES = 36
HEADER_BYTES = 40  # ACPI header + the NFIT's 4 reserved bytes: where the first subtable starts

#: SPA range type GUIDs (ACPI 6.x table 5-133) by the short name nvemu gives them.
GUIDS: dict[str, str] = {
    "volatile": "7305944F-FDDA-44E3-B16C-3F22D252E5D0",
    "pm": "66F0D379-B4F3-4074-AC43-0D3318B78CDB",
    "control-region": "92F701F6-13B4-405D-910B-299367E8234C",
    "block-data-window": "91AF0530-5D86-470E-A6B0-0A2DB9408249",
    "volatile-virtual-disk": "77AB535A-45FC-624B-5560-F7B281D1F96E",
    "volatile-virtual-cd": "3D5ABD30-4175-87CE-6D64-D2ADE523C4BB",
    "persistent-virtual-disk": "5CEA02C9-4D07-69D3-269F-4496FBE096F9",
    "persistent-virtual-cd": "08018188-42CD-BB48-100F-5387D53DED3D",
}
_GUID_NAMES = {g: n for n, g in GUIDS.items()}

# Platform capabilities (type 7) bits.
CAP_CACHE_FLUSH = 1 << 0      # CPU cache flush to NVDIMM on power loss: eADR
CAP_MEM_FLUSH = 1 << 1        # memory-controller (WPQ) flush to NVDIMM on power loss: ADR
CAP_MEM_MIRRORING = 1 << 2
#: The capability bits nvemu writes for each persistence domain (ACPI: bit 0 set implies bit 1 set).
DOMAIN_CAPABILITIES = {"eadr": CAP_CACHE_FLUSH | CAP_MEM_FLUSH, "adr": CAP_MEM_FLUSH, "none": 0}

SPA_FLAG_LOCATION_COOKIE_VALID = 1 << 2
# Memory device to SPA range map flags (ACPI 6.x table 5-135; ACPICA actbl2.h ACPI_NFIT_MEM_*).
MEM_SAVE_FAILED = 1 << 0
MEM_RESTORE_FAILED = 1 << 1
MEM_FLUSH_FAILED = 1 << 2      # the platform flush of the last shutdown failed
MEM_NOT_ARMED = 1 << 3         # the device is not armed: it may not persist writes (Linux NDD_UNARMED)
MEM_HEALTH_OBSERVED = 1 << 4
MEM_HEALTH_ENABLED = 1 << 5
MEM_MAP_FAILED = 1 << 6
#: The flags that take away the ADR guarantee for a device (issue 16, item 4).
MEM_NO_ADR = MEM_FLUSH_FAILED | MEM_NOT_ARMED
EFI_MEMORY_WB = 0x8
EFI_MEMORY_NV = 0x8000
#: Interleave granularity assumed for a set whose memory device maps name no Interleave structure.
DEFAULT_GRANULARITY = 4 * KiB
#: Region format interface code nvemu writes in control regions (JEDEC, interface in the low byte,
#: function in the high byte; Linux drivers/acpi/nfit/nfit.h): 0x0101 is byte-addressable, energy
#: backed (NVDIMM-N); 0x0201 is block-addressable, not energy backed; 0x0301 is byte-addressable, not
#: energy backed, which is what Intel Optane DC persistent memory reports and what nvemu writes.
FORMAT_INTERFACE_CODE = 0x0301

_Layout = tuple[tuple[str, int], ...]


def _where(offset: int, field_name: str) -> str:
    return f"NFIT offset {offset:#x} ({offset}), field {field_name}"


def _err(offset: int, field_name: str, problem: str) -> NfitError:
    return NfitError(f"{_where(offset, field_name)}: {problem}")


def _u(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset:offset + size], "little")


def _enc(value: Any, size: int, offset: int, field_name: str) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(offset, field_name, f"{value!r} is not an integer")
    if not 0 <= value < 1 << (8 * size):
        raise _err(offset, field_name, f"{value:#x} does not fit {size} byte(s)")
    return value.to_bytes(size, "little")


def _canonical_range_type(value: str) -> str:
    """A known SPA type's short name, or the upper-case canonical GUID string of any other."""
    if value in GUIDS:
        return value
    try:
        text = str(uuid.UUID(value)).upper()
    except (ValueError, TypeError, AttributeError):
        raise NfitError(f"SPA range type {value!r} is neither a known name ({', '.join(GUIDS)}) "
                        f"nor a GUID") from None
    return _GUID_NAMES.get(text, text)


def _guid_bytes(range_type: str) -> bytes:
    return uuid.UUID(GUIDS.get(range_type, range_type)).bytes_le


def _guid_from_bytes(raw: bytes) -> str:
    return _canonical_range_type(str(uuid.UUID(bytes_le=bytes(raw))))


class _Known:
    """Layout description shared by the known subtable classes (not a dataclass itself).

    ``_FIXED`` is the fixed part after the 4-byte subtable header as (field, bytes); a field named
    in ``_ARRAY`` (count field, items field, item bytes) is computed from the items on build.
    """

    TYPE: ClassVar[int]
    NAME: ClassVar[str]
    _FIXED: ClassVar[_Layout]
    _ARRAY: ClassVar[tuple[str, str, int] | None] = None

    @classmethod
    def fixed_bytes(cls) -> int:
        """Bytes of the fixed part, subtable header included (the shortest valid length)."""
        return 4 + sum(size for _, size in cls._FIXED)


def _tupled(obj: Any, name: str) -> None:
    object.__setattr__(obj, name, tuple(getattr(obj, name)))


def _bytes(obj: Any, name: str) -> None:
    object.__setattr__(obj, name, bytes(getattr(obj, name)))


@dataclass(frozen=True, kw_only=True)
class SpaRange(_Known):
    """Type 0, System Physical Address (SPA) Range: ``length`` bytes at ``address`` of one type.

    ``range_type`` is a short name from :data:`GUIDS` ("pm", "volatile", ...) or, for any other
    GUID, its canonical string. ``location_cookie`` (ACPI 6.4) is there exactly when ``flags`` bit 2
    (location cookie valid) is set: the 64-byte form; otherwise None and the structure is 56 bytes
    (a length that disagrees with the flags is refused, as Linux refuses it). ``tail`` must be empty.
    """

    TYPE: ClassVar[int] = 0
    NAME: ClassVar[str] = "system physical address range"
    _FIXED: ClassVar[_Layout] = (("range_index", 2), ("flags", 2), ("reserved", 4), ("proximity_domain", 4),
                                 ("range_type", 16), ("address", 8), ("length", 8), ("memory_mapping", 8))

    range_index: int
    range_type: str
    address: int
    length: int
    flags: int = 0
    reserved: int = 0
    proximity_domain: int = 0
    memory_mapping: int = 0
    location_cookie: int | None = None
    tail: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "range_type", _canonical_range_type(self.range_type))
        _bytes(self, "tail")

    @property
    def guid(self) -> str:
        """The range type as a GUID string, whatever its short name."""
        return GUIDS.get(self.range_type, self.range_type)


@dataclass(frozen=True, kw_only=True)
class MemoryMap(_Known):
    """Type 1, Memory Device to SPA Range Map: which NVDIMM (``device_handle``) backs
    ``region_size`` bytes of SPA range ``range_index``, starting at ``region_offset`` in the
    interleave set; ``address`` is the region's base in the DIMM's own (device physical) space."""

    TYPE: ClassVar[int] = 1
    NAME: ClassVar[str] = "memory device to SPA range map"
    _FIXED: ClassVar[_Layout] = (
        ("device_handle", 4), ("physical_id", 2), ("region_id", 2), ("range_index", 2), ("region_index", 2),
        ("region_size", 8), ("region_offset", 8), ("address", 8), ("interleave_index", 2),
        ("interleave_ways", 2), ("flags", 2), ("reserved", 2))

    device_handle: int
    range_index: int
    region_size: int
    region_offset: int = 0
    address: int = 0
    physical_id: int = 0
    region_id: int = 0
    region_index: int = 0
    interleave_index: int = 0
    interleave_ways: int = 1
    flags: int = 0
    reserved: int = 0
    tail: bytes = b""

    def __post_init__(self) -> None:
        _bytes(self, "tail")

    @property
    def location(self) -> dict[str, int]:
        """The device handle split into node, socket, imc, channel and dimm."""
        return decode_handle(self.device_handle)


@dataclass(frozen=True, kw_only=True)
class Interleave(_Known):
    """Type 2, Interleave: one DIMM's lines within an interleave period. A DIMM's line ``L`` sits
    at SPA range base + region offset + ``(L // line_count) * line_count * ways * line_size +
    line_offsets[L % line_count] * line_size`` (the way Linux reads it)."""

    TYPE: ClassVar[int] = 2
    NAME: ClassVar[str] = "interleave"
    _FIXED: ClassVar[_Layout] = (("interleave_index", 2), ("reserved", 2), ("line_count", 4),
                                 ("line_size", 4))
    _ARRAY: ClassVar[tuple[str, str, int] | None] = ("line_count", "line_offsets", 4)

    interleave_index: int
    line_size: int
    line_offsets: Sequence[int] = ()
    reserved: int = 0
    tail: bytes = b""

    def __post_init__(self) -> None:
        _tupled(self, "line_offsets")
        _bytes(self, "tail")

    @property
    def line_count(self) -> int:
        """Number of line offsets the structure lists."""
        return len(self.line_offsets)


@dataclass(frozen=True, kw_only=True)
class Smbios(_Known):
    """Type 3, SMBIOS Management Information: opaque SMBIOS structures."""

    TYPE: ClassVar[int] = 3
    NAME: ClassVar[str] = "SMBIOS management information"
    _FIXED: ClassVar[_Layout] = (("reserved", 4),)

    data: bytes = b""
    reserved: int = 0

    def __post_init__(self) -> None:
        _bytes(self, "data")


@dataclass(frozen=True, kw_only=True)
class ControlRegion(_Known):
    """Type 4, NVDIMM Control Region: the DIMM's identity (vendor, device, serial, format code)
    and its block control windows. ``short_form`` is the 32-byte variant ACPI allows when
    ``windows`` is 0; the window fields are then absent (and 0 here)."""

    TYPE: ClassVar[int] = 4
    NAME: ClassVar[str] = "NVDIMM control region"
    _FIXED: ClassVar[_Layout] = (
        ("region_index", 2), ("vendor_id", 2), ("device_id", 2), ("revision_id", 2),
        ("subsystem_vendor_id", 2), ("subsystem_device_id", 2), ("subsystem_revision_id", 2),
        ("valid_fields", 1), ("manufacturing_location", 1), ("manufacturing_date", 2), ("reserved", 2),
        ("serial_number", 4), ("code", 2), ("windows", 2))
    _WINDOW: ClassVar[_Layout] = (("window_size", 8), ("command_offset", 8), ("command_size", 8),
                                  ("status_offset", 8), ("status_size", 8), ("flags", 2), ("reserved1", 6))

    region_index: int
    vendor_id: int = 0
    device_id: int = 0
    revision_id: int = 0
    subsystem_vendor_id: int = 0
    subsystem_device_id: int = 0
    subsystem_revision_id: int = 0
    valid_fields: int = 0
    manufacturing_location: int = 0
    manufacturing_date: int = 0
    reserved: int = 0
    serial_number: int = 0
    code: int = 0
    windows: int = 0
    window_size: int = 0
    command_offset: int = 0
    command_size: int = 0
    status_offset: int = 0
    status_size: int = 0
    flags: int = 0
    reserved1: int = 0
    short_form: bool = False
    tail: bytes = b""

    def __post_init__(self) -> None:
        _bytes(self, "tail")

    @classmethod
    def full_bytes(cls) -> int:
        """Length of the structure with its block-control window fields."""
        return cls.fixed_bytes() + sum(size for _, size in cls._WINDOW)


@dataclass(frozen=True, kw_only=True)
class DataRegion(_Known):
    """Type 5, NVDIMM Block Data Window Region: the block-mode apertures of a control region."""

    TYPE: ClassVar[int] = 5
    NAME: ClassVar[str] = "NVDIMM block data window region"
    _FIXED: ClassVar[_Layout] = (("region_index", 2), ("windows", 2), ("offset", 8), ("size", 8),
                                 ("capacity", 8), ("start_address", 8))

    region_index: int
    windows: int = 0
    offset: int = 0
    size: int = 0
    capacity: int = 0
    start_address: int = 0
    tail: bytes = b""

    def __post_init__(self) -> None:
        _bytes(self, "tail")


@dataclass(frozen=True, kw_only=True)
class FlushHintAddress(_Known):
    """Type 6, Flush Hint Address: the SPAs whose write drains the WPQ in front of the NVDIMM
    ``device_handle``."""

    TYPE: ClassVar[int] = 6
    NAME: ClassVar[str] = "flush hint address"
    _FIXED: ClassVar[_Layout] = (("device_handle", 4), ("hint_count", 2), ("reserved", 6))
    _ARRAY: ClassVar[tuple[str, str, int] | None] = ("hint_count", "hint_addresses", 8)

    device_handle: int
    hint_addresses: Sequence[int] = ()
    reserved: int = 0
    tail: bytes = b""

    def __post_init__(self) -> None:
        _tupled(self, "hint_addresses")
        _bytes(self, "tail")

    @property
    def hint_count(self) -> int:
        """Number of flush hint addresses the structure lists."""
        return len(self.hint_addresses)


@dataclass(frozen=True, kw_only=True)
class PlatformCapabilities(_Known):
    """Type 7, Platform Capabilities: bits 0..``highest_capability`` of ``capabilities`` are
    valid; bit 0 = CPU cache flush to NVDIMM (eADR), bit 1 = memory-controller flush (ADR)."""

    TYPE: ClassVar[int] = 7
    NAME: ClassVar[str] = "platform capabilities"
    _FIXED: ClassVar[_Layout] = (("highest_capability", 1), ("reserved", 3), ("capabilities", 4),
                                 ("reserved2", 4))

    highest_capability: int
    capabilities: int
    reserved: int = 0
    reserved2: int = 0
    tail: bytes = b""

    def __post_init__(self) -> None:
        _bytes(self, "tail")

    @property
    def effective_capabilities(self) -> int:
        """``capabilities`` masked to the valid bits, as Linux does."""
        return self.capabilities & ((1 << (self.highest_capability + 1)) - 1)

    @property
    def domain(self) -> str:
        """The persistence domain these capabilities give: "eadr", "adr" or "none"."""
        caps = self.effective_capabilities
        return "eadr" if caps & CAP_CACHE_FLUSH else "adr" if caps & CAP_MEM_FLUSH else "none"


_KNOWN: dict[int, type[_Known]] = {c.TYPE: c for c in (SpaRange, MemoryMap, Interleave, Smbios, ControlRegion,
                                                DataRegion, FlushHintAddress, PlatformCapabilities)}


@dataclass(frozen=True)
class RawSubtable:
    """A subtable of a type nvemu does not know (8 and up): kept byte for byte, ``data`` being
    everything after its 4-byte header."""

    type: int
    data: bytes = b""
    NAME: ClassVar[str] = "unknown"

    def __post_init__(self) -> None:
        _bytes(self, "data")
        if self.type in _KNOWN:
            raise NfitError(f"RawSubtable type {self.type} is a known type: use {_KNOWN[self.type].__name__}")


Subtable = Union[SpaRange, MemoryMap, Interleave, Smbios, ControlRegion, DataRegion, FlushHintAddress,
                 PlatformCapabilities, RawSubtable]
_S = TypeVar("_S")


def _text(value: Any, size: int, name: str) -> str:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    if not isinstance(value, str):
        raise NfitError(f"NFIT header field {name}={value!r} is not a string")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise NfitError(f"NFIT header field {name}={value!r} is not 8-bit text") from None
    if len(value) > size:
        raise NfitError(f"NFIT header field {name}={value!r} is longer than {size} bytes")
    return value.ljust(size)
