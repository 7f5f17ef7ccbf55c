"""Emulated time (SPEC 6) on both engines: per-vCPU clocks, write-backs that a fence waits for,
WPQs that drain continuously and stall a writer when full, fan-outs that wait for the slowest
controller, exit costs by path, and time kept apart from durability."""

from __future__ import annotations

import pytest

from nvemu import ConfigError, GuestFault, Hypervisor, TimingModel
from nvemu._constants import STAT, TIME_STATS, TIMING_FIELDS, LineState
from nvemu.machine.config import TIMING_SOURCES

from conftest import small_vm, tiny_platform


def setup(backend, depth=8, strategy="write-protect", vcpus=1, domain="adr", **timing):
    hv = Hypervisor(tiny_platform(wpq_depth=depth, domain=domain), TimingModel(**{"walk_ref_cycles": 0, **timing}),
                    backend=backend)
    vm = small_vm(hv, strategy=strategy, vcpus=vcpus)
    return hv, vm, dict(zip(TIMING_FIELDS, hv.platform.layout.timing))


def now(hv, vm, cpu=0) -> int:
    return int(hv.platform.engine.clock(vm.id)[cpu, 0])


def same_controller_lines(hv, vm, n):
    """GPAs of ``n`` consecutive lines that sit on one controller (one interleave granule)."""
    g = vm.nvdimms[0].gpa
    return [g + 64 * k for k in range(n)], hv.platform.engine.controller_of(vm.nvdimms[0].hpa)


def test_a_persist_waits_for_its_write_back_random_then_sequential(backend):
    hv, vm, tm = setup(backend)
    cpu, g = vm.vcpu(0), vm.nvdimms[0].gpa
    cpu.store(g, 1); cpu.clwb(g); cpu.sfence()
    first = 2 * tm["op"] + tm["flush_issue"] + tm["wb_rand"] + tm["fence"]
    assert now(hv, vm) == first
    cpu.store(g + 64, 2); cpu.clwb(g + 64); cpu.sfence()            # the next line: sequential
    assert now(hv, vm) == first + 2 * tm["op"] + tm["flush_issue"] + tm["wb_seq"] + tm["fence"]
    s = vm.stats()
    assert s.time_ps == now(hv, vm) and s["fence_ps"] > 2 * tm["fence"]


def test_a_fence_with_nothing_outstanding_and_a_clean_clwb_cost_only_their_own_time(backend):
    hv, vm, tm = setup(backend)
    cpu, g = vm.vcpu(0), vm.nvdimms[0].gpa
    cpu.clwb(g); cpu.sfence()                       # a clean line: nothing written back
    assert now(hv, vm) == 2 * tm["op"] + tm["flush_issue"] + tm["fence"]


def test_nt_stores_to_one_line_merge_and_the_fence_waits_for_the_first(backend):
    hv, vm, tm = setup(backend)
    cpu, g = vm.vcpu(0), vm.nvdimms[0].gpa
    for k in range(8):
        cpu.nt_store(g + 8 * k, k)
    cpu.sfence()
    assert now(hv, vm) == tm["op"] + tm["nt_rand"] + tm["fence"]
    assert len(hv.platform.engine.wpq_entries(hv.platform.engine.controller_of(vm.nvdimms[0].hpa))) == 8


def test_loads_sequential_then_random(backend):
    hv, vm, tm = setup(backend)
    cpu, g = vm.vcpu(0), vm.nvdimms[0].gpa
    cpu.load(g); cpu.load(g + 64); cpu.load(g + 8 * 4096)
    assert now(hv, vm) == 3 * tm["op"] + 2 * tm["load_rand"] + tm["load_seq"]
    d = vm.dram[0].gpa
    cpu.load(d); cpu.load(d + 64)
    assert vm.stats()["load_ps"] == 2 * tm["load_rand"] + tm["load_seq"] + tm["dram_load_rand"] + tm["dram_load_seq"]


@pytest.mark.parametrize("depth", [1, 2, 8])
def test_a_full_wpq_stalls_the_writer_until_a_slot_frees(backend, depth):
    hv, vm, tm = setup(backend, depth=depth)
    lines, c = same_controller_lines(hv, vm, 6)
    cpu = vm.vcpu(0)
    t, busy, pending, stalled = 0, 0, 0, 0
    for k, gpa in enumerate(lines):               # one nt-store per line: each a write-back
        cpu.nt_store(gpa, k)
        t += tm["op"]
        arrival = t + (tm["nt_rand"] if k == 0 else tm["nt_seq"])
        slot_free = busy - (depth - 1) * tm["drain_line"]
        wait = max(0, slot_free - arrival)
        t, stalled = t + wait, stalled + wait
        busy = max(busy, arrival + wait) + tm["drain_line"]
        pending = max(pending, arrival + wait)
    assert now(hv, vm) == t and vm.stats()["wpq_stall_ps"] == stalled
    assert int(hv.platform.engine.controller_busy()[c]) == busy
    assert (stalled > 0) == (depth < 6 and depth <= 2)
    cpu.sfence()
    assert now(hv, vm) == max(t + tm["op"], pending) + tm["fence"]


def test_a_fence_waits_only_for_its_own_vcpus_write_backs(backend):
    hv, vm, tm = setup(backend, vcpus=2)
    g = vm.nvdimms[0].gpa
    vm.vcpu(0).nt_store(g, 1)
    vm.vcpu(1).sfence()
    assert now(hv, vm, 1) == tm["op"] + tm["fence"]
    assert now(hv, vm, 0) == tm["op"]


@pytest.mark.parametrize("strategy, path", [("write-protect", "write_protect"), ("mmio", "mmio"),
                                            ("hypercall", "hypercall"), ("native", None)])
def test_a_flush_waits_for_the_slowest_controller_not_the_sum(backend, strategy, path):
    hv, vm, tm = setup(backend, depth=64, strategy=strategy)
    lines, c = same_controller_lines(hv, vm, 20)
    cpu = vm.vcpu(0)
    for k, gpa in enumerate(lines):                # a backlog on one controller only
        cpu.nt_store(gpa, k)
    cpu.sfence()
    busy = hv.platform.engine.controller_busy().tolist()
    assert busy[c] > 0 and busy[1 - c] == 0
    before = now(hv, vm)
    cpu.store(vm.vfha_gpa, 1)
    issued = before + tm["op"] + (tm["exit"] + tm[path] if path else 0) + tm["fha_write"]
    assert now(hv, vm) == max(issued, busy[c])
    s = vm.stats()
    assert s["fha_writes"] == 2 and s["drain_wait_ps"] == max(0, busy[c] - issued)
    assert s["exit_ps"] == (tm["exit"] if path else 0)
    if path:
        assert s[path + "_ps"] == tm[path]


def test_time_passing_does_not_make_anything_durable(backend):
    """The clock says the WPQ drained long ago; durability still assumes it did not."""
    hv, vm, tm = setup(backend, domain="none", strategy="writable")
    cpu, g = vm.vcpu(0), vm.nvdimms[0].gpa
    cpu.store(g, 0x55); cpu.clwb(g); cpu.sfence()
    for _ in range(200):
        cpu.load(vm.dram[0].gpa + 4096 * 8)        # ~20 us of loads
    assert now(hv, vm) > 100 * tm["drain_line"]
    line = vm.nvdimms[0].hpa
    assert hv.platform.engine.line_states()[line] == LineState.QUEUED
    assert hv.platform.engine.durable_read(line, 8) == bytes(8)


def test_an_exit_returned_to_python_costs_a_round_trip(backend):
    hv, vm, tm = setup(backend)
    cpu = vm.vcpu(0)
    with pytest.raises(GuestFault):
        cpu.store(0x7_0000_0000, 1)               # unmapped: an EPT violation the core does not handle
    assert now(hv, vm) == tm["op"] + tm["exit"]


def test_time_categories_add_up_to_each_vcpu_clock(backend):
    from nvemu.guest.workloads import VmLayout, generate
    hv, vm, tm = setup(backend, depth=4, vcpus=2, walk_ref_cycles=30)
    hv.run(generate("pmdk-tx", 3000, [VmLayout.of(vm)], seed=1, vcpus=2))
    for row, clock in zip(vm.stats().rows.tolist(), hv.platform.engine.clock(vm.id).tolist()):
        assert sum(row[STAT[n]] for n in TIME_STATS) == clock[0] > 0


def test_every_timing_parameter_names_a_source_or_is_free():
    assert set(TIMING_SOURCES) == set(TimingModel().to_dict())
    for name, source in TIMING_SOURCES.items():
        assert source.startswith("free") or any(w in source for w in ("FAST 2020", "arXiv", "SplitX")), name
    assert set(TimingModel.FREE_PARAMETERS) >= {"fha_write_ns", "write_protect_cycles", "mmio_cycles",
                                                "hypercall_cycles"}


def test_the_old_cost_model_converts():
    t = TimingModel.from_dict({"op": 1, "walk_level": 30, "exit": 1200, "write_protect": 800, "mmio": 2500,
                               "hypercall": 300, "fha_write": 200, "drain_line": 600})
    assert (t.exit_cycles, t.write_protect_cycles, t.mmio_cycles, t.walk_ref_cycles) == (1200, 800, 2500, 30)
    assert t.media_write_gbps == pytest.approx(64 * 2.2 / 600)


@pytest.mark.parametrize("bad", [{"op_ns": -1}, {"fence_ns": 100}, {"cpu_ghz": 0}, {"mmio_cycles": "x"},
                                 {"media_write_gbps": float("nan")}, {"warp": 1}])
def test_bad_timing_is_refused(bad):
    with pytest.raises(ConfigError):
        TimingModel.from_dict(bad)
