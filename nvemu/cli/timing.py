"""``nvemu timing``: the Optane studies' microbenchmarks run through the emulator.

The patterns of Yang et al. (FAST 2020) and Izraelevitz et al. (2019), from
:mod:`nvemu.tools.membench`: generated traces replayed by the engine on a bare-metal guest, timed
by the vCPU's clock.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..machine.config import PRESETS
from ..tools.membench import DEFAULT_PRESET, MAX_VCPUS, PATTERNS, run_timing
from .common import add_quiet_option, check_outputs, format_size, parse_number, report_stream, write_output


def byte_count(text: str) -> int:
    """A size in bytes with K/M suffixes (argparse type); the benchmark checks the range."""
    return parse_number(text)


def cmd_timing(args: argparse.Namespace) -> int:
    check_outputs([args.json])
    r = run_timing(args.pattern, args.size, args.fence_interval, args.preset, vcpus=args.vcpus)
    if not args.quiet:
        out = report_stream(args.json)
        fence = "an mfence" if r.pattern.startswith("load") else "an sfence"
        what = (f"{format_size(r.size)} accesses, sequential, {fence} every {format_size(r.fence_interval)}"
                if r.fence_interval else f"{format_size(r.size)} per repetition")
        who = f"{r.vcpus} vCPUs at once, " if r.vcpus > 1 else ""
        print(f"nvemu timing {r.pattern}: {what}, preset {r.preset}, {who}{r.repetitions:,} repetitions "
              f"through the engine (bare metal: strategy native, no second-level walks)", file=out)
        print(f"  latency    {r.ns:,.1f} ns per repetition", file=out)
        if r.pattern.startswith("load"):
            kind, limit, param = "read", r.read_limit_gb_per_s, "media_read_gbps"
        else:
            kind, limit, param = "write", r.write_limit_gb_per_s, "media_write_gbps"
        print(f"  bandwidth  {r.gb_per_s:.3f} GB/s (the interleave set's media {kind} limit: "
              f"{limit:g} GB/s = NVDIMMs x {param}, Izraelevitz et al. 2019)", file=out)
    if args.json:
        doc: dict[str, Any] = r.to_json()
        write_output(args.json, json.dumps(doc, indent=1) + "\n")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``timing`` to an argparse subparsers object."""
    p = sub.add_parser("timing", help="the Optane studies' latency and bandwidth microbenchmarks, emulated",
                       description="Generate the trace of one microbenchmark of the published Optane DC studies "
                                   "(Yang et al., FAST 2020; Izraelevitz et al. 2019) and run it through the "
                                   "engine on a bare-metal guest. Prints the mean latency of one repetition and "
                                   "the bandwidth; times are emulated by the timing model (deterministic).")
    p.add_argument("pattern", choices=PATTERNS, metavar="PATTERN",
                   help="load-seq, load-rand (64 B loads, sequential or at random SIZE-aligned blocks), "
                        "store-clwb (8-byte stores, a clwb per line, one sfence: one SIZE-byte persist at a "
                        "random SIZE-aligned address) or ntstore (non-temporal 8-byte stores, one sfence)")
    p.add_argument("--size", metavar="N", type=byte_count, default=64,
                   help="bytes per repetition, a multiple of 64 up to 4M, K/M suffixes (default 64)")
    p.add_argument("--fence-interval", metavar="N", type=byte_count, default=None,
                   help="store-clwb, ntstore, load-seq: run one sequential stream in SIZE-byte accesses with a "
                        "fence (sfence; mfence for loads) every N bytes (a multiple of 64) and report its "
                        "bandwidth (default: off, one fence per repetition)")
    p.add_argument("--vcpus", metavar="K", type=int, default=1,
                   help=f"run the pattern on K vCPUs at once, each on its own part of the vNVDIMM, 1..{MAX_VCPUS} "
                        "(default 1); bandwidth is all their bytes over the longest vCPU time")
    p.add_argument("--preset", metavar="NAME", default=DEFAULT_PRESET, choices=list(PRESETS),
                   help=f"platform preset ({', '.join(PRESETS)}; default {DEFAULT_PRESET}, the studies' machine)")
    p.add_argument("--json", metavar="FILE", help="also write pattern, size, fence_interval, preset, ns and "
                   "gb_per_s as JSON to FILE ('-': stdout, which then carries only the JSON; the report goes to "
                   "stderr) (default: none)")
    add_quiet_option(p)
    p.set_defaults(func=cmd_timing)
