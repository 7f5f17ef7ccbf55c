#!/usr/bin/env python3
"""Peak resident memory of ``nvemu gen``, ``import``, ``replay`` and ``check`` does not grow with the trace.

For each size (default 10 M and 200 M ops of the persist loop, 240 MB and 4.8 GB as .npy) it runs,
each as a separate ``python -m nvemu`` process:

    nvemu gen persist-loop -n N -o DIR/trace_N.npy
    nvemu import npy DIR/trace_N.npy -o DIR/copy_N.npy
    nvemu replay DIR/trace_N.npy --strategy write-protect -q
    nvemu check DIR/trace_N.npy --strategy write-protect -q        (only with --commands ... check)

and reads the command's peak resident set the way the kernel accounts it: each command is the only
child of a fresh measuring process, which waits for it and prints
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the largest child's peak RSS, KiB on Linux).
Then it prints, per command, the peak at the largest size against the smallest (target: within
10%; what stays resident is one chunk of the trace, and for replay the emulated machine with its
prefaulted 256 MiB vNVDIMM, memory and media).

    python bench/rss_commands.py [--sizes 10M 200M] [--commands gen import replay check] [--dir bench/out]
                                 [--keep]

Slow, not a test: 200 M ops take minutes per command and 9.6 GB of disk while the copy exists.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMMANDS = ("gen", "import", "replay", "check")


def measure(argv: list[str]) -> None:
    """Child mode: run ``nvemu argv`` as this process's only child; print its exit status, wall
    seconds and peak RSS (KiB) as one JSON line."""
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, "-m", "nvemu", *argv], stdout=subprocess.DEVNULL).returncode
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"rc": rc, "seconds": seconds, "peak_kib": peak}))


def run(argv: list[str]) -> dict:
    """Measure one nvemu command in a fresh measuring process (so no other child counts)."""
    out = subprocess.run([sys.executable, __file__, "--measure", *argv], check=True, capture_output=True,
                         text=True, cwd=ROOT).stdout
    row = json.loads(out.strip().splitlines()[-1])
    if row["rc"] != 0:
        raise SystemExit(f"nvemu {' '.join(argv)} exited {row['rc']}")
    return row


def parse_count(text: str) -> int:
    from nvemu.cli.common import parse_count as parse
    return parse(text)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        measure(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["10M", "200M"], help="trace lengths, k/M/G suffixes "
                    "(default: 10M 200M)")
    ap.add_argument("--workload", default="persist-loop", help="the generator (default persist-loop)")
    ap.add_argument("--dir", type=Path, default=HERE / "out", help="where the traces go (default bench/out)")
    ap.add_argument("--commands", nargs="+", default=["gen", "import", "replay"], choices=COMMANDS,
                    help="what to measure (gen always runs, to make the trace; default: gen import replay; "
                         "check of 200 M ops takes about a minute here; its kernel keeps only the lines with a store "
                         "in flight, so its peak does not grow with the trace's length or footprint either)")
    ap.add_argument("--keep", action="store_true", help="keep the generated traces (default: removed)")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    sizes = sorted(parse_count(s) for s in args.sizes)
    peaks: dict[tuple[str, int], float] = {}
    print(f"{'command':8s} {'ops':>13s} {'peak RSS':>12s} {'wall':>9s}", flush=True)
    for n in sizes:
        trace, copy = args.dir / f"trace_{n}.npy", args.dir / f"copy_{n}.npy"
        argvs = {"gen": ["gen", args.workload, "-n", str(n), "-o", str(trace), "--no-progress"],
                 "import": ["import", "npy", str(trace), "-o", str(copy), "--no-progress"],
                 "replay": ["replay", str(trace), "--strategy", "write-protect", "-q", "--no-progress"],
                 "check": ["check", str(trace), "--strategy", "write-protect", "-q", "--no-progress"]}
        try:
            for command in [c for c in COMMANDS if c == "gen" or c in args.commands]:
                row = run(argvs[command])
                peaks[command, n] = row["peak_kib"] / 1024
                print(f"{command:8s} {n:>13,} {peaks[command, n]:>8.1f} MiB {row['seconds']:>7.1f} s", flush=True)
                if command == "import":
                    copy.unlink()
        finally:
            if not args.keep:
                trace.unlink(missing_ok=True)
            copy.unlink(missing_ok=True)
    small, large = sizes[0], sizes[-1]
    print()
    worst = 0.0
    for command in [c for c in COMMANDS if c == "gen" or c in args.commands]:
        growth = peaks[command, large] / peaks[command, small] - 1
        worst = max(worst, growth)
        print(f"{command:8s} peak RSS at {large:,} vs {small:,} ops: {peaks[command, large]:.1f} vs "
              f"{peaks[command, small]:.1f} MiB ({growth:+.1%}; target within 10%)")
    return 0 if worst <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
