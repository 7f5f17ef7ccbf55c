#!/usr/bin/env python3
"""How big a chunk of sparse host memory should be (issue 17): replay speed and memory per size.

Two workloads, each on fresh hosts built with every chunk size in turn (rounds alternate sizes; the
machine is noisy, so medians are printed):

* dense: the persist loop of bench/replay_speed.py over a whole 256 MiB vNVDIMM (default
  platform), not prefaulted, so allocation and first-touch costs count;
* sparse: 8-byte stores at random places of a 32 GiB vNVDIMM on ``optane-3t`` (2 x 1024 by default: a
  few thousand lines scattered over the module): what a chunk costs when writes are scattered.

Columns: Mops/s of the replay, MiB of chunks allocated (``touched_bytes``) and the growth of the
process's RSS. ``2M+thp`` advises 2 MiB chunks for transparent huge pages (the default);
``2M`` does not.

    python bench/chunk_size.py [--ops 4000000] [--sparse-stores 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

import numpy as np

from nvemu import TRACE_DTYPE, Hypervisor, Op
from nvemu.guest.workloads import persist_loop
from nvemu.machine.config import GiB
from nvemu.machine.platform import Platform

SIZES = [("4K", 12, False), ("64K", 16, False), ("256K", 18, False), ("2M", 21, False), ("2M+thp", 21, True)]


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def dense(shift: int, huge: bool, n: int) -> tuple[float, float, float]:
    gc.collect()
    before = rss_mib()
    hv = Hypervisor(Platform("default", chunk_shift=shift, huge_pages=huge))
    vm = hv.create_vm().start()
    nv = vm.nvdimms[0]
    t = persist_loop(n, nv.gpa, nv.size, vm.vfha_gpa, seed=1)
    t0 = time.perf_counter()
    hv.run(t)
    seconds = time.perf_counter() - t0
    return n / seconds / 1e6, hv.platform.touched_bytes / 2**20, rss_mib() - before - t.nbytes / 2**20


def sparse(shift: int, huge: bool, stores: int) -> tuple[float, float, float]:
    gc.collect()
    before = rss_mib()
    hv = Hypervisor(Platform("optane-3t", chunk_shift=shift, huge_pages=huge))
    vm = hv.create_vm(dram=256 << 20, nvdimms=[32 * GiB], page_size=2 << 20).start()
    nv = vm.nvdimms[0]
    rng = np.random.default_rng(2)
    t = np.zeros(2 * stores, TRACE_DTYPE)
    t["op"], t["vm"], t["size"] = Op.STORE, vm.id, 8
    t["gpa"] = nv.gpa + rng.integers(0, nv.size // 8, 2 * stores).astype(np.uint64) * 8
    t["value"] = 1
    t0 = time.perf_counter()
    hv.run(t)
    seconds = time.perf_counter() - t0
    return len(t) / seconds / 1e6, hv.platform.touched_bytes / 2**20, rss_mib() - before - t.nbytes / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=4_000_000)
    ap.add_argument("--sparse-stores", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for r in range(args.rounds):
        for name, shift, huge in SIZES:
            results.setdefault(("dense", name), []).append(dense(shift, huge, args.ops))
            results.setdefault(("sparse", name), []).append(sparse(shift, huge, args.sparse_stores))
        print(f"round {r + 1} done", file=sys.stderr, flush=True)
    print(f"dense: persist loop, {args.ops:,} ops over a 256 MiB vNVDIMM (default platform, no prefault)")
    print(f"sparse: {2 * args.sparse_stores:,} stores at random over a 32 GiB vNVDIMM (optane-3t)")
    print(f"{'chunk':8s} {'dense Mops/s':>13s} {'MiB alloc':>10s} {'MiB RSS':>8s}   "
          f"{'sparse Mops/s':>13s} {'MiB alloc':>10s} {'MiB RSS':>8s}")
    for name, _, _ in SIZES:
        row = []
        for kind in ("dense", "sparse"):
            runs = results[(kind, name)]
            row += [statistics.median(x[0] for x in runs), statistics.median(x[1] for x in runs),
                    statistics.median(x[2] for x in runs)]
        print(f"{name:8s} {row[0]:13.2f} {row[1]:10.0f} {row[2]:8.0f}   {row[3]:13.2f} {row[4]:10.0f} {row[5]:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
