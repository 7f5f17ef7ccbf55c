"""``nvemu bench``, ``nvemu sweep`` and ``nvemu fleet``: grids of independent replays on a local
process pool or a Dask cluster (:mod:`nvemu.tools.tasks`), results as CSV and a self-describing
JSON document (:mod:`nvemu.tools.results`), figures (:mod:`nvemu.tools.plots`).

Everything is checked before the first task runs: the grid's names and ranges, each distinct
platform, each trace, the output directory and the scheduler; on a bad value nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from ..guest.workloads import WORKLOADS
from ..machine.config import TimingModel
from ..machine.flush_hints import COMPARED_STRATEGIES
from ..tools.cells import run_cell, run_host
from ..tools.microbench import (COLUMNS, RATE_EVERY, RATE_WORKLOAD, TABLE_COLUMNS, grid,
                                parse_sweeps, rate_cells, run_bench, save, sensitivity)
from ..tools.plots import FORMATS, overhead_figure, rate_figure, sensitivity_figure
from ..tools.spec import check_cells
from ..tools.sweep import HOST_COLUMNS, fleet_hosts, fleet_total, load_toml, sweep_cells
from ..tools.tasks import execute, write_results
from ..tools.vocabulary import columns
from .common import (add_quiet_option, check_output_directory, check_outputs, format_table, non_negative_int,
                     parse_count, positive_int, report_stream, write_output)


def _execute_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"scheduler": args.scheduler, "workers": args.workers, "progress": args.progress}


def _table(rows: Sequence[dict[str, Any]], cols: Sequence[tuple[str, str, str]]) -> str:
    ok = [{k: r.get(k) for k, _, _ in cols} for r in rows if not r.get("error")]
    return format_table(ok, cols) if ok else "(no successful rows)"


def _report_failures(rows: Sequence[dict[str, Any]], verbose: bool = False) -> int:
    failed = [r for r in rows if r.get("error")]
    for r in failed:
        params = {k: r.get(k) for k in ("workload", "trace", "platform", "strategy", "fanout", "wpq_depth", "host")
                  if r.get(k) is not None}
        print(f"nvemu: task failed {json.dumps(params, default=str)}: {r['error']}", file=sys.stderr)
        if verbose and r.get("traceback"):
            print(r["traceback"], file=sys.stderr)
    return len(failed)


def _say(args: argparse.Namespace, *lines: str) -> None:
    """The report: on stdout, or on stderr when ``--json -`` gives stdout to the JSON document."""
    if not args.quiet:
        out = report_stream(args.json)
        for line in lines:
            print(line, file=out)


def _emit_json(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    if args.json:
        write_output(args.json, json.dumps(doc, indent=1, default=str) + "\n")


def _figures(args: argparse.Namespace, draw: list[tuple[Any, tuple, dict]]) -> list[Path]:
    """Draw each figure unless --no-plot; a missing matplotlib is one line, not a failure."""
    if args.no_plot:
        return []
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("nvemu: note: plots skipped: matplotlib is not installed (pip install 'nvemu[plot]')",
              file=sys.stderr)
        return []
    made = []
    for fn, a, kw in draw:
        path = fn(*a, fmt=args.format, dpi=args.dpi, **kw)
        if path is not None:
            made.append(path)
    return made


def _command_line(args: argparse.Namespace) -> str | None:
    return getattr(args, "command_line", None)


def cmd_bench(args: argparse.Namespace) -> int:
    axes = dict(workloads=args.workloads, strategies=args.strategies, fanouts=args.fanout, domains=args.domains,
                controllers=args.controllers, wpq_depths=args.wpq_depth, hints=args.hints, ops=args.ops,
                seed=args.seed, vms=args.vms, interleave=args.interleave)
    timing = TimingModel()
    sweeps = parse_sweeps(args.sweep_cost) if args.sweep_cost else []
    spans: list[tuple[str, list, int, int]] = []           # (parameter, values, first cell, end)
    rate: list[dict[str, Any]] = []
    if sweeps:
        cells = []
        for name, values in sweeps:
            start = len(cells)
            cells += [c for v in values for c in (grid(**{**axes, "wpq_depths": [v]}) if name == "wpq_depth"
                                                  else grid(**axes, timing={name: v}))]
            spans.append((name, values, start, len(cells)))
    else:
        cells = grid(**axes)
        first = {k: [v[0]] for k, v in axes.items() if k in ("fanouts", "domains", "controllers", "wpq_depths",
                                                                "hints")}
        rate = [] if args.no_rate else rate_cells(args.strategies, ops=min(args.ops, 100_000), seed=args.seed,
                                                   vms=args.vms, interleave=args.interleave, **first)
    check_cells(cells + rate)                                  # names, ranges, platforms: before any work
    check_output_directory(args.out)
    check_outputs([args.json])
    out = Path(args.out)
    parameters = {"grid": {k: v for k, v in axes.items()}, "timing_model": timing.to_dict(),
                  "seeds": [args.seed], "sweep_cost": args.sweep_cost,
                  "rate": None if sweeps or args.no_rate else {"workload": RATE_WORKLOAD, "every": list(RATE_EVERY)},
                  "platform": "a regular host per cell: <controllers> iMCs (2 sockets when even), one 64 MiB "
                              "NVDIMM per iMC with <hints> flush hints, 1 GiB DRAM; --domains and --wpq-depth as given"}
    meta = {"ops": args.ops, "seed": args.seed, "vms": args.vms, "interleave": args.interleave,
            "timing": timing.to_dict(), "wpq_depth": args.wpq_depth[0],
            "platform": f"per cell a regular host of {' or '.join(map(str, args.controllers))} controllers "
                        "(2 sockets when even), one 64 MiB NVDIMM per controller, 1 GiB DRAM, VM 16 MiB DRAM + "
                        "32 MiB vNVDIMM"}
    rows = run_bench(cells + rate, out_dir=out, resume=args.resume, **_execute_options(args))
    main_rows, rate_rows = rows[:len(cells)], rows[len(cells):]
    document = dict(parameters=parameters, command=_command_line(args))
    doc = save(main_rows, out, **document)
    written = [out / "results.csv", out / "results.json"]
    for name, values, start, end in spans:
        by_value: dict[Any, list[dict[str, Any]]] = {}
        for r in main_rows[start:end]:
            if not r.get("error"):
                by_value.setdefault(r["wpq_depth"] if name == "wpq_depth" else r["timing"][name], []).append(r)
        table = sensitivity(by_value)
        where, figure = (out / "sensitivity", "sensitivity") if len(spans) == 1 else \
            (out / "sensitivity" / name, f"sensitivity-{name}")
        write_results(table, where, ("workload", "value", "ranking", "changed", "previous"),
                      kind="bench-sensitivity", **document)
        written.append(where / "results.csv")
        written += _figures(args, [(sensitivity_figure, (main_rows[start:end], name, meta, out),
                                    {"figure": figure})])
        changes = [t for t in table if t["changed"]]
        default = args.wpq_depth[0] if name == "wpq_depth" else timing.to_dict()[name]
        lines = [f"nvemu bench: sensitivity to {name} from {values[0]:g} to {values[-1]:g} (default {default:g}; "
                 f"the other parameters at their defaults)"]
        if len(spans) == 1:
            lines.append(_table(table, (("workload", "workload", ""), ("value", name, ",g"),
                                        ("ranking", "cheapest first", ""), ("changed", "changed", ""))))
        else:                                              # several sweeps: the ranking at the default
            at = default if default in values else values[0]
            lines.append(_table([t for t in table if t["value"] == at],
                                (("workload", "workload", ""), ("ranking", f"cheapest first at {name}={at:g}", ""))))
        lines.append("ranking changes: " + ("; ".join(f"{t['workload']} between {name}={t['previous']:g} and "
                                                       f"{t['value']:g}: {t['ranking']}" for t in changes)
                                            or "none in this range") + "\n")
        _say(args, *lines)
    if not spans:
        if rate_rows:
            write_results(rate_rows, out / "rate", COLUMNS, kind="bench-rate", **document)
        written += _figures(args, [(overhead_figure, (main_rows, meta, out), {}),
                                   (rate_figure, (rate_rows, meta, RATE_WORKLOAD, out), {})])
        _say(args, f"nvemu bench: {len(cells)} cells, {args.ops:,} ops each; emulated time, timing model: "
                   + ", ".join(f"{k}={v:g}" for k, v in timing.to_dict().items()),
             _table(main_rows, TABLE_COLUMNS))
    _say(args, "\nwrote " + ", ".join(str(p) for p in written))
    _emit_json(args, doc)
    return 1 if _report_failures(rows, args.verbose) else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    spec_path = Path(args.spec)
    cells = sweep_cells(load_toml(spec_path), spec_path.parent)
    check_cells(cells)
    check_output_directory(args.out, [args.spec])
    check_outputs([args.json], [args.spec])
    rows = execute(run_cell, cells, out_dir=args.out, resume=args.resume, desc="sweep", **_execute_options(args))
    swept = sorted({k for c in cells for k in c["timing"]})
    doc = write_results(rows, args.out, ("workload", "platform", *[k for k in COLUMNS if k not in ("workload",)]),
                  kind="sweep", parameters={"spec": str(spec_path), "tasks": len(cells),
                                            "timing_model": TimingModel().to_dict(), "swept_timing": swept,
                                            "seeds": sorted({c["seed"] for c in cells})},
                  command=_command_line(args))
    for r in rows:                       # the swept timing parameters as columns of the table
        r.update({f"timing_{k}": r["timing"][k] for k in swept if isinstance(r.get("timing"), dict)})
    _say(args, f"nvemu sweep: {len(cells)} tasks, {len(cells) - sum(bool(r.get('error')) for r in rows)} done",
         _table(rows, columns(("workload", "platform", "strategy", "fanout", "wpq_depth",
                               *(f"timing_{k}" for k in swept), "exits", "lines_drained", "ns_per_op"))),
         f"\nwrote {Path(args.out) / 'results.csv'}, {Path(args.out) / 'results.json'}")
    _emit_json(args, doc)
    return 1 if _report_failures(rows, args.verbose) else 0


def cmd_fleet(args: argparse.Namespace) -> int:
    spec_path = Path(args.spec)
    hosts = fleet_hosts(load_toml(spec_path), spec_path.parent)
    check_output_directory(args.out, [args.spec])
    check_outputs([args.json], [args.spec])
    rows = execute(run_host, hosts, out_dir=args.out, resume=args.resume, desc="fleet", **_execute_options(args))
    total = fleet_total(rows)
    doc = write_results([*rows, total], args.out, HOST_COLUMNS, kind="fleet",
                  parameters={"spec": str(spec_path), "hosts": len(hosts), "timing_model": TimingModel().to_dict()},
                  command=_command_line(args))
    _say(args, f"nvemu fleet: {len(hosts)} hosts",
         _table([*rows, {**total, "platform": "", "domain": "", "controllers": 0}],
                columns(("host", "platform", "vms", "ops", "exits", "lines_drained", "ns_per_op"))),
         f"\nwrote {Path(args.out) / 'results.csv'}, {Path(args.out) / 'results.json'}")
    _emit_json(args, doc)
    return 1 if _report_failures(rows, args.verbose) else 0


def _runner_options(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler, e.g. tcp://host:8786 (default: a "
                   "local pool of processes; needs pip install 'nvemu[dask]')")
    p.add_argument("--workers", metavar="N", type=positive_int,
                   help="local worker processes (default: one per core)")
    p.add_argument("-o", "--output", "--out", dest="out", metavar="DIR", default=out,
                   help=f"output directory: results.csv, results.json, rows.jsonl, figures (default {out})")
    p.add_argument("--json", metavar="FILE", help="also write the results.json document to FILE ('-': stdout, "
                   "which then carries only the JSON; the report goes to stderr) (default: none)")
    p.add_argument("--resume", action="store_true",
                   help="skip tasks whose rows are already in the output directory's rows.jsonl (default: off)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar on stderr (default: only when stderr is a terminal)")
    add_quiet_option(p, verbose="print the traceback of each failed task")


def add_commands(sub: Any) -> None:
    """Add ``bench``, ``sweep`` and ``fleet`` to an argparse subparsers object."""
    b = sub.add_parser("bench", help="compare flushing strategies on a grid of workloads and platforms",
                       description="Each cell: the workload's trace under one strategy, against the same trace "
                                   "run natively. Figures are emulated time from the timing model (deterministic); "
                                   "only the wall_* columns depend on this machine. Every list option is an axis "
                                   "of the grid.")
    b.add_argument("--workloads", metavar="NAME", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS),
                   help=f"workload generators (default: all: {', '.join(WORKLOADS)})")
    b.add_argument("--strategies", metavar="NAME", nargs="+", default=list(COMPARED_STRATEGIES),
                   choices=["auto", *COMPARED_STRATEGIES],
                   help=f"vFHA strategies, each against native (default: {' '.join(COMPARED_STRATEGIES)}; also auto)")
    b.add_argument("--fanout", nargs="+", default=["broadcast"], choices=["broadcast", "targeted"],
                   help="which controllers a trapped vFHA write drains (default broadcast)")
    b.add_argument("--domains", nargs="+", default=["adr"], choices=["none", "adr", "eadr"],
                   help="persistence domain of the host (default adr)")
    b.add_argument("--controllers", metavar="N", nargs="+", type=positive_int, default=[4],
                   help="memory controllers (iMCs) of the host, each with one WPQ (default 4)")
    b.add_argument("--wpq-depth", metavar="LINES", nargs="+", type=positive_int, default=[64],
                   help="WPQ capacity in 64-byte lines (default 64)")
    b.add_argument("--hints", metavar="N", nargs="+", type=non_negative_int, default=[1],
                   help="flush hint addresses per NVDIMM; 0: the host has no WPQ flush (default 1)")
    b.add_argument("--vms", metavar="N", type=positive_int, default=1, help="VMs per host (default 1)")
    b.add_argument("--interleave", default="all", choices=["all", "socket"],
                   help="NVDIMM interleave sets: across all iMCs, or one per socket (default all)")
    b.add_argument("--ops", metavar="OPS", type=parse_count, default=200_000,
                   help="guest ops (trace records) per cell, k/M/G = 10^3/10^6/10^9 (default 200k)")
    b.add_argument("--seed", metavar="S", type=non_negative_int, default=0, help="generator seed (default 0)")
    b.add_argument("--sweep", "--sweep-cost", dest="sweep_cost", metavar="NAME=LO:HI:STEP", action="append",
                   help="sensitivity: run the grid for each value of one timing parameter or wpq_depth, e.g. "
                        "mmio_cycles=200:3000:200 or fha_write_ns=50,150,500; repeat it to sweep several, one at "
                        "a time; 'free' sweeps every free parameter (each exit path's handling cost, the "
                        "flush-hint latency, the line buffers per vCPU, the WPQ depth) (default: off)")
    b.add_argument("--no-rate", action="store_true",
                   help="skip the vFHA write-rate sweep behind the rate figure (default: run it)")
    b.add_argument("--no-plot", action="store_true", help="write no figures (default: figures when matplotlib "
                   "is installed)")
    b.add_argument("--format", default="png", choices=FORMATS, help="figure file format (default png)")
    b.add_argument("--dpi", type=positive_int, default=120, help="figure resolution, dots per inch (default 120)")
    _runner_options(b, "nvemu-bench")
    b.set_defaults(func=cmd_bench)

    s = sub.add_parser("sweep", help="run a grid of replays described by a TOML file",
                       description="Every list in the file is an axis of the grid, every scalar applies to all "
                                   "tasks; keys as the bench options (workloads, strategies, fanout, domains, "
                                   "controllers, wpq_depth, hints, vms, ops, seed) plus traces, platforms, vcpus, "
                                   "[timing] and [params.WORKLOAD]. The whole file is checked before any task runs.")
    s.add_argument("spec", metavar="SPEC.toml", help="the sweep file (see examples/sweep-small.toml)")
    _runner_options(s, "nvemu-sweep")
    s.set_defaults(func=cmd_sweep)

    f = sub.add_parser("fleet", help="replay many hosts, each with its VMs, described by a TOML file",
                       description="Each [[host]] is a platform with its [[host.vm]] tables; the VMs of a host "
                                   "replay together, interleaved. Rows per host and a fleet-wide total.")
    f.add_argument("spec", metavar="FLEET.toml", help="the fleet file (see examples/fleet-small.toml)")
    _runner_options(f, "nvemu-fleet")
    f.set_defaults(func=cmd_fleet)
