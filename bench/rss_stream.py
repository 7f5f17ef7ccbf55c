#!/usr/bin/env python3
"""Streaming replay keeps resident memory flat: ``nvemu replay`` on a 10 M and a 200 M op persist loop.

Writes both traces with the generator's streaming writer (``nvemu gen persist-loop``; 240 MB and
4.8 GB), then replays each through the CLI path (``nvemu.cli.main.main(["replay", ...])``) in a fresh
child process and reads the child's peak resident set (VmHWM). The two peaks should be within 10%
of each other: what stays resident is the emulated machine (the default platform, its 256 MiB vNVDIMM
prefaulted) and one chunk of the trace, not the trace. It also replays the 10 M loop from memory with
``Hypervisor.replay`` (the core's own figure, as bench/replay_speed.py measures it), alternating with
the CLI for ``--rounds`` rounds, and compares the median Mops/s (target: the CLI within 15%).

    python bench/rss_stream.py [--small-ops 10000000] [--large-ops 200000000] [--rounds 3] [--dir bench/out]
                               [--keep]

Slow, not a test: generating and replaying 200 M ops takes a few minutes and 4.8 GB of disk.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def peak_mib() -> float:
    """This process's peak resident set (VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def child(mode: str, arg: str) -> None:
    """Run in a fresh process: one replay, then one JSON line with its figures and the peak RSS."""
    if mode == "cli":
        from nvemu.cli.main import main
        out = Path(arg).with_suffix(".json")
        rc = main(["replay", arg, "--strategy", "write-protect", "--json", str(out), "--no-progress"])
        doc = json.loads(out.read_text())
        out.unlink()
        print(json.dumps({"rc": rc, "ops": doc["ops"], "seconds": doc["seconds"], "mops": doc["mops"],
                          "exits": doc["exits"]["48"], "peak_mib": peak_mib()}))
    else:
        from nvemu import Hypervisor
        from nvemu.guest.persist_loop import persist_loop
        hv = Hypervisor("default")
        vm = hv.create_vm(strategy="write-protect", prefault=True).start()
        nv = vm.nvdimms[0]
        trace = persist_loop(int(arg), nv.gpa, nv.size, vm.vfha_gpa)
        t0 = time.perf_counter()
        hv.run(trace)
        seconds = time.perf_counter() - t0
        print(json.dumps({"ops": len(trace), "seconds": seconds, "mops": len(trace) / seconds / 1e6,
                          "exits": vm.stats().exits[48], "peak_mib": peak_mib()}))


def run_child(mode: str, arg: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, arg], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def generate(path: Path, n_ops: int) -> float:
    from nvemu.formats.trace import save_npy
    from nvemu.guest.workloads import iter_generate
    t0 = time.perf_counter()
    save_npy(path, iter_generate("persist-loop", n_ops))
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small-ops", type=int, default=10_000_000)
    ap.add_argument("--large-ops", type=int, default=200_000_000)
    ap.add_argument("--rounds", type=int, default=3, help="core vs CLI rounds on the small trace")
    ap.add_argument("--dir", type=Path, default=HERE / "out")
    ap.add_argument("--keep", action="store_true", help="keep the generated traces")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "ARG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0

    args.dir.mkdir(parents=True, exist_ok=True)
    def report(label: str, row: dict) -> None:
        print(f"{label:28s} {row['ops']:>13,} ops: {row['mops']:6.2f} Mops/s over {row['seconds']:6.2f} s, "
              f"{row['exits']:,} vFHA exits, peak RSS {row['peak_mib']:7.1f} MiB", flush=True)

    rows, cli_mops, core_mops = [], [], []
    for n in (args.small_ops, args.large_ops):
        path = args.dir / f"persist_loop_{n}.npy"
        if not path.exists():
            gen_s = generate(path, n)
            print(f"generated {n:,} ops ({path.stat().st_size / 2**20:,.0f} MiB) in {gen_s:.1f} s", flush=True)
        try:
            rounds = args.rounds if n == args.small_ops else 1
            for _ in range(rounds):
                row = run_child("cli", str(path))
                report("nvemu replay (streamed)", row)
                if n == args.small_ops:
                    cli_mops.append(row["mops"])
                    core = run_child("core", str(n))
                    report("Hypervisor.replay (memory)", core)
                    core_mops.append(core["mops"])
        finally:
            if not args.keep:
                path.unlink()
        rows.append(row)

    small, large = rows
    growth = (large["peak_mib"] - small["peak_mib"]) / small["peak_mib"]
    cli, core = statistics.median(cli_mops), statistics.median(core_mops)
    print()
    print(f"peak RSS of nvemu replay, {args.large_ops:,} vs {args.small_ops:,} ops: {large['peak_mib']:.1f} vs "
          f"{small['peak_mib']:.1f} MiB ({growth:+.1%}; target within 10%)")
    print(f"{args.small_ops:,} ops, median of {len(cli_mops)}: nvemu replay {cli:.2f} Mops/s, core {core:.2f} Mops/s, "
          f"ratio {cli / core:.2f} (target >= 0.85)")
    return 0 if abs(growth) <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
