"""One vocabulary for everything nvemu writes: the names, headers, units and meanings of the
columns of ``demo``, ``replay``, ``bench``, ``sweep``, ``fleet`` and ``check`` output (tables,
CSV, JSON), and how exits are named.

The Python API keeps exits keyed by Intel's basic exit-reason number (``stats.exits[48]``), as
the SDM numbers them; everything written for people or other programs keys them by name
(``ept_violation``, ``ept_misconfig``, ``vmcall``) and states the number beside it. Adding a
column anywhere means adding it to :data:`COLUMNS` first, so a quantity has one name everywhere.
The results schema in the documentation is generated from this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .._constants import TIMING_PARAMETERS, ExitReason

EXIT_NAMES: dict[int, str] = {int(r): r.name.lower() for r in ExitReason}
"""Intel basic exit reason -> the name nvemu writes (SDM Vol. 3C, Appendix C)."""
EXIT_REASONS: dict[str, int] = {name: reason for reason, name in EXIT_NAMES.items()}
"""The name nvemu writes -> Intel basic exit reason."""


def exit_columns(exits: Mapping[int, int]) -> dict[str, int]:
    """Flat columns for exits by reason number: ``exits_ept_violation`` ... and ``exits`` (all).

    >>> exit_columns({48: 3, 49: 0, 18: 1})
    {'exits_ept_violation': 3, 'exits_ept_misconfig': 0, 'exits_vmcall': 1, 'exits': 4}
    """
    out = {f"exits_{name}": int(exits.get(reason, 0)) for reason, name in EXIT_NAMES.items()}
    out["exits"] = sum(out.values())
    return out


def exits_by_name(exits: Mapping[int, int]) -> dict[str, dict[str, int]]:
    """Exits for a JSON document: keyed by name, each with its reason number.

    >>> exits_by_name({48: 3, 49: 0, 18: 1})["ept_violation"]
    {'reason': 48, 'count': 3}
    """
    return {name: {"reason": reason, "count": int(exits.get(reason, 0))} for reason, name in EXIT_NAMES.items()}


@dataclass(frozen=True)
class Column:
    """A column: its name in CSV and JSON, the header of text tables, the text format, the unit
    and what it means."""

    name: str
    header: str
    fmt: str
    unit: str
    meaning: str


_C = Column
_EXIT_KINDS = {"ept_violation": ("EPT-violation", "write-protect traps"),
               "ept_misconfig": ("EPT-misconfiguration", "MMIO emulation"),
               "vmcall": ("VMCALL", "the flush hypercall")}
"""What each exit reason is called in the SDM and what it stands for in nvemu (the columns'
names, headers and reason numbers come from EXIT_NAMES)."""
COLUMNS: dict[str, Column] = {c.name: c for c in (
    # what ran
    _C("workload", "workload", "", "", "generator name, or the trace file's name"),
    _C("trace", "trace", "", "", "trace file replayed (sweep)"),
    _C("platform", "platform", "", "", "host platform: preset name, NFIT-built name, or '<n>imc' for a grid cell"),
    _C("host", "host", "", "", "fleet host name; 'fleet' for the fleet-wide total row"),
    _C("strategy", "strategy", "", "", "vFHA virtualization strategy asked for (auto, write-protect, mmio, "
                                       "hypercall, writable, native, drop)"),
    _C("resolved", "resolved", "", "", "the strategy auto chose"),
    _C("fanout", "fan-out", "", "", "which controllers a trapped vFHA write drains: broadcast or targeted"),
    _C("domain", "domain", "", "", "persistence domain of the host: none, adr or eadr"),
    _C("controllers", "iMCs", "d", "count", "memory controllers (each with one WPQ) on the host"),
    _C("wpq_depth", "WPQ", "d", "lines", "write-pending-queue capacity of each controller"),
    _C("hints", "hints", "d", "count", "flush hint addresses per NVDIMM (0: no WPQ flush)"),
    _C("vm", "vm", "", "", "VM id, or 'total'"),
    _C("vms", "VMs", "d", "count", "VMs on the host"),
    _C("vcpus", "vCPUs", "d", "count", "vCPUs per VM"),
    _C("seed", "seed", "d", "", "generator seed"),
    # counters
    _C("ops", "ops", ",d", "records", "trace records replayed"),
    _C("loads", "loads", ",d", "records", "LOAD records"),
    _C("stores", "stores", ",d", "records", "STORE and NT_STORE records"),
    _C("flushes", "flushes", ",d", "records", "CLWB, CLFLUSHOPT and CLFLUSH records"),
    _C("fences", "fences", ",d", "records", "SFENCE and MFENCE records"),
    _C("exits", "exits", ",d", "exits", "VM exits of every reason"),
    *(_C(f"exits_{name}", f"{name} ({reason})", ",d", "exits",
         f"{_EXIT_KINDS[name][0]} exits (basic exit reason {reason}): {_EXIT_KINDS[name][1]}")
      for reason, name in EXIT_NAMES.items()),
    _C("exits_per_1k_ops", "exits/1k ops", ".2f", "exits per 1,000 records", "exits * 1000 / ops"),
    _C("vfha_writes", "vFHA writes", ",d", "writes", "guest writes to its virtual flush hint address"),
    _C("vfha_reads", "vFHA reads", ",d", "reads", "guest reads of its virtual flush hint address"),
    _C("fha_writes", "FHA writes", ",d", "writes", "writes to physical flush hint addresses (each drains one WPQ)"),
    _C("lines_drained", "lines drained", ",d", "64-byte lines", "lines the guest's flushes drained from WPQs to media"),
    _C("wpq_full_drains", "WPQ-full drains", ",d", "64-byte lines", "lines a full WPQ drained on its own"),
    _C("time_ps", "time ps", ",d", "emulated picoseconds", "emulated time of all vCPUs (timing model, SPEC 6)"),
    _C("ns_per_op", "ns/op", ",.1f", "emulated ns per record", "time_ps / 1000 / ops"),
    _C("native_ns_per_op", "native ns/op", ",.1f", "emulated ns per record",
       "ns_per_op of the same trace run natively (no virtualization)"),
    _C("overhead_vs_native", "vs native", ".2f", "ratio", "ns_per_op / native_ns_per_op"),
    _C("tlb_hit_rate", "TLB hit rate", ".4f", "fraction", "guest accesses that hit the emulated TLB"),
    # wall clock (the only figures that depend on the machine)
    _C("seconds", "seconds", ".3f", "s", "wall-clock seconds of the replay loop on this machine"),
    _C("mops", "Mops/s", ",.2f", "10^6 records per s", "ops / seconds / 10^6 on this machine"),
    _C("wall_replay_seconds", "wall s", ".3f", "s", "wall-clock seconds of the replay loop on the worker"),
    _C("wall_mops", "wall Mops/s", ",.2f", "10^6 records per s", "ops / wall_replay_seconds / 10^6"),
    _C("wall_task_seconds", "task s", ".3f", "s", "wall-clock seconds of the whole task (build, generate, replay)"),
    # bookkeeping
    _C("task", "task", "", "", "stable key of the task's parameters (what --resume matches)"),
    _C("error", "error", "", "", "empty, or why the task failed"),
    # sensitivity (bench --sweep)
    _C("value", "value", ",g", "the parameter's unit", "the swept timing parameter's value"),
    _C("ranking", "cheapest first", "", "", "strategies ordered by ns_per_op"),
    _C("changed", "changed", "", "", "whether the ranking differs from the previous value's"),
)}
for _name in TIMING_PARAMETERS:
    COLUMNS[f"timing_{_name}"] = Column(f"timing_{_name}", _name, ",g", _name.rsplit("_", 1)[-1],
                                        f"timing-model parameter {_name!r} of the run")


def columns(names: Iterable[str]) -> tuple[tuple[str, str, str], ...]:
    """``(name, header, format)`` triples for a text table of ``names`` (unknown names are refused,
    so every printed column is in the vocabulary)."""
    out = []
    for n in names:
        if n not in COLUMNS:
            raise KeyError(f"column {n!r} is not in nvemu.tools.vocabulary.COLUMNS")
        c = COLUMNS[n]
        out.append((c.name, c.header, c.fmt))
    return tuple(out)


def flatten(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row with scalar cells only, for CSV: ``{"timing": {"exit_cycles": 5}}`` becomes ``timing_exit_cycles``,
    ``{"params": {"x": 1}}`` ``param_x``, a list of numbers ``name_0``, ``name_1`` ...; lists of
    rows (``per_vm``) and tracebacks are left to the JSON document.

    >>> flatten({"ops": 5, "timing": {"exit_cycles": 9}, "lines_drained_by_controller": [1, 2], "per_vm": [{}]})
    {'ops': 5, 'timing_exit_cycles': 9, 'lines_drained_by_controller_0': 1, 'lines_drained_by_controller_1': 2}
    """
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k in ("traceback", "per_vm"):
            continue
        prefix = {"timing": "timing", "params": "param"}.get(k, k)
        if isinstance(v, Mapping):
            for kk, vv in v.items():
                out[f"{prefix}_{kk}"] = vv if not isinstance(vv, (list, dict, tuple)) else str(vv)
        elif isinstance(v, (list, tuple)):
            if all(isinstance(x, (int, float, str, bool)) or x is None for x in v):
                for i, x in enumerate(v):
                    out[f"{k}_{i}"] = x
        else:
            out[k] = v
    return out


__all__ = ["COLUMNS", "Column", "EXIT_NAMES", "EXIT_REASONS", "columns", "exit_columns", "exits_by_name",
           "flatten"]
