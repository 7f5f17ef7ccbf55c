"""Emulated time (SPEC 6) on both engines: per-vCPU clocks, write-backs that a fence waits for,
WPQs that drain continuously and stall a writer when full, fan-outs that wait for the slowest
controller, exit costs by path, and time kept apart from durability."""

from __future__ import annotations

import contextlib
import json

import pytest

from nvemu import ConfigError, GuestFault, Hypervisor, TimingModel
from nvemu._constants import CLOCK, STAT, TIME_STATS, TIMING_FIELDS, LineState
from nvemu.cli.main import main
from nvemu.machine.config import IMC_QUEUES, TIMING_SOURCES
from nvemu.tools.membench import JSON_KEYS, PATTERNS, STORE_PATTERNS, run_timing, write_limit

from conftest import ENGINES, needs_compiled, small_vm, tiny_platform


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


def clock_word(hv, vm, name, cpu=0) -> int:
    return int(hv.platform.engine.clock(vm.id)[cpu, CLOCK[name]])


def test_independent_loads_overlap_and_an_mfence_waits_for_their_data(backend):
    hv, vm, tm = setup(backend)
    cpu, g, d = vm.vcpu(0), vm.nvdimms[0].gpa, vm.dram[0].gpa
    cpu.load(g); cpu.load(g + 64); cpu.load(d)
    assert now(hv, vm) == 3 * tm["op"] and vm.stats()["load_ps"] == 0        # issued, not waited for
    # the second load is sequential, but its controller starts one read per read_line
    arrivals = [tm["op"] + tm["load_rand"], max(2 * tm["op"], tm["op"] + tm["read_line"]) + tm["load_seq"],
                3 * tm["op"] + tm["dram_load_rand"]]
    assert clock_word(hv, vm, "loads_done") == max(arrivals)
    cpu.sfence()                                    # an SFENCE orders stores only
    assert now(hv, vm) == 4 * tm["op"] + tm["fence"]
    cpu.mfence()
    assert now(hv, vm) == max(arrivals) + tm["fence"]
    assert vm.stats()["load_ps"] == max(arrivals) - 5 * tm["op"] - tm["fence"]


def test_a_load_waits_for_a_line_buffer_when_all_are_busy(backend):
    hv, vm, tm = setup(backend, fill_buffers=2)
    cpu, d = vm.vcpu(0), vm.dram[0].gpa
    for k in range(3):
        cpu.load(d + k * 8192)                      # DRAM, random lines: no controller read limit
    first_free = tm["op"] + tm["dram_load_rand"]
    assert now(hv, vm) == first_free and vm.stats()["load_ps"] == first_free - 3 * tm["op"]
    assert clock_word(hv, vm, "loads_done") == first_free + tm["dram_load_rand"]


def test_a_load_of_a_line_being_filled_shares_its_buffer_and_a_store_to_it_waits(backend):
    hv, vm, tm = setup(backend, fill_buffers=1)
    cpu, g = vm.vcpu(0), vm.nvdimms[0].gpa
    cpu.load(g); cpu.load(g + 8)                    # one line: no second buffer needed, no wait
    assert now(hv, vm) == 2 * tm["op"]
    cpu.store(g + 16, 1)                            # read-modify-write: the store needs the data
    assert now(hv, vm) == tm["op"] + tm["load_rand"]
    assert vm.stats()["load_ps"] == tm["op"] + tm["load_rand"] - 3 * tm["op"]


@pytest.mark.parametrize("depth, buffers", [(1, 1), (1, 4), (2, 2), (8, 10)])
def test_a_full_wpq_holds_line_buffers_and_stalls_the_writer_when_none_is_free(backend, depth, buffers):
    hv, vm, tm = setup(backend, depth=depth, fill_buffers=buffers)
    lines, c = same_controller_lines(hv, vm, 6)
    cpu = vm.vcpu(0)
    t, busy, pending, stalled, free = 0, 0, 0, 0, [0] * buffers
    for k, gpa in enumerate(lines):               # one nt-store per line: each a write-back
        cpu.nt_store(gpa, k)
        t += tm["op"]
        b = free.index(min(free))                 # the buffer that frees first
        wait = max(0, free[b] - t)
        t, stalled = t + wait, stalled + wait
        arrival = t + (tm["nt_rand"] if k == 0 else tm["nt_seq"])
        accepted = max(arrival, busy - (depth - 1) * tm["drain_line"])
        busy = max(busy, accepted) + tm["drain_line"]
        free[b] = accepted
        pending = max(pending, accepted)
    assert now(hv, vm) == t and vm.stats()["wpq_stall_ps"] == stalled
    assert int(hv.platform.engine.controller_busy()[c]) == busy
    assert (stalled > 0) == (buffers < 6)
    cpu.sfence()
    assert now(hv, vm) == max(t + tm["op"], pending) + tm["fence"]


def test_each_nvdimm_has_its_own_wpq_for_time(backend):
    """Two NVDIMMs on one controller (Yang et al. 2020, section 2.1: a WPQ per DIMM): filling one
    NVDIMM's WPQ does not delay a line for the other; the controller is busy until both drained."""
    hv = Hypervisor(tiny_platform(controllers=1, dimms_per_imc=2, wpq_depth=2),
                    TimingModel(walk_ref_cycles=0, fill_buffers=16), backend=backend)
    vm = small_vm(hv, strategy="writable")
    tm = dict(zip(TIMING_FIELDS, hv.platform.layout.timing))
    cpu, g, e = vm.vcpu(0), vm.nvdimms[0].gpa, hv.platform.engine
    assert e.controller_of(vm.nvdimms[0].hpa) == e.controller_of(vm.nvdimms[0].hpa + 4096)
    t, busy0, waited = 0, 0, 0
    for k in range(3):                              # granule 0: NVDIMM 0, two WPQ slots
        cpu.nt_store(g + 64 * k, k)
        t += tm["op"]
        arrival = t + (tm["nt_rand"] if k == 0 else tm["nt_seq"])
        accepted = max(arrival, busy0 - tm["drain_line"])
        waited += accepted - arrival
        busy0 = max(busy0, accepted) + tm["drain_line"]
    cpu.nt_store(g + 4096, 9)                       # granule 1: NVDIMM 1, same controller
    t += tm["op"]
    busy1 = t + tm["nt_rand"] + tm["drain_line"]    # accepted on arrival
    assert waited > 0 and busy1 < busy0
    assert e.dimm_busy().tolist() == [busy0, busy1]
    assert e.controller_busy().tolist() == [busy0]


def test_one_stream_is_held_by_its_writer_and_four_vcpus_reach_the_sets_write_bandwidth(backend):
    """optane-3t: one store+clwb stream runs at its own issue rate (8 stores, a clwb: 5.5 ns a
    line), not at one controller's drain rate; four vCPUs reach the six NVDIMMs' 13.8 GB/s
    (Izraelevitz et al. 2019: four threads saturate the write bandwidth)."""
    t = TimingModel()
    issue = 64 / (9 * t.op_ns + t.flush_issue_ns)
    one = run_timing("store-clwb", 64, 65536, backend=backend)
    assert 0.95 * issue <= one.gb_per_s <= issue
    four = run_timing("ntstore", 64, 65536, vcpus=4, backend=backend)
    assert 0.95 * four.write_limit_gb_per_s <= four.gb_per_s <= 1.05 * four.write_limit_gb_per_s


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
        cpu.load(vm.dram[0].gpa + 4096 * 8)        # ~20 us of loads, each waited for
        cpu.mfence()
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
    # the timing queues are per NVDIMM, not per controller: the structure cites its sources too
    assert "FAST 2020" in IMC_QUEUES and "UNC_M_PMM_WPQ_OCCUPANCY" in IMC_QUEUES


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


# ---- nvemu timing: the Optane studies' microbenchmarks through the engine (issue 13, item 4) ----

PUBLISHED_64B = {       # Yang et al., FAST 2020, Fig. 2 and the 64 B persist with one fence
    ("load-seq", None): 169.4, ("load-rand", None): 305.0, ("store-clwb", None): 116.4, ("ntstore", None): 124.7,
    ("store-clwb", 64): 62.3, ("ntstore", 64): 90.4,
}


@pytest.mark.parametrize("pattern, interval", list(PUBLISHED_64B))
def test_64_byte_runs_reproduce_the_figures_the_model_is_calibrated_on(backend, pattern, interval):
    r = run_timing(pattern, 64, interval, backend=backend, timing=TimingModel(walk_ref_cycles=0))
    assert r.ns == pytest.approx(PUBLISHED_64B[pattern, interval], abs=0.01)
    assert r.gb_per_s == pytest.approx(64 / r.ns, rel=1e-3)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_larger_size_takes_longer(backend, pattern):
    ns = [run_timing(pattern, n, preset="default", backend=backend).ns for n in (64, 512, 4096)]
    assert ns == sorted(ns) and ns[-1] > 2 * ns[0]
    if pattern.startswith("load"):                # independent loads overlap in the line buffers:
        assert ns[-1] < 64 * ns[0] / 4            # 64 lines cost far less than 64 loads one by one


@needs_compiled("two engines compared")
def test_the_engines_agree_on_every_pattern():
    for pattern in PATTERNS:
        runs = [run_timing(pattern, 256, preset="default", backend=b) for b in ENGINES]
        assert runs[0] == runs[1]
    runs = [run_timing("ntstore", 64, 1024, preset="default", backend=b) for b in ENGINES]
    assert runs[0] == runs[1]
    runs = [run_timing("load-seq", 64, 4096, preset="default", vcpus=3, backend=b) for b in ENGINES]
    assert runs[0] == runs[1]


@needs_compiled("two engines compared")
def test_both_engines_keep_identical_clocks_and_read_busy_times_with_loads_in_flight():
    out = []
    for b in ENGINES:
        hv, vm, tm = setup(b, vcpus=2, fill_buffers=3)
        g = vm.nvdimms[0].gpa
        for k in range(40):                       # two vCPUs' loads and persists, interleaved
            cpu = vm.vcpu(k % 2)
            cpu.load(g + 64 * k)
            if k % 5 == 0:
                cpu.store(g + 64 * k, k); cpu.clwb(g + 64 * k)
            if k % 7 == 0:
                cpu.mfence()
        e = hv.platform.engine
        out.append((e.clock(vm.id).tolist(), e.dimm_read_busy().tolist(), e.dimm_busy().tolist(),
                    e.controller_busy().tolist(), vm.stats().rows.tolist()))
    assert out[0] == out[1]


@pytest.mark.parametrize("vcpus", [1, 2, 3])
def test_read_bandwidth_is_the_lesser_of_the_loads_in_flight_and_the_dimm(backend, vcpus):
    """Little's law per vCPU (fill_buffers lines per load latency), capped by the DIMM's
    media_read_gbps (Izraelevitz et al. 2019: 6.6 GB/s)."""
    tm = TimingModel()
    latency_ns = dict(zip(TIMING_FIELDS, tm.engine_timing()))["load_seq"] / 1000
    r = run_timing("load-seq", 64, 65536, preset="single", vcpus=vcpus, backend=backend)
    assert r.gb_per_s == pytest.approx(min(vcpus * tm.fill_buffers * 64 / latency_ns, tm.media_read_gbps), rel=0.02)
    assert r.read_limit_gb_per_s == tm.media_read_gbps


def test_fewer_line_buffers_lower_one_vcpus_read_and_write_bandwidth_not_the_64_byte_latency(backend):
    few = TimingModel(walk_ref_cycles=0, fill_buffers=5)
    base = TimingModel(walk_ref_cycles=0)
    for pattern in ("load-seq", "ntstore"):
        a, b = (run_timing(pattern, 64, 65536, preset="optane-3t", timing=t, backend=backend) for t in (few, base))
        assert a.gb_per_s < 0.6 * b.gb_per_s
    assert run_timing("load-seq", 64, timing=few, backend=backend).ns == pytest.approx(169.4, abs=0.01)
    with pytest.raises(ConfigError, match="fill_buffers"):
        TimingModel(fill_buffers=17)


@pytest.mark.parametrize("pattern", STORE_PATTERNS)
def test_bandwidth_grows_with_the_fence_interval_and_saturates_at_the_media_limit(backend, pattern):
    """One NVDIMM: the stream reaches its media write bandwidth and no more (the WPQ holds at most
    wpq_depth lines the final fence does not wait to drain)."""
    bw = [run_timing(pattern, 64, m, preset="single", backend=backend).gb_per_s for m in (64, 4096, 65536)]
    assert bw == sorted(bw) and bw[0] < bw[-1] / 2
    limit = write_limit("single")
    assert limit == TimingModel().media_write_gbps
    assert 0.9 * limit <= bw[-1] <= limit * 1.05


def test_an_interleave_set_writes_faster_than_one_dimm_and_no_faster_than_all_of_them(backend):
    one = run_timing("ntstore", 4096, 65536, preset="single", backend=backend).gb_per_s
    set4 = run_timing("ntstore", 4096, 65536, preset="cross-socket", backend=backend)
    assert one < set4.gb_per_s <= 1.05 * set4.write_limit_gb_per_s
    assert set4.write_limit_gb_per_s == 4 * TimingModel().media_write_gbps


def test_a_slower_media_lowers_the_saturated_bandwidth_not_the_64_byte_latency(backend):
    slow = TimingModel(walk_ref_cycles=0, media_write_gbps=1.0)
    assert run_timing("store-clwb", 64, backend=backend, timing=slow).ns == pytest.approx(116.4, abs=0.01)
    fast = run_timing("store-clwb", 64, 65536, preset="single", backend=backend).gb_per_s
    assert run_timing("store-clwb", 64, 65536, preset="single", backend=backend,
                      timing=slow).gb_per_s < 0.5 * fast


def test_timing_json_has_exactly_the_documented_keys(tmp_path, capsys):
    assert main(["timing", "store-clwb", "--size", "1K", "--json", "-"]) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)                                   # stdout: only the JSON
    assert tuple(doc) == JSON_KEYS == ("pattern", "size", "fence_interval", "preset", "ns", "gb_per_s")
    assert doc["pattern"] == "store-clwb" and doc["size"] == 1024 and doc["fence_interval"] is None
    assert doc["preset"] == "optane-3t" and doc["ns"] > 0 and doc["gb_per_s"] == pytest.approx(1024 / doc["ns"],
                                                                                             rel=1e-3)
    assert "latency" in out.err                                 # the report went to stderr
    path = tmp_path / "t.json"
    assert main(["timing", "ntstore", "--fence-interval", "4K", "--preset", "default", "--json", str(path)]) == 0
    doc = json.loads(path.read_text())
    assert (doc["pattern"], doc["size"], doc["fence_interval"], doc["preset"]) == ("ntstore", 64, 4096, "default")
    assert "GB/s" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["load-rand", "--fence-interval", "64"], "sequential stream"),
    (["load-seq", "--vcpus", "0"], "from 1 to 32"),
    (["ntstore", "--size", "100"], "multiple of 64"),
    (["ntstore", "--size", "0"], "multiple of 64"),
    (["store-clwb", "--size", "8M"], "4 MiB"),
    (["store-clwb", "--fence-interval", "32"], "multiple of 64"),
    (["store-clwb", "--size", "4M", "--preset", "small"], "do not fit"),
    (["store-load"], "invalid choice"),
    (["ntstore", "--preset", "nope"], "invalid choice"),
    (["ntstore", "--size", "lots"], "not a number"),
])
def test_bad_timing_requests_are_one_line_errors(capsys, argv, words, tmp_path):
    refused_by_argparse = words in ("invalid choice", "not a number")
    with pytest.raises(SystemExit) if refused_by_argparse else contextlib.nullcontext():
        assert main(["timing", *argv, "--json", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()
