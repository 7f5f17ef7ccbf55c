"""Format detection by content and the one entry point that reads any trace."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


from ..._constants import DEFAULT_CHUNK, TRACE_DTYPE
from ...errors import TraceError
from .npy import NPY_MAGIC, NpyTrace, _dtype_problem, save_npy
from .pmemcheck import _PID_PREFIX, _PMEMCHECK_OPS, PmemcheckImport, PmemcheckStream, stream_pmemcheck
from .records import DEFAULT_NVDIMM_GPA, DEFAULT_NVDIMM_SIZE, FORMATS, PathLike
from .text import TextStream, save_text

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
    """A trace ready to replay, whatever its format: ``records`` in memory (an array), ``npy``
    opened for streaming, or a text or pmemcheck ``stream`` parsed a chunk at a time as the file is
    read (its ``origin`` maps a record index back to a line for error messages; ``origin`` here
    does it for records in memory)."""

    format: str
    path: str | None = None
    records: np.ndarray | None = None
    npy: NpyTrace | None = None
    origin: np.ndarray | None = None
    origin_name: str = ""
    stream: PmemcheckStream | TextStream | None = None

    def __len__(self) -> int:
        if self.npy is not None:
            return len(self.npy)
        if self.stream is not None:
            if self.stream.length is None:
                for _ in self.stream.chunks():
                    pass
            assert self.stream.length is not None
            return self.stream.length
        return len(self._records())

    @property
    def known_length(self) -> int | None:
        """The record count if known without reading the trace (a pmemcheck log: after one read)."""
        return self.stream.length if self.stream is not None else len(self)

    @property
    def pmemcheck(self) -> PmemcheckImport | None:
        """What the pmemcheck importer found (files, markers, counts), after a read."""
        return self.stream.info if self.stream is not None else None

    def _records(self) -> np.ndarray:
        if self.records is None:
            raise ValueError("a TraceSource holds records, an NpyTrace or a pmemcheck stream")
        return self.records

    def chunks(self, size: int = DEFAULT_CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        """``(first index, records)`` chunks: mapped one by one for npy, imported as the log is
        read for text and pmemcheck, views otherwise."""
        if self.npy is not None:
            yield from self.npy.chunks(size)
        elif self.stream is not None:
            yield from self.stream.chunks(size)
        else:
            records = self._records()
            for lo in range(0, len(records), size):
                yield lo, records[lo:lo + size]

    def array(self) -> np.ndarray:
        """All records: in memory, a read-only memory map of the whole npy file, or the whole
        parsed text or pmemcheck file (which then sits in memory: prefer :meth:`chunks`)."""
        if self.npy is not None:
            return self.npy.array()
        if self.stream is not None:
            parts = [c for _, c in self.stream.chunks()]
            return np.concatenate(parts) if parts else np.zeros(0, TRACE_DTYPE)
        return self._records()

    def where(self, index: int) -> str:
        """How an error names record ``index``: ``"record 5"`` or ``"record 5 (line 12)"``."""
        if self.origin is not None and 0 <= index < len(self.origin):
            return f"record {index} ({self.origin_name} {int(self.origin[index])})"
        if self.stream is not None and index >= 0 and (number := self.stream.origin(index)) is not None:
            return f"record {index} ({self.origin_name} {number})"
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
        return TraceSource("text", path, stream=TextStream(path).validate(), origin_name="line")
    if fmt == "pmemcheck":
        stream = stream_pmemcheck(path, nvdimm_gpa, nvdimm_size, unregistered=unregistered,
                                  deep_flush=deep_flush).validate()        # a bad log fails here, not mid-replay
        return TraceSource("pmemcheck", path, stream=stream, origin_name="pmemcheck record")
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
