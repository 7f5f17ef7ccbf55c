"""Counters of a VM: per vCPU and in total, exits by reason, cycles by category."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._constants import CYCLE_STATS, STAT_NAMES, ExitReason


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
    def cycles(self) -> int:
        """Emulated cycles: the sum of every cost-model category."""
        t = self.total
        return sum(t[n] for n in CYCLE_STATS)

    @property
    def tlb_hit_rate(self) -> float:
        """Share of guest accesses that hit the emulated TLB (0.0 when there were none)."""
        t = self.total
        looked = t["tlb_hits"] + t["tlb_misses"]
        return t["tlb_hits"] / looked if looked else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the totals, exits by name with their reason numbers, cycles, lines drained per
        controller and per-vCPU counters.
        """
        named = {r.name.lower(): {"reason": int(r), "count": self.total[r.stat]} for r in ExitReason}
        return {**self.total, "exits": named, "cycles": self.cycles,
                "lines_drained_by_controller": list(self.drained_by_controller), "per_vcpu": self.per_vcpu}

    def __sub__(self, other: "Stats") -> "Stats":
        return Stats(self.rows - other.rows, tuple(a - b for a, b in zip(self.drained_by_controller,
                                                                         other.drained_by_controller)))
