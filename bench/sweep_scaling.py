#!/usr/bin/env python3
"""A 16-cell sweep on 1 worker, then on 2 (this machine has 2 cores): the speed-up of spreading
independent replays over processes, and a check that both give the same rows.

    python bench/sweep_scaling.py [--ops 2000000] [--scheduler tcp://host:8786]
"""

from __future__ import annotations

import argparse
import statistics
import time

from nvemu.tools.cells import run_cell
from nvemu.tools.sweep import sweep_cells
from nvemu.tools.tasks import execute


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=2_000_000)
    ap.add_argument("--scheduler", help="also time the sweep on this Dask cluster")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cells = sweep_cells({"ops": args.ops, "workloads": ["persist-loop", "kv-put", "pmdk-tx", "seq-log"],
                         "strategy": ["write-protect", "mmio"], "fanout": ["broadcast", "targeted"]})
    assert len(cells) == 16
    runs = [("1 worker", {"workers": 1, "inline": False}), ("2 workers", {"workers": 2})]
    if args.scheduler:
        runs.append((f"dask {args.scheduler}", {"scheduler": args.scheduler}))
    execute(run_cell, cells[:2], workers=2, progress=False)          # warm-up: imports, page cache
    times: dict[str, list[float]] = {name: [] for name, _ in runs}
    results = {}
    for _ in range(args.rounds):                                     # alternate: the machine is shared
        for name, options in runs:
            t0 = time.perf_counter()
            rows = execute(run_cell, cells, progress=False, **options)
            times[name].append(time.perf_counter() - t0)
            results[name] = [{k: v for k, v in r.items() if "wall" not in k} for r in rows]
            print(f"{name:>10}: {len(cells)} cells of {args.ops:,} ops in {times[name][-1]:.2f} s", flush=True)
    same = all(r == results["1 worker"] for r in results.values())
    one, two = statistics.median(times["1 worker"]), statistics.median(times["2 workers"])
    print(f"median: 1 worker {one:.2f} s, 2 workers {two:.2f} s; speed-up {one / two:.2f}x; rows identical: {same}")


if __name__ == "__main__":
    main()
