"""The crash-consistency checker (issue 8, part 1): correct strategies never lose a persisted store,
the broken ones lose exactly the stores worked out by hand, guests that skip protocol steps are caught."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ENGINES, needs_compiled, small_vm, tiny_platform, trace

from nvemu import ConfigError, GuestFault, Hypervisor, Op, TraceError
from nvemu.tools.checker import build_platform, check, check_trace, persist_points
from nvemu.cli.main import main
from nvemu.machine.config import preset
from nvemu.guest.drivers import TraceWriter
from nvemu.guest.workloads import WORKLOADS, VmLayout, generate

DATA = Path(__file__).parent / "data" / "trace"
S, NT, LD, CLWB, SF = Op.STORE, Op.NT_STORE, Op.LOAD, Op.CLWB, Op.SFENCE


def machine(domain: str = "adr", strategy: str = "write-protect", backend: str | None = None, vcpus: int = 1, **kw):
    hv = Hypervisor(tiny_platform(domain=domain, **kw), backend=backend)
    return hv, small_vm(hv, strategy=strategy, vcpus=vcpus)


def pairs(result, kind: str = "lost") -> list[tuple[int, int]]:
    """Every (store, crash point) a store is lost at, by point then store."""
    return result.pairs(kind)


# ---- correct strategies: nothing persisted is ever lost -----------------------------------------------

@pytest.mark.parametrize("workload", sorted(WORKLOADS))
@pytest.mark.parametrize("strategy", ["write-protect", "mmio", "hypercall", "auto"])
@pytest.mark.parametrize("domain", ["none", "adr", "eadr"])
def test_draining_strategies_lose_nothing_on_any_generator_workload(domain, strategy, workload):
    hv, vm = machine(domain, strategy, vcpus=2)
    small = {"max_blocks": 2} if workload == "linux-fsync" else {}      # whole fsyncs in 2,500 ops
    ops = generate(workload, 2500, VmLayout.of(vm), seed=7, vcpus=2, **small)
    result = check(hv, ops)
    assert result.ok, result.report(5)
    assert result.points == persist_points(hv, ops).tolist() and result.points
    if not (domain == "none" and workload == "random-rw"):     # random-rw never deep-flushes: nothing to claim
        assert result.completed_stores > 100


@pytest.mark.parametrize("fanout", ["broadcast", "targeted"])
@pytest.mark.parametrize("workload", ["persist-loop", "linux-fsync", "kv-put"])
def test_two_vms_sharing_the_wpqs_lose_nothing(fanout, workload):
    hv = Hypervisor(tiny_platform(domain="none"))
    vms = [small_vm(hv, nvdimms=[256 << 10], vcpus=2, fanout=fanout) for _ in range(2)]
    ops = generate(workload, 3000, [VmLayout.of(v) for v in vms], seed=3, vms=2, vcpus=2)
    result = check(hv, ops)
    assert result.ok, result.report(5)
    assert result.completed_stores > 100


@pytest.mark.parametrize("domain", ["adr", "eadr"])
def test_later_stores_may_be_durable_too(domain):
    """The durable value may be the last completed store's or any later store's: here the later
    store 2 is written back (queued) but vCPU 0 never fences, so only store 1 completed."""
    hv, vm = machine(domain, vcpus=2)
    g = vm.nvdimms[0].gpa
    ops = trace((S, 0, 0, 8, g, 1), (CLWB, 0, 0, 0, g, 0), (SF, 0, 0, 0, 0, 0),        # store 1 completes at 2
                (S, 0, 0, 8, g, 2), (CLWB, 0, 0, 0, g, 0), (SF, 1, 0, 0, 0, 0))        # crash point 5: 2 survives
    result = check(hv, ops)
    assert result.ok and result.completed_stores == 1 and result.points == [2, 5]
    assert hv.platform.durable_read(vm.nvdimms[0].hpa, 8) == (2).to_bytes(8, "little")


# ---- a broken hypervisor: drop (and writable where flush hints exist) ---------------------------------

def hand_trace(vm) -> np.ndarray:
    """Store A (op 0), then B, C, an overwrite of A, an nt-store D, with persists and vFHA writes."""
    g, f = vm.nvdimms[0].gpa, vm.vfha_gpa
    A1, B1, C1, A2, D1 = (0x0101010101010101 * b for b in (0xA1, 0xB1, 0xC1, 0xA2, 0xD1))
    return trace(
        (S, 0, 0, 8, g, A1), (CLWB, 0, 0, 0, g, 0), (SF, 0, 0, 0, 0, 0),            # 0-2   A written back, fenced
        (S, 0, 0, 8, f, 1), (SF, 0, 0, 0, 0, 0),                                     # 3-4   vFHA write, fence: A done
        (S, 0, 0, 8, g + 64, B1), (SF, 0, 0, 0, 0, 0),                               # 5-6   B never written back
        (S, 0, 0, 8, g + 128, C1), (CLWB, 0, 0, 0, g + 128, 0), (SF, 0, 0, 0, 0, 0),  # 7-9   C fenced
        (S, 0, 0, 8, g, A2), (SF, 0, 0, 0, 0, 0),                                    # 10-11 A overwritten, unflushed
        (S, 0, 0, 8, f, 1), (SF, 0, 0, 0, 0, 0),                                     # 12-13 C done
        (NT, 0, 0, 8, g + 192, D1), (SF, 0, 0, 0, 0, 0),                             # 14-15 D fenced
        (S, 0, 0, 8, f, 1), (SF, 0, 0, 0, 0, 0))                                     # 16-17 D done


HAND_POINTS = [2, 3, 4, 6, 9, 11, 12, 13, 15, 16, 17]
# worked out by hand: A (op 0) completes at 4, C (op 7) at 13, D (op 14) at 17; drop drains nothing
# and the WPQ never fills, so each is lost from its completion on (A's overwrite at 10 is never
# persisted, so the durable zeros are neither A1 nor A2).
HAND_LOST = sorted([(0, p) for p in (4, 6, 9, 11, 12, 13, 15, 16, 17)] + [(7, p) for p in (13, 15, 16, 17)]
                   + [(14, 17)], key=lambda sp: (sp[1], sp[0]))


def test_drop_on_domain_none_loses_exactly_the_stores_worked_out_by_hand():
    hv, vm = machine("none", "drop")
    result = check(hv, hand_trace(vm))
    assert result.points == HAND_POINTS
    assert pairs(result) == HAND_LOST
    assert result.lost_stores == [0, 7, 14] and not result.unfenced_stores and not result.ok
    assert [(v.store, v.point, v.until, v.points) for v in result.violations] == \
        [(0, 4, 17, 9), (7, 13, 17, 4), (14, 17, 17, 1)]          # one record per run of crash points
    v = next(v for v in result.violations if v.store == 7)
    nv = vm.nvdimms[0]
    assert (v.vm, v.vcpu, v.op, v.size, v.completed) == (0, 0, "STORE", 8, 13)
    assert (v.gpa, v.line_gpa, v.hpa, v.line_hpa) == (nv.gpa + 128, nv.gpa + 128, nv.hpa + 128, nv.hpa + 128)
    assert (v.expected, v.found, v.lost) == (b"\xc1" * 8, bytes(8), 0xFF)
    assert "store 7" in result.report() and "lost at 4 crash point(s): 13..17" in result.report()
    assert vm.stats().exits[48] == 3 and vm.stats()["lines_drained"] == 0     # trapped, drained nothing


def test_a_lost_store_of_zeros_is_reported():
    """Media starts as zeros, so a value comparison never sees a lost store of zeros: provenance
    does. The store completes at 4 (write-back, fence, vFHA write, fence) and drop drains nothing."""
    hv, vm = machine("none", "drop")
    g, f = vm.nvdimms[0].gpa, vm.vfha_gpa
    result = check(hv, trace((S, 0, 0, 8, g, 0), (CLWB, 0, 0, 0, g, 0), (SF, 0, 0, 0, 0, 0),
                             (S, 0, 0, 8, f, 1), (SF, 0, 0, 0, 0, 0)))
    assert result.completed_stores == 1 and pairs(result) == [(0, 4)]
    v = result.violations[0]
    assert (v.expected, v.found, v.lost, v.completed) == (bytes(8), bytes(8), 0xFF, 4)


def test_a_lost_store_of_the_value_media_already_holds_is_reported():
    """With a one-entry WPQ, store 5's write-back (op 6) pushes store 0's copy to media: media
    then holds X, which store 5 writes again. Store 0 is lost at 4 only; store 5 completes at 9
    and is lost there although the durable bytes equal its value (its own copy never drained)."""
    hv, vm = machine("none", "drop", wpq_depth=1)
    g, f = vm.nvdimms[0].gpa, vm.vfha_gpa
    X = 0x5A5A5A5A5A5A5A5A
    ops = trace((S, 0, 0, 8, g, X), (CLWB, 0, 0, 0, g, 0), (SF, 0, 0, 0, 0, 0),     # 0-2
                (S, 0, 0, 8, f, 1), (SF, 0, 0, 0, 0, 0),                             # 3-4  store 0 done
                (S, 0, 0, 8, g, X), (CLWB, 0, 0, 0, g, 0), (SF, 0, 0, 0, 0, 0),     # 5-7  op 6 drains store 0
                (S, 0, 0, 8, f, 1), (SF, 0, 0, 0, 0, 0))                             # 8-9  store 5 done
    result = check(hv, ops)
    assert result.points == [2, 3, 4, 7, 8, 9] and result.completed_stores == 2
    assert pairs(result) == [(0, 4), (5, 9)]
    v = result.violations[-1]
    assert (v.store, v.expected, v.found, v.completed) == (5, X.to_bytes(8, "little"), X.to_bytes(8, "little"), 9)
    assert hv.platform.controller_stats()[hv.platform.controller_of(vm.nvdimms[0].hpa)]["drained_full"] == 1


@pytest.mark.parametrize("domain", ["adr", "eadr"])
def test_drop_loses_nothing_where_the_wpq_is_in_the_persistence_domain(domain):
    hv, vm = machine(domain, "drop")
    result = check(hv, hand_trace(vm))
    assert result.ok and result.completed_stores == 3     # A1 at 2, C at 9, D at 15 (A2 is never flushed)


@pytest.mark.parametrize("strategy", ["write-protect", "mmio", "hypercall"])
def test_the_hand_trace_is_clean_under_draining_strategies(strategy):
    hv, vm = machine("none", strategy)
    result = check(hv, hand_trace(vm))
    assert result.ok and result.completed_stores == 3


def test_writable_vfha_on_a_host_with_flush_hints_loses_what_drop_loses():
    """``writable`` is right only where the host has no WPQ flush; with flush hints and domain none
    the guest's vFHA writes reach an ordinary page and drain nothing: the same stores are lost as
    under ``drop``, without a single exit."""
    hv, vm = machine("none", "writable")
    result = check(hv, hand_trace(vm))
    assert pairs(result) == HAND_LOST
    assert vm.stats().exit_count == 0 and vm.stats()["lines_drained"] == 0
    hv2, vm2 = machine("none", "drop")
    assert result.violations == check(hv2, hand_trace(vm2)).violations


def test_auto_on_a_host_without_flush_hints_cannot_make_domain_none_durable():
    hv, vm = machine("none", "auto", hints=0)
    assert vm.strategy == "writable"
    assert pairs(check(hv, hand_trace(vm))) == HAND_LOST


def test_drop_on_generator_workloads_is_caught():
    for workload in ("persist-loop", "linux-fsync", "pmdk-tx", "kv-put", "seq-log"):
        hv, vm = machine("none", "drop")
        result = check(hv, generate(workload, 3000, VmLayout.of(vm), seed=1))
        assert result.lost_stores, workload


def test_a_vfha_write_of_another_vm_drains_this_vms_lines():
    """WPQs are physical (SPEC 7.5): VM 1's store, lost to its broken hypervisor strategy, becomes
    durable when VM 0's correctly trapped vFHA write drains the shared WPQs."""
    hv = Hypervisor(tiny_platform(domain="none"))
    good, bad = small_vm(hv, nvdimms=[256 << 10]), small_vm(hv, nvdimms=[256 << 10], strategy="drop")
    g = bad.nvdimms[0].gpa
    ops = trace((S, 0, 1, 8, g, 7), (CLWB, 0, 1, 0, g, 0), (SF, 0, 1, 0, 0, 0), (S, 0, 1, 8, bad.vfha_gpa, 1),
                (SF, 0, 1, 0, 0, 0), (S, 0, 0, 8, good.vfha_gpa, 1), (SF, 0, 0, 0, 0, 0))
    result = check(hv, ops)
    assert pairs(result) == [(0, 4)]
    assert result.violations[0].vm == 1


# ---- guests that skip a step of their protocol -----------------------------------------------------------

def test_a_guest_that_skips_the_fence_before_its_vfha_write_is_reported():
    """store, clwb, (no sfence), vFHA write, sfence: on hardware the flush-hint write may pass the
    unfenced write-back and drain the WPQ without it. The emulator writes back at once, so the
    durable image holds the data; the ordering check reports the store at the vFHA write."""
    hv, vm = machine("none", "write-protect")
    g = vm.nvdimms[0].gpa
    ops = trace((S, 0, 0, 8, g, 0x5EED), (CLWB, 0, 0, 0, g, 0), (S, 0, 0, 8, vm.vfha_gpa, 1), (SF, 0, 0, 0, 0, 0))
    result = check(hv, ops)
    assert pairs(result, "unfenced") == [(0, 2)] and not result.lost_stores and not result.ok
    assert result.unfenced_stores == [0]
    assert "not fenced before the vFHA write at op 2" in result.report()
    assert hv.platform.durable_read(vm.nvdimms[0].hpa, 8) == (0x5EED).to_bytes(8, "little")
    hv, vm = machine("none", "write-protect")
    assert check(hv, ops, ordering=False).ok
    fenced = trace((S, 0, 0, 8, g, 0x5EED), (CLWB, 0, 0, 0, g, 0), (SF, 0, 0, 0, 0, 0),
                   (S, 0, 0, 8, vm.vfha_gpa, 1), (SF, 0, 0, 0, 0, 0))
    hv, vm = machine("none", "write-protect")
    assert check(hv, fenced).ok


def test_nt_stores_not_fenced_before_the_flush_hint_are_reported():
    """linux-fsync without nvdimm_flush()'s first barrier."""
    hv, vm = machine("none", "write-protect")
    t = TraceWriter()
    for k in range(4):
        t.nt_store(vm.nvdimms[0].gpa + 8 * k, k + 1)
    t.store(vm.vfha_gpa, 1)
    t.sfence()
    result = check(hv, t.to_array())
    assert pairs(result, "unfenced") == [(k, 4) for k in range(4)]


def test_a_guest_that_skips_the_deep_flush_loses_what_it_believes_durable():
    """A guest that persists as on ADR (clwb, sfence; no vFHA write and fence) on a domain-none host:
    by the host's protocol it never finished (no violation is the hypervisor's), checked against its
    own belief (protocol "flush") every store is lost, exactly as worked out."""
    hv, vm = machine("none", "write-protect")
    g = vm.nvdimms[0].gpa
    ops = trace((S, 0, 0, 8, g, 1), (CLWB, 0, 0, 0, g, 0), (SF, 0, 0, 0, 0, 0),
                (S, 0, 0, 8, g + 64, 2), (CLWB, 0, 0, 0, g + 64, 0), (SF, 0, 0, 0, 0, 0))
    assert check(hv, ops).ok
    hv, vm = machine("none", "write-protect")
    result = check(hv, ops, protocol="flush")
    assert result.protocol == "flush" and pairs(result) == [(0, 2), (0, 5), (3, 5)]
    hv, vm = machine("adr", "write-protect")
    assert check(hv, ops, protocol="flush").ok


def test_a_generator_guest_without_deep_flushes_on_domain_none():
    hv, vm = machine("none", "write-protect")
    ops = generate("pmdk-tx", 2000, VmLayout.of(vm), seed=2, deep_flush_every=0)
    assert check(hv, ops).ok
    hv, vm = machine("none", "write-protect")
    result = check(hv, ops, protocol="flush")
    assert len(result.lost_stores) > 50


def test_a_guest_that_skips_its_flush_relies_on_eadr():
    """protocol "fence" (store, fence): right on eADR, loses the data on ADR."""
    for domain, lost in (("adr", [(0, 1)]), ("eadr", [])):
        hv, vm = machine(domain, "write-protect")
        g = vm.nvdimms[0].gpa
        result = check(hv, trace((S, 0, 0, 8, g, 9), (SF, 0, 0, 0, 0, 0)), protocol="fence")
        assert pairs(result) == lost


def test_whose_fence_completes_a_store():
    """A write-back is ordered by a fence of the vCPU that *issued* it, not of the storing vCPU: the
    Intel SDM (Vol. 2A, CLWB; likewise CLFLUSHOPT) says CLWB "is ordered with respect to ... fencing
    instructions executed by the same logical processor" and not otherwise. (Issue 16 item 2.)"""
    def ops(vm, store_cpu, clwb_cpu, fence_cpu):
        g = vm.nvdimms[0].gpa
        return trace((S, store_cpu, 0, 8, g, 3), (CLWB, clwb_cpu, 0, 0, g, 0), (SF, fence_cpu, 0, 0, 0, 0),
                     (S, fence_cpu, 0, 8, vm.vfha_gpa, 1), (SF, fence_cpu, 0, 0, 0, 0))
    # vCPU 1 stores, vCPU 0 writes the line back and fences: complete (and lost by drop at the last fence)
    hv, vm = machine("none", "drop", vcpus=2)
    result = check(hv, ops(vm, 1, 0, 0))
    assert result.completed_stores == 1 and pairs(result) == [(0, 4)]
    hv, vm = machine("none", "write-protect", vcpus=2)
    assert check(hv, ops(vm, 1, 0, 0)).ok
    # vCPU 0 stores, vCPU 1 writes back, only vCPU 0 fences: the write-back is never ordered
    hv, vm = machine("none", "drop", vcpus=2)
    result = check(hv, ops(vm, 0, 1, 0))
    assert result.ok and result.completed_stores == 0
    # ... unless any vCPU's fence counts
    hv, vm = machine("none", "drop", vcpus=2)
    assert pairs(check(hv, ops(vm, 0, 1, 0), fence_scope="vm")) == [(0, 4)]


def test_a_vfha_write_overtaking_another_vcpus_write_back_is_its_issuers_business():
    """vCPU 1 writes back a store and fences it after vCPU 0's vFHA write: vCPU 0 issued no
    unfenced write-back, so that vFHA write is no ordering violation; vCPU 1 writing the vFHA
    before its own fence is one."""
    hv, vm = machine("none", "write-protect", vcpus=2)
    g = vm.nvdimms[0].gpa
    clean = trace((S, 0, 0, 8, g, 3), (CLWB, 1, 0, 0, g, 0), (S, 0, 0, 8, vm.vfha_gpa, 1), (SF, 1, 0, 0, 0, 0))
    assert pairs(check(hv, clean), "unfenced") == []
    hv, vm = machine("none", "write-protect", vcpus=2)
    bad = trace((S, 0, 0, 8, g, 3), (CLWB, 1, 0, 0, g, 0), (S, 1, 0, 8, vm.vfha_gpa, 1), (SF, 1, 0, 0, 0, 0))
    assert pairs(check(hv, bad), "unfenced") == [(0, 2)]


# ---- crash points, incremental probing, engines, real power failures ---------------------------------

def drop_run(points="all", **kw):
    hv, vm = machine("none", "drop")
    return check(hv, generate("kv-put", 3000, VmLayout.of(vm), seed=4), points, **kw)


def test_incremental_probing_equals_probing_every_line_every_time():
    """Lines are re-read only where something may have moved (WPQ-full drains here too)."""
    full = drop_run(full_every=1)
    assert full.violations == drop_run().violations and full.violations


def test_sampled_points_see_the_same_violations_as_all_points():
    everything = drop_run()
    sampled = drop_run(17)
    assert len(sampled.points) == 17 and set(sampled.points) <= set(everything.points)
    assert sampled.points[0] == everything.points[0] and sampled.points[-1] == everything.points[-1]
    assert sampled.pairs() == [sp for sp in everything.pairs() if sp[1] in set(sampled.points)]
    chosen = everything.points[5:40:7]
    assert drop_run(chosen).pairs() == [sp for sp in everything.pairs() if sp[1] in set(chosen)]


def test_crash_points_are_one_array_that_reads_as_a_list():
    """Issue 14 item 2: the points a check probed cost 8 bytes each (one int64 array), not a list of
    Python ints; they still read, compare and serialise as a list."""
    hv, vm = machine("none", "drop")
    ops = generate("kv-put", 3000, VmLayout.of(vm), seed=4)
    expected = persist_points(hv, ops).tolist()
    result = check(hv, ops)
    points = result.points
    assert type(points).__name__ == "CrashPoints" and points._at.nbytes == 8 * len(expected)
    as_list = list(points)
    assert as_list == expected and points == expected and points[3] == expected[3] and points[-1] == expected[-1]
    assert points[2:5] == expected[2:5] and points.index(expected[9]) == 9
    assert expected[7] in points and -1 not in points and "7" not in points
    with pytest.raises(ValueError):
        points.index(-1)
    assert json.loads(json.dumps(result.as_dict()))["points"] == as_list
    with pytest.raises(ValueError):
        points._at[0] = 1                        # read-only: a result cannot be edited behind its back


def test_a_check_that_keeps_few_violations_counts_them_all_and_reports_the_same():
    """Issue 14 item 2: without --json nothing grows with the crash points or the violations: a
    check keeping the violations of 3 stores and no point list counts everything, keeps the
    lowest 3 stores' violations, and prints the very report of the full check."""
    results = []
    for keep, points in ((None, True), (3, False)):
        hv, vm = machine("none", "drop")
        ops = generate("kv-put", 3000, VmLayout.of(vm), seed=4)
        results.append(check(hv, ops, keep_violations=keep, keep_points=points))
    full, kept = results
    assert full.complete and not kept.complete and full.counts.lost > 3
    assert kept.counts == full.counts and kept.n_points == full.n_points == len(full.points) and not kept.points
    lowest = sorted(full.lost_stores)[:3]
    assert kept.lost_stores == lowest
    assert [v for v in kept.violations if v.kind == "lost"] == [v for v in full.violations if v.store in lowest]
    assert kept.report(3) == full.report(3) and not kept.ok and kept.as_dict()["points"] is None
    assert kept.as_dict()["lost_count"] == full.counts.lost == len(full.lost_stores)


def test_the_cli_report_is_the_same_with_and_without_json(tmp_path, capsys):
    """``nvemu check`` without --json keeps only what its report lists; the report is unchanged."""
    from nvemu.tools.prepare import vm_layouts
    path = tmp_path / "t.npy"
    np.save(path, generate("kv-put", 3000, vm_layouts("small")[0], seed=4))
    args = [str(path), "--preset", "small", "--domain", "none", "--strategy", "drop", "--limit", "2",
            "--no-progress"]
    assert main(["check", *args]) == 1
    bare = capsys.readouterr().out
    assert main(["check", *args, "--json", str(tmp_path / "r.json")]) == 1
    assert capsys.readouterr().out == bare and "more lost stores" in bare
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["complete"] and len(doc["lost_stores"]) == doc["lost_count"] > 2


@needs_compiled("compares the compiled core with the reference model")
def test_core_and_reference_find_the_same_violations():
    found = []
    for backend in ENGINES:
        hv, vm = machine("none", "drop", backend=backend)
        found.append(check(hv, generate("seq-log", 800, VmLayout.of(vm), seed=5, deep_flush_every=2)).violations)
    assert found[0] == found[1] and found[0]


@pytest.mark.parametrize("strategy", ["write-protect", "drop"])
def test_probes_agree_with_a_real_power_failure(strategy):
    hv, vm = machine("none", strategy)
    result = check(hv, generate("linux-fsync", 3000, VmLayout.of(vm), seed=6), verify=3)
    assert len(result.verified) == 3 and result.verify_mismatches == []


def test_the_hypervisor_ends_as_after_a_plain_replay():
    hv, vm = machine("adr")
    ops = generate("pmdk-tx", 1500, VmLayout.of(vm), seed=8)
    check(hv, ops, 5)
    hv2, _ = machine("adr")
    hv2.run(ops)
    a, b = hv.platform.engine.get_state(), hv2.platform.engine.get_state()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ---- errors --------------------------------------------------------------------------------------------

def test_errors_name_the_record_in_the_whole_trace():
    hv, vm = machine()
    g = vm.nvdimms[0].gpa
    good = [(S, 0, 0, 8, g, 1), (SF, 0, 0, 0, 0, 0)] * 4
    with pytest.raises(TraceError, match=r"^record 9: size 3"):
        check(hv, trace(*good, (SF, 0, 0, 0, 0, 0), (S, 0, 0, 3, g, 1)))
    hv, vm = machine()
    with pytest.raises(GuestFault) as info:
        check(hv, trace(*good, (S, 0, 0, 8, 0x7_0000_0000, 1), (SF, 0, 0, 0, 0, 0)))
    assert info.value.op_index == 8


def test_a_handler_that_skips_faults():
    hv, vm = machine("none", "drop")
    g = vm.nvdimms[0].gpa
    seen = []
    ops = trace((S, 0, 0, 8, 0x7_0000_0000, 1), (S, 0, 0, 8, g, 2), (CLWB, 0, 0, 0, g, 0), (SF, 0, 0, 0, 0, 0),
                (S, 0, 0, 8, vm.vfha_gpa, 1), (SF, 0, 0, 0, 0, 0))
    result = check(hv, ops, handler=lambda f: seen.append(f.op_index) or "skip")
    assert seen == [0] and pairs(result) == [(1, 5)]


@pytest.mark.parametrize("options", [{"protocol": "strict"}, {"fence_scope": "cpu"}, {"points": 0},
                                     {"points": "some"}, {"points": [99]}, {"full_every": 0}])
def test_bad_options(options):
    hv, _ = machine()
    with pytest.raises(ConfigError):
        check(hv, trace((SF, 0, 0, 0, 0, 0)), **options)


def test_a_trace_must_be_an_array():
    hv, _ = machine()
    with pytest.raises(TraceError):
        check(hv, [1, 2, 3])


# ---- files and the command line -----------------------------------------------------------------------

def test_build_platform_overrides_the_domain():
    assert build_platform("small", "none").domain == "none"
    assert build_platform(preset("eadr")).domain == "eadr"
    p = build_platform("small")
    assert build_platform(p) is p and build_platform(p, "eadr").domain == "eadr"
    with pytest.raises(ConfigError):
        build_platform("small", "adr+")


def test_check_trace_on_an_npy_file(tmp_path):
    from nvemu.tools.prepare import vm_layouts
    from nvemu.formats.trace import save_trace
    lay = vm_layouts("small")[0]
    path = tmp_path / "t.npy"
    save_trace(path, generate("kv-put", 4000, lay, seed=1))
    bad = check_trace(path, 30, platform="small", domain="none", strategy="drop")
    assert bad.lost_stores and len(bad.points) == 30 and bad.strategies == {0: "drop"}
    assert check_trace(path, platform="small", domain="none").ok


def test_cli_exit_status_and_json(tmp_path, capsys):
    from nvemu.tools.prepare import vm_layouts
    from nvemu.formats.trace import save_trace
    path, out = tmp_path / "t.npy", tmp_path / "r.json"
    save_trace(path, generate("seq-log", 3000, vm_layouts("small")[0], seed=1))
    assert main(["check", str(path), "--preset", "small", "--domain", "none", "--strategy", "drop",
                 "--points", "20", "--json", str(out)]) == 1
    text = capsys.readouterr().out
    assert "protocol  deep" in text and "completed store(s) lost" in text
    doc = json.loads(out.read_text())
    assert doc["ok"] is False and len(doc["points"]) == 20 and doc["violations"]
    assert {"store", "point", "line_gpa", "line_hpa", "expected", "found"} <= set(doc["violations"][0])
    assert main(["check", str(path), "--preset", "small", "--domain", "none"]) == 0
    assert "result    OK" in capsys.readouterr().out


def test_cli_on_the_text_and_pmemcheck_samples(tmp_path, capsys):
    """basic.txt: only vm0 cpu0's store at op 0 completes the deep protocol (cpu1 never fences, vm1
    never writes its vFHA); drop loses it at the closing fence, op 12."""
    args = ["--preset", "small", "--domain", "none", "--strategy", "drop"]
    out = tmp_path / "r.json"
    assert main(["check", str(DATA / "basic.txt"), *args, "--nvdimm", "2M", "--dram", "1M", "--json", str(out)]) == 1
    doc = json.loads(out.read_text())
    assert [(v["store"], v["point"], v["vm"], v["vcpu"]) for v in doc["violations"]] == [(0, 12, 0, 0)]
    assert main(["check", str(DATA / "two_files.log"), *args, "--deep-flush"]) == 1
    assert "4 completed store(s) lost" in capsys.readouterr().out
    assert main(["check", str(DATA / "two_files.log"), "--preset", "small", "--domain", "none",
                 "--deep-flush"]) == 0


def test_cli_with_an_nfit(tmp_path, capsys):
    from nvemu.formats.nfit import build, nfit_from_platform_config
    nfit = tmp_path / "host.nfit"
    nfit.write_bytes(build(nfit_from_platform_config(preset("small"))))
    assert main(["check", str(DATA / "basic.txt"), "--nfit", str(nfit), "--domain", "none", "--strategy",
                 "drop", "--nvdimm", "2M", "--dram", "1M"]) == 1
    assert "store 0: vm0 cpu0 STORE 8 B at GPA 0x100000000" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("STORE 0x100000000 3 1\n")
    assert main(["check", str(bad), "--preset", "small"]) == 2
    assert "line 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["check", str(bad), "--points", "0"])


# ---- no vacuous pass (issue 14 item 4) ------------------------------------------------------------------

def test_a_pmemcheck_log_without_vfha_writes_on_domain_none_is_a_vacuous_pass(capsys):
    """A pmemcheck log names no vFHA write, so on a domain-none host (deep protocol) no store can
    complete: the report says so and why, and --strict makes it exit 3."""
    args = ["check", str(DATA / "two_files.log"), "--preset", "small", "--domain", "none", "--strategy", "drop"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "0 of 4 stores to a vNVDIMM completed" in text and "WARNING   only 0 of 4" in text
    assert "--deep-flush" in text and "see WARNING" in text
    assert main([*args, "--strict"]) == 3
    assert main([*args, "--strict", "--deep-flush"]) == 1          # now the stores complete: and are lost
    capsys.readouterr()
    assert main([*args[:-2], "--strategy", "write-protect", "--strict", "--deep-flush"]) == 0
    assert "WARNING" not in capsys.readouterr().out


def test_the_vacuous_report_names_the_missing_step():
    """Never fenced; fenced but never written back; fewer than half completed."""
    hv, vm = machine("adr")
    g = vm.nvdimms[0].gpa
    result = check(hv, trace((S, 0, 0, 8, g, 1), (CLWB, 0, 0, 0, g, 0), (LD, 0, 0, 8, g, 0)))
    assert result.vacuous and result.stores == 1 and "never fences" in result.vacuous_reason()
    hv, vm = machine("adr")
    result = check(hv, trace((S, 0, 0, 8, g, 1), (SF, 0, 0, 0, 0, 0)))
    assert result.vacuous and "never writes a vNVDIMM line back" in result.vacuous_reason()
    assert result.as_dict()["vacuous"] is True and result.as_dict()["stores"] == 1
    hv, vm = machine("adr")
    ops = trace((S, 0, 0, 8, g, 1), (CLWB, 0, 0, 0, g, 0), (SF, 0, 0, 0, 0, 0),
                (S, 0, 0, 8, g + 64, 2), (S, 0, 0, 8, g + 128, 3), (SF, 0, 0, 0, 0, 0))
    result = check(hv, ops)
    assert result.completed_stores == 1 and result.stores == 3 and result.vacuous and result.ok
    assert "most stores are not written back and fenced" in result.vacuous_reason()
    hv, vm = machine("adr")
    result = check(hv, ops[:3])
    assert not result.vacuous and result.vacuous_reason() == "" and "WARNING" not in result.report()


@pytest.mark.parametrize("flags", [["--deep-flush"], ["--skip-unregistered"], ["--deep-flush", "--skip-unregistered"]])
@pytest.mark.parametrize("name", ["basic.npy", "basic.txt"])
def test_pmemcheck_flags_on_another_trace_are_an_error(name, flags, capsys):
    assert main(["check", str(DATA / name), "--preset", "small", "--nvdimm", "2M", "--dram", "1M", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "only to a pmemcheck log" in err and flags[0] in err
    with pytest.raises(ConfigError, match="only to a pmemcheck log, not to an array"):
        check_trace(np.load(DATA / "basic.npy"), platform="small", deep_flush=True)


# ---- progress bar and JSON Lines (issue 14 item 5) ----------------------------------------------------------

def test_jsonl_streams_each_violation_then_a_summary(tmp_path, capsys):
    out, whole = tmp_path / "v.jsonl", tmp_path / "r.json"
    args = ["check", str(DATA / "two_files.log"), "--preset", "small", "--domain", "none", "--strategy", "drop",
            "--deep-flush", "--no-progress"]
    assert main([*args, "--jsonl", str(out), "--json", str(whole)]) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["type"] for r in rows] == ["violation"] * 4 + ["summary"]
    assert [(r["store"], r["point"]) for r in rows[:4]] == [(1, 10), (2, 10), (3, 10), (4, 10)]
    doc = json.loads(whole.read_text())
    assert rows[-1]["violations"] == 4 and rows[-1]["ok"] is False and "violations" in doc
    assert sorted(json.dumps(r["store"]) for r in rows[:4]) == sorted(json.dumps(v["store"]) for v in doc["violations"])
    capsys.readouterr()
    assert main([*args, "--jsonl", "-"]) == 1                 # stdout: only the JSON lines
    text = capsys.readouterr()
    assert all(json.loads(line) for line in text.out.splitlines()) and "nvemu check:" in text.err
    assert main([*args, "--json", "-"]) == 1                  # one JSON object, nothing else
    assert json.loads(capsys.readouterr().out)["lost_stores"] == [1, 2, 3, 4]
    assert main([*args, "--json", "-", "--jsonl", "-"]) == 2


def test_progress_bar_on_request(capsys):
    args = ["check", str(DATA / "two_files.log"), "--preset", "small", "--domain", "none", "--deep-flush", "-q"]
    assert main([*args, "--progress"]) == 0
    assert "check: 100%" in capsys.readouterr().err
    assert main([*args, "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_check_streams_violations_and_progress_from_python():
    seen, done = [], []
    hv, vm = machine("none", "drop")
    result = check(hv, hand_trace(vm), on_violation=seen.append, progress=lambda n, total: done.append((n, total)))
    assert sorted(seen, key=lambda v: (v.point, v.store)) == result.violations
    assert sum(n for n, _ in done) == 18 and {t for _, t in done} == {18}
