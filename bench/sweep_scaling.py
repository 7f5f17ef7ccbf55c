#!/usr/bin/env python3
"""A 16-cell sweep on 1 worker, then on 2 (this machine has 2 cores): the speed-up of spreading
independent replays over processes, and a check that both give the same rows.

    python bench/sweep_scaling.py [--ops 2000000] [--scheduler tcp://host:8786]
"""

from __future__ import annotations

import argparse
import time

from nvemu.cells import run_cell
from nvemu.sweep import sweep_cells
from nvemu.tasks import execute


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=2_000_000)
    ap.add_argument("--scheduler", help="also time the sweep on this Dask cluster")
    args = ap.parse_args()
    cells = sweep_cells({"ops": args.ops, "workloads": ["persist-loop", "kv-put", "pmdk-tx", "seq-log"],
                         "strategy": ["write-protect", "mmio"], "fanout": ["broadcast", "targeted"]})
    assert len(cells) == 16
    times, results = {}, {}
    runs = [("warm-up", {"workers": 2}), ("1 worker", {"workers": 1, "inline": False}),
            ("2 workers", {"workers": 2})]
    if args.scheduler:
        runs.append((f"dask {args.scheduler}", {"scheduler": args.scheduler}))
    for name, options in runs:
        t0 = time.perf_counter()
        rows = execute(run_cell, cells, progress=False, **options)
        times[name] = time.perf_counter() - t0
        results[name] = [{k: v for k, v in r.items() if "wall" not in k} for r in rows]
        print(f"{name:>10}: {len(cells)} cells of {args.ops:,} ops in {times[name]:.2f} s", flush=True)
    same = all(r == results["1 worker"] for r in results.values())
    print(f"speed-up with 2 workers: {times['1 worker'] / times['2 workers']:.2f}x; rows identical: {same}")


if __name__ == "__main__":
    main()
