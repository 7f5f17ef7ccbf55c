"""``nvemu bench``, ``nvemu sweep`` and ``nvemu fleet``: grids of independent replays run on a
local process pool or a Dask cluster (:mod:`nvemu.tasks`), results as CSV and JSON.

Sweep file (TOML): every list is an axis of the grid, every scalar applies to all cells::

    ops = 50000                      # records per generated trace
    workloads = ["persist-loop", "kv-put"]   # generators, and/or
    traces = ["runs/app.npy"]        # trace files (.npy, text, pmemcheck), relative to this file
    platforms = ["default", "nfit:host.aml"] # presets or NFIT files
    strategy = ["write-protect", "mmio"]
    fanout = ["broadcast"]
    wpq_depth = [16, 64]
    [costs]                          # cost-model parameters, each a list of values
    exit = [1200, 2500]

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

from .cells import CELL_DEFAULTS, cell
from ..machine.config import CostModel
from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:                                            # pragma: no cover - Python 3.10
    import tomli as tomllib

SWEEP_AXES = {"workloads": "workload", "traces": "trace", "platforms": "platform", "strategy": "strategy",
              "fanout": "fanout", "wpq_depth": "wpq_depth", "domain": "domain", "vms": "vms", "vcpus": "vcpus",
              "controllers": "controllers", "hints": "hints", "seed": "seed", "ops": "ops"}
HOST_COLUMNS = ("host", "platform", "domain", "controllers", "vms", "ops", "exits", "exits_48", "exits_49",
                "exits_18", "lines_drained", "cycles", "cycles_per_op")


def load_toml(path: str | Path) -> dict[str, Any]:
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
    """Expand a sweep description into cells (every combination of its list-valued axes)."""
    spec = dict(spec)
    costs = spec.pop("costs", {})
    if not isinstance(costs, dict):
        raise ConfigError("sweep: [costs] must be a table of lists")
    for name in costs:
        if name not in CostModel.FIELDS:
            raise ConfigError(f"sweep: unknown cost {name!r}; known: {', '.join(CostModel.FIELDS)}")
    axes: dict[str, list[Any]] = {}
    fixed: dict[str, Any] = {}
    sources: list[tuple[str, Any]] = []
    for key, value in spec.items():
        field = SWEEP_AXES.get(key, key)
        if field not in CELL_DEFAULTS:
            raise ConfigError(f"sweep: unknown key {key!r}")
        if key in ("workloads", "traces"):
            for v in (value if isinstance(value, list) else [value]):
                sources.append((field, str((base / v).resolve()) if field == "trace" else v))
        elif isinstance(value, list):
            if not value:
                raise ConfigError(f"sweep: axis {key!r} is empty")
            axes[field] = [_resolve(v, base) for v in value]
        else:
            fixed[field] = _resolve(value, base)
    if not sources:
        sources = [("workload", CELL_DEFAULTS["workload"])]
    cost_names = list(costs)
    cost_values = [costs[n] if isinstance(costs[n], list) else [costs[n]] for n in cost_names]
    names = list(axes)
    cells = []
    for field, source in sources:
        for combo in itertools.product(*(axes[n] for n in names)):
            for cost_combo in itertools.product(*cost_values):
                c = {**fixed, **dict(zip(names, combo)), field: source,
                     "costs": dict(zip(cost_names, cost_combo))}
                cells.append(cell(**c))
    return cells


def fleet_hosts(spec: dict[str, Any], base: Path = Path(".")) -> list[dict[str, Any]]:
    hosts = spec.get("host")
    if not isinstance(hosts, list) or not hosts:
        raise ConfigError("fleet: no [[host]] tables")
    out = []
    for k, h in enumerate(hosts):
        h = dict(h)
        vms = h.pop("vm", h.pop("vms", [{}]))
        for key in h:
            if key != "name" and key not in CELL_DEFAULTS:
                raise ConfigError(f"fleet: host {k}: unknown key {key!r}")
        vms = [{**v, **({"trace": str((base / v["trace"]).resolve())} if v.get("trace") else {})} for v in vms]
        for v in vms:
            for key in v:
                if key not in CELL_DEFAULTS:
                    raise ConfigError(f"fleet: host {k}: vm key {key!r} is unknown")
        out.append({"name": h.pop("name", f"host{k}"), **{key: _resolve(v, base) for key, v in h.items()},
                    "vms": vms})
    return out


def fleet_total(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if not r.get("error")]
    total = {"host": "fleet", "vms": sum(r["vms"] for r in ok), "ops": sum(r["ops"] for r in ok),
             **{k: sum(r[k] for r in ok) for k in ("exits", "exits_48", "exits_49", "exits_18", "lines_drained",
                                                   "cycles")},
             "hosts": len(rows), "failed": len(rows) - len(ok)}
    total["cycles_per_op"] = total["cycles"] / total["ops"] if total["ops"] else 0.0
    return total


__all__ = ["sweep_cells", "fleet_hosts", "fleet_total", "load_toml"]
