"""``nvemu demo`` and ``nvemu layout``: the default platform and VM, run and shown."""

from __future__ import annotations

import argparse
import json
import time

from .._version import __version__
from .._backend import BACKEND
from ..machine.config import PRESETS
from ..machine.hypervisor import Hypervisor
from .common import check_outputs, format_table, parse_count
from ..guest.workloads import persist_loop

DEMO_STRATEGIES = ("write-protect", "mmio", "hypercall", "writable", "auto")


def run_strategy(platform: str, strategy: str, fanout: str, n_ops: int, seed: int) -> dict:
    """One default VM on a fresh ``platform`` running the persist loop under ``strategy``."""
    hv = Hypervisor(platform)
    vm = hv.create_vm(strategy=strategy, fanout=fanout, prefault=True).start()
    nv = vm.nvdimms[0]
    trace = persist_loop(n_ops, nv.gpa, nv.size, vm.vfha_gpa, seed=seed)
    t0 = time.perf_counter()
    hv.run(trace)
    seconds = time.perf_counter() - t0
    s = vm.stats()
    return {"platform": platform, "strategy": strategy, "resolved": vm.strategy, "ops": len(trace),
            "exits_48": s.exits[48], "exits_49": s.exits[49], "exits_18": s.exits[18],
            "vfha_writes": s["vfha_writes"], "fha_writes": s["fha_writes"],
            "lines_drained": s["lines_drained"], "cycles_per_1k_ops": 1000 * s.cycles / max(len(trace), 1),
            "tlb_hit_rate": s.tlb_hit_rate, "mops": len(trace) / seconds / 1e6 if seconds else 0.0}


DEMO_COLUMNS = (("label", "strategy", ""), ("ops", "ops", ",d"), ("exits_48", "exits 48 (EPT viol)", ",d"),
                ("exits_49", "exits 49 (misconfig)", ",d"), ("exits_18", "exits 18 (vmcall)", ",d"),
                ("lines_drained", "lines drained", ",d"), ("cycles_per_1k_ops", "cycles/1k ops", ",.0f"),
                ("mops", "Mops/s", ".1f"))


def cmd_demo(args: argparse.Namespace) -> int:
    check_outputs([args.json])
    print(f"nvemu {__version__} ({BACKEND} backend): platform '{args.preset}', one VM "
          f"(256 MiB DRAM, one 256 MiB vNVDIMM, 1 vCPU), persist loop of {args.ops:,} ops, "
          f"fan-out {args.fanout}")
    rows = []
    for strategy in args.strategies:
        row = run_strategy(args.preset, strategy, args.fanout, args.ops, args.seed)
        row["label"] = strategy if strategy != "auto" else f"auto -> {row['resolved']}"
        rows.append(row)
    no_wpq = run_strategy("no-wpq-flush", "auto", args.fanout, args.ops, args.seed)
    no_wpq["label"] = f"auto -> {no_wpq['resolved']} (no-wpq-flush host)"
    rows.append(no_wpq)
    print(format_table(rows, DEMO_COLUMNS))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


def cmd_layout(args: argparse.Namespace) -> int:
    hv = Hypervisor(args.preset)
    vm = hv.create_vm()
    nv = vm.nvdimms[0]
    layout = {"nvdimm_gpa": nv.gpa, "nvdimm_size": nv.size, "fha_gpa": vm.vfha_gpa,
              "dram_size": sum(r.size for r in vm.dram), "platform": hv.platform.summary(), "vm": vm.layout()}
    if args.json:
        print(json.dumps(layout, indent=2))
    else:
        v = layout["vm"]
        for r in v["dram"] + v["nvdimms"]:
            print(f"{r['kind']:7s} GPA {r['gpa']:#014x}..{r['gpa'] + r['size']:#014x}  -> HPA {r['hpa']:#x}")
        print(f"vFHA    GPA {v['vfha']:#014x}  ({v['strategy']}, fan-out to controllers "
              f"{v['fanout_controllers']})")
    return 0


def add_commands(sub) -> None:
    """Add ``demo`` and ``layout`` to an argparse subparsers object."""
    demo = sub.add_parser("demo", help="default platform, one VM, the persist loop under each strategy")
    demo.add_argument("--preset", default="default", choices=sorted(PRESETS))
    demo.add_argument("--ops", type=parse_count, default=1_000_000)
    demo.add_argument("--fanout", default="broadcast", choices=("broadcast", "targeted"))
    demo.add_argument("--strategies", nargs="+", default=list(DEMO_STRATEGIES))
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    demo.set_defaults(func=cmd_demo)

    layout = sub.add_parser("layout", help="where the default VM sits in guest-physical space")
    layout.add_argument("--preset", default="default", choices=sorted(PRESETS))
    layout.add_argument("--json", action="store_true")
    layout.set_defaults(func=cmd_layout)
