#!/usr/bin/env python3
"""The targets of issue 17 (sparse host memory), each with its figure.

1. The README quick start (extracted from README.md and run as a script): wall time and peak RSS.
2. ``optane-3t``, 64 VMs x 32 GiB vNVDIMM: ``nvemu gen kv-put`` then ``nvemu replay`` of ``--ops``
   records (default 100 M), as a user runs them; peak RSS of the replay.
3. One single-VM kv-put trace replayed on ``default`` and on ``optane-3t``: both peaks (RSS follows
   what the trace touches, not the host).
4. Snapshot save + restore of a VM that touched 1 MiB on ``optane-3t``: seconds.
5. Replay speed: ``bench/replay_speed.py`` (core vs the C yardstick, alternating rounds), its median ratio.

Peak RSS is the child's ``ru_maxrss`` (``os.wait4``). The machine is shared: rerun when a figure is
near its target. Nothing here is a test; tests never assert on time.

    python bench/sparse_targets.py [--ops 100M] [--footprint 4M] [--skip-speed] [--speed-ops 5000000]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 1 << 20


def child(args: list[str]) -> tuple[float, float, str]:
    """Run ``args``; (seconds, the child's own peak RSS in MiB from os.wait4, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{' '.join(args)} failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, out.decode()


def quick_start() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\n\n```python\n(.*?)```", text, re.S)
    if block is None:
        sys.exit("README.md has no Quick start python block")
    return block.group(1)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default="100M", help="records of the 64-VM kv-put trace (default 100M)")
    ap.add_argument("--footprint", default="4M", help="bytes of each vNVDIMM kv-put touches (default 4M)")
    ap.add_argument("--single-ops", default="2M", help="records of the single-VM trace (default 2M)")
    ap.add_argument("--skip-speed", action="store_true", help="skip bench/replay_speed.py")
    ap.add_argument("--speed-ops", type=int, default=5_000_000)
    ap.add_argument("--speed-rounds", type=int, default=5)
    args = ap.parse_args()
    py = sys.executable
    env_note = os.environ.get("NVEMU_MEMORY_BUDGET", "default")
    print(f"issue 17 targets (memory budget: {env_note})")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. quick start
        script = tmp / "quick_start.py"
        script.write_text(quick_start())
        runs = [child([py, str(script)]) for _ in range(3)]
        seconds = sorted(r[0] for r in runs)[1]
        rss = max(r[1] for r in runs)
        rows.append(("README quick start", f"{seconds:.2f} s (median of 3), peak RSS {rss:.0f} MiB",
                     "< 1 s and < 200 MiB", seconds < 1 and rss < 200))
        print(rows[-1][1], flush=True)

        # 2. 64 VMs x 32 GiB on optane-3t, kv-put, replayed with the CLI
        npy = tmp / "kv64.npy"
        common = ["--vms", "64", "--nvdimm", "32G", "--preset", "optane-3t"]
        gen_s, gen_rss, _ = child([py, "-m", "nvemu", "gen", "kv-put", "-n", args.ops, "-o", str(npy),
                                   "--footprint", args.footprint, *common])
        rep_s, rep_rss, out = child([py, "-m", "nvemu", "replay", str(npy), "--no-progress", *common])
        rows.append((f"optane-3t, 64 VMs x 32 GiB, {args.ops} kv-put (footprint {args.footprint}/VM)",
                     f"replay peak RSS {rep_rss:.0f} MiB ({rep_s:.0f} s; gen {gen_s:.0f} s, {gen_rss:.0f} MiB)",
                     "< 2048 MiB", rep_rss < 2048))
        print(rows[-1][1], flush=True)
        npy.unlink()

        # 3. one single-VM trace on default and on optane-3t
        one = tmp / "kv1.npy"
        child([py, "-m", "nvemu", "gen", "kv-put", "-n", args.single_ops, "-o", str(one)])
        peaks = {}
        for name in ("default", "optane-3t"):
            peaks[name] = child([py, "-m", "nvemu", "replay", str(one), "--no-progress", "--preset", name])[1]
        ratio = peaks["optane-3t"] / peaks["default"]
        rows.append((f"single VM, {args.single_ops} kv-put: default vs optane-3t",
                     f"peak RSS {peaks['default']:.0f} vs {peaks['optane-3t']:.0f} MiB (ratio {ratio:.3f})",
                     "within 10%", abs(ratio - 1) <= 0.10))
        print(rows[-1][1], flush=True)

        # 4. snapshot save + restore of a VM that touched 1 MiB on optane-3t
        snap = tmp / "snap_bench.py"
        snap.write_text(SNAPSHOT_SCRIPT)
        _, _, out = child([py, str(snap), str(tmp / "vm.npz")])
        seconds = float(out.split()[0])
        rows.append(("snapshot save + restore, 1 MiB touched, optane-3t", out.strip(), "< 0.5 s", seconds < 0.5))
        print(rows[-1][1], flush=True)

    # 5. replay speed against the C yardstick
    if not args.skip_speed:
        _, _, out = child([py, str(HERE / "replay_speed.py"), "--ops", str(args.speed_ops),
                           "--rounds", str(args.speed_rounds)])
        print(out)
        m = re.search(r"core / yardstick\s+([\d.]+)", out)
        if m:
            r = float(m.group(1))
            rows.append(("replay speed, core / yardstick (bench/replay_speed.py)", f"{r:.2f} (median ratio)",
                         ">= 1.2", r >= 1.2))

    print()
    width = max(len(r[0]) for r in rows)
    for what, figure, target, ok in rows:
        print(f"{what:{width}s}  {figure}   target {target}: {verdict(ok)}")
    return 0


SNAPSHOT_SCRIPT = r'''
import sys, time
import numpy as np
from nvemu import Hypervisor, TRACE_DTYPE, Op
from nvemu.machine.snapshot import restore_snapshot, save_snapshot

hv = Hypervisor("optane-3t")
vm = hv.create_vm().start()
g = vm.nvdimms[0].gpa
n = (1 << 20) // 8                        # 1 MiB of the vNVDIMM, 8 bytes at a time
ops = np.zeros(n, TRACE_DTYPE)
ops["op"], ops["vm"], ops["size"] = Op.STORE, vm.id, 8
ops["gpa"] = g + 8 * np.arange(n, dtype=np.uint64)
ops["value"] = np.arange(1, n + 1, dtype=np.uint64)
hv.run(ops)
t0 = time.perf_counter()
save_snapshot(vm, sys.argv[1])
t1 = time.perf_counter()
copy = restore_snapshot(sys.argv[1])
t2 = time.perf_counter()
assert copy.vms[vm.id].read(g, 1 << 20) == vm.read(g, 1 << 20)
print(f"{t2 - t0:.3f} s (save {t1 - t0:.3f} s, restore {t2 - t1:.3f} s)")
'''


if __name__ == "__main__":
    sys.exit(main())
