"""NFIT bytes <-> :class:`~nvemu.formats.nfit.tables.Nfit`: lengths, counts and checksum computed on
build; malformed input raises :class:`~nvemu.errors.NfitError` naming the byte offset and field."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import NfitError
from .tables import (
    _KNOWN,
    _S,
    ACPI_HEADER_BYTES,
    HEADER_BYTES,
    SIGNATURE,
    SPA_FLAG_LOCATION_COOKIE_VALID,
    ControlRegion,
    RawSubtable,
    Smbios,
    SpaRange,
    Subtable,
    _enc,
    _err,
    _guid_bytes,
    _guid_from_bytes,
    _Known,
    _Layout,
    _text,
    _tupled,
    _u,
)

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
        valid = bool(st.flags & SPA_FLAG_LOCATION_COOKIE_VALID)
        if (st.location_cookie is not None) != valid or st.tail:
            raise _err(offset + 6, "flags", f"subtable {index} (SPA range): flags bit 2 (location cookie valid) is "
                                            f"{int(valid)} but it "
                                            f"{'has' if st.location_cookie is not None else 'has no'} "
                                            f"location cookie{' and a tail' if st.tail else ''}: ACPI 6.4 gives the "
                                            f"structure 64 bytes with the cookie, 56 without, and nothing else")
        if st.location_cookie is not None:
            out.extend(_enc(st.location_cookie, 8, offset + len(out), f"location_cookie of subtable {index}"))
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
    if cls is SpaRange:
        # ACPI 6.4: the location cookie is there when flags bit 2 says it is valid; Linux
        # (drivers/acpi/nfit/core.c add_spa, sizeof_spa) refuses a length that disagrees.
        valid = bool(values["flags"] & SPA_FLAG_LOCATION_COOKIE_VALID)
        want = need + 8 if valid else need
        if length != want:
            raise _err(off + 2, "length", f"subtable {index} (SPA range) is {length} bytes but its flags (offset "
                                          f"{off + 6:#x}) say the location cookie is "
                                          f"{'valid' if valid else 'not valid'}: it must be {want} bytes "
                                          f"(ACPI 6.4; Linux refuses the table)")
        if valid:
            values["location_cookie"] = _u(data, pos, 8)
            pos += 8
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
        """Length in bytes of the encoded table (header and every subtable)."""
        return HEADER_BYTES + sum(len(_encode_subtable(s, i, 0)) for i, s in enumerate(self.subtables))

    @property
    def checksum(self) -> int:
        """The header checksum byte the encoded table carries (all bytes sum to 0 mod 256)."""
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
