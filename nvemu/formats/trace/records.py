"""What every trace format shares: the record, its limits and whether one record is valid."""

from __future__ import annotations

import os
from typing import Union

from ..._constants import TRACE_DTYPE, Op
from ..._records import record_problem as _record_problem

PathLike = Union[str, "os.PathLike[str]"]

RECORD_BYTES = TRACE_DTYPE.itemsize
FORMATS = ("npy", "text", "pmemcheck")

DEFAULT_NVDIMM_GPA = 1 << 32
DEFAULT_NVDIMM_SIZE = 256 << 20
"""Where the default VM's vNVDIMM sits (``nvemu layout --json``): the pmemcheck importer's default."""

_OP_NAMES = {op.name: op for op in Op}


def _shorten(text: str, limit: int = 60) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


def record_problem(op: int, size: int, gpa: int, value: int) -> tuple[str, str] | None:
    """``(field, problem)`` if the record is one the text format cannot carry: one the engines
    refuse (a GPA beyond what the machine maps aside: that is the machine's to refuse), or one
    with a number in a field its operation ignores (``nvemu._records``)."""
    return _record_problem(op, size, gpa, value, strict=True, gpa_limit=None)
