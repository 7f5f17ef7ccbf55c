"""Trace files: the native ``.npy`` format, the line-oriented text format, and pmemcheck store logs.

Three ways a trace reaches the emulator, all ending as ``TRACE_DTYPE`` records:

- **npy** (native): a plain ``.npy`` file of ``TRACE_DTYPE``. :class:`NpyTrace` validates the header
  without reading the data and hands out memory-mapped chunks, each mapped on its own and unmapped once
  dropped, so a replay's resident memory does not grow with the trace. :class:`NpyWriter` writes one
  chunk at a time.
- **text**: one operation per line, for people and small hand-written cases (grammar below); loads and
  saves, exactly round-tripping every record the emulator accepts.
- **pmemcheck**: the ``--log-stores=yes`` store log of Valgrind's pmemcheck (what PMDK's pmreorder
  reads), imported by :func:`import_pmemcheck` onto a vNVDIMM.

:func:`detect_format` tells them apart by content, never by file name, and :func:`open_trace` /
:func:`load_trace` read any of them. Every malformed input raises :class:`~nvemu.errors.TraceError`
naming the record index or line number and the field.

Text format
-----------
::

    # comment                                   '#' starts a comment anywhere; blank lines are ignored
    [vmN] [cpuN] OP OPERANDS                    vm and cpu (or vcpu) default to vm0 cpu0

    LOAD        GPA [SIZE]                      SIZE 1, 2, 4 or 8 (default 8)
    STORE       GPA SIZE VALUE                  also NT_STORE; VALUE must fit SIZE bytes
    CLWB        GPA [SIZE]                      also CLFLUSHOPT, CLFLUSH; SIZE 0 (default) or 64
    SFENCE                                      also MFENCE

Numbers are decimal or ``0x`` hex, with ``_`` allowed between digits; op names are case-insensitive.
A load or store may not cross a 64-byte line. The writer emits ``vmN cpuN OP ...`` with hex GPAs and
values, e.g. ``vm0 cpu1 STORE 0x100001000 8 0xdeadbeef``.
"""

from __future__ import annotations

import ast
import io
import mmap
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Union

import numpy as np

from .._constants import DATA_OPS, FENCE_OPS, FLUSH_OPS, TRACE_DTYPE, Op
from ..errors import TraceError

PathLike = Union[str, "os.PathLike[str]"]

LINE = 64
PAGE = 4096
RECORD_BYTES = TRACE_DTYPE.itemsize
FORMATS = ("npy", "text", "pmemcheck")
DEFAULT_CHUNK = 1 << 20
"""Records per chunk when streaming (24 MiB of trace mapped at a time)."""

DEFAULT_NVDIMM_GPA = 1 << 32
DEFAULT_NVDIMM_SIZE = 256 << 20
"""Where the default VM's vNVDIMM sits (``nvemu layout --json``): the pmemcheck importer's default."""

_U64 = (1 << 64) - 1
_OP_NAMES = {op.name: op for op in Op}
_LOAD_STORE_SIZES = (1, 2, 4, 8)
_FLUSH_SIZES = (0, LINE)


def _shorten(text: str, limit: int = 60) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---- one record's validity (shared by the text reader and writer) --------------------------------

def record_problem(op: int, size: int, gpa: int, value: int) -> tuple[str, str] | None:
    """``(field, problem)`` if the record is one the text format cannot carry (and, except for
    non-zero unused fields, one the core would refuse), else None."""
    if op not in _OP_NAMES.values():
        return "op", f"op {op} is not a known operation (0..7)"
    name = Op(op).name
    if op in DATA_OPS:
        if size not in _LOAD_STORE_SIZES:
            return "size", f"size {size} is not valid for {name} (1, 2, 4 or 8)"
        if gpa % LINE + size > LINE:
            return "gpa", f"{size}-byte access at {gpa:#x} crosses a 64-byte line"
        if op == Op.LOAD and value:
            return "value", f"LOAD carries value {value:#x}"
        if value >> (8 * size):
            return "value", f"value {value:#x} does not fit a {size}-byte {name}"
    elif op in FLUSH_OPS:
        if size not in _FLUSH_SIZES:
            return "size", f"size {size} is not valid for {name} (0 or 64)"
        if value:
            return "value", f"{name} carries value {value:#x}"
    else:
        for fname, v in (("gpa", gpa), ("size", size), ("value", value)):
            if v:
                return fname, f"{name} carries {fname} {v:#x}"
    return None


# ---- native .npy ----------------------------------------------------------------------------------

NPY_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 1 << 20
_MAP_READ: dict[str, int] = ({"flags": mmap.MAP_SHARED | mmap.MAP_POPULATE, "prot": mmap.PROT_READ}
                             if hasattr(mmap, "MAP_POPULATE") else {"access": mmap.ACCESS_READ})
"""How a chunk is mapped: read-only, and on Linux populated in one go (MAP_POPULATE) rather than
page fault by page fault as the core reads it."""


def _dtype_problem(dtype: np.dtype) -> str:
    """Which field of ``dtype`` differs from TRACE_DTYPE, in words."""
    if dtype.names is None or dtype.fields is None:
        return f"dtype {dtype} is not the structured TRACE_DTYPE {TRACE_DTYPE}"
    want_fields = TRACE_DTYPE.fields
    assert want_fields is not None and TRACE_DTYPE.names is not None
    for name in TRACE_DTYPE.names:
        if name not in dtype.names:
            return f"field {name!r} is missing (dtype {dtype})"
        want, have = want_fields[name], dtype.fields[name]
        if have[0] != want[0]:
            return f"field {name!r} is {have[0].str}, expected {want[0].str}"
        if have[1] != want[1]:
            return f"field {name!r} sits at byte {have[1]}, expected {want[1]}"
    extra = [n for n in dtype.names if n not in TRACE_DTYPE.names]
    if extra:
        return f"field {extra[0]!r} is not part of TRACE_DTYPE"
    return f"record size {dtype.itemsize} bytes, expected {TRACE_DTYPE.itemsize}"


class NpyTrace:
    """A validated native ``.npy`` trace, read in memory-mapped chunks.

    Opening reads only the header: a bad magic or header, a dtype other than TRACE_DTYPE, a shape
    other than one dimension, or a file shorter (truncated) or longer than its header says raises
    TraceError before any record is replayed.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/t.npy"
    >>> np.save(path, np.zeros(5, TRACE_DTYPE))
    >>> t = NpyTrace(path)
    >>> len(t), [(start, len(c)) for start, c in t.chunks(2)]
    (5, [(0, 2), (2, 2), (4, 1)])
    """

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                self.offset, self.n = self._read_header(f)
                file_size = os.fstat(f.fileno()).st_size
        except OSError as e:
            raise TraceError(f"{self.path}: cannot read: {e.strerror or e}") from None
        have = file_size - self.offset
        if have < self.n * RECORD_BYTES:
            whole = max(have, 0) // RECORD_BYTES
            raise TraceError(f"{self.path}: truncated: the header promises {self.n} records, the file "
                             f"holds {whole} whole records (record {whole} is cut short)")
        if have > self.n * RECORD_BYTES:
            raise TraceError(f"{self.path}: {have - self.n * RECORD_BYTES} bytes follow the {self.n} "
                             f"records the header declares")

    def _read_header(self, f: IO[bytes]) -> tuple[int, int]:
        where = f"{self.path}: not a valid .npy file"
        magic = f.read(8)
        if len(magic) < 8 or magic[:6] != NPY_MAGIC:
            raise TraceError(f"{where}: it does not start with the .npy magic")
        major = magic[6]
        if major not in (1, 2, 3):
            raise TraceError(f"{where}: unknown format version {major}.{magic[7]}")
        width = 2 if major == 1 else 4
        raw = f.read(width)
        if len(raw) < width:
            raise TraceError(f"{where}: the header is cut short")
        length = int.from_bytes(raw, "little")
        if length > _MAX_HEADER:
            raise TraceError(f"{where}: header of {length} bytes")
        text = f.read(length)
        if len(text) < length:
            raise TraceError(f"{where}: the header is cut short")
        try:
            header = ast.literal_eval(text.decode("utf8" if major == 3 else "latin1"))
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError, UnicodeDecodeError) as e:
            raise TraceError(f"{where}: unreadable header ({type(e).__name__})") from None
        if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
            raise TraceError(f"{where}: the header is not the dict of descr, fortran_order and shape")
        try:
            dtype = np.lib.format.descr_to_dtype(header["descr"])
        except Exception as e:  # noqa: BLE001 - numpy raises several kinds for a malformed descr
            raise TraceError(f"{where}: bad dtype description ({type(e).__name__}: {e})") from None
        if dtype != TRACE_DTYPE:
            raise TraceError(f"{self.path}: wrong dtype: {_dtype_problem(dtype)}")
        shape = header["shape"]
        if not (isinstance(shape, tuple) and len(shape) == 1 and isinstance(shape[0], int) and shape[0] >= 0):
            raise TraceError(f"{self.path}: shape {shape!r}: a trace is one-dimensional")
        return 8 + width + length, shape[0]

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"<NpyTrace {self.path!r}: {self.n} records>"

    def chunks(self, size: int = DEFAULT_CHUNK, start: int = 0,
               stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(first index, records)`` for consecutive chunks of at most ``size`` records. Each
        chunk is a read-only view of its own mapping of the file; the mapping goes away when the
        chunk is dropped, so memory stays bounded however long the trace."""
        if size <= 0:
            raise ValueError("chunk size must be positive")
        stop = self.n if stop is None else min(stop, self.n)
        with open(self.path, "rb") as f:
            for lo in range(start, stop, size):
                hi = min(lo + size, stop)
                first, end = self.offset + lo * RECORD_BYTES, self.offset + hi * RECORD_BYTES
                base = first - first % mmap.ALLOCATIONGRANULARITY
                mapping = mmap.mmap(f.fileno(), end - base, offset=base, **_MAP_READ)
                chunk = np.frombuffer(mapping, TRACE_DTYPE, hi - lo, first - base)
                del mapping          # the chunk now holds the only reference
                yield lo, chunk
                del chunk

    def array(self) -> np.ndarray:
        """The whole trace as one read-only memory map (resident pages grow as it is read)."""
        if self.n == 0:
            return np.zeros(0, TRACE_DTYPE)
        return np.memmap(self.path, TRACE_DTYPE, "r", self.offset, (self.n,))


def load_npy(path: PathLike, mmap_mode: bool = True) -> np.ndarray:
    """A native trace: a read-only memory map (default) or an in-memory copy."""
    arr = NpyTrace(path).array()
    return arr if mmap_mode else np.array(arr)


class NpyWriter:
    """Writes a native ``.npy`` trace one chunk at a time; the header's record count is patched
    when the writer closes, so the total need not be known in advance.

    Examples
    --------
    >>> import tempfile
    >>> path = tempfile.mkdtemp() + "/t.npy"
    >>> with NpyWriter(path) as w:
    ...     w.write(np.zeros(3, TRACE_DTYPE)); w.write(np.zeros(2, TRACE_DTYPE))
    >>> len(NpyTrace(path))
    5
    """

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self.n = 0
        self._file = open(self.path, "wb")  # noqa: SIM115 - open until close()
        self._header_bytes = self._header(0)
        self._file.write(self._header_bytes)

    @staticmethod
    def _header(n: int) -> bytes:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buf, {"descr": np.lib.format.dtype_to_descr(TRACE_DTYPE), "fortran_order": False, "shape": (n,)})
        return buf.getvalue()

    def write(self, records: np.ndarray) -> None:
        if records.dtype != TRACE_DTYPE or records.ndim != 1:
            raise TraceError(f"can only write one-dimensional TRACE_DTYPE arrays, not {records.dtype} "
                             f"of shape {records.shape}")
        self._file.write(np.ascontiguousarray(records).tobytes())
        self.n += len(records)

    def close(self) -> None:
        if self._file.closed:
            return
        header = self._header(self.n)
        if len(header) != len(self._header_bytes):       # numpy pads the shape for in-place growth
            raise TraceError(f"{self.path}: the .npy header grew from {len(self._header_bytes)} to "
                             f"{len(header)} bytes")
        self._file.seek(0)
        self._file.write(header)
        self._file.close()

    def __enter__(self) -> NpyWriter:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def save_npy(path: PathLike, records: np.ndarray | Iterable[np.ndarray]) -> int:
    """Write one array, or an iterable of chunks, as a native trace; returns the record count."""
    with NpyWriter(path) as w:
        for chunk in ([records] if isinstance(records, np.ndarray) else records):
            w.write(chunk)
    return w.n


def id_extent(chunks: Iterable[np.ndarray]) -> tuple[int, int]:
    """``(highest vm, highest vcpu)`` named by any record (-1, -1 for no records): how many VMs
    and vCPUs a trace needs. Reads two 16-bit columns, not the structured fields: the vCPU is the
    high byte of the first and the vm the whole second, so their maxima are the fields' maxima."""
    vm = vcpu = -1
    for chunk in chunks:
        if len(chunk):
            words = chunk.view("<u2").reshape(len(chunk), RECORD_BYTES // 2)
            vcpu = max(vcpu, int(words[:, 0].max()) >> 8)
            vm = max(vm, int(words[:, 1].max()))
    return vm, vcpu


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
    batches: list[np.ndarray] = []
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
        if len(pending) == _TEXT_BATCH:
            batches.append(np.array(pending, TRACE_DTYPE))
            pending.clear()
    batches.append(np.array(pending, TRACE_DTYPE))
    return np.concatenate(batches), np.array(numbers, np.int64)


def load_text(path: PathLike) -> np.ndarray:
    """A text-format trace file as TRACE_DTYPE records."""
    return _read_text(path)[0]


def _read_text(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            return parse_text(f, os.fspath(path))
    except UnicodeDecodeError as e:
        raise TraceError(f"{os.fspath(path)}: not a text trace: it holds bytes that are not UTF-8 "
                         f"({e.reason})") from None
    except OSError as e:
        raise TraceError(f"{os.fspath(path)}: cannot read: {e.strerror or e}") from None


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
    with open(path, "w", encoding="utf-8") as f:
        if header:
            f.write("# nvemu text trace: [vmN] [cpuN] OP operands (see nvemu.trace)\n")
        for chunk in ([records] if isinstance(records, np.ndarray) else records):
            f.writelines(line + "\n" for line in format_text(chunk, n))
            n += len(chunk)
    return n


# ---- pmemcheck store logs -------------------------------------------------------------------------
#
# What pmemcheck (--log-stores=yes) writes, as its sources show: "START", then records joined by
# '|', then "|STOP" and a newline, all on one line whose start carries Valgrind's "==PID== " prefix:
#   STORE;0xADDR;0xVALUE;0xSIZE[;stack frames]   a store of 1..8 bytes (wider vector stores arrive
#                                               split into 8-byte pieces), value little-endian
#   FLUSH;0xADDR;0xSIZE                         a cache flush of any byte range
#   FENCE                                       sfence/mfence (and clflush's implied ordering)
#   COMMIT                                      the retired pcommit
#   REGISTER_FILE;PATH;0xADDR;0xSIZE;0xOFFSET   PATH's bytes [OFFSET, OFFSET+SIZE) mapped at ADDR
#   NAME.BEGIN / NAME.END                       markers (PMREORDER_EMIT_LOG, VALGRIND_EMIT_LOG)
#   FREORDER, PREORDER, FAULT_ONLY, NO_REORDER_FAULT, DEFAULT_REORDER, ...   pmreorder engine marks

_PID_PREFIX = re.compile(r"==\d+==\s?")
_SEPARATORS = re.compile(r"([|\n])")
_ENGINE_MARKS = frozenset({"FREORDER", "PREORDER", "FAULT_ONLY", "NO_REORDER_FAULT", "DEFAULT_REORDER",
                           "COMMIT"})
_PMEMCHECK_OPS = ("STORE;", "FLUSH;", "REGISTER_FILE;")
_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class PmemFile:
    """A file the log registered, placed on the vNVDIMM at ``gpa`` (``size`` = the highest file
    offset any of its mappings reaches)."""

    name: str
    gpa: int
    size: int


@dataclass
class PmemcheckImport:
    """What :func:`import_pmemcheck` made of a log.

    ``records``: the trace; ``origin[i]``: the log record trace record ``i`` came from;
    ``markers``: ``(trace index the marker precedes, name)`` for every marker record (pmreorder
    sections ``NAME.BEGIN``/``NAME.END``, engine marks, ``COMMIT``), kept for checkers; ``files``:
    where each registered file landed; ``skipped``: records dropped because they touched no
    registered file (only with ``unregistered="skip"``); ``log_records``: records read.
    """

    records: np.ndarray
    origin: np.ndarray
    markers: list[tuple[int, str]] = field(default_factory=list)
    files: list[PmemFile] = field(default_factory=list)
    skipped: int = 0
    log_records: int = 0


def _log_records(blocks: Iterable[str]) -> Iterator[tuple[int, int, str]]:
    """``(record number, line number, text)`` of each ``|``- or newline-separated piece of a log,
    numbered from 0 in file order, with Valgrind's ``==PID==`` line prefixes removed."""
    number, line, carry, line_start = 0, 1, "", True
    for block in blocks:
        parts = _SEPARATORS.split(carry + block)
        carry = parts.pop()
        for k in range(0, len(parts), 2):
            piece, sep = parts[k], parts[k + 1]
            if line_start:
                piece = _PID_PREFIX.sub("", piece, count=1)
            piece = piece.strip()
            if piece:
                yield number, line, piece
                number += 1
            line_start = sep == "\n"
            line += line_start
    piece = _PID_PREFIX.sub("", carry, count=1) if line_start else carry
    if piece.strip():
        yield number, line, piece.strip()


class _Mappings:
    """The log's live file mappings (virtual address ranges -> guest-physical), newest winning."""

    def __init__(self, files: dict[str, PmemFile]) -> None:
        self.files = files
        self.live: list[tuple[int, int, int]] = []     # (va, size, gpa of va), sorted by va

    def register(self, name: str, va: int, size: int, offset: int) -> None:
        end = va + size
        self.live = [m for m in self.live if m[0] + m[1] <= va or m[0] >= end]   # a new mmap replaces
        self.live.append((va, size, self.files[name].gpa + offset))
        self.live.sort()

    def translate(self, va: int, n: int) -> list[tuple[int, int]] | None:
        """Guest ``(gpa, length)`` pieces of the virtual range ``[va, va+n)``, or None if any byte
        of it lies outside every registered mapping."""
        pieces, pos, end = [], va, va + n
        for base, size, gpa in self.live:
            if base + size <= pos:
                continue
            if base > pos:
                return None
            take = min(end, base + size) - pos
            pieces.append((gpa + pos - base, take))
            pos += take
            if pos == end:
                return pieces
        return None if pos < end else pieces


def _hex(text: str, what: str, bits: int = 64) -> int:
    t = text.strip()
    digits = t[2:] if t[:2] in ("0x", "0X") else t
    if not digits or not all(c in "0123456789abcdefABCDEF" for c in digits):
        raise _FieldError(what, f"{text!r} is not a hex number")
    value = int(digits, 16)
    if value >> bits:
        raise _FieldError(what, f"{text} does not fit {bits} bits")
    return value


def _store_pieces(gpa: int, size: int, value: int) -> Iterator[tuple[int, int, int]]:
    """``(gpa, size, value)`` pieces of a store: split where it crosses a line, each piece the
    largest of 8/4/2/1 bytes that fits, the value's bytes kept in little-endian order."""
    data = value.to_bytes(size, "little")
    pos = 0
    while pos < size:
        room = min(size - pos, LINE - (gpa + pos) % LINE)
        step = 8 if room >= 8 else 4 if room >= 4 else 2 if room >= 2 else 1
        yield gpa + pos, step, int.from_bytes(data[pos:pos + step], "little")
        pos += step


def _register_fields(text: str) -> tuple[str, int, int, int]:
    parts = text.split(";")
    if len(parts) < 5:
        raise _FieldError("-", "REGISTER_FILE needs PATH;ADDR;SIZE;OFFSET")
    name = ";".join(parts[1:-3])        # a path may itself hold ';': the numbers are the last three
    if not name:
        raise _FieldError("path", "empty")
    return name, _hex(parts[-3], "addr"), _hex(parts[-2], "size"), _hex(parts[-1], "offset")


class _PmemcheckReader:
    """Two passes over a log: the first places every registered file on the vNVDIMM, the second
    turns the records between START and STOP into trace records."""

    def __init__(self, blocks: Callable[[], Iterable[str]], source: str, nvdimm_gpa: int, nvdimm_size: int,
                 vm: int, vcpu: int, unregistered: str, deep_flush: int | None) -> None:
        if unregistered not in ("error", "skip"):
            raise ValueError(f"unregistered={unregistered!r}: 'error' or 'skip'")
        self.blocks, self.source = blocks, source
        self.nvdimm_gpa, self.nvdimm_size = nvdimm_gpa, nvdimm_size
        self.vm, self.vcpu, self.unregistered, self.deep_flush = vm, vcpu, unregistered, deep_flush

    def _error(self, number: int, line: int, fname: str, problem: str, text: str) -> TraceError:
        return TraceError(f"{self.source} pmemcheck record {number} (line {line}), field {fname}: {problem}: "
                          f"{_shorten(text)!r}")

    def _records(self) -> Iterator[tuple[int, int, str]]:
        """The records after START, up to STOP (or the end)."""
        started = False
        for number, line, text in _log_records(self.blocks()):
            if not started:
                started = text == "START"
                continue
            if text == "STOP":
                return
            yield number, line, text
        if not started:
            raise TraceError(f"{self.source}: no START record: not a pmemcheck store log (--log-stores=yes)")

    def place_files(self) -> dict[str, PmemFile]:
        extents: dict[str, int] = {}
        where: dict[str, tuple[int, int, str]] = {}
        for number, line, text in self._records():
            if text.startswith("REGISTER_FILE;"):
                try:
                    name, _, size, offset = _register_fields(text)
                except _FieldError as e:
                    raise self._error(number, line, e.field, e.problem, text) from None
                extents[name] = max(extents.get(name, 0), offset + size)
                where.setdefault(name, (number, line, text))
        files, cursor = {}, 0
        for name, extent in extents.items():
            if cursor + extent > self.nvdimm_size:
                number, line, text = where[name]
                raise self._error(number, line, "size", f"file {name} needs {extent:#x} bytes at vNVDIMM offset "
                                  f"{cursor:#x}; the vNVDIMM holds {self.nvdimm_size:#x}", text)
            files[name] = PmemFile(name, self.nvdimm_gpa + cursor, extent)
            cursor += -(-extent // PAGE) * PAGE
        return files

    def convert(self) -> PmemcheckImport:
        files = self.place_files()
        maps = _Mappings(files)
        out: list[tuple[int, int, int, int, int, int]] = []
        origin: list[int] = []
        result = PmemcheckImport(np.zeros(0, TRACE_DTYPE), np.zeros(0, np.int64), files=list(files.values()))
        head = (self.vcpu, self.vm)
        flushed = False                              # a FLUSH since the last FENCE
        for number, line, text in self._records():
            result.log_records += 1
            kind = text.split(";", 1)[0]
            try:
                if kind == "STORE":
                    parts = text.split(";")          # fields past the fourth are stack frames
                    if len(parts) < 4:
                        raise _FieldError("-", "STORE needs ADDR;VALUE;SIZE")
                    va, value, size = (_hex(parts[1], "addr"), _hex(parts[2], "value"),
                                       _hex(parts[3], "size"))
                    if not 1 <= size <= 8:
                        raise _FieldError("size", f"a {size}-byte store (pmemcheck logs 1 to 8 bytes)")
                    if value >> (8 * size):
                        raise _FieldError("value", f"{value:#x} does not fit {size} bytes")
                    pieces = self._place(maps, va, size)
                    if pieces is None:
                        result.skipped += 1
                        continue
                    data = value.to_bytes(size, "little")
                    pos = 0
                    for gpa, n in pieces:
                        part = int.from_bytes(data[pos:pos + n], "little")
                        for g, s, v in _store_pieces(gpa, n, part):
                            out.append((Op.STORE, *head, s, g, v))
                            origin.append(number)
                        pos += n
                elif kind == "FLUSH":
                    parts = text.split(";")
                    if len(parts) != 3:
                        raise _FieldError("-", "FLUSH needs ADDR;SIZE")
                    va, size = _hex(parts[1], "addr"), _hex(parts[2], "size")
                    pieces = self._place(maps, va, size) if size else []
                    if pieces is None:
                        result.skipped += 1
                        continue
                    for gpa, n in pieces:
                        for g in range(gpa - gpa % LINE, gpa + n, LINE):
                            out.append((Op.CLWB, *head, 0, g, 0))
                            origin.append(number)
                            flushed = True
                elif kind == "FENCE":
                    if text != "FENCE":
                        raise _FieldError("-", "FENCE takes no fields")
                    out.append((Op.SFENCE, *head, 0, 0, 0))
                    origin.append(number)
                    if flushed and self.deep_flush is not None:     # pmem_deep_persist's vFHA write
                        out += [(Op.STORE, *head, 8, self.deep_flush, 1), (Op.SFENCE, *head, 0, 0, 0)]
                        origin += [number, number]
                    flushed = False
                elif kind == "REGISTER_FILE":
                    name, va, size, offset = _register_fields(text)
                    maps.register(name, va, size, offset)
                elif kind in _ENGINE_MARKS or kind.endswith((".BEGIN", ".END")) and ";" not in text:
                    result.markers.append((len(out), text))
                else:
                    raise _FieldError("record", f"unknown record {kind!r}")
            except _FieldError as e:
                raise self._error(number, line, e.field, e.problem, text) from None
            except _Unregistered as e:
                raise self._error(number, line, "addr", str(e), text) from None
        result.records = np.array(out, TRACE_DTYPE) if out else np.zeros(0, TRACE_DTYPE)
        result.origin = np.array(origin, np.int64)
        return result

    def _place(self, maps: _Mappings, va: int, n: int) -> list[tuple[int, int]] | None:
        pieces = maps.translate(va, n)
        if pieces is None and self.unregistered == "error":
            raise _Unregistered(f"[{va:#x}, {va + n:#x}) is not inside any file the log registered "
                                f"(REGISTER_FILE); unregistered='skip' (--skip-unregistered) drops such records")
        return pieces


class _Unregistered(Exception):
    pass


def _text_blocks(path: PathLike) -> Callable[[], Iterator[str]]:
    def blocks() -> Iterator[str]:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                while block := f.read(_READ_BLOCK):
                    yield block
        except OSError as e:
            raise TraceError(f"{os.fspath(path)}: cannot read: {e.strerror or e}") from None
    return blocks


def import_pmemcheck(path: PathLike, nvdimm_gpa: int = DEFAULT_NVDIMM_GPA,
                     nvdimm_size: int = DEFAULT_NVDIMM_SIZE, *, vm: int = 0, vcpu: int = 0,
                     unregistered: str = "error", deep_flush: int | None = None) -> PmemcheckImport:
    """Import a pmemcheck store log onto the vNVDIMM at ``[nvdimm_gpa, nvdimm_gpa+nvdimm_size)``.

    Each registered file gets its own page-aligned stretch of the vNVDIMM, in order of first
    registration, as long as the highest file offset any of its mappings reaches; a log address
    lands at ``file's GPA + mapping offset + (address - mapping base)``, so a file mapped twice
    lands on the same guest bytes, and a later mapping of an address range replaces an earlier
    one. Stores become STOREs (split where they cross a line), each FLUSH one CLWB per line it
    covers (none for an empty one), FENCE an SFENCE; markers are kept aside (see
    :class:`PmemcheckImport`). A STORE or FLUSH touching an address outside every registered
    file raises TraceError naming the record (``unregistered="error"``) or is dropped and counted
    (``"skip"``). With ``deep_flush`` (the vFHA's GPA) every FENCE that closes a flush is also
    followed by a vFHA write and a fence, as if each persist were PMDK's ``pmem_deep_persist``
    (logs themselves never show one: the deep flush happens in the kernel). pmemcheck logs carry
    no thread ids: every record goes to ``vm``/``vcpu``.
    Log records are numbered from 0 in file order; the trace covers those between START and STOP.
    """
    reader = _PmemcheckReader(_text_blocks(path), os.fspath(path), nvdimm_gpa, nvdimm_size, vm, vcpu,
                              unregistered, deep_flush)
    return reader.convert()


def parse_pmemcheck(text: str, nvdimm_gpa: int = DEFAULT_NVDIMM_GPA, nvdimm_size: int = DEFAULT_NVDIMM_SIZE,
                    *, vm: int = 0, vcpu: int = 0, unregistered: str = "error", deep_flush: int | None = None,
                    source: str = "<pmemcheck>") -> PmemcheckImport:
    """:func:`import_pmemcheck` on a log held in a string."""
    reader = _PmemcheckReader(lambda: [text], source, nvdimm_gpa, nvdimm_size, vm, vcpu, unregistered,
                              deep_flush)
    return reader.convert()


# ---- detection and one entry point --------------------------------------------------------------

_SNIFF = 1 << 16


def detect_format(path: PathLike) -> str:
    """``"npy"``, ``"pmemcheck"`` or ``"text"``, from the file's first bytes: the .npy magic; a
    pmemcheck START record (or a ``|``-joined pmemcheck record) at the start of a line, after an
    optional ``==PID==`` prefix; anything else is taken for the text format."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF)
    except OSError as e:
        raise TraceError(f"{os.fspath(path)}: cannot read: {e.strerror or e}") from None
    if head.startswith(NPY_MAGIC):
        return "npy"
    for raw in head.decode("utf-8", "replace").splitlines()[:64]:
        line = _PID_PREFIX.sub("", raw.lstrip(), count=1).lstrip()
        first = line.split("|", 1)[0].strip()
        if first == "START" or ("|" in line and (first == "FENCE" or first.startswith(_PMEMCHECK_OPS))):
            return "pmemcheck"
        if line and not raw.startswith("=="):
            break                            # the first real line decides
    return "text"


@dataclass
class TraceSource:
    """A trace ready to replay, whatever its format: ``records`` in memory (text, pmemcheck, an
    array) or ``npy`` opened for streaming; ``origin`` maps a record index back to a text line or
    pmemcheck record for error messages."""

    format: str
    path: str | None = None
    records: np.ndarray | None = None
    npy: NpyTrace | None = None
    origin: np.ndarray | None = None
    origin_name: str = ""
    pmemcheck: PmemcheckImport | None = None

    def __len__(self) -> int:
        return len(self.npy) if self.npy is not None else len(self._records())

    def _records(self) -> np.ndarray:
        if self.records is None:
            raise ValueError("a TraceSource holds records or an NpyTrace")
        return self.records

    def chunks(self, size: int = DEFAULT_CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        """``(first index, records)`` chunks: mapped one by one for npy, views otherwise."""
        if self.npy is not None:
            yield from self.npy.chunks(size)
        else:
            records = self._records()
            for lo in range(0, len(records), size):
                yield lo, records[lo:lo + size]

    def array(self) -> np.ndarray:
        """All records: in memory, or a read-only memory map of the whole npy file."""
        return self.npy.array() if self.npy is not None else self._records()

    def where(self, index: int) -> str:
        """How an error names record ``index``: ``"record 5"`` or ``"record 5 (line 12)"``."""
        if self.origin is not None and 0 <= index < len(self.origin):
            return f"record {index} ({self.origin_name} {int(self.origin[index])})"
        return f"record {index}"


def open_trace(trace: PathLike | np.ndarray, format: str | None = None, *,
               nvdimm_gpa: int = DEFAULT_NVDIMM_GPA, nvdimm_size: int = DEFAULT_NVDIMM_SIZE,
               unregistered: str = "error", deep_flush: int | None = None) -> TraceSource:
    """Open a trace file of any format (detected by content unless ``format`` is given), or wrap
    a TRACE_DTYPE array. A pmemcheck log is imported onto ``[nvdimm_gpa, nvdimm_gpa+nvdimm_size)``
    (see :func:`import_pmemcheck` for ``unregistered`` and ``deep_flush``)."""
    if isinstance(trace, np.ndarray):
        if trace.dtype != TRACE_DTYPE or trace.ndim != 1:
            raise TraceError(f"a trace array must be one-dimensional TRACE_DTYPE: "
                             f"{_dtype_problem(trace.dtype) if trace.dtype != TRACE_DTYPE else trace.shape}")
        return TraceSource("array", records=trace)
    path = os.fspath(trace)
    fmt = format or detect_format(path)
    if fmt == "npy":
        return TraceSource("npy", path, npy=NpyTrace(path))
    if fmt == "text":
        records, lines = _read_text(path)
        return TraceSource("text", path, records=records, origin=lines, origin_name="line")
    if fmt == "pmemcheck":
        imp = import_pmemcheck(path, nvdimm_gpa, nvdimm_size, unregistered=unregistered, deep_flush=deep_flush)
        return TraceSource("pmemcheck", path, records=imp.records, origin=imp.origin,
                           origin_name="pmemcheck record", pmemcheck=imp)
    raise ValueError(f"unknown trace format {fmt!r}; known: {', '.join(FORMATS)}")


def load_trace(trace: PathLike, format: str | None = None, **importer: Any) -> np.ndarray:
    """Any trace file as TRACE_DTYPE records (a read-only memory map for npy). ``importer``
    options (``nvdimm_gpa``, ``nvdimm_size``, ``unregistered``, ``deep_flush``) apply to pmemcheck logs."""
    return open_trace(trace, format, **importer).array()


def save_trace(path: PathLike, records: np.ndarray | Iterable[np.ndarray]) -> int:
    """Write records as npy when ``path`` ends in ``.npy``, else as text; returns the count."""
    if Path(path).suffix.lower() == ".npy":
        return save_npy(path, records)
    return save_text(path, records)


__all__ = ["DEFAULT_CHUNK", "FORMATS", "NpyTrace", "NpyWriter", "PmemFile", "PmemcheckImport",
           "TraceSource", "detect_format", "format_text", "id_extent", "import_pmemcheck", "load_npy",
           "load_text", "load_trace", "open_trace", "parse_pmemcheck", "parse_text", "record_problem",
           "save_npy", "save_text", "save_trace"]
