"""What every trace format shares: the record, its limits and whether one record is valid."""

from __future__ import annotations

import os
from typing import Union



from ..._constants import DATA_OPS, FLUSH_OPS, TRACE_DTYPE, Op

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
