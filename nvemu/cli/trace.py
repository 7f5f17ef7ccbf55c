"""The trace subcommands of ``nvemu``: ``gen`` (workload generators), ``import`` (format conversion,
pmemcheck logs) and ``replay`` (streaming replay with a summary).

The main CLI calls :func:`add_commands` with its subparsers and later ``args.func(args)``; each
handler returns the exit code: 0 ok, 1 an output file not writable, and nvemu errors (bad trace,
bad configuration) propagate to ``nvemu.cli.main``, which prints them on one line and returns 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from typing import Any, Iterable, Iterator

import numpy as np

from ..formats import trace as tr
from .._constants import PAGE_BYTES
from ..errors import ConfigError
from ..machine.flush_hints import FANOUTS, STRATEGIES
from .common import (add_platform_options, add_pmemcheck_options, add_progress_option, add_quiet_option,
                     check_outputs, format_size, format_table, parse_count, parse_number, platform_of, progress_bar,
                     report_stream, write_output)
from ..tools.prepare import vm_layouts
from ..tools.replayer import Replayer, ReplayReport, with_native
from ..guest.workloads import WORKLOADS, iter_generate
from ..tools.vocabulary import COLUMNS, exit_columns

# ---- gen ------------------------------------------------------------------------------------------

def cmd_gen(args: argparse.Namespace) -> int:
    """``gen WORKLOAD -n OPS -o FILE``: write a generated trace (.npy, or text for other names)."""
    params = {k: v for k, v in (("deep_flush_every", args.deep_flush_every), ("read_fraction", args.read_fraction),
                                ("max_blocks", args.max_blocks)) if v is not None}
    check_outputs([args.output], [args.nfit])
    layouts = vm_layouts(platform_of(args), args.vms, dram=args.dram, nvdimm=args.nvdimm)
    chunks = iter_generate(args.workload, args.ops, layouts, seed=args.seed, vms=args.vms, vcpus=args.vcpus,
                           footprint=args.footprint, **params)
    n = tr.save_trace(args.output, _progress(chunks, args.ops, args.progress, "gen"))
    footprint = args.footprint or min(lay.nvdimm_size for lay in layouts)
    if not args.quiet:
        print(f"nvemu gen: wrote {n:,} ops of {args.workload} ({args.vms} VM x {args.vcpus} vCPU, footprint "
              f"{format_size(footprint)}, seed {args.seed}) to {args.output}")
    return 0


def _progress(chunks: Iterable[np.ndarray], total: int | None, enabled: bool | None, desc: str
              ) -> Iterator[np.ndarray]:
    """``chunks`` passed through, advancing a tqdm bar by their record counts."""
    with progress_bar(total, enabled, desc, unit="op") as bar:
        for chunk in chunks:
            yield chunk
            bar.update(len(chunk))


# ---- import ---------------------------------------------------------------------------------------

def cmd_import(args: argparse.Namespace) -> int:
    """``import FORMAT INPUT -o OUTPUT``: convert a pmemcheck log, text or npy trace to npy or text."""
    check_outputs([args.output], [args.input, args.nfit])
    fmt = tr.detect_format(args.input) if args.format == "auto" else args.format
    for flag, given in (("--deep-flush", args.deep_flush), ("--skip-unregistered", args.skip_unregistered)):
        if given and fmt != "pmemcheck":            # as replay and check say it
            raise ConfigError(f"{flag} applies only to a pmemcheck log, not to this {fmt} trace")
    if fmt == "pmemcheck":
        lay = vm_layouts(platform_of(args), 1, dram=args.dram, nvdimm=args.nvdimm)[0]
        gpa = lay.nvdimm_gpa if args.nvdimm_gpa is None else args.nvdimm_gpa
        size = lay.nvdimm_size if args.nvdimm_size is None else args.nvdimm_size
        custom = args.nvdimm_gpa is not None or args.nvdimm_size is not None     # the vFHA: the page above
        fha = -(-(gpa + size) // PAGE_BYTES) * PAGE_BYTES if custom else lay.fha_gpa
        stream = tr.stream_pmemcheck(args.input, gpa, size, unregistered="skip" if args.skip_unregistered
                                     else "error", deep_flush=fha if args.deep_flush else None)
        records: Any = (chunk for _, chunk in stream.chunks())      # range FLUSHes expand a chunk at a time
        what = ""
    elif fmt == "npy":
        npy = tr.NpyTrace(args.input)
        records = (chunk for _, chunk in npy.chunks())
        what = "a native trace"
    elif fmt == "text":
        text = tr.TextStream(args.input).validate()          # one pass checks every line and counts
        records = (chunk for _, chunk in text.chunks())
        what = "a text trace"
    else:
        raise ConfigError(f"unknown format {fmt!r}")
    total = len(npy) if fmt == "npy" else text.length if fmt == "text" else None    # a log's: at its end
    n = tr.save_trace(args.output, _progress(records, total, args.progress, "import"))
    if fmt == "pmemcheck":
        imp = stream.info
        files = "; ".join(f"{f.name} at GPA {f.gpa:#x} ({format_size(f.size)})" for f in imp.files) or "no files"
        what = (f"{imp.log_records:,} pmemcheck records ({files}; {len(imp.markers)} markers"
                + (f"; {imp.skipped} records outside registered files skipped" if imp.skipped else "") + ")")
    if not args.quiet:
        print(f"nvemu import: {n:,} ops from {what} -> {args.output}")
    return 0


# ---- replay ---------------------------------------------------------------------------------------

_ROWS: tuple[tuple[str, str], ...] = tuple((COLUMNS[k].header, k) for k in (
    "exits_ept_violation", "exits_ept_misconfig", "exits_vmcall", "flushes", "fences", "vfha_writes", "fha_writes",
    "lines_drained", "ns_per_op", "native_ns_per_op", "overhead_vs_native", "tlb_hit_rate"))


def summary_table(result: ReplayReport) -> str:
    """The replay summary: a header, then one column per VM (when more than one) and the total."""
    total = {**result.__dict__}
    cols = [(f"vm{row['vm']}", row) for row in result.per_vm] if result.vms > 1 else []
    cols.append(("total", total))
    rows = [{"metric": "ops", **{c: f"{r['ops']:,}" for c, r in cols}},
            {"metric": "seconds (replay loop)", **{c: "" for c, _ in cols}, "total": f"{result.seconds:.3f}"},
            {"metric": "Mops/s", **{c: "" for c, _ in cols}, "total": f"{result.mops:.2f}"}]
    if result.vms > 1:      # auto decides per VM (by the NVDIMMs backing it)
        rows.insert(1, {"metric": "strategy", **{c: r.get("strategy", "") for c, r in cols[:-1]}, "total": ""})
    for label, key in _ROWS:
        fmt = COLUMNS[key].fmt
        if key in ("native_ns_per_op", "overhead_vs_native") and result.native_ns_per_op is None:
            continue                                # --no-native
        rows.append({"metric": label, **{c: format(exit_columns(r["exits"]).get(key, r.get(key)), fmt)
                                         for c, r in cols}})
    table = format_table(rows, [("metric", "", "")] + [(c, c, "") for c, _ in cols])
    vm_word = "VM" if result.vms == 1 else "VMs"
    head = [(f"trace     {result.trace or '<array>'} ({result.format}, {result.ops:,} ops in {result.chunks} "
             f"chunk{'s' * (result.chunks != 1)})"),
            (f"platform  {result.platform}: {result.vms} {vm_word} x {result.vcpus} vCPU, strategy "
             f"{'per VM (below)' if ',' in result.strategy else result.strategy}, fan-out {result.fanout}")]
    tail = [f"WPQ-full drains: {result.wpq_full_drains:,} lines"] if result.wpq_full_drains else []
    return "\n".join(head + ["", table] + tail)


def _write_outputs(result: ReplayReport, json_path: str | None, csv_path: str | None) -> None:
    if json_path:
        write_output(json_path, json.dumps(result.as_dict(), indent=2) + "\n")
    if csv_path:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=ReplayReport.CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(result.csv_rows())
        write_output(csv_path, buf.getvalue())


def cmd_replay(args: argparse.Namespace) -> int:
    """``replay TRACE``: replay a trace of any format and print the summary."""
    if args.json == "-" and args.csv == "-":
        raise ConfigError("--json - and --csv - would both write to stdout; give one of them a file")
    check_outputs([args.json, args.csv], [args.trace, args.nfit])
    options = dict(fanout=args.fanout, dram=args.dram, nvdimm=args.nvdimm, chunk_ops=args.chunk,
                   format=None if args.format == "auto" else args.format,
                   unregistered="skip" if args.skip_unregistered else "error", deep_flush=args.deep_flush)
    result = Replayer(args.trace, platform=platform_of(args), strategy=args.strategy, vms=args.vms,
                      vcpus=args.vcpus, progress=args.progress, **options).run()
    if args.native:                         # the emulated host goes before the native one comes
        result = with_native(result, args.trace, release=True, **options)
    if not args.quiet:
        print(summary_table(result), file=report_stream(args.json, args.csv))
    _write_outputs(result, args.json, args.csv)
    return 0


# ---- wiring ---------------------------------------------------------------------------------------

def _add_output(p: argparse.ArgumentParser) -> None:
    """``-o/--output``: the trace a command writes."""
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="FILE.npy (or a text trace)")


def _finish(p: argparse.ArgumentParser, func: Any, platform_what: str) -> None:
    """What every trace command takes last: the platform, a progress bar, -q; and its handler."""
    add_platform_options(p, platform_what)
    add_progress_option(p)
    add_quiet_option(p)
    p.set_defaults(func=func)


def add_commands(subparsers: Any) -> None:
    """Add ``gen``, ``import`` and ``replay`` to an argparse subparsers object."""
    names = ", ".join(WORKLOADS)
    gen = subparsers.add_parser(
        "gen", help="write a generated workload trace",
        description="Write a workload's trace (deterministic per seed) for the VMs `nvemu replay` builds on "
                    "the same platform. Output is .npy, or the text format for any other file name.",
        epilog="workloads:\n" + "\n".join(f"  {w.name:13s} {w.help}" for w in WORKLOADS.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    gen.add_argument("workload", metavar="WORKLOAD", choices=list(WORKLOADS), help=names)
    gen.add_argument("-n", "--ops", metavar="OPS", type=parse_count, required=True,
                     help="number of records (k/M/G = 10^3/10^6/10^9)")
    _add_output(gen)
    gen.add_argument("--footprint", metavar="SIZE", type=parse_number,
                     help="bytes of each vNVDIMM the workload touches (default: all of it)")
    gen.add_argument("--vms", metavar="N", type=int, default=1, help="VMs (default 1)")
    gen.add_argument("--vcpus", metavar="N", type=int, default=1, help="vCPUs per VM (default 1)")
    gen.add_argument("--seed", metavar="S", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--deep-flush-every", metavar="N", type=int,
                     help="write the vFHA after every N-th unit, 0 never (pmdk-tx, kv-put, random-rw, seq-log; "
                          "default: the workload's own, 1 for pmdk-tx and kv-put, 16 for seq-log, 0 for random-rw)")
    gen.add_argument("--read-fraction", metavar="F", type=float, help="share of loads (random-rw; default 0.5)")
    gen.add_argument("--max-blocks", metavar="N", type=int,
                     help="4 KiB blocks per write, at most (linux-fsync; default 8)")
    _finish(gen, cmd_gen, "the trace is for")

    imp = subparsers.add_parser(
        "import", help="convert a pmemcheck log, text or npy trace",
        description="Convert a trace: a pmemcheck store log (--log-stores=yes), a text trace or a native "
                    "trace, to FILE.npy or (any other name) the text format. A pmemcheck log's files are "
                    "placed on the vNVDIMM of the first VM `nvemu replay` builds on the platform.")
    imp.add_argument("format", metavar="FORMAT", choices=("pmemcheck", "text", "npy", "auto"),
                     help="pmemcheck, text, npy, or auto (recognise by content)")
    imp.add_argument("input", metavar="INPUT", help="the file to convert")
    _add_output(imp)
    imp.add_argument("--nvdimm-gpa", metavar="GPA", type=parse_number,
                     help="place pmemcheck files at this guest-physical address (default: the first VM's vNVDIMM)")
    imp.add_argument("--nvdimm-size", metavar="SIZE", type=parse_number,
                     help="... within this many bytes, K/M/G suffixes (default: the vNVDIMM's size)")
    add_pmemcheck_options(imp)
    _finish(imp, cmd_import, "to place pmemcheck files on")

    rep = subparsers.add_parser(
        "replay", help="replay a trace and print a summary",
        description="Replay a trace (.npy streamed from disk, a text trace or a pmemcheck log, recognised by "
                    "content) on a platform with as many VMs and vCPUs as the trace names, and print ops, "
                    "Mops/s, exits by reason, flushes, lines drained, emulated ns per op (and against the same "
                    "trace run natively) and the TLB hit rate.")
    rep.add_argument("trace", metavar="TRACE", help="a .npy, text or pmemcheck trace (recognised by content)")
    rep.add_argument("--strategy", default="auto", choices=["auto", *STRATEGIES],
                     help="how the vFHA is virtualised (default auto: write-protect a VM whose vNVDIMMs sit in "
                          "an interleave set with WPQ flush hints, else writable)")
    rep.add_argument("--fanout", default="broadcast", choices=list(FANOUTS), help="default broadcast")
    rep.add_argument("--vms", metavar="N", type=int, help="VMs to create (default: as the trace names)")
    rep.add_argument("--vcpus", metavar="N", type=int, help="vCPUs per VM (default: as the trace names)")
    rep.add_argument("--format", default="auto", choices=("auto", *tr.FORMATS), help="default: by content")
    rep.add_argument("--chunk", metavar="OPS", type=parse_count, default=tr.DEFAULT_CHUNK,
                     help=f"records replayed per chunk (default {tr.DEFAULT_CHUNK:,})")
    add_pmemcheck_options(rep)
    rep.add_argument("--json", metavar="FILE", help="write the result as JSON ('-': stdout, which then "
                     "carries only the JSON; the table goes to stderr) (default: none)")
    rep.add_argument("--csv", metavar="FILE", help="write per-VM and total rows as CSV ('-': stdout, which then "
                     "carries only the CSV) (default: none)")
    rep.add_argument("--native", action=argparse.BooleanOptionalAction, default=True,
                     help="replay the trace a second time natively (strategy native, no second-level walks) "
                          "for the native ns per op and the overhead against it (default: on)")
    _finish(rep, cmd_replay, "to create")


__all__ = ["add_commands", "cmd_gen", "cmd_import", "cmd_replay", "summary_table"]

