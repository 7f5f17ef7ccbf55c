"""Differential tests: the Cython core and the reference model, driven by the same
hypothesis-generated operations (guest records, permission changes mid-run, drains, power
failures, several VMs and vCPUs, every strategy), must end in identical memory, media, line
states, WPQ contents, page tables, exits and counters."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvemu import TRACE_DTYPE, GuestFault, Hypervisor, NvemuError, Op
from nvemu._constants import STAT, TIME_STATS, BadRecord, RunStatus
from nvemu._records import record_code
from nvemu.machine.flush_hints import STRATEGIES

from conftest import ENGINES, needs_compiled, tiny_platform

pytestmark = needs_compiled("compares the compiled core with the reference model")

EXAMPLES = int(os.environ.get("NVEMU_DIFF_EXAMPLES", "300"))

vm_spec = st.fixed_dictionaries({
    "vcpus": st.integers(1, 2),
    "strategy": st.sampled_from(sorted(STRATEGIES)),
    "fanout": st.sampled_from(["broadcast", "targeted"]),
    "tlb_entries": st.sampled_from([1, 2, 4]),
})

# an address is (vm, region, page, line, byte): region 0 vNVDIMM, 1 DRAM, 2 vFHA, 3 unmapped
address = st.tuples(st.integers(0, 1), st.sampled_from([0, 0, 0, 1, 2, 3]), st.integers(0, 3),
                    st.integers(0, 3), st.sampled_from([0, 8, 56, 60, 63]))



@st.composite
def record(draw):
    """(op, vcpu, address, size, value): valid nearly always, so batches run long; now and then
    a bad size, a crossing, an oversized value or an unknown op stops one."""
    op = draw(st.sampled_from([Op.STORE] * 4 + [Op.LOAD, Op.NT_STORE] + [Op.CLWB] * 2 +
                              [Op.CLFLUSHOPT, Op.CLFLUSH, Op.SFENCE, Op.MFENCE]))
    addr = draw(address)
    if op in (Op.LOAD, Op.STORE, Op.NT_STORE):
        size = draw(st.sampled_from([1, 2, 4, 8]))
        addr = addr[:4] + (addr[4] - addr[4] % size,)
        value = draw(st.integers(0, 2 ** (8 * size) - 1))
    else:
        size, value = draw(st.sampled_from([0, 64])), 0
    if draw(st.integers(0, 40)) == 0:          # unknown op, bad size, too wide, crossing
        op, size, value = draw(st.sampled_from([(8, 0, 0), (Op.STORE, 3, 0), (Op.STORE, 1, 256),
                                                (Op.LOAD, 8, 0)]))
        addr = addr[:4] + (60,)
    return op, draw(st.integers(0, 1)), addr, size, value


action = st.one_of(
    st.tuples(st.just("ops"), st.lists(record(), min_size=1, max_size=60)),
    st.tuples(st.just("protect"), address, st.integers(0, 7)),
    st.tuples(st.just("unmap"), address),
    st.tuples(st.just("remap"), address, st.integers(1, 7)),
    st.tuples(st.just("drain"), st.lists(st.integers(0, 1), max_size=2)),
    st.tuples(st.just("power_fail")),
    st.tuples(st.just("pause_resume"), st.integers(0, 1)),
)


def gpa_of(vm, addr) -> int:
    _, region, page, line, byte = addr
    base = {0: vm.nvdimms[0].gpa, 1: vm.dram[0].gpa, 2: vm.vfha_gpa, 3: 0x7_0000_0000}[region]
    if region == 2:
        page = 0
    return base + page * 4096 + line * 64 + byte


def build(backend, domain, depth, vms):
    hv = Hypervisor(tiny_platform(domain=domain, wpq_depth=depth), backend=backend)
    made = [hv.create_vm(dram=64 << 10, nvdimms=[64 << 10], **spec).start() for spec in vms]
    return hv, made


def apply(hv, vms, act, log):
    """Run one action; append what it returned or raised to ``log``."""
    kind = act[0]
    try:
        if kind == "ops":
            recs = []
            for op, cpu, addr, size, value in act[1]:
                vm = vms[addr[0] % len(vms)]
                recs.append((op, cpu, vm.id, size, gpa_of(vm, addr), value))
            faults = []
            result = hv.run(np.array(recs, TRACE_DTYPE), handler=lambda f: faults.append(
                (f.reason, f.qualification, f.gpa, f.op_index, f.vm, f.vcpu, f.op)) or "skip")
            log.append(("ops", result, faults, hv.platform.engine.last_value))
        elif kind in ("protect", "unmap", "remap"):
            vm = vms[act[1][0] % len(vms)]
            page = gpa_of(vm, act[1]) & ~0xFFF
            if kind == "protect":
                vm.page_table.protect(page, 4096, act[2])
            elif kind == "unmap":
                vm.page_table.unmap(page, 4096)
            else:
                vm.page_table.map(page, vm.dram[0].hpa, 4096, act[2])
            log.append((kind, "ok"))
        elif kind == "drain":
            log.append(("drain", hv.platform.drain(act[1])))
        elif kind == "power_fail":
            log.append(("power_fail", bytes(hv.platform.power_fail())))
        elif kind == "pause_resume":
            vm = vms[act[1] % len(vms)]
            vm.pause().resume()
            log.append(("pause_resume", "ok"))
    except GuestFault as e:          # handlers skip, so only a bug would get here
        log.append((kind, "fault", str(e)))
    except NvemuError as e:
        log.append((kind, type(e).__name__, str(e)))


def state(hv, vms):
    e = hv.platform.engine
    return {
        "memory": e.memory_pages(), "media": e.media_pages(),
        "lines": {a: int(s) for a, s in e.line_states().items()},
        "wpq": [e.wpq_entries(c) for c in range(e.n_controllers)],
        "tables": e.tables(), "tables_in_use": e.tables_in_use,
        "stats": [(vm.stats().rows.tolist(), vm.stats().drained_by_controller) for vm in vms],
        "ctrl": e.controller_stats().tolist(),
        "durable": [e.durable_read(vm.nvdimms[0].hpa, vm.nvdimms[0].size) for vm in vms],
        "touched": (e.touched_ranges(), e.touched_bytes),
        "state": {k: v.tolist() for k, v in e.get_state().items()},
        "clocks": [e.clock(vm.id).tolist() for vm in vms],
        "controller_busy": e.controller_busy().tolist(), "dimm_busy": e.dimm_busy().tolist(),
        "dimm_read_busy": e.dimm_read_busy().tolist(),
    }


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(domain=st.sampled_from(["none", "adr", "eadr"]), depth=st.integers(1, 4),
       vms=st.lists(vm_spec, min_size=1, max_size=2), actions=st.lists(action, max_size=12))
def test_core_and_reference_agree(domain, depth, vms, actions):
    runs = []
    for backend in ENGINES:
        hv, made = build(backend, domain, depth, vms)
        log = []
        for act in actions:
            apply(hv, made, act, log)
        runs.append((log, state(hv, made)))
    (core_log, core_state), (ref_log, ref_state) = runs
    assert core_log == ref_log
    for key in core_state:
        assert core_state[key] == ref_state[key], key
    for (rows, _), clock in zip(core_state["stats"], core_state["clocks"]):
        for row, words in zip(rows, clock):       # every advance of a vCPU clock has a category
            assert sum(row[STAT[n]] for n in TIME_STATS) == words[0]


@settings(max_examples=max(EXAMPLES // 3, 10), deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3000))
def test_translation_equals_a_fresh_walk(seed, n):
    """SPEC 7.1: for every mapped GPA, fast path == reference == a fresh walk of the table."""
    picks = np.random.default_rng(seed).integers(0, 2**63, size=n)
    results = []
    for backend in ENGINES:
        hv = Hypervisor(tiny_platform(), backend=backend)
        vm = hv.create_vm(dram=256 << 10, nvdimms=[128 << 10], tlb_entries=8).start()
        ranges = vm.ranges()
        out = []
        for p in picks:
            r = ranges[int(p) % len(ranges)]
            gpa = r.gpa + int(p >> 8) % r.size
            hpa = hv.platform.engine.translate(vm.id, 0, gpa, bool(p & 1))
            assert hpa == vm.page_table.translate(gpa) == r.hpa + gpa - r.gpa
            out.append(hpa)
        results.append((out, vm.stats().rows.tolist()))
    assert results[0] == results[1]


@settings(max_examples=EXAMPLES, deadline=None)
@given(op=st.integers(0, 255), vcpu=st.integers(0, 2), size=st.sampled_from([0, 1, 2, 3, 4, 8, 16, 64, 2**32 - 1]),
       gpa=st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 60, 63, 2**48 - 1, 2**48])),
       value=st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 255, 256, 2**32])))
def test_both_engines_refuse_exactly_what_the_one_validator_refuses(op, vcpu, size, gpa, value):
    """The core's inline checks, the reference model and ``_records.record_code`` agree on every record."""
    expected = BadRecord.VCPU if vcpu >= 2 else record_code(op, size, gpa, value)
    for backend in ENGINES:
        hv = Hypervisor(tiny_platform(), backend=backend)
        vm = hv.create_vm(dram=64 << 10, nvdimms=[64 << 10], vcpus=2).start()
        ops = np.array([(op, vcpu, vm.id, size, gpa, value)], TRACE_DTYPE)
        _, status = hv.platform.engine.run(ops, 0)
        refused = BadRecord(hv.platform.engine.bad_record) if status == RunStatus.BAD_RECORD else BadRecord.NONE
        assert refused == expected, backend
