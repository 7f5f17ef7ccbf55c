#!/usr/bin/env python3
"""Replay speed of the core against the reference model and the C yardstick.

Generates the persist loop (per random line of a 256 MiB vNVDIMM: 8 stores, a load, a clwb; an
sfence every 8 lines; a vFHA write every 64 lines), replays it with the Cython core on the
default platform and, on a prefix, with the reference model, and prints Mops/s and ratios. When
a C compiler is present it also builds ``../shared/yardstick/replay_yardstick.c`` and runs it on
the same ``.npy``, alternating with the core, and prints the median core/yardstick ratio.

    python bench/replay_speed.py [--ops 10000000] [--rounds 5] [--reference-ops 50000]
"""

from __future__ import annotations

import argparse
import json
import gc
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nvemu import Hypervisor, __version__
from nvemu.guest.persist_loop import persist_loop

HERE = Path(__file__).resolve().parent
# ../shared/yardstick next to the checkout; NVEMU_YARDSTICK names it from a worktree elsewhere.
YARDSTICK = Path(os.environ.get("NVEMU_YARDSTICK",
                                HERE.parent.parent / "shared" / "yardstick" / "replay_yardstick.c"))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def core_run(trace_for, n_ops: int, backend: str | None = None) -> tuple[float, dict, float]:
    """Replay on a fresh default platform with its vNVDIMM prefaulted; (Mops/s, counters, MiB the
    emulator holds resident: RSS after the replay less RSS before and the trace itself)."""
    gc.collect()
    before = rss_mib()
    hv = Hypervisor("default", backend=backend)
    vm = hv.create_vm(prefault=True).start()
    trace = trace_for(vm, n_ops)
    t0 = time.perf_counter()
    hv.run(trace)
    seconds = time.perf_counter() - t0
    held = rss_mib() - before - trace.nbytes / 2**20
    s = vm.stats()
    drained = sum(c["drained"] for c in hv.platform.controller_stats())
    counters = {"ops": len(trace), "walks": s["tlb_misses"], "faults": s.exits[48], "drained": drained,
                "fences": s["sfence"] + s["mfence"], "checksum": s["load_sum"]}
    return len(trace) / seconds / 1e6, counters, held


def build_yardstick(workdir: Path) -> Path | None:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None or not YARDSTICK.exists():
        return None
    exe = workdir / "replay_yardstick"
    subprocess.run([cc, "-O2", "-o", str(exe), str(YARDSTICK)], check=True)
    return exe


def yardstick_run(exe: Path, npy: Path, gpa: int, size: int, fha: int) -> tuple[float, str]:
    out = subprocess.run([str(exe), str(npy), hex(gpa), hex(size), hex(fha)], check=True,
                         capture_output=True, text=True).stdout
    return float(re.search(r"([\d.]+) Mops/s", out).group(1)), out.splitlines()[0]


def cli_run(npy: Path, out: Path) -> float:
    """``nvemu replay`` on the saved trace, as a user runs it; its own Mops/s figure."""
    subprocess.run([sys.executable, "-m", "nvemu", "replay", str(npy), "--strategy", "write-protect",
                    "--json", str(out), "--no-progress"], check=True, capture_output=True, text=True)
    return json.loads(out.read_text())["mops"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reference-ops", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    def trace_for(vm, n):
        nv = vm.nvdimms[0]
        return persist_loop(n, nv.gpa, nv.size, vm.vfha_gpa, seed=args.seed)

    print(f"nvemu {__version__}: persist loop, {args.ops:,} ops, 256 MiB vNVDIMM, default platform")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hv = Hypervisor("default")
        vm = hv.create_vm()
        nv, fha = vm.nvdimms[0], vm.vfha_gpa
        npy = tmp / "persist_loop.npy"
        np.save(npy, trace_for(vm, args.ops))
        del hv, vm
        exe = build_yardstick(tmp)

        core, yard, ratios, held, cli = [], [], [], [], []
        for r in range(args.rounds):
            mops, counters, rss = core_run(trace_for, args.ops)
            core.append(mops)
            held.append(rss)
            line = f"round {r + 1}: core {mops:6.1f} Mops/s (emulator RSS {rss:.0f} MiB)"
            if exe is not None:
                y, ycounters = yardstick_run(exe, npy, nv.gpa, nv.size, fha)
                yard.append(y)
                ratios.append(mops / y)
                line += f"   yardstick {y:6.1f} Mops/s   ratio {mops / y:.2f}"
            c = cli_run(npy, tmp / "cli.json")
            cli.append(c)
            line += f"   nvemu replay {c:6.1f} Mops/s"
            print(line, flush=True)
        print(f"core counters:      {' '.join(f'{k}={v}' for k, v in counters.items())}")
        if exe is not None:
            print(f"yardstick counters: {ycounters}")

        ref_mops, _, _ = core_run(trace_for, args.reference_ops, backend="reference")

    core_med = statistics.median(core)
    print()
    print(f"core       {core_med:8.2f} Mops/s (median of {len(core)})")
    print(f"nvemu replay {statistics.median(cli):6.2f} Mops/s (the CLI on the .npy, median; "
          f"{statistics.median(cli) / core_med:.2f} of the core, target >= 0.85)")
    print(f"reference  {ref_mops:8.4f} Mops/s (on a {args.reference_ops:,}-op prefix)")
    print(f"core / reference   {core_med / ref_mops:8.0f}x   (target >= 100x)")
    if ratios:
        print(f"yardstick  {statistics.median(yard):8.2f} Mops/s (median of {len(yard)})")
        print(f"core / yardstick   {statistics.median(ratios):8.2f}    (target >= 0.5, aim 0.8; median of "
              f"per-round ratios)")
    else:
        print(f"yardstick: skipped (no C compiler, or no {YARDSTICK}; set NVEMU_YARDSTICK)")
    print(f"emulator RSS {max(held):6.0f} MiB at most (one 256 MiB vNVDIMM, trace excluded; target < 700 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
