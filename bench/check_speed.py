#!/usr/bin/env python3
"""``nvemu check --points all`` against ``nvemu replay`` of the same trace, whole processes (issue 14).

For each workload and size: generates the trace (``nvemu gen``, default platform, seed 0; cached
in ``--cache``), then runs ``nvemu replay TRACE -q`` and ``nvemu check TRACE --points all -q
--jsonl FILE`` as child processes of the Python that runs this script, with the nvemu checkout
``--nvemu`` on PYTHONPATH and as the working directory (``python -m`` puts the working directory
first on the path; compare two checkouts: run once per checkout). Prints a Markdown table:
wall seconds of each (``time.perf_counter`` around the child), their ratio, the crash points
checked (``n_points`` of the JSON Lines summary, ``len(points)`` from a checkout that predates
it; with ``--jsonl`` and no ``--json`` the check keeps no list of points or violations, as ``nvemu
check`` does), points per second of the check and the peak RSS of each child
(``ru_maxrss`` from ``os.wait4``, KiB, printed in GiB); in brackets the same by CPU seconds
(``ru_utime + ru_stime``), steadier than wall time on a shared machine.

    python bench/check_speed.py [--nvemu PATH] [--ops 1M,10M] [--workloads kv-put,persist-loop]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, peak RSS GiB, exit status) of a child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, cwd=env["PYTHONPATH"])
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t0
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 2**20, os.waitstatus_to_exitcode(status)


def count(text: str) -> int:
    scale = {"k": 10**3, "M": 10**6, "G": 10**9}
    return int(text[:-1]) * scale[text[-1]] if text[-1] in scale else int(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nvemu", default=str(HERE.parent), help="nvemu checkout to run (default: this one)")
    ap.add_argument("--ops", default="1M", help="comma-separated trace sizes (default 1M)")
    ap.add_argument("--workloads", default="kv-put,persist-loop")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "nvemu-check-speed"))
    ap.add_argument("--check-args", default="", help="extra arguments for check (space-separated)")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=os.path.abspath(args.nvemu))
    os.makedirs(args.cache, exist_ok=True)
    py = [sys.executable, "-m", "nvemu"]
    print(f"nvemu checkout: {os.path.abspath(args.nvemu)}")
    print("| trace | ops | replay s (CPU s) | check s (CPU s) | ratio wall (CPU) | points | points/s (per CPU s) "
          "| peak RSS check vs replay (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.ops.split(","):
        n = count(size)
        for workload in args.workloads.split(","):
            trace = os.path.join(args.cache, f"{workload}-{size}.npy")
            if not os.path.exists(trace):
                subprocess.run([*py, "gen", workload, "-n", str(n), "-o", trace, "--no-progress"], env=env,
                               check=True, stdout=subprocess.DEVNULL, cwd=env["PYTHONPATH"])
            replay_s, replay_cpu, replay_rss, rc = run([*py, "replay", trace, "-q"], env)
            if rc:
                sys.exit(f"replay of {trace} exited {rc}")
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "r.jsonl")
                check_s, check_cpu, check_rss, rc = run([*py, "check", trace, "--points", "all", "-q", "--jsonl", out,
                                                         *args.check_args.split()], env)
                if rc not in (0, 1):
                    sys.exit(f"check of {trace} exited {rc}")
                with open(out) as f:
                    summary = json.loads(f.readlines()[-1])
                points = summary["n_points"] if "n_points" in summary else len(summary["points"])
            print(f"| {workload} | {size} | {replay_s:.1f} ({replay_cpu:.1f}) | {check_s:.1f} ({check_cpu:.1f}) | "
                  f"{check_s / replay_s:.1f}x ({check_cpu / replay_cpu:.1f}x) | {points:,} | {points / check_s:,.0f} "
                  f"({points / check_cpu:,.0f}) | {check_rss:.2f} vs {replay_rss:.2f} |", flush=True)


if __name__ == "__main__":
    main()
