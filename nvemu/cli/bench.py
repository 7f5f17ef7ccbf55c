"""``nvemu bench``, ``nvemu sweep`` and ``nvemu fleet``: grids of independent replays on a local
process pool or a Dask cluster (:mod:`nvemu.tools.tasks`), results as CSV and JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from ..machine.config import CostModel
from ..tools.cells import run_cell, run_host
from ..tools.microbench import (COLUMNS, STRATEGIES, TABLE_COLUMNS, WORKLOADS, grid, parse_sweep, plots, rate_cells,
                                run_bench, save, sensitivity)
from ..tools.sweep import HOST_COLUMNS, fleet_hosts, fleet_total, load_toml, sweep_cells
from ..tools.tasks import execute, write_results
from .common import check_output_directory, format_table, parse_count


def _execute_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"scheduler": args.scheduler, "workers": args.workers, "progress": args.progress}


def _table(rows: Sequence[dict[str, Any]], columns) -> str:
    ok = [{k: r.get(k) for k, _, _ in columns} for r in rows if not r.get("error")]
    return format_table(ok, columns) if ok else "(no successful rows)"


def _report_failures(rows: Sequence[dict[str, Any]]) -> int:
    failed = [r for r in rows if r.get("error")]
    for r in failed:
        params = {k: r.get(k) for k in ("workload", "trace", "platform", "strategy", "fanout", "wpq_depth", "host")
                  if r.get(k) is not None}
        print(f"nvemu: task failed {json.dumps(params, default=str)}: {r['error']}", file=sys.stderr)
    return len(failed)


def cmd_bench(args: argparse.Namespace) -> int:
    axes = dict(workloads=args.workloads, strategies=args.strategies, fanouts=args.fanout, domains=args.domains,
                controllers=args.controllers, wpq_depths=args.wpq_depth, hints=args.hints, ops=args.ops,
                seed=args.seed, vms=args.vms, interleave=args.interleave)
    check_output_directory(args.out)
    out = Path(args.out)
    costs = CostModel()
    if args.sweep_cost:
        name, values = parse_sweep(args.sweep_cost)
        cells = []
        for v in values:
            cells += grid(**axes, costs={name: v})
        rows = run_bench(cells, out_dir=out, resume=args.resume, **_execute_options(args))
        for r, c in zip(rows, cells):
            r[name] = c["costs"][name]
        save(rows, out)
        by_value: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            by_value.setdefault(r[name], []).append(r)
        table = sensitivity(by_value)
        write_results(table, out / "sensitivity", ("workload", "value", "ranking", "changed"))
        print(f"cost-model sensitivity: {name} from {values[0]} to {values[-1]} cycles "
              f"(other costs: {', '.join(f'{k}={v}' for k, v in costs.to_dict().items() if k != name)})")
        print(_table(table, (("workload", "workload", ""), ("value", name, "d"), ("ranking", "cheapest first", ""),
                             ("changed", "changed", ""))))
        changes = [t for t in table if t["changed"]]
        print("ranking changes: " + ("; ".join(f"{t['workload']} at {name}={t['value']}: {t['ranking']}"
                                               for t in changes) or "none in this range"))
        print(f"\nwrote {out / 'results.csv'}, {out / 'results.json'}, {out / 'sensitivity' / 'results.csv'}")
        return 1 if _report_failures(rows) else 0
    cells = grid(**axes)
    rate = [] if args.no_rate else rate_cells(args.strategies, ops=min(args.ops, 100_000),
                                               **{k: [v[0]] if isinstance(v, list) else v for k, v in axes.items()
                                                  if k in ("fanouts", "domains", "controllers", "wpq_depths",
                                                           "hints")},
                                               seed=args.seed, vms=args.vms, interleave=args.interleave)
    rows = run_bench(cells + rate, out_dir=out, resume=args.resume, **_execute_options(args))
    main_rows, rate_rows = rows[:len(cells)], rows[len(cells):]
    save(main_rows, out)
    if rate_rows:
        write_results(rate_rows, out / "rate", COLUMNS)
    print(f"nvemu bench: {len(cells)} cells, {args.ops:,} ops each; cost model (cycles): "
          + ", ".join(f"{k}={v}" for k, v in costs.to_dict().items()))
    print(_table(main_rows, TABLE_COLUMNS))
    written = [out / "results.csv", out / "results.json"]
    try:
        written += plots(main_rows, rate_rows, out, costs)
    except ImportError:
        print("(plots skipped: matplotlib is not installed; pip install 'nvemu[plot]')", file=sys.stderr)
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 1 if _report_failures(rows) else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    spec_path = Path(args.spec)
    cells = sweep_cells(load_toml(spec_path), spec_path.parent)
    check_output_directory(args.out, [args.spec])
    rows = execute(run_cell, cells, out_dir=args.out, resume=args.resume, desc="sweep", **_execute_options(args))
    for r, c in zip(rows, cells):
        r.update({f"cost_{k}": v for k, v in c["costs"].items()})
    write_results(rows, args.out, ("workload", "platform", *[k for k in COLUMNS if k not in ("workload",)]))
    print(f"nvemu sweep: {len(cells)} tasks, {len(cells) - sum(bool(r.get('error')) for r in rows)} done")
    costs = sorted({k for c in cells for k in c["costs"]})
    print(_table(rows, (("workload", "workload", ""), ("platform", "platform", ""), ("strategy", "strategy", ""),
                        ("fanout", "fan-out", ""), ("wpq_depth", "WPQ", "d"),
                        *((f"cost_{k}", k, "d") for k in costs), ("exits", "exits", ",d"),
                        ("lines_drained", "lines drained", ",d"), ("cycles_per_op", "cycles/op", ".1f"))))
    print(f"\nwrote {Path(args.out) / 'results.csv'}, {Path(args.out) / 'results.json'}")
    return 1 if _report_failures(rows) else 0


def cmd_fleet(args: argparse.Namespace) -> int:
    spec_path = Path(args.spec)
    hosts = fleet_hosts(load_toml(spec_path), spec_path.parent)
    check_output_directory(args.out, [args.spec])
    rows = execute(run_host, hosts, out_dir=args.out, resume=args.resume, desc="fleet", **_execute_options(args))
    total = fleet_total(rows)
    write_results([*rows, total], args.out, HOST_COLUMNS)
    print(f"nvemu fleet: {len(hosts)} hosts")
    print(_table([*rows, {**total, "platform": "", "domain": "", "controllers": 0}],
                 (("host", "host", ""), ("platform", "platform", ""), ("vms", "VMs", "d"), ("ops", "ops", ",d"),
                  ("exits", "exits", ",d"), ("lines_drained", "lines drained", ",d"),
                  ("cycles_per_op", "cycles/op", ".1f"))))
    print(f"\nwrote {Path(args.out) / 'results.csv'}, {Path(args.out) / 'results.json'}")
    return 1 if _report_failures(rows) else 0


def _runner_options(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler, e.g. tcp://host:8786 "
                   "(default: a local pool of processes)")
    p.add_argument("--workers", type=int, help="local processes (default: one per core)")
    p.add_argument("-o", "--output", "--out", dest="out", metavar="DIR", default=out,
                   help=f"output directory: results.csv, results.json, rows.jsonl, plots (default {out})")
    p.add_argument("--resume", action="store_true", help="skip tasks whose rows are already in --out")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar (default: when stderr is a terminal)")


def add_commands(sub: Any) -> None:
    b = sub.add_parser("bench", help="compare flushing strategies on a grid of workloads and platforms",
                       description="Each cell: the workload's trace under one strategy, against the same "
                                   "trace natively. Figures are emulated cycles (deterministic).")
    b.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    b.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    b.add_argument("--fanout", nargs="+", default=["broadcast"], choices=["broadcast", "targeted"])
    b.add_argument("--domains", nargs="+", default=["adr"], choices=["none", "adr", "eadr"])
    b.add_argument("--controllers", nargs="+", type=int, default=[4])
    b.add_argument("--wpq-depth", nargs="+", type=int, default=[64])
    b.add_argument("--hints", nargs="+", type=int, default=[1], help="flush hints per NVDIMM (0: no WPQ flush)")
    b.add_argument("--vms", type=int, default=1)
    b.add_argument("--interleave", default="all", choices=["all", "socket"])
    b.add_argument("--ops", type=parse_count, default=200_000)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--sweep-cost", metavar="NAME=LO:HI:STEP", help="cost-model sensitivity: sweep one cost")
    b.add_argument("--no-rate", action="store_true", help="skip the vFHA write-rate sweep behind the line plot")
    _runner_options(b, "nvemu-bench")
    b.set_defaults(func=cmd_bench)

    s = sub.add_parser("sweep", help="run a grid of replays described by a TOML file")
    s.add_argument("spec", metavar="SPEC.toml")
    _runner_options(s, "nvemu-sweep")
    s.set_defaults(func=cmd_sweep)

    f = sub.add_parser("fleet", help="replay many hosts, each with its VMs, described by a TOML file")
    f.add_argument("spec", metavar="FLEET.toml")
    _runner_options(f, "nvemu-fleet")
    f.set_defaults(func=cmd_fleet)
