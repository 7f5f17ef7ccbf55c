"""Valgrind pmemcheck store logs (``--log-stores=yes``), imported onto a vNVDIMM."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np


from ..._constants import DEFAULT_CHUNK, GPA_LIMIT, LINE_BYTES, PAGE_BYTES, TRACE_DTYPE, Op
from ...errors import TraceError
from .records import DEFAULT_NVDIMM_GPA, DEFAULT_NVDIMM_SIZE, PathLike, _shorten
from .text import _FieldError

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

    def overlap(self, va: int, n: int) -> list[tuple[int, int]]:
        """Guest ``(gpa, length)`` pieces of the parts of ``[va, va+n)`` that lie inside registered
        mappings (an empty list when none does): what a flush of that range writes back."""
        end = va + n
        return [(gpa + max(va, base) - base, min(end, base + size) - max(va, base))
                for base, size, gpa in self.live if base < end and va < base + size]


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
        room = min(size - pos, LINE_BYTES - (gpa + pos) % LINE_BYTES)
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


class _Emitter:
    """Trace records built in order and handed on a chunk at a time: single records collect in a
    list, a range FLUSH's write-backs are made with numpy a chunk at a time, so memory stays one
    chunk whatever the log expands to."""

    def __init__(self, chunk: int, vcpu: int, vm: int, dry: bool = False) -> None:
        if chunk < 1:
            raise ValueError(f"chunk={chunk}: must be positive")
        self.chunk, self.vcpu, self.vm, self.dry = chunk, vcpu, vm, dry
        self.rows: list[tuple[int, int, int, int, int, int]] = []
        self.origin: list[int] = []
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending = 0            # records in parts (rows not counted)
        self.emitted = 0            # records handed on before

    @property
    def count(self) -> int:
        """Index (in the whole trace) of the next record."""
        return self.emitted + self.pending + len(self.rows)

    def add(self, op: int, size: int, gpa: int, value: int, number: int) -> None:
        if self.dry:                # counting only (a validating pass)
            self.pending += 1
            return
        self.rows.append((op, self.vcpu, self.vm, size, gpa, value))
        self.origin.append(number)

    def _seal_rows(self) -> None:
        if self.rows:
            self.parts.append((np.array(self.rows, TRACE_DTYPE), np.array(self.origin, np.int64)))
            self.pending += len(self.rows)
            self.rows, self.origin = [], []

    def write_backs(self, first: int, end: int, number: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """One CLWB per line from ``first`` (line aligned) up to ``end``; full chunks are yielded."""
        if self.dry:
            self.pending += -(-(end - first) // LINE_BYTES)
            return
        self._seal_rows()
        step = LINE_BYTES * self.chunk
        for lo in range(first, end, step):
            gpa = np.arange(lo, min(end, lo + step), LINE_BYTES, dtype=np.uint64)
            rec = np.zeros(len(gpa), TRACE_DTYPE)
            rec["op"], rec["vcpu"], rec["vm"], rec["gpa"] = Op.CLWB, self.vcpu, self.vm, gpa
            self.parts.append((rec, np.full(len(gpa), number, np.int64)))
            self.pending += len(gpa)
            yield from self.ready()

    def ready(self, last: bool = False) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(first index, records, origin)`` for every full chunk (and the rest when ``last``)."""
        if self.dry:
            return
        if len(self.rows) >= self.chunk or last:
            self._seal_rows()
        while self.pending >= self.chunk or (last and self.pending):
            rec = np.concatenate([r for r, _ in self.parts]) if len(self.parts) > 1 else self.parts[0][0]
            org = np.concatenate([o for _, o in self.parts]) if len(self.parts) > 1 else self.parts[0][1]
            take = min(self.chunk, len(rec))
            self.parts = [(rec[take:], org[take:])] if take < len(rec) else []
            self.pending -= take
            start, self.emitted = self.emitted, self.emitted + take
            yield start, rec[:take], org[:take]


class _PmemcheckReader:
    """Two passes over a log: the first places every registered file on the vNVDIMM, the second
    turns the records between START and STOP into trace records."""

    def __init__(self, blocks: Callable[[], Iterable[str]], source: str, nvdimm_gpa: int, nvdimm_size: int,
                 vm: int, vcpu: int, unregistered: str, deep_flush: int | None) -> None:
        if unregistered not in ("error", "skip"):
            raise ValueError(f"unregistered={unregistered!r}: 'error' or 'skip'")
        for what, v in (("nvdimm_gpa", nvdimm_gpa), ("nvdimm_size", nvdimm_size)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise TraceError(f"{what}={v!r}: must be a non-negative integer")
        if nvdimm_size == 0 or nvdimm_gpa + nvdimm_size > GPA_LIMIT:
            raise TraceError(f"vNVDIMM [{nvdimm_gpa:#x}, {nvdimm_gpa + nvdimm_size:#x}) must be non-empty and "
                             f"inside the 48-bit guest-physical space (below {GPA_LIMIT:#x})")
        if deep_flush is not None and not 0 <= deep_flush < GPA_LIMIT:
            raise TraceError(f"vFHA GPA {deep_flush:#x} is outside the 48-bit guest-physical space")
        self.blocks, self.source = blocks, source
        self.nvdimm_gpa, self.nvdimm_size = nvdimm_gpa, nvdimm_size
        self.vm, self.vcpu, self.unregistered, self.deep_flush = vm, vcpu, unregistered, deep_flush
        self.count = 0                               # records the last full read made

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
            cursor += -(-extent // PAGE_BYTES) * PAGE_BYTES
        return files

    def convert(self) -> PmemcheckImport:
        """The whole trace in memory (small logs; :meth:`chunks` streams)."""
        result = PmemcheckImport(np.zeros(0, TRACE_DTYPE), np.zeros(0, np.int64))
        parts = list(self.chunks(result))
        if parts:
            result.records = np.concatenate([r for _, r, _ in parts])
            result.origin = np.concatenate([o for _, _, o in parts])
        return result

    def chunks(self, result: PmemcheckImport, chunk: int = DEFAULT_CHUNK,
               dry: bool = False) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(first index, records, origin)`` chunks of at most ``chunk`` records, in trace order;
        ``result`` gets the files at once and the markers and counts as the log is read. ``dry``:
        check every record and count, make nothing (``result.log_records`` ... and the count in
        ``result.origin``'s place are what it leaves)."""
        files = self.place_files()
        result.files = list(files.values())
        maps = _Mappings(files)
        out = _Emitter(chunk, self.vcpu, self.vm, dry)
        flushed = False                              # a FLUSH since the last FENCE
        for number, line, text in self._records():
            yield from out.ready()
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
                            out.add(Op.STORE, s, g, v, number)
                        pos += n
                elif kind == "FLUSH":
                    parts = text.split(";")
                    if len(parts) != 3:
                        raise _FieldError("-", "FLUSH needs ADDR;SIZE")
                    va, size = _hex(parts[1], "addr"), _hex(parts[2], "size")
                    pieces = self._place_flush(maps, va, size) if size else []
                    if pieces is None:
                        result.skipped += 1
                        continue
                    for gpa, n in pieces:                # one write-back per line, a chunk at a time
                        yield from out.write_backs(gpa - gpa % LINE_BYTES, gpa + n, number)
                        flushed = flushed or n > 0
                elif kind == "FENCE":
                    if text != "FENCE":
                        raise _FieldError("-", "FENCE takes no fields")
                    out.add(Op.SFENCE, 0, 0, 0, number)
                    if flushed and self.deep_flush is not None:     # pmem_deep_persist's vFHA write
                        out.add(Op.STORE, 8, self.deep_flush, 1, number)
                        out.add(Op.SFENCE, 0, 0, 0, number)
                    flushed = False
                elif kind == "REGISTER_FILE":
                    name, va, size, offset = _register_fields(text)
                    maps.register(name, va, size, offset)
                elif kind in _ENGINE_MARKS or kind.endswith((".BEGIN", ".END")) and ";" not in text:
                    result.markers.append((out.count, text))
                else:
                    raise _FieldError("record", f"unknown record {kind!r}")
            except _FieldError as e:
                raise self._error(number, line, e.field, e.problem, text) from None
            except _Unregistered as e:
                raise self._error(number, line, "addr", str(e), text) from None
        yield from out.ready(last=True)
        self.count = out.count

    def _place(self, maps: _Mappings, va: int, n: int) -> list[tuple[int, int]] | None:
        pieces = maps.translate(va, n)
        if pieces is None and self.unregistered == "error":
            raise _Unregistered(f"[{va:#x}, {va + n:#x}) is not inside any file the log registered "
                                f"(REGISTER_FILE); unregistered='skip' (--skip-unregistered) drops such records")
        return pieces


    def _place_flush(self, maps: _Mappings, va: int, n: int) -> list[tuple[int, int]] | None:
        """A flush writes back whole lines, so libpmem flushing a file whose size is not a multiple
        of 64 logs a FLUSH that runs past the registered range (pmemcheck's FLUSH record is the
        range the program passed, not clipped): it writes back the lines it overlaps. Only a
        flush that overlaps no registered file is unregistered."""
        pieces = maps.overlap(va, n)
        if pieces:
            return pieces
        return self._place(maps, va, n)


class _Unregistered(Exception):
    pass


class PmemcheckStream:
    """A pmemcheck log imported a chunk at a time (what :func:`stream_pmemcheck` returns): memory
    stays a chunk however far the log's range FLUSHes expand. ``info`` is filled as :meth:`chunks`
    reads (``files`` at once; ``markers``, ``skipped``, ``log_records`` by the end; its
    ``records``/``origin`` stay empty)."""

    def __init__(self, reader: "_PmemcheckReader") -> None:
        self.reader = reader
        self.info = PmemcheckImport(np.zeros(0, TRACE_DTYPE), np.zeros(0, np.int64))
        self._starts: list[np.ndarray] = []      # where each run of records from one log record begins
        self._numbers: list[np.ndarray] = []     # ... and that log record's number
        self.length: int | None = None           # records, once read to the end

    def validate(self) -> "PmemcheckStream":
        """Read the whole log once, checking every record and counting what it expands to (no
        records are made): a bad log is refused before anything replays."""
        self.info = PmemcheckImport(np.zeros(0, TRACE_DTYPE), np.zeros(0, np.int64))
        for _ in self.reader.chunks(self.info, dry=True):
            pass
        self.length = self.reader.count
        return self

    def chunks(self, size: int = DEFAULT_CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        """``(first index, records)`` chunks of at most ``size`` records, read from the log anew."""
        self.info = PmemcheckImport(np.zeros(0, TRACE_DTYPE), np.zeros(0, np.int64))
        self._starts, self._numbers = [], []
        total = 0
        for start, records, origin in self.reader.chunks(self.info, size):
            first = np.concatenate([[0], np.flatnonzero(np.diff(origin)) + 1])
            self._starts.append(start + first)
            self._numbers.append(origin[first])
            total = start + len(records)
            yield start, records
        self.length = total

    def origin(self, index: int) -> int | None:
        """The log record that trace record ``index`` (already read) came from."""
        if not self._starts:
            return None
        starts, numbers = np.concatenate(self._starts), np.concatenate(self._numbers)
        k = int(np.searchsorted(starts, index, side="right")) - 1
        return int(numbers[k]) if k >= 0 and (self.length is None or index < self.length) else None


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
    :class:`PmemcheckImport`). A FLUSH that overlaps a registered file writes back the lines of
    the part it overlaps, even when it runs past the file's end (a file whose size is not a
    multiple of 64 bytes has its last line flushed whole). A STORE touching an address outside
    every registered file, or a FLUSH wholly outside them, raises TraceError naming the record
    (``unregistered="error"``) or is dropped and counted (``"skip"``). With ``deep_flush`` (the vFHA's GPA)
    every FENCE that closes a flush is also
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


def stream_pmemcheck(path: PathLike, nvdimm_gpa: int = DEFAULT_NVDIMM_GPA,
                     nvdimm_size: int = DEFAULT_NVDIMM_SIZE, *, vm: int = 0, vcpu: int = 0,
                     unregistered: str = "error", deep_flush: int | None = None) -> PmemcheckStream:
    """:func:`import_pmemcheck`, read a chunk at a time (:meth:`PmemcheckStream.chunks`)."""
    return PmemcheckStream(_PmemcheckReader(_text_blocks(path), os.fspath(path), nvdimm_gpa, nvdimm_size, vm,
                                            vcpu, unregistered, deep_flush))
