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
>>> from nvemu.config import preset
>>> table = nfit_from_platform_config(preset("default"))
>>> data = table.to_bytes()
>>> parse(data) == table and build(parse(data)) == data
True
>>> info = discover(data)
>>> info["persistence_domain"], info["wpq_flush"], len(info["controllers"])
('adr', True, 4)
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, Union

from ..errors import ConfigError, NfitError
from ..machine.config import (DEFAULT_COSTS, DOMAINS, PAGE_BYTES, ControllerConfig, CostModel, GiB,
                              InterleaveSetConfig, KiB, NvdimmConfig, PlatformConfig, decode_handle, device_handle)
from ..machine.platform import Platform
from ..machine.vm import VM

__all__ = [
    "SIGNATURE", "HEADER_BYTES", "GUIDS", "CAP_CACHE_FLUSH", "CAP_MEM_FLUSH", "CAP_MEM_MIRRORING",
    "DOMAIN_CAPABILITIES", "DEFAULT_GRANULARITY", "platform_from_nfit", "virtual_nfit_of",
    "SpaRange", "MemoryMap", "Interleave", "Smbios", "ControlRegion", "DataRegion", "FlushHintAddress",
    "PlatformCapabilities", "RawSubtable", "Subtable", "Nfit",
    "parse", "build", "persistence_domain", "platform_config_from_nfit", "discover",
    "nfit_from_platform_config", "virtual_nfit", "vnvdimm_handle",
]

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
EFI_MEMORY_WB = 0x8
EFI_MEMORY_NV = 0x8000
#: Interleave granularity assumed for a set whose memory device maps name no Interleave structure.
DEFAULT_GRANULARITY = 4 * KiB
#: Region format interface code nvemu writes in control regions: JEDEC byte-addressable, energy backed.
FORMAT_INTERFACE_CODE = 0x0201

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
    GUID, its canonical string. ``location_cookie`` (ACPI 6.3+) is None when the structure is the
    older 56-byte form.
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


@dataclass(frozen=True)
class Nfit:
    """A whole NFIT: the ACPI header fields and the subtables in table order.

    ``length`` and ``checksum`` are computed (see :meth:`to_bytes`); the signature is always
    "NFIT". Text fields shorter than their width are padded with spaces. ``warnings`` lists
    what :func:`parse` tolerated (unknown subtable types, bytes past a known layout, ...) and
    does not take part in equality.
    """

    subtables: Sequence[Subtable] = ()  # any sequence; stored as a tuple
    revision: int = 1
    oem_id: str = "NVEMU "
    oem_table_id: str = "NVEMU   "
    oem_revision: int = 1
    creator_id: str = "NVEM"
    creator_revision: int = 1
    reserved: int = 0
    warnings: Sequence[str] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        _tupled(self, "subtables")
        _tupled(self, "warnings")
        for name, size in (("oem_id", 6), ("oem_table_id", 8), ("creator_id", 4)):
            object.__setattr__(self, name, _text(getattr(self, name), size, name))

    def to_bytes(self) -> bytes:
        """The binary table, with every length, count and the checksum filled in."""
        return build(self)

    @property
    def length(self) -> int:
        return HEADER_BYTES + sum(len(_encode_subtable(s, i, 0)) for i, s in enumerate(self.subtables))

    @property
    def checksum(self) -> int:
        return self.to_bytes()[9]

    def offsets(self) -> tuple[int, ...]:
        """The byte offset of each subtable in the built table."""
        out = []
        pos = HEADER_BYTES
        for i, s in enumerate(self.subtables):
            out.append(pos)
            pos += len(_encode_subtable(s, i, pos))
        return tuple(out)

    def select(self, cls: type[_S]) -> tuple[_S, ...]:
        """The subtables of one class, in table order."""
        return tuple(s for s in self.subtables if isinstance(s, cls))

    def located(self, cls: type[_S]) -> list[tuple[int, _S]]:
        """(offset, subtable) for the subtables of one class, in table order."""
        return [(o, s) for o, s in zip(self.offsets(), self.subtables, strict=True) if isinstance(s, cls)]


# ---------------------------------------------------------------------------------------------
# Binary encoding


def _encode_subtable(st: Subtable, index: int, offset: int) -> bytes:
    """One subtable's bytes; ``offset`` is where it will sit (for error messages)."""
    if isinstance(st, RawSubtable):
        if len(st.data) + 4 > 0xFFFF:
            raise _err(offset + 2, "length", f"subtable {index} (type {st.type}) would be "
                                             f"{len(st.data) + 4} bytes, more than a u16 length holds")
        return _enc(st.type, 2, offset, "type") + (len(st.data) + 4).to_bytes(2, "little") + st.data
    if not isinstance(st, _Known):
        raise NfitError(f"subtable {index} is a {type(st).__name__}, not an NFIT subtable")
    cls = type(st)
    out = bytearray(cls.TYPE.to_bytes(2, "little") + b"\0\0")
    array = cls._ARRAY
    items: tuple[int, ...] = getattr(st, array[1]) if array else ()

    def put(layout: _Layout) -> None:
        for name, size in layout:
            where = offset + len(out)
            if name == "range_type":
                out.extend(_guid_bytes(st.range_type))  # type: ignore[union-attr]
            elif array and name == array[0]:
                out.extend(_enc(len(items), size, where, f"{name} of subtable {index} ({cls.NAME})"))
            else:
                out.extend(_enc(getattr(st, name), size, where, f"{name} of subtable {index} ({cls.NAME})"))

    put(cls._FIXED)
    if isinstance(st, ControlRegion):
        if st.short_form:
            if st.windows or any(getattr(st, n) for n, _ in ControlRegion._WINDOW):
                raise _err(offset, "short_form", f"subtable {index} (control region) has block windows, "
                                                 f"so it cannot use the 32-byte short form")
            if len(st.tail) >= ControlRegion.full_bytes() - ControlRegion.fixed_bytes():
                raise _err(offset, "tail", f"subtable {index} (control region): a short-form tail of "
                                           f"{len(st.tail)} bytes would read back as the long form")
        else:
            put(ControlRegion._WINDOW)
    if isinstance(st, SpaRange):
        if st.location_cookie is not None:
            out.extend(_enc(st.location_cookie, 8, offset + len(out), f"location_cookie of subtable {index}"))
        elif len(st.tail) >= 8:
            raise _err(offset, "tail", f"subtable {index} (SPA range): with no location cookie a tail of "
                                       f"{len(st.tail)} bytes would read back as one")
    for i, item in enumerate(items):
        assert array is not None
        out.extend(_enc(item, array[2], offset + len(out), f"{array[1]}[{i}] of subtable {index}"))
    if isinstance(st, Smbios):
        out.extend(st.data)
    else:
        out.extend(st.tail)
    if len(out) > 0xFFFF:
        raise _err(offset + 2, "length", f"subtable {index} ({cls.NAME}) would be {len(out)} bytes, "
                                         f"more than a u16 length holds")
    out[2:4] = len(out).to_bytes(2, "little")
    return bytes(out)


def build(nfit: Nfit) -> bytes:
    """The binary NFIT for ``nfit``: subtable lengths, counts, table length and checksum computed.

    Raises :class:`~nvemu.errors.NfitError` naming the offset and field of any value that does
    not fit its field.
    """
    body = bytearray()
    for i, st in enumerate(nfit.subtables):
        body.extend(_encode_subtable(st, i, HEADER_BYTES + len(body)))
    length = HEADER_BYTES + len(body)
    if length > 0xFFFF_FFFF:
        raise _err(4, "length", f"the table would be {length} bytes, more than a u32 holds")
    head = bytearray(SIGNATURE)
    head += length.to_bytes(4, "little")
    head += _enc(nfit.revision, 1, 8, "revision")
    head += b"\0"
    head += nfit.oem_id.encode("latin-1")
    head += nfit.oem_table_id.encode("latin-1")
    head += _enc(nfit.oem_revision, 4, 24, "oem_revision")
    head += nfit.creator_id.encode("latin-1")
    head += _enc(nfit.creator_revision, 4, 32, "creator_revision")
    head += _enc(nfit.reserved, 4, 36, "reserved")
    table = head + body
    table[9] = (-sum(table)) & 0xFF
    return bytes(table)


def _decode_subtable(data: bytes, off: int, length: int, index: int, warnings: list[str]) -> Subtable:
    """Decode the subtable of ``length`` bytes at ``off`` (its header already checked)."""
    stype = _u(data, off, 2)
    cls = _KNOWN.get(stype)
    if cls is None:
        warnings.append(f"subtable {index} at offset {off:#x}: unknown type {stype} ({length} bytes) "
                        f"kept raw")
        return RawSubtable(stype, data[off + 4:off + length])
    need = cls.fixed_bytes()
    if length < need:
        raise _err(off + 2, "length", f"subtable {index} (type {stype}, {cls.NAME}) is {length} bytes, "
                                      f"shorter than its {need}-byte fixed part")
    values: dict[str, Any] = {}
    pos = off + 4

    def get(layout: _Layout) -> None:
        nonlocal pos
        for name, size in layout:
            if name == "range_type":
                values[name] = _guid_from_bytes(data[pos:pos + 16])
            else:
                values[name] = _u(data, pos, size)
            pos += size

    get(cls._FIXED)
    end = off + length
    if cls is ControlRegion:
        if length >= ControlRegion.full_bytes():
            get(ControlRegion._WINDOW)
        elif values["windows"]:
            raise _err(off + 2, "length", f"subtable {index} (control region) is {length} bytes but its "
                                          f"windows field (offset {off + 30:#x}) is {values['windows']}: "
                                          f"block windows need the {ControlRegion.full_bytes()}-byte form")
        else:
            values["short_form"] = True
    if cls is SpaRange and length >= need + 8:
        values["location_cookie"] = _u(data, pos, 8)
        pos += 8
    elif cls is SpaRange and values["flags"] & SPA_FLAG_LOCATION_COOKIE_VALID:
        warnings.append(f"subtable {index} at offset {off:#x}: SPA range flags say the location cookie is "
                        f"valid but the structure is only {length} bytes")
    if cls._ARRAY:
        count_name, items_name, item_size = cls._ARRAY
        count = values.pop(count_name)
        count_off = off + 4 + sum(s for n, s in cls._FIXED[:[n for n, _ in cls._FIXED].index(count_name)])
        if pos + count * item_size > end:
            raise _err(count_off, count_name, f"subtable {index} ({cls.NAME}) at {off:#x} is {length} bytes; "
                                              f"{count} entries of {item_size} bytes need "
                                              f"{pos - off + count * item_size}")
        values[items_name] = tuple(_u(data, pos + i * item_size, item_size) for i in range(count))
        pos += count * item_size
    if cls is Smbios:
        values["data"] = data[pos:end]
    elif pos < end:
        values["tail"] = data[pos:end]
        warnings.append(f"subtable {index} at offset {off:#x} ({cls.NAME}): {end - pos} bytes past the known "
                        f"layout kept as its tail")
    return cls(**values)  # type: ignore[return-value]


def parse(data: bytes | bytearray | memoryview) -> Nfit:
    """Parse a binary NFIT. Raises :class:`~nvemu.errors.NfitError` (naming offset and field) for
    anything malformed, and no other exception for any byte string. Bytes after the header's
    length are ignored, with a warning."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"parse() needs bytes, not {type(data).__name__}")
    data = bytes(data)
    n = len(data)
    if n < ACPI_HEADER_BYTES:
        raise _err(n, "header", f"truncated: {n} bytes, shorter than the {ACPI_HEADER_BYTES}-byte "
                                f"ACPI header")
    if data[:4] != SIGNATURE:
        raise _err(0, "signature", f"{data[:4]!r} is not {SIGNATURE!r}")
    length = _u(data, 4, 4)
    if length < HEADER_BYTES:
        raise _err(4, "length", f"table length {length} is shorter than the {HEADER_BYTES}-byte NFIT header")
    if n < length:
        raise _err(n, "length", f"truncated: the header's length field (offset 0x4) says {length} bytes "
                                f"but only {n} are given")
    warnings: list[str] = []
    if n > length:
        warnings.append(f"{n - length} bytes after the table's length ({length}) ignored")
        data = data[:length]
    total = sum(data) & 0xFF
    if total:
        raise _err(9, "checksum", f"the table's bytes sum to {total:#04x} mod 256, not 0 (checksum byte is "
                                  f"{data[9]:#04x}; {(data[9] - total) & 0xFF:#04x} would be right)")
    subtables: list[Subtable] = []
    pos = HEADER_BYTES
    while pos < length:
        index = len(subtables)
        if length - pos < 4:
            raise _err(pos, "subtable header", f"subtable {index}: {length - pos} byte(s) left before the "
                                               f"table end at {length:#x}, a subtable header needs 4")
        slen = _u(data, pos + 2, 2)
        if slen < 4:
            raise _err(pos + 2, "length", f"subtable {index} (type {_u(data, pos, 2)}) has length {slen}, "
                                          f"less than its own 4-byte header")
        if pos + slen > length:
            raise _err(pos + 2, "length", f"subtable {index} (type {_u(data, pos, 2)}) of {slen} bytes at "
                                          f"{pos:#x} runs past the table end at {length:#x}")
        subtables.append(_decode_subtable(data, pos, slen, index, warnings))
        pos += slen
    return Nfit(subtables=tuple(subtables), revision=data[8], oem_id=data[10:16].decode("latin-1"),
                oem_table_id=data[16:24].decode("latin-1"), oem_revision=_u(data, 24, 4),
                creator_id=data[28:32].decode("latin-1"), creator_revision=_u(data, 32, 4),
                reserved=_u(data, 36, 4), warnings=tuple(warnings))


# ---------------------------------------------------------------------------------------------
# Capability discovery


def _as_nfit(data: bytes | bytearray | memoryview | Nfit) -> Nfit:
    return data if isinstance(data, Nfit) else parse(data)


def persistence_domain(data: bytes | Nfit) -> str:
    """The persistence domain the first Platform Capabilities structure gives ("none" without one)."""
    caps = _as_nfit(data).select(PlatformCapabilities)
    return caps[0].domain if caps else "none"


@dataclass
class _Dimm:
    handle: int
    maps: list[tuple[int, MemoryMap]] = field(default_factory=list)
    hints: list[int] = field(default_factory=list)
    pm_maps: list[tuple[int, MemoryMap]] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, int, int]:
        d = decode_handle(self.handle)
        return (d["node"], d["socket"], d["imc"])

    @property
    def size(self) -> int:
        """Bytes in persistent-memory ranges; for a DIMM mapped into none, all its mapped bytes."""
        return sum(m.region_size for _, m in (self.pm_maps or self.maps))


@dataclass
class _Set:
    offset: int
    spa: SpaRange
    members: list[tuple[int, MemoryMap]]
    granularity: int | None
    problems: list[str]


@dataclass
class _Survey:
    """What the table says, before asking whether PlatformConfig can model it."""

    nfit: Nfit
    dimms: list[_Dimm]
    keys: list[tuple[int, int, int]]
    spa: list[tuple[int, SpaRange]]
    sets: list[_Set]
    domain: str
    caps: PlatformCapabilities | None
    warnings: list[str]


def _survey(nfit: Nfit) -> _Survey:
    warnings = list(nfit.warnings)
    spa = nfit.located(SpaRange)
    spa_by_index: dict[int, tuple[int, SpaRange]] = {}
    for off, s in spa:
        if s.range_index in spa_by_index:
            warnings.append(f"SPA range at offset {off:#x} reuses range index {s.range_index}")
        else:
            spa_by_index[s.range_index] = (off, s)
    pm_indices = {s.range_index for _, s in spa if s.range_type == "pm"}
    interleaves: dict[int, tuple[int, Interleave]] = {}
    for off, il in nfit.located(Interleave):
        interleaves.setdefault(il.interleave_index, (off, il))
    maps = nfit.located(MemoryMap)
    dimms: dict[int, _Dimm] = {}
    for off, m in maps:
        d = dimms.setdefault(m.device_handle, _Dimm(m.device_handle))
        d.maps.append((off, m))
        if m.range_index in pm_indices:
            d.pm_maps.append((off, m))
        elif m.range_index and m.range_index not in spa_by_index:
            warnings.append(f"memory device map at offset {off:#x} names SPA range index {m.range_index}, "
                            f"which the table does not have")
    seen_hint_handles: set[int] = set()
    for off, fh in nfit.located(FlushHintAddress):
        if fh.device_handle not in dimms:
            warnings.append(f"flush hint structure at offset {off:#x} names device handle "
                            f"{fh.device_handle:#x}, which no memory device map names: ignored")
            continue
        if fh.device_handle in seen_hint_handles:
            warnings.append(f"flush hint structure at offset {off:#x}: a second one for device handle "
                            f"{fh.device_handle:#x}; its hints are appended")
        seen_hint_handles.add(fh.device_handle)
        dimms[fh.device_handle].hints.extend(fh.hint_addresses)
    caps_all = nfit.select(PlatformCapabilities)
    if len(caps_all) > 1:
        warnings.append(f"{len(caps_all)} platform capabilities structures: the first one is used")
    caps = caps_all[0] if caps_all else None
    sets = []
    for off, s in spa:
        if s.range_type != "pm" or spa_by_index.get(s.range_index, (None,))[0] != off:
            continue
        members = [(o, m) for o, m in maps if m.range_index == s.range_index]
        members.sort(key=lambda om: (om[1].region_offset, om[0]))
        problems: list[str] = []
        sizes = set()
        for o, m in members:
            if m.interleave_index:
                if m.interleave_index in interleaves:
                    sizes.add(interleaves[m.interleave_index][1].line_size)
                else:
                    problems.append(f"memory device map at offset {o:#x} names interleave structure "
                                    f"{m.interleave_index}, which the table does not have")
        if len(sizes) > 1:
            problems.append(f"the maps of SPA range {s.range_index} name interleave structures with "
                            f"different line sizes {sorted(sizes)}")
        sets.append(_Set(off, s, members, min(sizes) if sizes else None, problems))
    ordered = sorted(dimms.values(), key=lambda d: d.handle)
    return _Survey(nfit=nfit, dimms=ordered, keys=sorted({d.key for d in ordered}), spa=spa, sets=sets,
                   domain=caps.domain if caps else "none", caps=caps, warnings=warnings)


def platform_config_from_nfit(data: bytes | Nfit, *, wpq_depth: int = 64, dram_bytes: int = 2 * GiB,
                              name: str = "nfit") -> PlatformConfig:
    """Capability discovery: the :class:`~nvemu.config.PlatformConfig` a physical NFIT describes.

    - one controller per distinct (node, socket, imc) of the memory device maps' handles, sorted;
    - one NVDIMM per distinct device handle, sorted by handle: its size is the ``region_size`` of
      its map into a persistent-memory SPA range (for a DIMM mapped into none, the sum of its maps'
      sizes), its flush hints those of the flush hint structures naming its handle, in table order;
    - one interleave set per persistent-memory ("pm") SPA range, in table order, its members the
      DIMMs mapped into it ordered by ``region_offset``; the granularity is the ``line_size`` of the
      Interleave structure the maps name, else :data:`DEFAULT_GRANULARITY` (4 KiB);
    - the persistence domain from the platform capabilities (masked as Linux does; "none" if absent).

    WPQ flushing is supported when every NVDIMM has a hint (``PlatformConfig.wpq_flush``).
    A table nvemu cannot model (a DIMM in two pm ranges, members of unequal sizes or not adding up
    to the range, a set without DIMMs, ...) raises :class:`~nvemu.errors.NfitError`.
    """
    sv = _survey(_as_nfit(data))
    if not sv.dimms:
        raise NfitError("the NFIT has no memory device to SPA range map structures (type 1), so no NVDIMMs")
    index_of = {d.handle: i for i, d in enumerate(sv.dimms)}
    nvdimms = []
    for d in sv.dimms:
        if len(d.pm_maps) > 1:
            offs = ", ".join(f"{o:#x}" for o, _ in d.pm_maps)
            raise _err(d.pm_maps[1][0] + 12, "range_index",
                       f"NVDIMM {d.handle:#x} is mapped into {len(d.pm_maps)} persistent-memory ranges "
                       f"(maps at {offs}); nvemu models one interleave set per NVDIMM")
        size = d.size
        if size <= 0 or size % PAGE_BYTES:
            off, _ = (d.pm_maps or d.maps)[0]
            raise _err(off + 16, "region_size", f"NVDIMM {d.handle:#x} has {size:#x} mapped bytes; nvemu "
                                                f"needs a positive multiple of 4 KiB")
        loc = decode_handle(d.handle)
        nvdimms.append(NvdimmConfig(controller=sv.keys.index(d.key), size=size, channel=loc["channel"],
                                    dimm=loc["dimm"], flush_hints=tuple(d.hints)))
    isets = []
    for st in sv.sets:
        s = st.spa
        if st.problems:
            raise _err(st.offset, "range_index", f"SPA range {s.range_index}: {st.problems[0]}")
        if not st.members:
            raise _err(st.offset + 4, "range_index",
                       f"persistent-memory SPA range {s.range_index} ({s.address:#x}+{s.length:#x}) has no "
                       f"NVDIMM mapped into it")
        handles = [m.device_handle for _, m in st.members]
        if len(set(handles)) != len(handles):
            raise _err(st.offset + 4, "range_index", f"SPA range {s.range_index}: an NVDIMM is mapped into "
                                                     f"it twice; nvemu models each member once")
        ways = len(st.members)
        for o, m in st.members:
            if m.interleave_ways != ways and not (ways == 1 and m.interleave_ways == 0):
                raise _err(o + 42, "interleave_ways",
                           f"memory device map of NVDIMM {m.device_handle:#x} says {m.interleave_ways} ways "
                           f"but SPA range {s.range_index} has {ways} maps")
        sizes = {m.region_size for _, m in st.members}
        if len(sizes) != 1 or ways * next(iter(sizes)) != s.length:
            raise _err(st.offset + 40, "length",
                       f"SPA range {s.range_index} is {s.length:#x} bytes but its {ways} NVDIMMs map "
                       f"{sorted(sizes)} bytes each; nvemu needs equal shares that add up to the range")
        gran = st.granularity if st.granularity is not None else DEFAULT_GRANULARITY
        isets.append(InterleaveSetConfig(spa_base=s.address, dimms=tuple(index_of[h] for h in handles),
                                         granularity=gran))
    try:
        return PlatformConfig(controllers=tuple(ControllerConfig(*k) for k in sv.keys),
                              nvdimms=tuple(nvdimms), interleave_sets=tuple(isets), wpq_depth=wpq_depth,
                              domain=sv.domain, dram_bytes=dram_bytes, name=name)
    except ConfigError as e:
        raise NfitError(f"the NFIT describes a platform nvemu cannot model: {e}") from None


def discover(data: bytes | Nfit) -> dict[str, Any]:
    """A JSON-ready summary of what the table says (lenient: works for tables nvemu cannot model).

    Keys: ``controllers`` [{node, socket, imc, flush_hints}], ``nvdimms`` [{handle, node, socket,
    imc, channel, dimm, size, flush_hints, spa_ranges}], ``wpq_flush``, ``persistence_domain``,
    ``capabilities`` (raw, highest valid, effective, or None), ``spa_ranges`` [{index, base,
    length, type}], ``interleave_sets`` [{spa_index, base, length, granularity, nvdimms}],
    ``modelable`` and ``model_error`` (whether :func:`platform_config_from_nfit` accepts the
    topology, probed with 4 KiB of DRAM), ``warnings`` and the header fields.
    """
    nfit = _as_nfit(data)
    sv = _survey(nfit)
    controllers = []
    for key in sv.keys:
        hints: list[int] = []
        for d in sv.dimms:
            if d.key == key:
                hints.extend(h for h in d.hints if h not in hints)
        controllers.append({"node": key[0], "socket": key[1], "imc": key[2], "flush_hints": hints})
    try:
        platform_config_from_nfit(nfit, dram_bytes=PAGE_BYTES)
        model_error = None
    except NfitError as e:
        model_error = str(e)
    caps = sv.caps
    return {
        "signature": "NFIT", "length": len(nfit.to_bytes()), "revision": nfit.revision,
        "oem_id": nfit.oem_id, "oem_table_id": nfit.oem_table_id, "oem_revision": nfit.oem_revision,
        "creator_id": nfit.creator_id, "creator_revision": nfit.creator_revision,
        "controllers": controllers,
        "nvdimms": [{"handle": d.handle, **decode_handle(d.handle), "size": d.size,
                     "flush_hints": list(d.hints), "spa_ranges": [m.range_index for _, m in d.maps]}
                    for d in sv.dimms],
        "wpq_flush": bool(sv.dimms) and all(d.hints for d in sv.dimms),
        "persistence_domain": sv.domain,
        "capabilities": None if caps is None else {
            "raw": caps.capabilities, "highest_valid": caps.highest_capability,
            "effective": caps.effective_capabilities},
        "spa_ranges": [{"index": s.range_index, "base": s.address, "length": s.length, "type": s.range_type}
                       for _, s in sv.spa],
        "interleave_sets": [{"spa_index": st.spa.range_index, "base": st.spa.address, "length": st.spa.length,
                             "granularity": DEFAULT_GRANULARITY if st.granularity is None else st.granularity,
                             "nvdimms": [m.device_handle for _, m in st.members]} for st in sv.sets],
        "modelable": model_error is None,
        "model_error": model_error,
        "warnings": sv.warnings,
    }


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
    an NVDIMM in no set is mapped to range index 0); an Interleave structure per set when it has
    more than one member or a granularity other than 4 KiB (``line_size`` = granularity, one line
    per period at offset 0); a control region per NVDIMM (serial number = NVDIMM number + 1); a
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
                                interleave_ways=len(s.dimms))
    for d, nv in enumerate(cfg.nvdimms):
        if d not in maps:
            maps[d] = MemoryMap(device_handle=cfg.handle(d), physical_id=d, range_index=0, region_index=d + 1,
                                region_size=nv.size)
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


def platform_from_nfit(data: bytes | Nfit, *, wpq_depth: int = 64, dram_bytes: int = 2 * GiB,
                       costs: CostModel = DEFAULT_COSTS, **kwargs: Any) -> Platform:
    """Capability discovery: the :class:`~nvemu.machine.platform.Platform` a physical NFIT describes
    (controllers, NVDIMMs, interleave, flush hints, persistence domain). The NFIT does not say the
    WPQ depth or how much DRAM the host has: those are parameters."""
    return Platform(platform_config_from_nfit(data, wpq_depth=wpq_depth, dram_bytes=dram_bytes), costs, **kwargs)


def virtual_nfit_of(vm: VM) -> bytes:
    """``vm``'s virtual NFIT as an ACPI binary: SPA ranges and memory-device maps of its vNVDIMMs,
    one flush hint structure per vNVDIMM naming the vFHA, and a platform capabilities structure
    no stronger than the host's domain."""
    platform = vm._live().hypervisor.platform
    table = virtual_nfit([(r.gpa, r.size) for r in vm.nvdimms], vm.vfha_gpa if vm.vfha_table else None,
                         platform.domain)
    return table.to_bytes()
