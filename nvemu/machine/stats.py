"""Counters of a VM: per vCPU and in total, exits by reason, emulated time by category.

What each counter means (per vCPU; ``Stats.total`` sums the vCPUs):

events
    ``loads`` .. ``mfence``: records of each op; ``ops``: all records; ``tlb_hits``/``tlb_misses``:
    second-level TLB look-ups; ``walk_refs``: page-table entries read by walks; ``tlb_flushes``:
    INVEPTs that reached this vCPU; ``lines_flushed``: dirty NVDIMM lines a flush wrote back;
    ``exits_ept_violation`` / ``exits_ept_misconfig`` / ``exits_vmcall``: exits by reason (48, 49, 18),
    handled or not; ``vfha_reads``/``vfha_writes``: guest accesses to the vFHA page; ``fha_writes``:
    physical flush-hint writes made for this vCPU; ``lines_drained``: WPQ lines those writes drained
    (durability); ``load_sum``: checksum of loaded values (mod 2**64).
time (picoseconds, SPEC 6; each advance of the vCPU clock goes to exactly one, so they sum to the
vCPU's time since the last reset)
    ``ops_ps``: the base cost of every op; ``load_ps``: load latency (sequential or random, NVDIMM
    or DRAM); ``walk_ps``: second-level page walks; ``flush_ps``: issuing clwb/clflushopt/clflush;
    ``wpq_stall_ps``: stalled on a full WPQ; ``fence_ps``: fences, including the wait for the
    vCPU's write-backs to be accepted; ``exit_ps``: VM exit round trips; ``write_protect_ps`` /
    ``mmio_ps`` / ``hypercall_ps``: the hypervisor's handling by path; ``fha_ps``: physical
    flush-hint writes; ``drain_wait_ps``: waiting for the flushed WPQs to empty (the slowest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._constants import STAT_NAMES, TIME_STATS, ExitReason


@dataclass(frozen=True)
class Stats:
    """A snapshot of one VM's counters (64-bit; they wrap only after 2**64 events).

    ``per_vcpu[i][name]`` for vCPU ``i``; ``total[name]`` summed; ``exits`` by Intel reason number.
    """

    rows: np.ndarray   # uint64[nvcpus, len(STAT_NAMES)]
    drained_by_controller: tuple[int, ...] = ()   # lines this VM's flushes drained, per controller

    @property
    def walks(self) -> int:
        """Hardware page walks (one per TLB miss)."""
        return self.total["tlb_misses"]

    @property
    def per_vcpu(self) -> list[dict[str, int]]:
        """Counters of each vCPU, by name."""
        return [{n: int(v) for n, v in zip(STAT_NAMES, row)} for row in self.rows]

    @property
    def total(self) -> dict[str, int]:
        """Counters summed over the vCPUs, by name."""
        sums = self.rows.sum(axis=0, dtype=np.uint64)
        return {n: int(v) for n, v in zip(STAT_NAMES, sums)}

    def __getitem__(self, name: str) -> int:
        return self.total[name]

    @property
    def exits(self) -> dict[ExitReason, int]:
        """Exits by Intel basic exit reason, as :class:`ExitReason` keys (equal to their numbers:
        ``exits[48]`` works): EPT violations, EPT misconfigurations, VMCALLs."""
        t = self.total
        return {reason: t[reason.stat] for reason in ExitReason}

    @property
    def exit_count(self) -> int:
        """Exits of every reason."""
        return sum(self.exits.values())

    @property
    def time_ps(self) -> int:
        """Emulated time of all vCPUs added up, in picoseconds (each vCPU's clock advance)."""
        t = self.total
        return sum(t[n] for n in TIME_STATS)

    @property
    def elapsed_ps(self) -> int:
        """The longest vCPU time: the VM's wall time when its vCPUs run in parallel."""
        return max((sum(row[n] for n in TIME_STATS) for row in self.per_vcpu), default=0)

    @property
    def ns_per_op(self) -> float:
        """Emulated ns per guest op (all vCPUs' time over all ops)."""
        t = self.total
        return self.time_ps / 1000 / t["ops"] if t["ops"] else 0.0

    @property
    def tlb_hit_rate(self) -> float:
        """Share of guest accesses that hit the emulated TLB (0.0 when there were none)."""
        t = self.total
        looked = t["tlb_hits"] + t["tlb_misses"]
        return t["tlb_hits"] / looked if looked else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the totals, exits by name with their reason numbers, emulated time (ps, ns per
        op), lines drained per controller and per-vCPU counters.
        """
        named = {r.name.lower(): {"reason": int(r), "count": self.total[r.stat]} for r in ExitReason}
        return {**self.total, "exits": named, "time_ps": self.time_ps, "ns_per_op": self.ns_per_op,
                "lines_drained_by_controller": list(self.drained_by_controller), "per_vcpu": self.per_vcpu}

    def __sub__(self, other: "Stats") -> "Stats":
        return Stats(self.rows - other.rows, tuple(a - b for a, b in zip(self.drained_by_controller,
                                                                         other.drained_by_controller)))
