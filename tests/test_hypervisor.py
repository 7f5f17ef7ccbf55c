"""Hypervisor and VM lifecycle, vFHA allocation, strategies and fan-out (SPEC 4, 7.2, 7.4-7.7)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvemu import (TRACE_DTYPE, ConfigError, GuestFault, Hypervisor, LifecycleError, Op, ResourceError,
                   VmState)
from nvemu._constants import EPT_R, EPT_RWX, EPT_W, TIMING_FIELDS
from nvemu.machine.flush_hints import allocate_vfha
from nvemu.guest.persist_loop import persist_loop

from conftest import scaled, small_vm, tiny_platform, trace

MiB = 1 << 20


def test_default_vm_layout_matches_spec():
    hv = Hypervisor("default")
    vm = hv.create_vm()
    assert hv.platform.n_controllers == 4 and hv.platform.domain == "adr" and hv.platform.wpq_flush
    assert hv.platform.config.wpq_depth == 64
    assert [(r.gpa, r.size) for r in vm.dram] == [(0, 256 * MiB)]
    assert [(r.gpa, r.size) for r in vm.nvdimms] == [(1 << 32, 256 * MiB)]
    assert vm.vfha_gpa == (1 << 32) + 256 * MiB                 # first free page above the vNVDIMM
    assert (vm.strategy, vm.fanout, len(vm.vcpus)) == ("write-protect", "broadcast", 1)
    assert vm.page_table.walk(vm.vfha_gpa)[-1][3] & EPT_RWX == EPT_R
    assert [h.gpa for h in vm.vfha_table] == [vm.vfha_gpa]
    assert vm.vfha_table[0].physical == tuple(0xC000_0000 + c * 4096 for c in range(4))


def test_lifecycle_transitions(make_hv):
    hv = make_hv()
    vm = hv.create_vm(dram=MiB, nvdimms=[512 << 10])
    assert vm.state is VmState.CREATED
    with pytest.raises(LifecycleError, match="created: cannot pause"):
        vm.pause()
    with pytest.raises(LifecycleError, match="not running"):
        hv.run(trace((Op.SFENCE, 0, vm.id, 0, 0, 0)))
    vm.start()
    with pytest.raises(LifecycleError, match="running: cannot start"):
        vm.start()
    with pytest.raises(LifecycleError, match="running: cannot resume"):
        vm.resume()
    vm.pause().resume().pause()
    vm.destroy()
    assert vm.state is VmState.DESTROYED
    for action in (vm.start, vm.pause, vm.resume, vm.destroy):
        with pytest.raises(LifecycleError, match="destroyed"):
            action()
    with pytest.raises(LifecycleError, match="does not exist"):
        hv.vm(vm.id)


def test_destroy_returns_every_host_page_and_table(make_hv):
    hv = make_hv()
    p = hv.platform
    dram0, pmem0, tables0 = p.dram.free_bytes, sum(a.free_bytes for a in p.pmem_sets), p.engine.tables_in_use
    vms = [hv.create_vm(dram=MiB, nvdimms=[256 << 10, 128 << 10], vcpus=2).start() for _ in range(3)]
    assert p.engine.tables_in_use > tables0 and p.dram.free_bytes < dram0
    vms[1].vcpu(1).store(vms[1].nvdimms[1].gpa, 1)
    counted = p.engine.tables_in_use
    for vm in vms:
        vm.destroy()
    assert sum(vm.freed_tables for vm in vms) == counted
    assert (p.dram.free_bytes, sum(a.free_bytes for a in p.pmem_sets), p.engine.tables_in_use) == \
        (dram0, pmem0, tables0)
    with Hypervisor(tiny_platform()).create_vm(dram=MiB, nvdimms=[]) as vm:   # context manager
        assert vm.state is VmState.RUNNING
    assert vm.state is VmState.DESTROYED


def test_requests_the_host_cannot_satisfy(make_hv):
    hv = make_hv()
    with pytest.raises(ResourceError, match="NVDIMM space"):
        hv.create_vm(dram=MiB, nvdimms=[4 * MiB])
    with pytest.raises(ResourceError, match="DRAM"):
        hv.create_vm(dram=64 * MiB, nvdimms=[])
    with pytest.raises(ResourceError, match="overlaps"):
        hv.create_vm(dram=MiB, nvdimms=[(1 << 32, MiB), ((1 << 32) + 4096, 4096)])
    with pytest.raises(ResourceError, match="overlaps"):
        hv.create_vm(dram=MiB, nvdimms=[], reserved=[(0x8000, 4096)])
    with pytest.raises(ConfigError, match="unknown strategy"):
        hv.create_vm(strategy="magic")
    with pytest.raises(ConfigError, match="fan-out"):
        hv.create_vm(fanout="sideways")
    with pytest.raises(ConfigError, match="vcpus"):
        hv.create_vm(vcpus=0)
    # the failed requests leaked nothing and the hypervisor still works
    assert hv.platform.engine.tables_in_use == 0
    assert hv.platform.dram.free_bytes == hv.platform.config.dram_bytes
    vm = small_vm(hv)
    vm.vcpu(0).store(vm.nvdimms[0].gpa, 1)


def test_vfha_allocation_steps():
    occupied = [(0, 0x10000), (0x10000, 0x2000), (0x20000, 0x1000)]
    assert allocate_vfha(occupied, "above-nvdimms", [(0x10000, 0x2000)], [(0, 0x10000)]) == 0x12000
    assert allocate_vfha(occupied, "above-dram", [(0x10000, 0x2000)], [(0, 0x10000)]) == 0x12000
    assert allocate_vfha(occupied + [(0x12000, 0x1000)], "above-nvdimms", [(0x10000, 0x2000)]) == 0x13000
    assert allocate_vfha(occupied, 0x30000) == 0x30000
    with pytest.raises(ResourceError):
        allocate_vfha(occupied, 0x20000)
    with pytest.raises(ConfigError):
        allocate_vfha(occupied, 0x30008)


def test_two_vms_may_share_a_vfha_gpa_without_interfering(make_hv):
    hv = make_hv()
    a, b = small_vm(hv), small_vm(hv)
    assert a.vfha_gpa == b.vfha_gpa and a.vfha_hpa != b.vfha_hpa
    a.vcpu(0).store(a.vfha_gpa, 1)
    assert (a.stats().exits[48], b.stats().exits[48]) == (1, 0)


def fha_reads_and_writes(vm):
    return trace(*[(Op.LOAD, 0, vm.id, 8, vm.vfha_gpa, 0), (Op.STORE, 0, vm.id, 8, vm.vfha_gpa, 1)] * 3)


@pytest.mark.parametrize("strategy, exits, read_exits", [
    ("write-protect", {48: 3, 49: 0, 18: 0}, 0),
    ("mmio", {48: 0, 49: 6, 18: 0}, 3),
    ("hypercall", {48: 0, 49: 0, 18: 3}, 0),
    ("writable", {48: 0, 49: 0, 18: 0}, 0),
    ("drop", {48: 3, 49: 0, 18: 0}, 0),
])
def test_exits_per_strategy(make_hv, strategy, exits, read_exits):
    hv = make_hv()
    vm = small_vm(hv, strategy=strategy)
    cpu = vm.vcpu(0)
    cpu.store(vm.nvdimms[0].gpa, 5)
    cpu.clwb(vm.nvdimms[0].gpa)
    hv.run(fha_reads_and_writes(vm))
    s = vm.stats()
    assert s.exits == exits
    assert (s["vfha_reads"], s["vfha_writes"]) == (3, 3)
    drains = strategy in ("write-protect", "mmio", "hypercall")
    assert s["fha_writes"] == (6 if drains else 0)             # 3 flushes x 2 controllers
    assert s["lines_drained"] == (1 if drains else 0)
    tm = dict(zip(TIMING_FIELDS, hv.platform.layout.timing))      # picoseconds
    per_exit = {"write-protect": tm["write_protect"], "mmio": tm["mmio"], "hypercall": tm["hypercall"],
                "drop": tm["write_protect"], "writable": 0}[strategy]
    assert s["exit_ps"] == sum(exits.values()) * tm["exit"]
    assert (s["write_protect_ps"] + s["mmio_ps"] + s["hypercall_ps"]) == sum(exits.values()) * per_exit
    assert s.time_ps == int(hv.platform.engine.clock(vm.id)[0, 0])     # every advance has a category
    if strategy == "mmio":
        assert hv.platform.engine.last_value == 0 and s["load_sum"] == 0


def test_writes_elsewhere_on_a_write_protected_page_are_guest_faults(make_hv):
    hv = make_hv()
    vm = small_vm(hv)
    g = vm.nvdimms[0].gpa
    vm.page_table.protect(g, 4096, EPT_R)
    with pytest.raises(GuestFault) as info:
        vm.vcpu(0).store(g, 1)
    assert (info.value.reason, info.value.readable, info.value.writable) == (48, True, False)
    vm.page_table.protect(g, 4096, EPT_W)                        # W without R: misconfigured
    with pytest.raises(GuestFault) as info:
        vm.vcpu(0).load(g)
    assert info.value.reason == 49


def run_everywhere(strategy, fanout, ops_for, platform_kw=None, nvms=2, backend=None, nvdimm=64 << 10):
    hv = Hypervisor(tiny_platform(**{"controllers": 4, **(platform_kw or {})}), backend=backend)
    vms = [hv.create_vm(dram=256 << 10, nvdimms=[nvdimm], strategy=strategy, fanout=fanout).start()
           for _ in range(nvms)]
    hv.run(ops_for(vms))
    return hv, vms


def mixed_workload(vms, n=3000, seed=7):
    parts = [persist_loop(n, vm.nvdimms[0].gpa, vm.nvdimms[0].size, vm.vfha_gpa, seed=seed + vm.id,
                          vm=vm.id) for vm in vms]
    out = np.empty(sum(len(p) for p in parts), TRACE_DTYPE)
    for k, p in enumerate(parts):
        out[k::len(parts)] = p
    return out


def test_strategy_neutrality():
    """SPEC 7.6: write-protect, mmio and hypercall leave identical memory and media outside the
    vFHA page; only exits, stats and time differ."""
    images = {}
    for strategy in ("write-protect", "mmio", "hypercall"):
        hv, vms = run_everywhere(strategy, "broadcast", mixed_workload)
        vfha_pages = {vm.vfha_hpa for vm in vms}
        mem = {a: d for a, d in hv.platform.engine.memory_pages().items() if a not in vfha_pages}
        images[strategy] = (mem, hv.platform.engine.media_pages(), hv.platform.line_states(),
                            [vm.stats()["lines_drained"] for vm in vms])
    assert images["write-protect"] == images["mmio"] == images["hypercall"]


def test_targeted_fanout_drains_fewer_lines_and_keeps_own_lines_identical():
    """VMs on different controllers: targeted drains only its own; the flushing VM's own ranges
    end identical to broadcast (SPEC 7.6)."""
    def two_vms(vms):
        a, b = vms
        ops = []
        for k in range(40):
            for vm in (b, a):                   # B dirties and queues lines, A flushes via its vFHA
                g = vm.nvdimms[0].gpa + (k % 8) * 64
                ops += [(Op.STORE, 0, vm.id, 8, g, k + 1), (Op.CLWB, 0, vm.id, 0, g, 0)]
            ops += [(Op.SFENCE, 0, a.id, 0, 0, 0), (Op.STORE, 0, a.id, 8, a.vfha_gpa, 1)]
        return trace(*ops)
    platform = {"sockets": 2, "controllers": 2, "interleave": "socket"}   # one interleave set per socket
    out = {}
    for fanout in ("broadcast", "targeted"):
        hv, (a, b) = run_everywhere("write-protect", fanout, two_vms, platform, nvdimm=2 << 20)
        assert hv.platform.controller_of(a.nvdimms[0].hpa) != hv.platform.controller_of(b.nvdimms[0].hpa)
        own = hv.platform.read_media(a.nvdimms[0].hpa, a.nvdimms[0].size)
        out[fanout] = (a.stats()["lines_drained"], a.stats()["fha_writes"], own, a.fanout_controllers,
                       a.stats().drained_by_controller)
    assert out["targeted"][0] < out["broadcast"][0]
    assert out["targeted"][1] == 80 and out["broadcast"][1] == 160
    assert out["targeted"][2] == out["broadcast"][2]
    assert out["targeted"][3] == (0, 1) and out["broadcast"][3] == (0, 1, 2, 3)
    assert out["targeted"][4][2:] == (0, 0) and out["broadcast"][4][2:] != (0, 0)   # B's controllers


@settings(max_examples=scaled(40, 15), deadline=None)
@given(seed=st.integers(0, 1000), strategy=st.sampled_from(["write-protect", "mmio", "hypercall", "writable"]),
       n=st.integers(10, 400))
def test_isolation(seed, strategy, n):
    """SPEC 7.5: nothing VM A does reads or changes VM B's memory; A's vFHA writes may drain B's
    lines, which only makes them more durable, never changes them."""
    def only_a(vms):
        a, _ = vms
        return persist_loop(n, a.nvdimms[0].gpa, a.nvdimms[0].size, a.vfha_gpa, seed=seed, vm=a.id)

    hv, (a, b) = run_everywhere(strategy, "broadcast", lambda vms: mixed_workload(vms, 200, seed))
    before = [hv.platform.read_memory(r.hpa, r.size) for r in b.ranges()]
    media_before = hv.platform.read_media(b.nvdimms[0].hpa, b.nvdimms[0].size)
    b_stats = b.stats().rows.copy()
    queued: dict[int, list[bytes]] = {}
    for c in range(hv.platform.n_controllers):
        for line, data in hv.platform.wpq(c):
            queued.setdefault(line, []).append(data)
    hv.run(only_a((a, b)))
    assert [hv.platform.read_memory(r.hpa, r.size) for r in b.ranges()] == before
    assert (b.stats().rows == b_stats).all()
    media_after = hv.platform.read_media(b.nvdimms[0].hpa, b.nvdimms[0].size)
    for off in range(0, len(media_after), 64):          # each of B's lines: unchanged or a queued copy
        line = media_after[off:off + 64]
        allowed = [media_before[off:off + 64], *queued.get(b.nvdimms[0].hpa + off, [])]
        assert line in allowed


def test_determinism():
    """SPEC 7.7: the same trace and configuration give bit-identical state and stats."""
    runs = []
    for _ in range(2):
        hv, vms = run_everywhere("write-protect", "targeted", mixed_workload)
        runs.append((hv.platform.engine.memory_pages(), hv.platform.engine.media_pages(),
                     [vm.stats().rows.tolist() for vm in vms], hv.platform.controller_stats()))
    assert runs[0] == runs[1]
