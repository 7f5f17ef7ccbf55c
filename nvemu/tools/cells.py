"""One replay task of a benchmark grid or sweep ("cell"), and one host of a fleet.

A cell is a plain dict (it travels to worker processes or Dask workers as is): which platform,
which VMs, which trace or generator, which strategy, fan-out and timing model (TimingModel overrides). :func:`run_cell`
builds all of it in the worker, replays, and returns a small row of counters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..machine.config import TimingModel, PlatformConfig, make_platform, preset
from ..errors import ConfigError
from ..machine.hypervisor import Hypervisor
from .prepare import create_vms
from .replayer import replay
from .vocabulary import exit_columns
from ..guest.workloads import VmLayout, generate

ROW_COLUMNS = ("workload", "strategy", "fanout", "domain", "controllers", "wpq_depth", "hints", "vms", "ops",
               "exits", "exits_ept_violation", "exits_ept_misconfig", "exits_vmcall", "exits_per_1k_ops",
               "vfha_writes", "vfha_reads", "fha_writes", "lines_drained", "time_ps", "ns_per_op")

CELL_DEFAULTS: dict[str, Any] = {
    "platform": None,          # a preset name or "nfit:PATH"; None: built from the axes below
    "controllers": 4, "domain": None, "wpq_depth": None, "hints": 1, "interleave": "all",
    "dimm_bytes": 64 << 20, "dram_bytes": 1 << 30,
    "vms": 1, "vcpus": 1, "dram": 16 << 20, "nvdimm": 32 << 20,
    "workload": "persist-loop", "trace": None, "params": {}, "ops": 100_000, "seed": 0,
    "strategy": "auto", "fanout": "broadcast", "timing": {},
}


def cell(**fields: Any) -> dict[str, Any]:
    """A complete cell: ``CELL_DEFAULTS`` with ``fields`` over them (unknown names refused)."""
    unknown = set(fields) - set(CELL_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown cell parameter(s): {', '.join(sorted(unknown))}")
    return {**CELL_DEFAULTS, **fields}


def platform_of(c: dict[str, Any]) -> PlatformConfig:
    """The host a cell describes: a preset, an NFIT file, or a regular platform with
    ``controllers`` iMCs (two sockets when even), ``hints`` flush hints per controller. ``domain`` and
    ``wpq_depth`` override the platform's when given."""
    overrides = {k: c[k] for k in ("wpq_depth", "domain") if c[k] is not None}
    spec = c["platform"]
    if spec:
        if str(spec).startswith("nfit:"):
            from ..formats.nfit import platform_config_from_nfit
            cfg = platform_config_from_nfit(Path(str(spec)[5:]).read_bytes(), dram_bytes=c["dram_bytes"])
            return cfg.with_(**overrides)
        return preset(spec).with_(**overrides)
    n = int(c["controllers"])
    sockets = 2 if n % 2 == 0 and n > 1 else 1
    overrides = {"wpq_depth": 64, "domain": "adr", **overrides}
    return make_platform(sockets=sockets, imcs_per_socket=n // sockets, dimm_bytes=c["dimm_bytes"],
                         hints_per_imc=c["hints"], dram_bytes=c["dram_bytes"], interleave=c["interleave"],
                         name=f"{n}imc", **overrides)


def run_cell(c: dict[str, Any]) -> dict[str, Any]:
    """Build the cell's platform and VMs, generate or open its trace, replay it; one row."""
    timing = TimingModel.from_dict(c["timing"])
    hv = Hypervisor(platform_of(c), timing)
    vms = create_vms(hv, c["vms"], c["vcpus"], c["strategy"], c["fanout"], c["dram"], c["nvdimm"], prefault=True)
    if c["trace"]:
        trace, name = c["trace"], Path(c["trace"]).name
    else:
        trace = generate(c["workload"], c["ops"], [VmLayout.of(vm) for vm in vms], seed=c["seed"],
                         vms=c["vms"], vcpus=c["vcpus"], **c["params"])
        name = c["workload"]
    result = replay(trace, hypervisor=hv, progress=False)
    stats = [vm.stats() for vm in vms]
    vfha_reads = sum(s["vfha_reads"] for s in stats)
    exits = sum(result.exits.values())
    return {
        "workload": name, "platform": hv.platform.name, "strategy": c["strategy"], "resolved": vms[0].strategy,
        "fanout": c["fanout"], "domain": hv.platform.domain,
        "controllers": hv.platform.n_controllers, "wpq_depth": hv.platform.config.wpq_depth,
        "hints": int(hv.platform.wpq_flush), "vms": len(vms), "ops": result.ops, **exit_columns(result.exits),
        "exits_per_1k_ops": 1000 * exits / result.ops if result.ops else 0.0,
        "vfha_writes": result.vfha_writes, "vfha_reads": vfha_reads, "fha_writes": result.fha_writes,
        "lines_drained": result.lines_drained, "time_ps": result.time_ps, "ns_per_op": result.ns_per_op,
        "lines_drained_by_controller": [sum(x) for x in zip(*(s.drained_by_controller for s in stats))],
        "wall_replay_seconds": result.seconds, "wall_mops": result.mops, "seed": c["seed"],
        "timing": timing.to_dict(),
    }


def run_host(host: dict[str, Any]) -> dict[str, Any]:
    """One fleet host: its platform and its VMs, each with its own trace or generator, replayed
    together as one interleaved trace would be (per VM, in order). A row per host with a
    ``per_vm`` list."""
    import numpy as np

    base = cell(**{k: v for k, v in host.items() if k in CELL_DEFAULTS and k != "vms"})
    timing = TimingModel.from_dict(base["timing"])
    hv = Hypervisor(platform_of(base), timing)
    specs = host.get("vms") or [{}]
    made = []
    for spec in specs:
        v = cell(**{**{k: base[k] for k in ("strategy", "fanout", "vcpus", "dram", "nvdimm", "workload", "ops",
                                            "seed", "params", "trace")}, **spec})
        made.append((v, create_vms(hv, 1, v["vcpus"], v["strategy"], v["fanout"], v["dram"], v["nvdimm"])[0]))
    traces = []
    for k, (v, vm) in enumerate(made):
        if v["trace"]:
            from ..formats.trace import load_trace
            t = np.array(load_trace(v["trace"]))
            t["vm"] = vm.id
        else:
            t = generate(v["workload"], v["ops"], VmLayout.of(vm), seed=v["seed"] + k, vcpus=v["vcpus"],
                         **v["params"])
            t["vm"] = vm.id
        traces.append(t)
    merged = np.concatenate(traces) if traces else np.zeros(0)
    order = np.argsort(np.concatenate([np.linspace(0, 1, len(t), endpoint=False) for t in traces]),
                       kind="stable")
    result = replay(merged[order], hypervisor=hv, progress=False)
    per_vm = [{"vm": vm.id, "workload": Path(v["trace"]).name if v["trace"] else v["workload"],
               "strategy": vm.strategy, "fanout": v["fanout"], **{k: row[k] for k in (
                   "ops", "vfha_writes", "fha_writes", "lines_drained", "time_ps")},
               **exit_columns(row["exits"])}
              for (v, vm), row in zip(made, result.per_vm)]
    return {"host": host.get("name", ""), "platform": hv.platform.name, "domain": hv.platform.domain,
            "controllers": hv.platform.n_controllers, "vms": len(made), "ops": result.ops,
            **exit_columns(result.exits), "lines_drained": result.lines_drained, "time_ps": result.time_ps,
            "ns_per_op": result.ns_per_op, "wall_replay_seconds": result.seconds, "per_vm": per_vm}
