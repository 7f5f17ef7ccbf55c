"""The line-oriented text trace format (grammar in :mod:`nvemu.formats.trace`)."""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Iterable, Iterator

import numpy as np


from ..._constants import FENCE_OPS, FLUSH_OPS, TRACE_DTYPE, Op
from ..._files import atomic_write
from ...errors import TraceError
from .records import _OP_NAMES, PathLike, _shorten, record_problem

# ---- text format ----------------------------------------------------------------------------------

_NUMBER = re.compile(r"0[xX](?:_?[0-9a-fA-F])+|[0-9](?:_?[0-9])*")
_VM = re.compile(r"vm([0-9]+)", re.IGNORECASE)
_CPU = re.compile(r"v?cpu([0-9]+)", re.IGNORECASE)
_TEXT_BATCH = 1 << 16


class _FieldError(ValueError):
    """A malformed field of one text line or log record: ``args`` are (field, problem)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.field, self.problem = field, problem


def _number(token: str, what: str, bits: int) -> int:
    if not _NUMBER.fullmatch(token):
        raise _FieldError(what, f"{token!r} is not a number (decimal or 0x hex)")
    value = int(token, 16 if token[:2] in ("0x", "0X") else 10)
    if value >> bits:
        raise _FieldError(what, f"{token} does not fit {bits} bits")
    return value


def _parse_line(tokens: list[str]) -> tuple[int, int, int, int, int, int]:
    """One text record as (op, vcpu, vm, size, gpa, value); raises _FieldError."""
    vm = vcpu = 0
    k = 0
    m = _VM.fullmatch(tokens[k])
    if m:
        vm = _number(m.group(1), "vm", 16)
        k += 1
    m = _CPU.fullmatch(tokens[k]) if k < len(tokens) else None
    if m:
        vcpu = _number(m.group(1), "cpu", 8)
        k += 1
    if k == len(tokens):
        raise _FieldError("op", "missing")
    op = _OP_NAMES.get(tokens[k].upper())
    if op is None:
        raise _FieldError("op", f"{tokens[k]!r} is not an operation ({', '.join(_OP_NAMES)})")
    args = tokens[k + 1:]
    names: tuple[str, ...]
    defaults: tuple[int, ...]
    if op in (Op.STORE, Op.NT_STORE):
        names, defaults = ("gpa", "size", "value"), ()
    elif op == Op.LOAD:
        names, defaults = ("gpa", "size"), (8,)
    elif op in FLUSH_OPS:
        names, defaults = ("gpa", "size"), (0,)
    else:
        names, defaults = (), ()
    if len(args) > len(names):
        raise _FieldError("-", f"unexpected {args[len(names)]!r}: {op.name} takes "
                         f"{' '.join(names) or 'no operands'}")
    required = len(names) - len(defaults)
    if len(args) < required:
        raise _FieldError(names[len(args)], f"missing ({op.name} takes {' '.join(names)})")
    widths = {"gpa": 64, "size": 32, "value": 64}
    vals: dict[str, int] = {n: _number(t, n, widths[n]) for t, n in zip(args, names)}
    for n, d in zip(names[required:], defaults):
        vals.setdefault(n, d)
    rec = (int(op), vcpu, vm, vals.get("size", 0), vals.get("gpa", 0), vals.get("value", 0))
    problem = record_problem(rec[0], rec[3], rec[4], rec[5])
    if problem:
        raise _FieldError(*problem)
    return rec


def parse_text(lines: Iterable[str], source: str = "<text>") -> tuple[np.ndarray, np.ndarray]:
    """Text-format lines as ``(records, line number of each record)``; a bad line raises
    TraceError naming ``source``, the line number and the field."""
    batches = list(_parse_batches(lines, source, _TEXT_BATCH))
    if not batches:
        return np.zeros(0, TRACE_DTYPE), np.zeros(0, np.int64)
    return np.concatenate([r for r, _ in batches]), np.concatenate([n for _, n in batches])


def _parse_batches(lines: Iterable[str], source: str, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(records, their line numbers)`` batches of at most ``size`` records, as ``lines`` are read."""
    numbers: list[int] = []
    pending: list[tuple[int, int, int, int, int, int]] = []
    for lineno, raw in enumerate(lines, 1):
        tokens = raw.split("#", 1)[0].split()
        if not tokens:
            continue
        try:
            pending.append(_parse_line(tokens))
        except _FieldError as e:
            raise TraceError(f"{source} line {lineno}, field {e.field}: {e.problem}: {_shorten(raw)!r}") from None
        numbers.append(lineno)
        if len(pending) == size:
            yield np.array(pending, TRACE_DTYPE), np.array(numbers, np.int64)
            pending, numbers = [], []
    if pending:
        yield np.array(pending, TRACE_DTYPE), np.array(numbers, np.int64)


def load_text(path: PathLike) -> np.ndarray:
    """A text-format trace file as TRACE_DTYPE records (all in memory: prefer :class:`TextStream`)."""
    return np.concatenate([np.zeros(0, TRACE_DTYPE), *(c for _, c in TextStream(path).chunks())])


class TextStream:
    """A text trace parsed a chunk at a time as the file is read, so memory stays a chunk however
    long the trace. ``length`` is known after one read (:meth:`validate` or :meth:`chunks` to the
    end); :meth:`origin` gives a record's line number from runs of records on consecutive lines
    (one run per blank or comment line between records, not one number per record)."""

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self.length: int | None = None
        self.info = None                        # what a pmemcheck stream reports; a text trace has nothing
        self._starts: list[int] = [0]           # record index where a run starts ...
        self._offsets: list[int] = []           # ... and its line number minus its record index

    def _batches(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Batches of exactly ``size`` records (the last: the rest), parsed ``_TEXT_BATCH`` at a time
        (a parsed line is a Python tuple until its batch becomes an array)."""
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        held = 0
        for records, numbers in self._parsed(min(size, _TEXT_BATCH)):
            parts.append((records, numbers))
            held += len(records)
            while held >= size:
                records, numbers = np.concatenate([r for r, _ in parts]), np.concatenate([n for _, n in parts])
                yield records[:size], numbers[:size]
                parts, held = [(records[size:], numbers[size:])], held - size
        if held:
            yield np.concatenate([r for r, _ in parts]), np.concatenate([n for _, n in parts])

    def _parsed(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        try:
            with open(self.path, encoding="utf-8", errors="strict") as f:
                yield from _parse_batches(f, self.path, size)
        except UnicodeDecodeError as e:
            raise TraceError(f"{self.path}: not a text trace: it holds bytes that are not UTF-8 "
                             f"({e.reason})") from None
        except OSError as e:
            raise TraceError(f"{self.path}: cannot read: {e.strerror or e}") from None

    def validate(self) -> "TextStream":
        """Read the whole file once, checking every line and counting the records (none kept): a
        bad line is refused before anything replays."""
        for _ in self.chunks():
            pass
        return self

    def chunks(self, size: int = _TEXT_BATCH) -> Iterator[tuple[int, np.ndarray]]:
        """``(first index, records)`` chunks of at most ``size`` records, read from the file anew."""
        starts, offsets = [0], []
        total = 0
        for records, numbers in self._batches(size):
            offset = numbers - np.arange(total, total + len(numbers))
            change = np.flatnonzero(np.diff(offset)) + 1
            if not offsets or offsets[-1] != int(offset[0]):
                if offsets:
                    starts.append(total)
                offsets.append(int(offset[0]))
            starts.extend((total + change).tolist())
            offsets.extend(offset[change].tolist())
            yield total, records
            total += len(records)
        self._starts, self._offsets, self.length = starts, offsets, total

    def origin(self, index: int) -> int | None:
        """The line number of record ``index`` (once the file was read), or None."""
        if self.length is None or not 0 <= index < self.length or not self._offsets:
            return None
        k = bisect.bisect_right(self._starts, index) - 1
        return index + self._offsets[k]


def format_text(records: np.ndarray, start: int = 0) -> Iterator[str]:
    """Text-format lines (without newlines) for ``records``; a record the format cannot carry
    raises TraceError naming its index (counted from ``start``) and field."""
    for i, (op, vcpu, vm, size, gpa, value) in enumerate(records.tolist(), start):
        problem = record_problem(op, size, gpa, value)
        if problem:
            raise TraceError(f"record {i}, field {problem[0]}: {problem[1]}")
        name = Op(op).name
        if op == Op.LOAD:
            tail = f" {gpa:#x} {size}"
        elif op in (Op.STORE, Op.NT_STORE):
            tail = f" {gpa:#x} {size} {value:#x}"
        elif op in FENCE_OPS:
            tail = ""
        else:
            tail = f" {gpa:#x}" + (f" {size}" if size else "")
        yield f"vm{vm} cpu{vcpu} {name}{tail}"


def save_text(path: PathLike, records: np.ndarray | Iterable[np.ndarray], header: bool = True) -> int:
    """Write a trace (one array or chunks) in the text format; returns the record count."""
    n = 0
    with atomic_write(path, "w", encoding="utf-8") as f:
        if header:
            f.write("# nvemu text trace: [vmN] [cpuN] OP operands (see nvemu.formats.trace)\n")
        for chunk in ([records] if isinstance(records, np.ndarray) else records):
            f.writelines(line + "\n" for line in format_text(chunk, n))
            n += len(chunk)
    return n
