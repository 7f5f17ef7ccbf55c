"""The native trace format: a plain ``.npy`` of ``TRACE_DTYPE``, validated from its header and
streamed in memory-mapped chunks so that resident memory does not grow with the trace."""

from __future__ import annotations

import ast
import io
import mmap
import os
from collections.abc import Iterable, Iterator
from typing import IO

import numpy as np


from ..._constants import DEFAULT_CHUNK, TRACE_DTYPE
from ..._files import AtomicFile
from ...errors import TraceError
from .records import RECORD_BYTES, PathLike

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
    when the writer closes, so the total need not be known in advance. The file is written under a
    temporary name and renamed onto ``path`` by :meth:`close`: a writer that fails or is
    interrupted inside its ``with`` block leaves no truncated trace (nor harms an older file).

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
        self._atomic = AtomicFile(self.path, "wb")     # renamed onto path by close(), complete
        self._file = self._atomic.file
        self._header_bytes = self._header(0)
        self._file.write(self._header_bytes)

    @staticmethod
    def _header(n: int) -> bytes:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buf, {"descr": np.lib.format.dtype_to_descr(TRACE_DTYPE), "fortran_order": False, "shape": (n,)})
        return buf.getvalue()

    def write(self, records: np.ndarray) -> None:
        """Append ``records`` (a one-dimensional TRACE_DTYPE array); TraceError for any other array."""
        if records.dtype != TRACE_DTYPE or records.ndim != 1:
            raise TraceError(f"can only write one-dimensional TRACE_DTYPE arrays, not {records.dtype} "
                             f"of shape {records.shape}")
        self._file.write(np.ascontiguousarray(records).view(np.uint8))       # the buffer itself, no copy
        self.n += len(records)

    def close(self) -> None:
        """Patch the header's record count and rename the file onto ``path`` (once; later calls do nothing)."""
        if self._file.closed:
            return
        header = self._header(self.n)
        if len(header) != len(self._header_bytes):       # numpy pads the shape for in-place growth
            raise TraceError(f"{self.path}: the .npy header grew from {len(self._header_bytes)} to "
                             f"{len(header)} bytes")
        self._file.seek(0)
        self._file.write(header)
        self._atomic.commit()

    def discard(self) -> None:
        """Drop what was written: ``path`` is left as it was before the writer opened."""
        self._atomic.discard()

    def __enter__(self) -> NpyWriter:  # noqa: PYI034
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:                       # an error or an interrupt mid-write: no truncated trace is left
            self.discard()


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
