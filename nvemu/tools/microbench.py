"""Microbenchmarks of flushing strategies: what virtualized WPQ flushing costs a workload under
each strategy and platform, against native (no virtualization: no exits, no second-level walks,
the guest writes the physical flush hints itself).

:func:`run_bench` expands a grid of cells (workload x strategy x fan-out x domain x controllers x
WPQ depth x flush hints), adds one native cell per group, runs them through
:func:`nvemu.tools.tasks.execute` (local processes or Dask) and returns rows with
``overhead_vs_native = cycles_per_op / native cycles_per_op``. Every figure except the ``wall_*``
columns comes from the cost model, so the same grid gives the same numbers anywhere.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Sequence

from .cells import ROW_COLUMNS, cell, run_cell
from ..guest.workloads import WORKLOADS
from ..machine.config import CostModel
from ..machine.flush_hints import COMPARED_STRATEGIES
from ..errors import ConfigError
from .tasks import execute, write_results
from .vocabulary import columns

RATE_WORKLOAD = "kv-put"
RATE_EVERY = (64, 32, 16, 8, 4, 2, 1)        # a vFHA write after every N-th put
GROUP_KEYS = ("workload", "params", "fanout", "domain", "controllers", "wpq_depth", "hints", "vms", "ops", "seed",
              "interleave", "costs")
COLUMNS = (*ROW_COLUMNS, "native_cycles_per_op", "overhead_vs_native", "wall_replay_seconds", "wall_mops")


def native_costs(costs: dict[str, int]) -> dict[str, int]:
    """Native runs pay no second-level page walk."""
    return {**CostModel().to_dict(), **costs, "walk_level": 0}


def grid(workloads: Sequence[str] = tuple(WORKLOADS), strategies: Sequence[str] = COMPARED_STRATEGIES,
         fanouts: Sequence[str] = ("broadcast",), domains: Sequence[str] = ("adr",),
         controllers: Sequence[int] = (4,), wpq_depths: Sequence[int] = (64,), hints: Sequence[int] = (1,),
         ops: int = 200_000, seed: int = 0, vms: int = 1, interleave: str = "all",
         costs: dict[str, int] | None = None, params: dict[str, dict[str, Any]] | None = None
         ) -> list[dict[str, Any]]:
    """The cells of a benchmark grid: every combination, each strategy's cells followed by the
    native cell of its group."""
    costs = dict(costs or {})
    CostModel.from_dict({**CostModel().to_dict(), **costs})          # refuse unknown or negative costs early
    cells = []
    for w, f, d, c, q, h in itertools.product(workloads, fanouts, domains, controllers, wpq_depths, hints):
        common = dict(workload=w, fanout=f, domain=d, controllers=c, wpq_depth=q, hints=h, ops=ops, seed=seed,
                      vms=vms, interleave=interleave, params=(params or {}).get(w, {}))
        cells += [cell(strategy=s, costs=costs, **common) for s in strategies]
        cells.append(cell(strategy="native", costs=native_costs(costs), **common))
    return cells


def _group(c: dict[str, Any]) -> tuple:
    """What a cell shares with its native baseline: everything but the strategy and the walk cost."""
    def norm(k: str) -> str:
        if k == "costs":
            return str(sorted(native_costs(c[k]).items()))
        return str(c[k])
    return tuple(norm(k) for k in GROUP_KEYS)


def with_overhead(cells: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with its group's native cycles per op and the ratio to it."""
    native = {_group(c): r for c, r in zip(cells, rows) if c["strategy"] == "native" and not r.get("error")}
    out = []
    for c, r in zip(cells, rows):
        base = native.get(_group(c))
        n = base["cycles_per_op"] if base else math.nan
        out.append({**r, "params": c["params"], "native_cycles_per_op": n,
                    "overhead_vs_native": r.get("cycles_per_op", math.nan) / n if n else math.nan})
    return out


def run_bench(cells: Sequence[dict[str, Any]], **execute_options: Any) -> list[dict[str, Any]]:
    """Run bench cells (:func:`nvemu.tools.tasks.execute` options) and add each row's native baseline and
    overhead.
    """
    rows = execute(run_cell, cells, desc="bench", **execute_options)
    return with_overhead(cells, rows)


def rate_cells(strategies: Sequence[str] = COMPARED_STRATEGIES, ops: int = 100_000,
               **axes: Any) -> list[dict[str, Any]]:
    """The vFHA write-rate sweep: kv-put with a deep flush after every N-th put, N in RATE_EVERY."""
    out = []
    for every in RATE_EVERY:
        out += grid([RATE_WORKLOAD], strategies, ops=ops, params={RATE_WORKLOAD: {"deep_flush_every": every}},
                    **axes)
    return out


def sensitivity(rows_by_value: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """For a swept cost parameter: per workload and value, the strategies ranked by cycles per
    op, and whether the ranking differs from the previous value's."""
    out = []
    workloads = sorted({r["workload"] for rows in rows_by_value.values() for r in rows})
    for w in workloads:
        previous = None
        for value in sorted(rows_by_value):
            mine = [r for r in rows_by_value[value] if r["workload"] == w and r["strategy"] != "native"
                    and not r.get("error")]
            ranking = [r["strategy"] for r in sorted(mine, key=lambda r: (r["cycles_per_op"], r["strategy"]))]
            out.append({"workload": w, "value": value, "ranking": " < ".join(ranking),
                        "changed": previous is not None and ranking != previous,
                        **{f"cycles_per_op_{r['strategy']}": r["cycles_per_op"] for r in mine}})
            previous = ranking
    return out


def parse_sweep(text: str) -> tuple[str, list[int]]:
    """``exit=500:5000:500`` (inclusive) or ``exit=500,1200,5000`` -> ("exit", values)."""
    try:
        name, spec = text.split("=", 1)
        if ":" in spec:
            lo, hi, step = (int(x) for x in spec.split(":"))
            values = list(range(lo, hi + 1, step))
        else:
            values = [int(x) for x in spec.split(",")]
    except ValueError:
        raise ConfigError(f"--sweep-cost {text!r}: expected NAME=LO:HI:STEP or NAME=V1,V2,...") from None
    if name not in CostModel.FIELDS:
        raise ConfigError(f"--sweep-cost: unknown cost {name!r}; known: {', '.join(CostModel.FIELDS)}")
    if not values:
        raise ConfigError(f"--sweep-cost {text!r} gives no values")
    return name, values


TABLE_COLUMNS = columns(("workload", "strategy", "fanout", "domain", "controllers", "wpq_depth",
                         "exits_per_1k_ops", "lines_drained", "cycles_per_op", "overhead_vs_native"))


def save(rows: Sequence[dict[str, Any]], out_dir: str | Path, **document: Any) -> dict[str, Any]:
    """``results.csv`` and ``results.json`` of a bench run (see :mod:`nvemu.tools.results`)."""
    return write_results(rows, out_dir, COLUMNS, kind="bench", **document)
