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

from .npy import NpyTrace, NpyWriter, id_extent, load_npy, save_npy
from .pmemcheck import PmemcheckImport, PmemcheckStream, PmemFile, import_pmemcheck, parse_pmemcheck, \
    stream_pmemcheck
from ..._constants import DEFAULT_CHUNK
from .records import DEFAULT_NVDIMM_GPA, DEFAULT_NVDIMM_SIZE, FORMATS, RECORD_BYTES, record_problem
from .source import TraceSource, detect_format, load_trace, open_trace, save_trace
from .text import TextStream, format_text, load_text, parse_text, save_text

__all__ = ["DEFAULT_CHUNK", "DEFAULT_NVDIMM_GPA", "DEFAULT_NVDIMM_SIZE", "FORMATS", "RECORD_BYTES", "NpyTrace",
           "NpyWriter", "PmemFile", "PmemcheckImport", "PmemcheckStream", "TextStream", "TraceSource", "detect_format",
           "format_text", "id_extent", "import_pmemcheck", "stream_pmemcheck", "load_npy", "load_text",
           "load_trace", "open_trace", "parse_pmemcheck", "parse_text", "record_problem", "save_npy", "save_text",
           "save_trace"]
