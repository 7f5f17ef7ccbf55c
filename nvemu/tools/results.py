"""Results that describe themselves: the ``results.json`` document of ``bench``, ``sweep``,
``fleet`` (and ``demo --json``), and its ``results.csv`` twin.

The JSON document carries, beside the rows, what is needed to read and reproduce them, as
pytest-benchmark's JSON carries machine and commit information::

    {"schema_version": 2, "kind": "bench", "nvemu_version": "0.1.0", "backend": "core",
     "created": "2026-12-02T19:10:00Z",
     "host": {"platform": ..., "machine": ..., "cpu": ..., "cpus": ..., "python": ..., "numpy": ...},
     "command": "nvemu bench --ops 20k ...",
     "parameters": {... the platform, timing model, seeds, axes ...},
     "exit_reasons": {"ept_violation": 48, "ept_misconfig": 49, "vmcall": 18},
     "columns": {"ns_per_op": {"unit": ..., "meaning": ...}, ...},
     "rows": [...]}

Rows use the names of :mod:`nvemu.tools.vocabulary`; in the CSV every cell is a scalar
(:func:`~nvemu.tools.vocabulary.flatten`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform as _platform
import sys
from pathlib import Path
from typing import Any, Sequence

from .._files import atomic_write
from .vocabulary import COLUMNS, EXIT_REASONS, flatten

SCHEMA_VERSION = 2      # 2: emulated time (time_ps, ns_per_op, timing_*) replaced cycles (issue 13)
"""Raised when a field of the document changes meaning or goes away (adding one does not)."""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or _platform.machine()


def host_info() -> dict[str, Any]:
    """The machine the figures were made on: OS, CPU, Python and numpy versions, nvemu's engine."""
    import numpy as np

    from .._backend import BACKEND
    return {"platform": _platform.platform(), "machine": _platform.machine(), "cpu": _cpu_model(),
            "cpus": os.cpu_count(), "python": _platform.python_version(),
            "python_implementation": _platform.python_implementation(), "numpy": np.__version__,
            "backend": BACKEND}


def document(kind: str, rows: Sequence[dict[str, Any]], parameters: dict[str, Any],
             command: str | None = None) -> dict[str, Any]:
    """The self-describing results document for ``rows`` of a ``kind`` run (bench, sweep, fleet...)."""
    from .._version import __version__
    used = sorted({k for r in rows for k in flatten(r)} | {k for r in rows for k in r})
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "nvemu_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": host_info(),
        "command": command if command is not None else " ".join(["nvemu", *sys.argv[1:]]),
        "parameters": parameters,
        "exit_reasons": dict(EXIT_REASONS),
        "columns": {k: {"unit": COLUMNS[k].unit, "meaning": COLUMNS[k].meaning} for k in used if k in COLUMNS},
        "rows": [_jsonable(r) for r in rows],
    }


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "traceback"}


def write_document(path: str | os.PathLike[str], doc: dict[str, Any]) -> None:
    """``doc`` as indented JSON, written whole (temporary file, then rename)."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, default=str, allow_nan=True)
        f.write("\n")


def write_results(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str], columns: Sequence[str], *,
                  kind: str = "results", parameters: dict[str, Any] | None = None,
                  command: str | None = None) -> dict[str, Any]:
    """``results.csv`` (the given columns first, then any others; scalar cells) and the
    ``results.json`` document, each written whole; returns the document."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    flat = [flatten(r) for r in rows]
    extra = sorted({k for r in flat for k in r if k not in columns})
    header = list(columns) + extra
    with atomic_write(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        for r in flat:
            w.writerow({k: _csv_value(r.get(k, "")) for k in header})
    doc = document(kind, rows, parameters or {}, command)
    write_document(out / "results.json", doc)
    return doc


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a ``results.json`` (this schema, or the bare list older versions wrote)."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    return doc["rows"] if isinstance(doc, dict) else doc


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


__all__ = ["SCHEMA_VERSION", "document", "host_info", "read_rows", "write_document", "write_results"]
