"""Microbenchmarks of flushing strategies: what virtualized WPQ flushing costs a workload under
each strategy and platform, against native (no virtualization: no exits, no second-level walks,
the guest writes the physical flush hints itself).

:func:`run_bench` expands a grid of cells (workload x strategy x fan-out x domain x controllers x
WPQ depth x flush hints), adds one native cell per group, runs them through
:func:`nvemu.tools.tasks.execute` (local processes or Dask) and returns rows with
``overhead_vs_native = ns_per_op / native ns_per_op``. Every figure except the ``wall_*``
columns comes from the timing model, so the same grid gives the same numbers anywhere.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Sequence

from .cells import ROW_COLUMNS, cell, run_cell
from .._constants import TIMING_PARAMETERS
from ..guest.workloads import WORKLOADS
from ..machine.config import TimingModel
from ..machine.flush_hints import COMPARED_STRATEGIES
from ..errors import ConfigError
from .tasks import execute, write_results
from .vocabulary import columns

RATE_WORKLOAD = "kv-put"
RATE_EVERY = (64, 32, 16, 8, 4, 2, 1)        # a vFHA write after every N-th put
GROUP_KEYS = ("workload", "params", "fanout", "domain", "controllers", "wpq_depth", "hints", "vms", "ops", "seed",
              "interleave", "timing")
COLUMNS = (*ROW_COLUMNS, "native_ns_per_op", "overhead_vs_native", "wall_replay_seconds", "wall_mops")


def native_timing(timing: dict[str, float]) -> dict[str, float]:
    """Native runs pay no second-level page walk."""
    return {**TimingModel().to_dict(), **timing, "walk_ref_cycles": 0}


def grid(workloads: Sequence[str] = tuple(WORKLOADS), strategies: Sequence[str] = COMPARED_STRATEGIES,
         fanouts: Sequence[str] = ("broadcast",), domains: Sequence[str] = ("adr",),
         controllers: Sequence[int] = (4,), wpq_depths: Sequence[int] = (64,), hints: Sequence[int] = (1,),
         ops: int = 200_000, seed: int = 0, vms: int = 1, interleave: str = "all",
         timing: dict[str, float] | None = None, params: dict[str, dict[str, Any]] | None = None
         ) -> list[dict[str, Any]]:
    """The cells of a benchmark grid: every combination, each strategy's cells followed by the
    native cell of its group."""
    timing = dict(timing or {})
    TimingModel.from_dict(timing)          # refuse unknown or negative parameters early
    cells = []
    for w, f, d, c, q, h in itertools.product(workloads, fanouts, domains, controllers, wpq_depths, hints):
        common = dict(workload=w, fanout=f, domain=d, controllers=c, wpq_depth=q, hints=h, ops=ops, seed=seed,
                      vms=vms, interleave=interleave, params=(params or {}).get(w, {}))
        cells += [cell(strategy=s, timing=timing, **common) for s in strategies]
        cells.append(cell(strategy="native", timing=native_timing(timing), **common))
    return cells


def _group(c: dict[str, Any]) -> tuple:
    """What a cell shares with its native baseline: everything but the strategy and the walk cost."""
    def norm(k: str) -> str:
        if k == "timing":
            return str(sorted(native_timing(c[k]).items()))
        return str(c[k])
    return tuple(norm(k) for k in GROUP_KEYS)


def with_overhead(cells: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with its group's native ns per op and the ratio to it."""
    native = {_group(c): r for c, r in zip(cells, rows) if c["strategy"] == "native" and not r.get("error")}
    out = []
    for c, r in zip(cells, rows):
        base = native.get(_group(c))
        n = base["ns_per_op"] if base else math.nan
        out.append({**r, "params": c["params"], "native_ns_per_op": n,
                    "overhead_vs_native": r.get("ns_per_op", math.nan) / n if n else math.nan})
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


def ranking(rows: Sequence[dict[str, Any]]) -> str:
    """Strategies cheapest first by ns per op, ``<`` between them and ``=`` where two take the same
    emulated time (a tie is reported, never broken by name): ``"writable < hypercall = mmio"``."""
    ordered = sorted(rows, key=lambda r: (r["ns_per_op"], r["strategy"]))
    out = ""
    for prev, r in zip([None, *ordered], ordered):
        if prev is not None:
            out += " = " if math.isclose(r["ns_per_op"], prev["ns_per_op"], rel_tol=1e-9) else " < "
        out += r["strategy"]
    return out


def sensitivity(rows_by_value: dict[Any, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """For a swept timing parameter: per workload and value, the strategies ranked by ns per
    op (:func:`ranking`), and whether the ranking differs from the previous value's, which is
    ``previous`` (the ranking flips somewhere between ``previous`` and ``value``)."""
    out = []
    workloads = sorted({r["workload"] for rows in rows_by_value.values() for r in rows})
    for w in workloads:
        previous, before = None, None
        for value in sorted(rows_by_value):
            mine = [r for r in rows_by_value[value] if r["workload"] == w and r["strategy"] != "native"
                    and not r.get("error")]
            order = ranking(mine)
            out.append({"workload": w, "value": value, "ranking": order,
                        "changed": previous is not None and order != previous, "previous": before,
                        **{f"ns_per_op_{r['strategy']}": r["ns_per_op"] for r in mine}})
            previous, before = order, value
    return out


FREE_SWEEPS: dict[str, str] = {
    # The free parameters (TimingModel.FREE_PARAMETERS that decide the strategy comparison, and the
    # WPQ depth): `--sweep free` runs each over these values, which bracket and include the defaults.
    "write_protect_cycles": "write_protect_cycles=0,250,500,750,1000,1500,2000,3000,4000",
    "mmio_cycles": "mmio_cycles=0,200,400,750,1000,1500,2000,3000,4000",
    "hypercall_cycles": "hypercall_cycles=0,300,600,900,1200,1500,2000,3000,4000",
    "fha_write_ns": "fha_write_ns=0,50,100,150,250,500,1000",
    "fill_buffers": "fill_buffers=1,2,4,6,8,10,12,16",
    "wpq_depth": "wpq_depth=4,8,16,32,64,128,256",
}


def parse_sweeps(texts: Sequence[str]) -> list[tuple[str, list[float]]]:
    """Each ``--sweep`` (:func:`parse_sweep`); ``free`` stands for every sweep of
    :data:`FREE_SWEEPS`. A parameter swept twice is refused."""
    out: list[tuple[str, list[float]]] = []
    for text in texts:
        for one in FREE_SWEEPS.values() if text == "free" else [text]:
            name, values = parse_sweep(one)
            if any(n == name for n, _ in out):
                raise ConfigError(f"--sweep: {name} is swept twice")
            out.append((name, values))
    return out


def parse_sweep(text: str) -> tuple[str, list[float]]:
    """``mmio_cycles=200:2000:200`` (inclusive) or ``fha_write_ns=50,150,500`` -> (name, values).
    Names are :class:`TimingModel` parameters, or ``wpq_depth`` (a platform axis)."""
    try:
        name, spec = text.split("=", 1)
        if ":" in spec:
            lo, hi, step = (float(x) for x in spec.split(":"))
            if step <= 0:
                raise ValueError
            values = [lo + k * step for k in range(int((hi - lo) / step + 1e-9) + 1)] if hi >= lo else []
        else:
            values = [float(x) for x in spec.split(",")]
    except ValueError:
        raise ConfigError(f"--sweep {text!r}: expected NAME=LO:HI:STEP, NAME=V1,V2,... or free") from None
    if name not in TIMING_PARAMETERS and name != "wpq_depth":
        raise ConfigError(f"--sweep: unknown parameter {name!r}; known: wpq_depth, {', '.join(TIMING_PARAMETERS)}")
    if not values:
        raise ConfigError(f"--sweep {text!r} gives no values")
    values = [int(v) if v == int(v) else v for v in values]
    if name == "wpq_depth" and any(not isinstance(v, int) or not 1 <= v <= 4096 for v in values):
        raise ConfigError(f"--sweep {text!r}: WPQ depths are whole numbers 1..4096")
    if name != "wpq_depth":
        for v in values:
            TimingModel.from_dict({name: v})          # each value a valid model
    return name, values


TABLE_COLUMNS = columns(("workload", "strategy", "fanout", "domain", "controllers", "wpq_depth",
                         "exits_per_1k_ops", "lines_drained", "ns_per_op", "overhead_vs_native"))


def save(rows: Sequence[dict[str, Any]], out_dir: str | Path, **document: Any) -> dict[str, Any]:
    """``results.csv`` and ``results.json`` of a bench run (see :mod:`nvemu.tools.results`)."""
    return write_results(rows, out_dir, COLUMNS, kind="bench", **document)
