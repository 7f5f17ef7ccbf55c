"""``nvemu demo`` and ``nvemu layout``: the default platform and VM, run and shown.

Both take the platform as every other command does (``--preset`` or ``--nfit``, ``--dram``,
``--nvdimm``) and shrink the VM to fit a small platform as ``gen`` and ``replay`` do.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable

from .._backend import BACKEND
from .._version import __version__
from ..guest.persist_loop import persist_loop_chunks
from ..machine.config import TimingModel
from ..machine.flush_hints import COMPARED_STRATEGIES
from ..machine.hypervisor import Hypervisor
from ..machine.platform import Platform
from ..tools.prepare import create_vms
from ..tools.results import document
from ..tools.vocabulary import columns, exit_columns
from .common import (add_platform_options, add_progress_option, add_quiet_option, check_outputs, format_size,
                     format_table, parse_count, platform_of, positive_int, non_negative_int, progress_bar,
                     report_stream, write_output)

DEMO_STRATEGIES = (*COMPARED_STRATEGIES, "auto")
MAX_DEMO_OPS = 10**12
"""The most ops ``demo`` runs per strategy: hours at core speed, and far from wrapping a 64-bit
picosecond clock (an op costs at most microseconds). The trace is made a chunk at a time, so
memory does not grow with ``--ops``."""


def demo_ops(text: str) -> int:
    """``--ops``: a count (k/M/G suffixes) of at most :data:`MAX_DEMO_OPS` (argparse type)."""
    n = parse_count(text)
    if n > MAX_DEMO_OPS:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_DEMO_OPS:,} ops (1000G) per strategy")
    return n


def run_strategy(platform: str | Platform, strategy: str, fanout: str, n_ops: int, seed: int,
                 dram: int | None = None, nvdimm: int | None = None,
                 done_ops: Callable[[int], object] | None = None) -> dict[str, Any]:
    """One VM on a fresh ``platform`` (sized as ``replay`` sizes it unless given) running the
    persist loop under ``strategy``; a row in the vocabulary's names. ``done_ops(n)`` is called
    after each chunk of ``n`` ops (a progress bar's ``update``)."""
    if strategy == "native":        # no VM: no second-level page walks
        config = platform.config if isinstance(platform, Platform) else platform
        hv = Hypervisor(config, TimingModel(walk_ref_cycles=0))
    else:
        hv = Hypervisor(platform)
    vm = create_vms(hv, 1, 1, strategy, fanout, dram, nvdimm, prefault=True)[0]
    nv = vm.nvdimms[0]
    seconds, done = 0.0, 0
    for chunk in persist_loop_chunks(n_ops, nv.gpa, nv.size, vm.vfha_gpa, seed=seed):   # memory: one chunk
        t0 = time.perf_counter()
        hv.run(chunk)
        seconds += time.perf_counter() - t0
        done += len(chunk)
        if done_ops is not None:
            done_ops(len(chunk))
    s = vm.stats()
    row = {"platform": hv.platform.name, "strategy": strategy, "resolved": vm.strategy, "fanout": fanout,
            "ops": done, **exit_columns(s.exits), "vfha_writes": s["vfha_writes"],
            "fha_writes": s["fha_writes"], "lines_drained": s["lines_drained"], "time_ps": s.time_ps,
            "ns_per_op": s.time_ps / 1000 / max(done, 1), "tlb_hit_rate": s.tlb_hit_rate,
            "seconds": seconds, "mops": done / seconds / 1e6 if seconds else 0.0,
            "dram_bytes": sum(r.size for r in vm.dram), "nvdimm_bytes": nv.size}
    vm.destroy()              # its memory goes now, not when a garbage collection finds the cycle
    return row


DEMO_COLUMNS = (("label", "strategy", ""), *columns(("ops", "exits_ept_violation", "exits_ept_misconfig",
                                                     "exits_vmcall", "lines_drained", "ns_per_op",
                                                     "overhead_vs_native", "mops")))


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: the persist loop under each strategy on one platform, and auto on a host with no WPQ flush."""
    check_outputs([args.json], [args.nfit])
    platform = platform_of(args)
    name = platform if isinstance(platform, str) else platform.name
    rows = []
    runs = [(platform, s) for s in args.strategies] + [("no-wpq-flush", "auto"), (platform, "native")]
    with progress_bar(len(runs) * args.ops, args.progress, "demo", unit="op") as bar:
        for where, strategy in runs:
            other = where is not platform
            bar.set_postfix_str(strategy, refresh=False)
            row = run_strategy(where, strategy, args.fanout, args.ops, args.seed,
                               None if other else args.dram, None if other else args.nvdimm, bar.update)
            row["label"] = strategy if strategy != "auto" else f"auto -> {row['resolved']}"
            if other:
                row["label"] += " (no-wpq-flush host)"
            if strategy == "native":
                row["label"] = "native (no VM)"
            rows.append(row)
    native = rows[-1]["ns_per_op"]
    for r in rows:
        r["overhead_vs_native"] = r["ns_per_op"] / native if native else float("nan")
    first = rows[0]
    if not args.quiet:
        out = report_stream(args.json)
        print(f"nvemu {__version__} ({BACKEND} backend): platform {name!r}, one VM "
              f"({format_size(first['dram_bytes'])} DRAM, one {format_size(first['nvdimm_bytes'])} vNVDIMM, "
              f"1 vCPU), persist loop of {args.ops:,} ops, fan-out {args.fanout}", file=out)
        print(format_table(rows, DEMO_COLUMNS), file=out)
    if args.json:
        doc = document("demo", rows, {"platform": name, "ops": args.ops, "seed": args.seed, "fanout": args.fanout,
                                      "strategies": list(args.strategies),
                                      "timing_model": Hypervisor(platform).platform.timing.to_dict()},
                       getattr(args, "command_line", None))
        write_output(args.json, json.dumps(doc, indent=2) + "\n")
    return 0


def _vm_layout(vm: Any) -> dict[str, Any]:
    nv = vm.nvdimms[0]
    return {"id": vm.id, "nvdimm_gpa": nv.gpa, "nvdimm_size": nv.size, "fha_gpa": vm.vfha_gpa,
            "dram_size": sum(r.size for r in vm.dram), **vm.layout()}


def cmd_layout(args: argparse.Namespace) -> int:
    """``layout``: where each VM ``replay`` would build on the platform sits, guest- and host-physical."""
    hv = Hypervisor(platform_of(args))
    vms = create_vms(hv, args.vms, args.vcpus, args.strategy, args.fanout, args.dram, args.nvdimm, start=False)
    layouts = [_vm_layout(vm) for vm in vms]
    first = layouts[0]
    doc = {"nvdimm_gpa": first["nvdimm_gpa"], "nvdimm_size": first["nvdimm_size"], "fha_gpa": first["fha_gpa"],
           "dram_size": first["dram_size"], "platform": hv.platform.summary(),
           "vm": {k: v for k, v in first.items() if k not in ("id", "nvdimm_gpa", "nvdimm_size", "fha_gpa",
                                                               "dram_size")},
           "vms": layouts}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"platform {hv.platform.name!r}: {args.vms} VM(s) x {args.vcpus} vCPU, strategy {args.strategy}")
    for v in layouts:
        print(f"vm{v['id']}:")
        for r in v["dram"] + v["nvdimms"]:
            print(f"  {r['kind']:7s} GPA {r['gpa']:#014x}..{r['gpa'] + r['size']:#014x}  -> HPA {r['hpa']:#x} "
                  f"({format_size(r['size'])})")
        print(f"  vFHA    GPA {v['vfha']:#014x}  ({v['strategy']}, fan-out to controllers "
              f"{v['fanout_controllers']})")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``demo`` and ``layout`` to an argparse subparsers object."""
    demo = sub.add_parser("demo", help="one VM runs the persist loop under each strategy, side by side",
                          description="One VM (sized to the platform as replay sizes it) runs the persist loop "
                                      "under each strategy; then auto on the no-wpq-flush preset, where it "
                                      "resolves to writable. Counters are emulated; Mops/s is this machine's.")
    demo.add_argument("--ops", metavar="OPS", type=demo_ops, default=1_000_000,
                      help="guest ops per strategy, k/M/G = 10^3/10^6/10^9, at most 1000G; made a chunk at a "
                           "time (default 1M)")
    demo.add_argument("--fanout", default="broadcast", choices=("broadcast", "targeted"),
                      help="which controllers a trapped vFHA write drains (default broadcast)")
    demo.add_argument("--strategies", metavar="NAME", nargs="+", default=list(DEMO_STRATEGIES),
                      choices=["write-protect", "mmio", "hypercall", "writable", "auto", "native", "drop"],
                      help=f"strategies to run (default: {' '.join(DEMO_STRATEGIES)})")
    demo.add_argument("--seed", metavar="S", type=non_negative_int, default=0, help="generator seed (default 0)")
    demo.add_argument("--json", metavar="FILE", help="also write the rows as a results document ('-': stdout, "
                      "which then carries only the JSON; the table goes to stderr) (default: none)")
    add_platform_options(demo, "")
    add_progress_option(demo)
    add_quiet_option(demo)
    demo.set_defaults(func=cmd_demo)

    layout = sub.add_parser("layout", help="where each VM sits in guest- and host-physical space",
                            description="The VMs replay/gen would build on the platform: each VM's DRAM and "
                                        "vNVDIMM ranges (GPA -> HPA), its vFHA and the controllers it fans out to.")
    layout.add_argument("--vms", metavar="N", type=positive_int, default=1, help="VMs (default 1)")
    layout.add_argument("--vcpus", metavar="N", type=positive_int, default=1, help="vCPUs per VM (default 1)")
    layout.add_argument("--strategy", default="auto", choices=["auto", "write-protect", "mmio", "hypercall",
                                                               "writable", "native", "drop"],
                        help="how the vFHA is virtualised (default auto)")
    layout.add_argument("--fanout", default="broadcast", choices=("broadcast", "targeted"),
                        help="default broadcast")
    layout.add_argument("--json", action="store_true", help="print JSON: the first VM's nvdimm_gpa, nvdimm_size, "
                        "fha_gpa, dram_size and vm at the top, every VM under vms (default: text)")
    add_platform_options(layout, "")
    layout.set_defaults(func=cmd_layout)
