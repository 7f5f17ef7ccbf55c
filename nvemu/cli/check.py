"""``nvemu check``: the crash-consistency checker on the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any

from .._constants import DOMAIN_NAMES
from ..formats.nfit import platform_config_from_nfit
from ..formats.trace import FORMATS
from ..machine.config import PRESETS, PlatformConfig
from ..machine.flush_hints import FANOUTS, STRATEGIES
from ..errors import ConfigError
from ..tools.check_report import CheckResult, Violation
from ..tools.checker import FENCE_SCOPES, PROTOCOLS, check_trace
from .common import (add_pmemcheck_options, add_progress_option, add_quiet_option, check_outputs,
                     non_negative_int, parse_number, positive_int, progress_bar, read_nfit, report_stream,
                     write_output)


def _points_arg(text: str) -> str | int:
    if text == "all":
        return "all"
    try:
        n = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: 'all' or a positive count") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: 'all' or a positive count")
    return n


class _Lines:
    """``--jsonl``: each violation as one JSON line the moment the checker settles it, then one
    summary line (the result without the violations); flushed line by line for a watching tool."""

    def __init__(self, path: str | None) -> None:
        self.out: IO[str] | None = None
        if path == "-":
            self.out = sys.stdout
        elif path:
            try:
                self.out = open(path, "w", encoding="utf-8")
            except OSError as e:
                raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None

    def violation(self, v: Violation) -> None:
        self._line({"type": "violation", **v.as_dict()})

    def summary(self, result: CheckResult) -> None:
        doc = result.as_dict()
        del doc["violations"]
        assert result.counts is not None
        self._line({"type": "summary", "violations": result.counts.total, **doc})

    def _line(self, doc: dict[str, Any]) -> None:
        assert self.out is not None
        self.out.write(json.dumps(doc) + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.out is not None and self.out is not sys.stdout:
            self.out.close()


def cmd_check(args: argparse.Namespace) -> int:
    """``check TRACE``: exit 0 when no completed store is lost, 1 when some is, 2 on bad input, 3
    (with ``--strict``) when none is lost but the check was vacuous (``CheckResult.vacuous``)."""
    if args.json == "-" and args.jsonl == "-":
        raise ConfigError("--json - and --jsonl - would both write to stdout: give one of them a file")
    check_outputs([args.json, args.jsonl], [args.trace, args.nfit])
    platform: str | PlatformConfig = (platform_config_from_nfit(read_nfit(args.nfit)) if args.nfit
                                      else args.preset)
    stream = _Lines(args.jsonl)
    try:
        with progress_bar(None, args.progress, "check") as bar:
            result = _run(args, platform, bar, stream)
        if stream.out is not None:
            stream.summary(result)
    finally:
        stream.close()
    if not args.quiet:
        out = report_stream(args.json, args.jsonl)
        print(f"nvemu check: {args.trace}", file=out)
        print(result.report(args.limit), file=out)
    if args.json:
        write_output(args.json, json.dumps(result.as_dict(), indent=2) + "\n")
    if not result.ok:
        return 1
    return 3 if args.strict and result.vacuous else 0


def _run(args: argparse.Namespace, platform: str | PlatformConfig, bar: Any, stream: _Lines) -> CheckResult:
    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done)
    return check_trace(args.trace, args.points, platform=platform, domain=args.domain, strategy=args.strategy,
                       fanout=args.fanout, vms=args.vms, vcpus=args.vcpus, dram=args.dram, nvdimm=args.nvdimm,
                       format=None if args.format == "auto" else args.format,
                       unregistered="skip" if args.skip_unregistered else "error", deep_flush=args.deep_flush,
                       protocol=args.protocol, fence_scope=args.fence_scope, verify=args.verify,
                       ordering=not args.no_ordering, adr_failure=args.adr_failure, progress=progress,
                       on_violation=stream.violation if stream.out is not None else None,
                       keep_violations=None if args.json else args.limit, keep_points=bool(args.json))


def add_commands(subparsers: Any) -> None:
    """Add ``check`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "check", help="crash-consistency check: is every persisted store durable at every persist point?",
        description="Replay a trace and, at every persist point of the guest (after each fence and each vFHA "
                    "write; or N sampled ones), check that every store whose persistence protocol had completed "
                    "(written back and fenced, plus a vFHA write and fence where the domain is none) is in the "
                    "durable image. Exit status: 0 none lost, 1 violations, 2 bad input, 3 (--strict) none lost but "
                    "fewer than half the stores to a vNVDIMM completed their protocol (a vacuous check).")
    p.add_argument("trace", metavar="TRACE", help="a .npy, text or pmemcheck trace (recognised by content)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--preset", metavar="NAME", default="default", choices=list(PRESETS),
                       help=f"platform preset ({', '.join(PRESETS)}; default: default)")
    which.add_argument("--nfit", metavar="FILE.aml",
                       help="build the platform a binary ACPI NFIT describes (default: none, the --preset platform)")
    p.add_argument("--domain", choices=list(DOMAIN_NAMES),
                   help="override the platform's persistence domain (default: the platform's)")
    p.add_argument("--strategy", default="auto", choices=["auto", *STRATEGIES],
                   help="how the hypervisor virtualises the vFHA (default auto; drop is broken on purpose)")
    p.add_argument("--fanout", default="broadcast", choices=list(FANOUTS), help="default broadcast")
    p.add_argument("--points", default="all", type=_points_arg, metavar="all|N",
                   help="check after every fence and vFHA write (all, the default) or N evenly sampled ones")
    p.add_argument("--protocol", default="auto", choices=list(PROTOCOLS),
                   help="what the guest must do for a store to count as persisted: fence; flush (write-back, "
                        "fence); deep (flush, then vFHA write, fence); auto: deep on domain none, else flush "
                        "(default auto)")
    p.add_argument("--fence-scope", default="vcpu", choices=list(FENCE_SCOPES),
                   help="whose fence completes a store: the vCPU that issued its write-back (default; Intel SDM "
                        "CLWB/CLFLUSHOPT) or any vCPU of its VM")
    p.add_argument("--adr-failure", action="store_true",
                   help="the power failure also defeats ADR: what sits in the WPQs (and, on eADR, the caches) "
                        "is lost, as a deep flush guards against; --protocol auto then means deep")
    p.add_argument("--no-ordering", action="store_true",
                   help="do not report vFHA writes that overtake unfenced write-backs (deep protocol)")
    p.add_argument("--verify", metavar="N", type=non_negative_int, default=0,
                   help="also compare N points with a real power failure of a snapshot-restored copy (default 0)")
    p.add_argument("--vms", metavar="N", type=positive_int, help="VMs to create (default: as the trace names)")
    p.add_argument("--vcpus", metavar="N", type=positive_int, help="vCPUs per VM (default: as the trace names)")
    p.add_argument("--dram", metavar="SIZE", type=parse_number,
                   help="DRAM of each VM, bytes with K/M/G suffixes (default 256M, less on a small platform)")
    p.add_argument("--nvdimm", metavar="SIZE", type=parse_number,
                   help="vNVDIMM of each VM, bytes with K/M/G suffixes (default 256M, less on a small platform)")
    p.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="default: by content")
    add_pmemcheck_options(p)
    p.add_argument("--strict", action="store_true",
                   help="exit 3 when nothing is lost but the check was vacuous: no store, or fewer than half the "
                        "stores to a vNVDIMM, completed its protocol (the report says why)")
    p.add_argument("--limit", metavar="N", type=non_negative_int, default=20, help="lost stores listed (default 20)")
    p.add_argument("--json", metavar="FILE", help="write the result (every violation) as JSON ('-': stdout, "
                   "which then carries only the JSON; the report goes to stderr) (default: none)")
    p.add_argument("--jsonl", metavar="FILE", help="stream each violation as a JSON line while the check runs, "
                   "then a summary line ('-': stdout, which then carries only those lines) (default: none)")
    add_progress_option(p)
    add_quiet_option(p)
    p.set_defaults(func=cmd_check)
