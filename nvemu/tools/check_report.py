"""What a crash-consistency check found: :class:`Violation` records and the :class:`CheckResult`
that holds them, with the text report and the JSON form ``nvemu check`` prints."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from .._constants import LINE_BYTES

PROTOCOL_TEXT = {
    "fence": "store, fence",
    "flush": "store, write-back, fence",
    "deep": "store, write-back, fence, vFHA write, fence",
}


COMPLETED_SHARE = 0.5
"""A check in which fewer than this share of the stores to a vNVDIMM completed their protocol
(or none did) checked little: the report says so, and ``nvemu check --strict`` fails it."""


@dataclass(frozen=True)
class Violation:
    """A completed store that a power failure would lose at every checked crash point from
    ``point`` to ``until`` (``points`` of them; ``kind`` "lost"), or a store whose write-back the
    vFHA write at ``point`` overtook before any fence (``kind`` "unfenced", ``until == point``).

    A lost store stays lost until its line changes (a store, write-back, completion or drain), so
    one record covers the run of crash points; :meth:`CheckResult.pairs` lists every (store, crash
    point). ``lost`` has bit ``k`` set when byte ``k`` of the store is in the durable image neither
    as this store wrote it nor as any later store to that byte wrote it; ``found`` is what the
    durable image holds at the store's ``size`` bytes at ``point``, ``expected`` what the store
    wrote there. An "unfenced" violation has ``completed`` -1, ``found`` empty and ``lost`` 0."""

    store: int          # op index of the store
    point: int          # first crash point it is lost at: power fails right after this op
    completed: int      # op index at which the store's protocol completed
    vm: int
    vcpu: int
    op: str             # "STORE" or "NT_STORE"
    size: int
    gpa: int
    hpa: int
    expected: bytes
    found: bytes
    lost: int
    kind: str = "lost"
    until: int = -1     # last crash point of the run (set when the run ends)
    points: int = 1     # checked crash points from point to until

    @property
    def line_gpa(self) -> int:
        """Guest-physical address of the store's 64-byte line."""
        return self.gpa & ~(LINE_BYTES - 1)

    @property
    def line_hpa(self) -> int:
        """Host-physical address of the store's 64-byte line."""
        return self.hpa & ~(LINE_BYTES - 1)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the store, where it was lost, the expected and found bytes (hex)."""
        return {"kind": self.kind, "store": self.store, "point": self.point, "until": self.until,
                "points": self.points, "completed": self.completed, "vm": self.vm,
                "vcpu": self.vcpu, "op": self.op, "size": self.size, "gpa": self.gpa, "hpa": self.hpa,
                "line_gpa": self.line_gpa, "line_hpa": self.line_hpa, "expected": self.expected.hex(),
                "found": self.found.hex(), "lost_bytes": [k for k in range(self.size) if self.lost >> k & 1]}

    def __str__(self) -> str:
        if self.kind == "unfenced":
            return (f"store {self.store} (vm{self.vm} cpu{self.vcpu} {self.op} {self.size} B at GPA {self.gpa:#x}, "
                    f"line GPA {self.line_gpa:#x} / HPA {self.line_hpa:#x}) was written back but not fenced "
                    f"before the vFHA write at op {self.point}")
        return (f"store {self.store} (vm{self.vm} cpu{self.vcpu} {self.op} {self.size} B at GPA {self.gpa:#x}, "
                f"line GPA {self.line_gpa:#x} / HPA {self.line_hpa:#x}), completed at op {self.completed}, "
                f"lost at {self.points} crash point(s) {self.point}..{self.until}: durable {self.found.hex()}, "
                f"expected {self.expected.hex()}")


class CrashPoints(Sequence[int]):
    """The crash points a check probed: op indices, ascending, 8 bytes each in one array (a list
    of Python ints costs 36 a point, and a long trace has millions of points). Reads as a list
    of ints: ``len``, indexing, slicing (a list), iteration, ``in``, and ``==`` with a list."""

    __slots__ = ("_at",)

    def __init__(self, at: Iterable[int] | np.ndarray = ()) -> None:
        self._at = np.array(at if isinstance(at, np.ndarray) else list(at), np.int64).reshape(-1)
        self._at.flags.writeable = False

    def __len__(self) -> int:
        return len(self._at)

    @overload
    def __getitem__(self, k: int) -> int: ...

    @overload
    def __getitem__(self, k: slice) -> list[int]: ...

    def __getitem__(self, k: int | slice) -> int | list[int]:
        if isinstance(k, slice):
            return self._at[k].tolist()
        return int(self._at[k])

    def __iter__(self) -> Iterator[int]:
        for lo in range(0, len(self._at), 1 << 16):
            yield from self._at[lo:lo + (1 << 16)].tolist()

    def __contains__(self, point: object) -> bool:
        if not isinstance(point, (int, np.integer)):
            return False
        k = int(np.searchsorted(self._at, point))
        return k < len(self._at) and int(self._at[k]) == point

    def index(self, point: Any, start: int = 0, stop: int | None = None) -> int:
        """Where ``point`` is among the points (a binary search: they are ascending)."""
        k = int(np.searchsorted(self._at, point)) if isinstance(point, (int, np.integer)) else len(self._at)
        if not (k < len(self._at) and int(self._at[k]) == point and start <= k < (len(self._at) if stop is None
                                                                                 else stop)):
            raise ValueError(f"{point} is not a checked crash point")
        return k

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CrashPoints):
            return bool(np.array_equal(self._at, other._at))
        if isinstance(other, (list, tuple)):
            return len(other) == len(self._at) and bool(np.array_equal(self._at, np.asarray(other, np.int64)))
        return NotImplemented

    __hash__ = None         # type: ignore[assignment]

    def __repr__(self) -> str:
        if len(self._at) <= 64:
            return repr(self._at.tolist())
        return f"CrashPoints({len(self._at):,} points, {int(self._at[0])}..{int(self._at[-1])})"

    def tolist(self) -> list[int]:
        """Every point as a list of ints (for JSON)."""
        return self._at.tolist()


@dataclass
class ViolationCounts:
    """How many violations a check found, whether or not it kept them all: stores lost (each is
    lost over one run of crash points: once durable, or overwritten by later completed stores, a
    store cannot be lost again), (store, crash point) pairs, and stores a vFHA write overtook."""

    lost: int = 0
    lost_pairs: int = 0
    unfenced: int = 0

    def add(self, v: Violation) -> None:
        """Count one violation."""
        if v.kind == "lost":
            self.lost += 1
            self.lost_pairs += v.points
        else:
            self.unfenced += 1

    @classmethod
    def of(cls, violations: Iterable[Violation]) -> ViolationCounts:
        """The counts of ``violations``."""
        counts = cls()
        for v in violations:
            counts.add(v)
        return counts

    @property
    def total(self) -> int:
        """Violations of either kind."""
        return self.lost + self.unfenced


class KeptViolations:
    """Collects a check's violations, all of them or (``keep`` = N) only those of the N
    lowest-numbered stores of each kind -- what a report of N stores shows -- so that memory
    does not grow with the violations found; counts every one either way."""

    def __init__(self, keep: int | None = None) -> None:
        self.keep = keep
        self.counts = ViolationCounts()
        self._kept: dict[str, dict[int, Violation]] = {"lost": {}, "unfenced": {}}
        self._all: list[Violation] = []

    def add(self, v: Violation) -> None:
        """Count ``v`` and keep it if it is among the lowest stores."""
        self.counts.add(v)
        if self.keep is None:
            self._all.append(v)
            return
        kept = self._kept[v.kind]
        kept[v.store] = v
        if len(kept) > self.keep:
            del kept[max(kept)]

    def violations(self) -> list[Violation]:
        """The kept violations, by crash point, then store."""
        out = self._all if self.keep is None else [v for k in self._kept.values() for v in k.values()]
        return sorted(out, key=lambda v: (v.point, v.store, v.kind))


@dataclass
class CheckResult:
    """What :func:`check` found. ``ok`` when there is no violation."""

    ops: int                                    # records in the trace
    points: CrashPoints                         # crash points checked (op indices), ascending
    candidates: int                             # persist points in the trace (fences + vFHA writes)
    violations: list[Violation]                 # one per run of crash points a store is lost at
    completed_stores: int                       # stores whose protocol completed before the last point
    protocol: str                               # the resolved ladder: fence, flush or deep
    fence_scope: str
    domain: str
    platform: str
    strategies: dict[int, str]                  # vm id -> flush strategy
    fanouts: dict[int, str]
    verified: list[int] = field(default_factory=list)          # points compared with a real power failure
    verify_mismatches: list[tuple[int, int]] = field(default_factory=list)  # (point, first differing HPA)
    adr_failure: bool = False                   # the power failure also loses the WPQs
    trace_counts: dict[str, int] = field(default_factory=dict)  # check_model.COUNTS: what the trace did
    n_points: int = -1                          # crash points checked (-1: len(points), all kept)
    counts: ViolationCounts | None = None       # every violation counted (None: those in violations)

    def __post_init__(self) -> None:
        if self.n_points < 0:
            self.n_points = len(self.points)
        if self.counts is None:
            self.counts = ViolationCounts.of(self.violations)

    @property
    def complete(self) -> bool:
        """True when ``violations`` holds every violation and ``points`` every crash point (a
        check with ``keep_violations``/``keep_points`` keeps fewer, and counts them all)."""
        assert self.counts is not None
        return len(self.violations) == self.counts.total and len(self.points) == self.n_points

    @property
    def ok(self) -> bool:
        """True when no completed store was lost and every verified point agreed."""
        assert self.counts is not None
        return not self.counts.total and not self.verify_mismatches

    @property
    def stores(self) -> int:
        """Stores (STORE, NT_STORE) to a vNVDIMM in the trace: the stores there are to check."""
        return self.trace_counts.get("stores", 0)

    @property
    def vacuous(self) -> bool:
        """True when no store completed its protocol, or fewer than :data:`COMPLETED_SHARE` of the
        stores to a vNVDIMM did: then an OK checked little."""
        return self.completed_stores == 0 or self.completed_stores < COMPLETED_SHARE * self.stores

    def vacuous_reason(self) -> str:
        """Why so few stores completed, as far as the trace's counts tell ('' when not vacuous)."""
        if not self.vacuous:
            return ""
        c = self.trace_counts
        if not self.stores:
            return "the trace makes no store to a vNVDIMM, so there is nothing to check"
        if not c.get("fences"):
            return "the trace never fences (SFENCE/MFENCE), and no store completes without a fence"
        if self.protocol != "fence" and not c.get("write_backs") and not c.get("nt_stores"):
            return "the trace never writes a vNVDIMM line back (CLWB, CLFLUSHOPT, CLFLUSH) nor uses NT stores"
        if self.protocol == "deep" and not c.get("vfha_writes"):
            why = "an ADR failure" if self.adr_failure else "a domain-none host"
            return (f"on {why} a store completes only after a vFHA write and a fence, and the trace writes no "
                    f"vFHA: a pmemcheck log has none unless imported with --deep-flush (or check what the guest "
                    f"believes with --protocol flush)")
        return ("most stores are not written back and fenced" + (" and followed by a vFHA write and fence"
                if self.protocol == "deep" else "") + " (by the vCPU that wrote them back, or any vCPU with "
                "--fence-scope vm) before the trace ends")

    @property
    def lost_stores(self) -> list[int]:
        """Op indices of the stores that are lost at some crash point, ascending (among the kept
        violations: see :attr:`complete`)."""
        return sorted({v.store for v in self.violations if v.kind == "lost"})

    @property
    def unfenced_stores(self) -> list[int]:
        """Op indices of the stores a vFHA write overtook before they were fenced, ascending."""
        return sorted({v.store for v in self.violations if v.kind == "unfenced"})

    def pairs(self, kind: str = "lost") -> list[tuple[int, int]]:
        """Every (store, crash point) at which a store is lost (or, for "unfenced", overtaken),
        ordered by crash point, then store."""
        points = self.points if isinstance(self.points, CrashPoints) else CrashPoints(self.points)
        out = []
        for v in self.violations:
            if v.kind == kind:
                if v.point in points and v.until in points:
                    out += [(v.store, p) for p in points[points.index(v.point):points.index(v.until) + 1]]
                else:
                    out.append((v.store, v.point))
        return sorted(out, key=lambda sp: (sp[1], sp[0]))

    def by_store(self, kind: str = "lost") -> dict[int, list[Violation]]:
        """Violations of ``kind`` grouped by store (op index), each group in crash-point order."""
        out: dict[int, list[Violation]] = {}
        for v in self.violations:
            if v.kind == kind:
                out.setdefault(v.store, []).append(v)
        return dict(sorted(out.items()))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the run's parameters, the counts and every violation (every kept one)."""
        assert self.counts is not None
        return {"ok": self.ok, "ops": self.ops, "platform": self.platform, "domain": self.domain,
                "adr_failure": self.adr_failure, "protocol": self.protocol, "fence_scope": self.fence_scope,
                "strategies": {str(k): v for k, v in self.strategies.items()},
                "fanouts": {str(k): v for k, v in self.fanouts.items()},
                "candidates": self.candidates, "n_points": self.n_points,
                "points": self.points.tolist() if len(self.points) == self.n_points else None,
                "complete": self.complete, "lost_count": self.counts.lost, "lost_pairs": self.counts.lost_pairs,
                "unfenced_count": self.counts.unfenced, "completed_stores": self.completed_stores,
                "stores": self.stores, "trace_counts": dict(self.trace_counts), "vacuous": self.vacuous,
                "vacuous_reason": self.vacuous_reason(), "completed_share_required": COMPLETED_SHARE,
                "lost_stores": self.lost_stores, "unfenced_stores": self.unfenced_stores,
                "violations": [v.as_dict() for v in self.violations],
                "verified": self.verified,
                "verify_mismatches": [{"point": p, "hpa": h} for p, h in self.verify_mismatches]}

    def report(self, limit: int = 20) -> str:
        """A human-readable report: the setup, the counts, then up to ``limit`` lost stores."""
        strategies = ",".join(sorted(set(self.strategies.values())))
        fanouts = ",".join(sorted(set(self.fanouts.values())))
        whose = "vCPU issuing the write-back" if self.fence_scope == "vcpu" else "any vCPU of the VM"
        lines = [(f"platform  {self.platform} (domain {self.domain}{', ADR fails' if self.adr_failure else ''}), "
                  f"{len(self.strategies)} VM(s), "
                  f"strategy {strategies}, fan-out {fanouts}"),
                 f"protocol  {self.protocol} ({PROTOCOL_TEXT[self.protocol]}; fence by the {whose})",
                 (f"checked   {self.n_points:,} of {self.candidates:,} crash points (after each fence and "
                  f"vFHA write) in {self.ops:,} ops; {self.completed_stores:,} of {self.stores:,} stores to a vNVDIMM "
                  f"completed their protocol")]
        if self.verified:
            lines.append(f"verified  {len(self.verified)} point(s) against a real power failure: "
                         + ("MISMATCH at " + ", ".join(f"point {p} HPA {h:#x}" for p, h in self.verify_mismatches)
                            if self.verify_mismatches else "identical"))
        if self.vacuous:
            share = f"{self.completed_stores / self.stores:.1%}" if self.stores else "-"
            lines.append(f"WARNING   only {self.completed_stores:,} of {self.stores:,} stores to a vNVDIMM ({share}; "
                         f"this check asks for {COMPLETED_SHARE:.0%}) completed their protocol, so this check "
                         f"proves little: {self.vacuous_reason()}")
        assert self.counts is not None
        if not self.counts.total:
            lines.append("result    OK: no completed store is lost at any checked crash point"
                         + (" (but few stores were checked: see WARNING)" if self.vacuous else ""))
            return "\n".join(lines)
        groups, unfenced = self.by_store(), self.by_store("unfenced")
        n = self.counts
        found = ([f"{n.lost:,} completed store(s) lost ({n.lost_pairs:,} store x crash point pairs)"] if n.lost
                 else []) + ([f"{n.unfenced:,} store(s) not fenced before a vFHA write"] if n.unfenced else [])
        lines.append("result    " + "; ".join(found))
        for vs in list(unfenced.values())[:limit]:
            lines.append(f"  {vs[0]}")
        if n.unfenced > min(limit, len(unfenced)):
            lines.append(f"  ... and {n.unfenced - min(limit, len(unfenced)):,} more unfenced stores (see --json)")
        for store, vs in list(groups.items())[:limit]:
            v = vs[0]
            runs = ", ".join(f"{x.point}" if x.points == 1 else f"{x.point}..{x.until}" for x in vs[:4])
            lines.append(f"  store {store}: vm{v.vm} cpu{v.vcpu} {v.op} {v.size} B at GPA {v.gpa:#x} "
                         f"(line GPA {v.line_gpa:#x}, HPA {v.line_hpa:#x}), completed at op {v.completed}; "
                         f"lost at {sum(x.points for x in vs)} crash point(s): {runs}"
                         f"{', ...' if len(vs) > 4 else ''}; durable {v.found.hex()} expected {v.expected.hex()}")
        if n.lost > min(limit, len(groups)):
            lines.append(f"  ... and {n.lost - min(limit, len(groups)):,} more lost stores (see --json)")
        return "\n".join(lines)
