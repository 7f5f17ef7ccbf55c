#!/usr/bin/env python3
"""Long-run soundness (issue 8, part 5): replay 200 M ops of the persist loop with periodic
invariant checks (SPEC 7), in flat memory, and show that no 64-bit counter wrapped.

The trace is generated on the fly (:func:`nvemu.guest.persist_loop.persist_loop_chunks`, bit for bit the
trace ``persist_loop`` would give) and replayed chunk by chunk on one default VM of the ``default``
platform (SPEC 5: 4 controllers, WPQ depth 64, flush hints, ADR; strategy auto = write-protect), so
memory stays that of the emulated machine plus one chunk. Every ``--check-every`` ops (and at the
end) it checks:

1. translation (SPEC 7.1): for sampled GPAs of DRAM, the vNVDIMM and the vFHA page, the core's fast
   path (``Engine.translate``: TLB, then walk) == a fresh walk of the table (``VM.gpa_to_hpa``) ==
   the layout (range HPA + offset); a write to the vFHA exits with reason 48 (SPEC 7.2);
2. WPQs (SPEC 7.4): every queue holds at most ``wpq_depth`` lines, and per controller
   ``enqueued - drained == queued`` (the controller counters);
3. line states: every queued copy's line is QUEUED (or DIRTY again), every QUEUED line has a copy in
   its own controller's queue (the interleave rule), and no line is queued twice in one queue more
   often than it was written back;
4. the durable image (SPEC 7.3): for every queued line and sampled other lines, ``durable_read``
   == media overlaid with the queued copies in FIFO order (computed here from ``wpq`` and
   ``read_media``); a CLEAN line's memory, media and durable bytes are equal, and a QUEUED line's
   newest queued copy is what the CPUs see (nothing was stored since it was written back);
5. counters: every per-vCPU and per-controller counter is >= its value at the previous check (a
   wrapped 64-bit counter would go down; ``load_sum``, the loaded values' checksum modulo 2**64, is
   not an event count and wraps by design), and the totals equal what the trace implies exactly:
   ops, loads, stores, clwb, sfence per op code, vFHA writes == EPT-violation exits, the fixed
   time categories == count x latency, and the time categories add up to each vCPU's clock.

At the end it prints peak RSS (``ru_maxrss``), the counters, the largest one's headroom to 2**64,
and exits non-zero if any check failed.

    python bench/long_run.py [--ops 200M] [--check-every 10M] [--samples 1024] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np

from nvemu import GuestFault, Hypervisor, Op, __version__
from nvemu._constants import STAT, STAT_NAMES, TIME_STATS, TIMING_FIELDS, LineState
from nvemu.cli.common import parse_count
from nvemu.guest.persist_loop import persist_loop_chunks

LINE = 64
EVENTS = [n for n in STAT_NAMES if n != "load_sum"]     # load_sum is a checksum modulo 2**64: it wraps by design
EVENT_COLUMNS = [STAT[n] for n in EVENTS]


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Checker:
    """The invariant checks; ``failures`` collects what went wrong (run continues)."""

    def __init__(self, hv: Hypervisor, vm, samples: int, seed: int) -> None:
        self.hv, self.vm, self.p = hv, vm, hv.platform
        self.samples = samples
        self.rng = np.random.default_rng(seed + 1)
        self.failures: list[str] = []
        self.prev_stats = vm.stats().rows.copy()
        self.prev_ctrl = self.p.engine.controller_stats().copy()
        self.checks = 0

    def fail(self, what: str) -> None:
        if len(self.failures) < 50:
            self.failures.append(what)

    def run(self, expected: dict[str, int]) -> float:
        t0 = time.perf_counter()
        self.translation()
        self.wpqs_and_lines()
        self.durable()
        self.counters(expected)
        self.checks += 1
        return time.perf_counter() - t0

    # 1. translation and permissions
    def translation(self) -> None:
        vm, engine = self.vm, self.p.engine
        ranges = vm.dram + vm.nvdimms
        for _ in range(self.samples):
            r = ranges[int(self.rng.integers(len(ranges)))]
            off = int(self.rng.integers(r.size)) & ~7
            gpa, want = r.gpa + off, r.hpa + off
            walk = vm.gpa_to_hpa(gpa)
            fast = engine.translate(vm.id, 0, gpa, False)
            if not walk == fast == want:
                self.fail(f"translation of GPA {gpa:#x}: fast {fast:#x}, walk {walk}, layout {want:#x}")
        if vm.gpa_to_hpa(vm.vfha_gpa) != vm.vfha_hpa or engine.translate(vm.id, 0, vm.vfha_gpa) != vm.vfha_hpa:
            self.fail("vFHA translation")
        try:
            engine.translate(vm.id, 0, vm.vfha_gpa, True)
            self.fail("a write to the write-protected vFHA did not fault")
        except GuestFault as f:
            if (f.reason, f.write, f.readable, f.writable) != (48, True, True, False):
                self.fail(f"vFHA write fault fields {f}")

    # 2 and 3. WPQs and line states
    def wpqs_and_lines(self) -> None:
        p = self.p
        depth = p.config.wpq_depth
        states = p.line_states()
        ctrl = p.engine.controller_stats()
        self.queued: dict[int, list[bytes]] = {}
        for c in range(p.n_controllers):
            q = p.wpq(c)
            if len(q) > depth:
                self.fail(f"controller {c}: {len(q)} queued lines > depth {depth}")
            enq, drained = int(ctrl[c][0]), int(ctrl[c][1])
            if enq - drained != len(q):
                self.fail(f"controller {c}: enqueued {enq} - drained {drained} != {len(q)} queued")
            for line, data in q:
                if p.controller_of(line) != c:
                    self.fail(f"line {line:#x} queued at controller {c}, belongs to {p.controller_of(line)}")
                if states.get(line) not in (LineState.QUEUED, LineState.DIRTY):
                    self.fail(f"queued line {line:#x} has state {states.get(line)}")
                self.queued.setdefault(line, []).append(data)
        for line, state in states.items():
            if state == LineState.QUEUED and line not in self.queued:
                self.fail(f"line {line:#x} is QUEUED but in no WPQ")
        self.states = states

    # 4. the durable image
    def durable(self) -> None:
        p, vm = self.p, self.vm
        nv = vm.nvdimms[0]
        lines = list(self.queued)
        for _ in range(self.samples):
            lines.append(nv.hpa + (int(self.rng.integers(nv.size)) & ~(LINE - 1)))
        for line in lines:
            want = p.read_media(line, LINE)
            for data in self.queued.get(line, ()):      # FIFO within a line's own controller
                want = data
            got = p.durable_read(line, LINE)
            if got != want:
                self.fail(f"durable_read of line {line:#x} differs from media + queued copies")
            state = self.states.get(line, LineState.CLEAN)
            if state == LineState.CLEAN and not (p.read_memory(line, LINE) == p.read_media(line, LINE) == got):
                self.fail(f"CLEAN line {line:#x}: memory, media and durable bytes differ")
            if state == LineState.QUEUED and p.read_memory(line, LINE) != got:
                self.fail(f"QUEUED line {line:#x}: its newest queued copy is not what the CPUs see")

    # 5. counters
    def counters(self, expected: dict[str, int]) -> None:
        rows = self.vm.stats().rows
        ctrl = self.p.engine.controller_stats()
        if (rows[:, EVENT_COLUMNS] < self.prev_stats[:, EVENT_COLUMNS]).any() or (ctrl < self.prev_ctrl).any():
            self.fail("a counter went down (wrapped)")
        self.prev_stats, self.prev_ctrl = rows.copy(), ctrl.copy()
        t = self.vm.stats().total
        for name, value in expected.items():
            if t[name] != value:
                self.fail(f"counter {name} = {t[name]:,}, the trace implies {value:,}")
        tm = dict(zip(TIMING_FIELDS, self.p.layout.timing))
        flushes = t["clwb"] + t["clflushopt"] + t["clflush"]
        pairs = {"ops_ps": t["ops"] * tm["op"], "exit_ps": t["exits_ept_violation"] * tm["exit"],
                 "write_protect_ps": t["exits_ept_violation"] * tm["write_protect"],
                 "fha_ps": t["vfha_writes"] * tm["fha_write"], "flush_ps": flushes * tm["flush_issue"]}
        # (walk_ps is not walk_refs x latency here: the checker's own translate() calls walk untimed)
        for name, value in pairs.items():
            if t[name] != value:
                self.fail(f"counter {name} = {t[name]:,} != {value:,}")
        clock = self.p.engine.clock(self.vm.id)[:, 0]
        if (rows[:, [STAT[n] for n in TIME_STATS]].sum(axis=1) != clock).any():
            self.fail("time categories do not add up to the vCPU clocks")
        if t["vfha_writes"] != t["exits_ept_violation"] or t["fha_writes"] != t["vfha_writes"] * len(
                self.vm.fanout_controllers):
            self.fail("vFHA writes, exits and physical FHA writes disagree")
        if t["tlb_hits"] + t["tlb_misses"] != t["ops"] - t["sfence"] - t["mfence"] + self.translations():
            self.fail("TLB lookups != memory ops (+ the checker's own translations)")
        if t["lines_drained"] != sum(self.vm.stats().drained_by_controller):
            self.fail("lines drained per controller do not add up")

    def translations(self) -> int:
        """Engine.translate calls this checker made (each one TLB lookup), so far."""
        return (self.checks + 1) * (self.samples + 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=parse_count, default=200_000_000, help="ops to replay (default 200M)")
    ap.add_argument("--check-every", type=parse_count, default=10_000_000, help="ops between checks (10M)")
    ap.add_argument("--chunk-blocks", type=int, default=2048, help="650-op blocks per chunk (2048: 1.3 M ops)")
    ap.add_argument("--samples", type=int, default=1024, help="sampled GPAs / lines per check (1024)")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = ap.parse_args(argv)

    rss0 = rss_mib()
    hv = Hypervisor(args.preset)
    vm = hv.create_vm(strategy=args.strategy, prefault=True).start()
    nv = vm.nvdimms[0]
    checker = Checker(hv, vm, args.samples, args.seed)
    rss_machine = rss_mib()
    print(f"nvemu {__version__}: {args.ops:,} ops of the persist loop on platform {args.preset!r}, one default "
          f"VM (strategy {vm.strategy}, vNVDIMM {nv.size >> 20} MiB), checks every {args.check_every:,} ops")
    print(f"RSS: {rss0:.0f} MiB at start, {rss_machine:.0f} MiB with the machine built")
    print(f"{'ops':>13}  {'Mops/s':>7}  {'RSS MiB':>7}  {'peak MiB':>8}  {'check s':>7}  failures")

    counts = np.zeros(8, np.int64)
    vfha_writes = 0
    done = next_check = 0
    next_check = args.check_every
    replay_s = check_s = 0.0
    rss_seen = []
    t_start = time.perf_counter()
    chunks = persist_loop_chunks(args.ops, nv.gpa, nv.size, vm.vfha_gpa, args.seed, chunk_blocks=args.chunk_blocks)
    for chunk in chunks:
        counts += np.bincount(chunk["op"], minlength=8)[:8]
        vfha_writes += int(np.count_nonzero(chunk["gpa"] == vm.vfha_gpa))
        t0 = time.perf_counter()
        hv.run(chunk)
        replay_s += time.perf_counter() - t0
        done += len(chunk)
        del chunk
        if done >= next_check or done == args.ops:
            expected = {"ops": done, "loads": int(counts[Op.LOAD]), "stores": int(counts[Op.STORE]),
                        "clwb": int(counts[Op.CLWB]), "sfence": int(counts[Op.SFENCE]), "vfha_writes": vfha_writes}
            check_s += checker.run(expected)
            rss_seen.append(rss_mib())
            print(f"{done:>13,}  {done / replay_s / 1e6:>7.1f}  {rss_seen[-1]:>7.0f}  {peak_rss_mib():>8.0f}  "
                  f"{check_s:>7.2f}  {len(checker.failures)}", flush=True)
            while next_check <= done:
                next_check += args.check_every
    wall = time.perf_counter() - t_start

    t = vm.stats().total
    ctrl = hv.platform.controller_stats()
    biggest_name, biggest = max(((n, t[n]) for n in EVENTS), key=lambda kv: kv[1])
    time_ps = vm.stats().time_ps
    print()
    print(f"replayed {done:,} ops in {replay_s:.1f} s of replay ({done / replay_s / 1e6:.1f} Mops/s), "
          f"{wall:.1f} s wall, {checker.checks} invariant checks ({check_s:.2f} s)")
    print(f"peak RSS {peak_rss_mib():.0f} MiB (ru_maxrss); "
          f"RSS at the checks {min(rss_seen):.0f}..{max(rss_seen):.0f} MiB "
          f"(machine alone: {rss_machine:.0f} MiB)")
    shown = ("ops", "loads", "stores", "clwb", "sfence", "tlb_hits", "tlb_misses", "walk_refs", "exits_ept_violation",
             "vfha_writes", "fha_writes", "lines_drained")
    print("counters: " + ", ".join(f"{n}={t[n]:,}" for n in shown))
    print(f"emulated time {time_ps / 1e9:,.3f} ms ({time_ps / 1000 / max(t['ops'], 1):.1f} ns/op);"
          f" per controller drained {[c['drained'] for c in ctrl]}, "
          f"WPQ-full drains {[c['drained_full'] for c in ctrl]}")
    print(f"largest counter: {biggest_name} = {biggest:,} = 2**{np.log2(max(biggest, 1)):.1f}; "
          f"it would wrap after {2**64 / max(biggest, 1) * done:.2e} ops at this rate "
          f"({2**64 / max(biggest, 1) * replay_s / 3.15e7:.0f} years of replay); counters are uint64")
    if checker.failures:
        print(f"FAILED: {len(checker.failures)} invariant violation(s):")
        for f in checker.failures:
            print("  " + f)
    else:
        print("all invariant checks passed; no counter went down or disagreed with the trace")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ops": done, "replay_seconds": replay_s, "wall_seconds": wall, "checks": checker.checks,
                       "peak_rss_mib": peak_rss_mib(), "rss_at_checks_mib": rss_seen, "machine_rss_mib": rss_machine,
                       "counters": t, "time_ps": time_ps, "controllers": ctrl, "failures": checker.failures},
                      f, indent=2)
    return 1 if checker.failures else 0


if __name__ == "__main__":
    sys.exit(main())
