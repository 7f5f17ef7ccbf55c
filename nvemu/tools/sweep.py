"""Sweep and fleet files (TOML) expanded into grids of independent replays, run on a local process
pool or a Dask cluster (:mod:`nvemu.tools.tasks`), results as CSV and JSON.

Sweep file (TOML): every list is an axis of the grid, every scalar applies to all cells::

    ops = 50000                      # records per generated trace
    workloads = ["persist-loop", "kv-put"]   # generators, and/or
    traces = ["runs/app.npy"]        # trace files (.npy, text, pmemcheck), relative to this file
    platforms = ["default", "nfit:host.aml"] # presets or NFIT files
    strategies = ["write-protect", "mmio"]   # the names of the nvemu bench options
    fanout = ["broadcast"]
    wpq_depth = [16, 64]
    [timing]                         # TimingModel parameters, each a list of values
    exit_cycles = [2000, 2528]
    [params.kv-put]                  # workload parameters
    deep_flush_every = 4

Every key is checked (type, range, known name) before anything runs:
:mod:`nvemu.tools.spec` lists them.

Fleet file (TOML): hosts, each a platform and its VMs::

    [[host]]
    name = "rack1-a"
    platform = "default"
    [[host.vm]]
    workload = "kv-put"
    ops = 100000
    strategy = "write-protect"
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from .cells import CELL_DEFAULTS, cell
from .spec import SWEEP_FIELDS, parse_fleet_spec, parse_sweep_spec

if sys.version_info >= (3, 11):
    import tomllib
else:                                            # pragma: no cover - Python 3.10
    import tomli as tomllib

HOST_COLUMNS = ("host", "platform", "domain", "controllers", "vms", "ops", "exits", "exits_ept_violation",
                "exits_ept_misconfig", "exits_vmcall", "lines_drained", "time_ps", "ns_per_op")


def load_toml(path: str | Path) -> dict[str, Any]:
    """A sweep or fleet file parsed; ConfigError (one line) when unreadable or not TOML."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def _resolve(value: Any, base: Path) -> Any:
    """Trace paths and ``nfit:`` platforms relative to the sweep file."""
    if isinstance(value, str) and value.startswith("nfit:"):
        return "nfit:" + str((base / value[5:]).resolve())
    return value


def sweep_cells(spec: dict[str, Any], base: Path = Path(".")) -> list[dict[str, Any]]:
    """Expand a sweep description into cells (every combination of its axes), after checking the
    whole description (:func:`nvemu.tools.spec.parse_sweep_spec`: types, ranges, names)."""
    s = parse_sweep_spec(spec)
    axes: dict[str, list[Any]] = {}
    for key, field in SWEEP_FIELDS.items():
        values = getattr(s, key)
        if values is not None:
            axes[field] = [_resolve(v, base) for v in values]
    sources: list[tuple[str, Any]] = [("workload", w) for w in s.workloads or []]
    sources += [("trace", str((base / t).resolve())) for t in s.traces or []]
    if not sources:
        sources = [("workload", CELL_DEFAULTS["workload"])]
    cost_names = list(s.timing)
    cost_values = [s.timing[n] for n in cost_names]
    names = list(axes)
    cells = []
    for field, source in sources:
        params = dict(s.params.get(source, {})) if field == "workload" else {}
        for combo in itertools.product(*(axes[n] for n in names)):
            for cost_combo in itertools.product(*cost_values):
                c = {**dict(zip(names, combo)), field: source, "params": params,
                     "timing": dict(zip(cost_names, cost_combo))}
                cells.append(cell(**c))
    return cells


def fleet_hosts(spec: dict[str, Any], base: Path = Path(".")) -> list[dict[str, Any]]:
    """The hosts of a fleet description, after checking it whole
    (:func:`nvemu.tools.spec.parse_fleet_spec`)."""
    fleet = parse_fleet_spec(spec)
    out = []
    for k, h in enumerate(fleet.host):
        fields = h.model_dump(exclude={"name", "vm"}, exclude_none=True)
        if not fields.get("timing"):
            fields.pop("timing", None)
        vms = []
        for v in h.vm:
            vm = v.model_dump(exclude_none=True, exclude_unset=True)
            if vm.get("trace"):
                vm["trace"] = str((base / vm["trace"]).resolve())
            vms.append(vm)
        out.append({"name": h.name or f"host{k}", **{key: _resolve(v, base) for key, v in fields.items()},
                    "vms": vms})
    return out


def fleet_total(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The fleet-wide row: counters summed over the hosts that succeeded, with ``hosts`` and ``failed``."""
    ok = [r for r in rows if not r.get("error")]
    total = {"host": "fleet", "vms": sum(r["vms"] for r in ok), "ops": sum(r["ops"] for r in ok),
             **{k: sum(r[k] for r in ok) for k in ("exits", "exits_ept_violation", "exits_ept_misconfig",
                                                   "exits_vmcall", "lines_drained", "time_ps")},
             "hosts": len(rows), "failed": len(rows) - len(ok)}
    total["ns_per_op"] = total["time_ps"] / 1000 / total["ops"] if total["ops"] else 0.0
    return total


__all__ = ["sweep_cells", "fleet_hosts", "fleet_total", "load_toml"]
