"""Whether one trace record is valid: one validator and one set of messages for every engine and format.

The reference model and the trace formats call :func:`record_code`; the compiled core runs the same
checks, in the same order, inline in its ``nogil`` loop (it cannot call back into Python) and
reports the same :class:`~nvemu._constants.BadRecord` codes, which the hypervisor words with
:func:`record_message`. ``tests/test_core_diff.py`` checks that both engines and this function
agree on random records.
"""

from __future__ import annotations

from ._constants import FENCE_OPS, GPA_BITS, GPA_LIMIT, LINE_BYTES, BadRecord, Op

LOAD_STORE_SIZES = (1, 2, 4, 8)
FLUSH_SIZES = (0, LINE_BYTES)

BAD_RECORD_TEXT = {
    BadRecord.OP: "op {op} is not a known operation (0..7)",
    BadRecord.VM: "vm {vm} does not exist on this hypervisor (or is not running)",
    BadRecord.VCPU: "vcpu {vcpu} does not exist in vm {vm}",
    BadRecord.SIZE: "size {size} is not valid for {opname} ({sizes})",
    BadRecord.CROSSES_LINE: f"{{size}}-byte access at GPA {{gpa:#x}} crosses a {LINE_BYTES}-byte line",
    BadRecord.VALUE: "value {value:#x} does not fit a {size}-byte {opname}",
    BadRecord.GPA: f"GPA {{gpa:#x}} is outside the {GPA_BITS}-bit guest-physical space",
}
"""The message of each code; :func:`record_message` fills it in."""

BAD_RECORD_FIELD = {BadRecord.OP: "op", BadRecord.VM: "vm", BadRecord.VCPU: "vcpu", BadRecord.SIZE: "size",
                    BadRecord.CROSSES_LINE: "gpa", BadRecord.VALUE: "value", BadRecord.GPA: "gpa"}
"""The record field each code refuses."""

UNUSED_TEXT = "{opname} carries {field} {number:#x}"
"""A field the operation does not use is not zero (refused by :func:`record_problem` ``strict``)."""


def record_code(op: int, size: int, gpa: int, value: int, gpa_limit: int | None = GPA_LIMIT) -> BadRecord:
    """Why the record's own fields are invalid (``BadRecord.NONE``: they are not), checked in the
    core's order: op, then (except fences) gpa, size, line crossing and value. The machine checks
    its ``vm`` and ``vcpu`` first (``BadRecord.VM``, ``BadRecord.VCPU``). ``gpa_limit`` is the
    machine's (48-bit EPT); trace formats, which carry any 64-bit GPA, pass None."""
    if not 0 <= op <= Op.MFENCE:
        return BadRecord.OP
    if op >= Op.SFENCE:
        return BadRecord.NONE
    if gpa_limit is not None and gpa >= gpa_limit:
        return BadRecord.GPA
    if op <= Op.NT_STORE:
        if size not in LOAD_STORE_SIZES:
            return BadRecord.SIZE
        if gpa % LINE_BYTES + size > LINE_BYTES:
            return BadRecord.CROSSES_LINE
        if op != Op.LOAD and value >> (8 * size):
            return BadRecord.VALUE
    elif size not in FLUSH_SIZES:
        return BadRecord.SIZE
    return BadRecord.NONE


def op_name(op: int) -> str:
    """``STORE`` for 1; the number itself for an op that is not one."""
    return Op(op).name if 0 <= op <= Op.MFENCE else str(op)


def record_message(code: BadRecord, op: int, vm: int, vcpu: int, size: int, gpa: int,
                   value: int) -> tuple[str, str]:
    """``(field, message)`` saying why a record with these fields was refused with ``code``.

    >>> record_message(BadRecord.VALUE, Op.STORE, 0, 0, 1, 0x1000, 0x100)
    ('value', 'value 0x100 does not fit a 1-byte STORE')
    """
    sizes = "1, 2, 4 or 8" if op <= Op.NT_STORE else f"0 or {LINE_BYTES}"
    text = BAD_RECORD_TEXT[code].format(op=op, vm=vm, vcpu=vcpu, size=size, gpa=gpa, value=value,
                                        opname=op_name(op), sizes=sizes)
    return BAD_RECORD_FIELD[code], text


def unused_field(op: int, size: int, gpa: int, value: int) -> tuple[str, int] | None:
    """``(field, number)`` of a field the operation ignores but that is not zero: a load's value,
    a flush's value, a fence's gpa, size or value."""
    if op == Op.LOAD:
        unused = (("value", value),)
    elif op in FENCE_OPS:
        unused = (("gpa", gpa), ("size", size), ("value", value))
    elif op > Op.NT_STORE:
        unused = (("value", value),)
    else:
        unused = ()
    return next(((f, n) for f, n in unused if n), None)


def record_problem(op: int, size: int, gpa: int, value: int, *, strict: bool = False,
                   gpa_limit: int | None = GPA_LIMIT) -> tuple[str, str] | None:
    """``(field, message)`` if the record is invalid (as :func:`record_code`), or with ``strict`` if
    it also carries a number in a field its operation ignores (which a format that has no place
    for it cannot write); else None.

    >>> record_problem(Op.CLWB, 8, 0x1000, 0)
    ('size', 'size 8 is not valid for CLWB (0 or 64)')
    >>> record_problem(Op.LOAD, 8, 0x1000, 5, strict=True)
    ('value', 'LOAD carries value 0x5')
    """
    code = record_code(op, size, gpa, value, gpa_limit)
    if code:
        return record_message(code, op, 0, 0, size, gpa, value)
    if strict:
        unused = unused_field(op, size, gpa, value)
        if unused is not None:
            field, number = unused
            return field, UNUSED_TEXT.format(opname=op_name(op), field=field, number=number)
    return None


__all__ = ["BAD_RECORD_FIELD", "BAD_RECORD_TEXT", "FLUSH_SIZES", "LOAD_STORE_SIZES", "record_code",
           "record_message", "record_problem", "unused_field"]
