"""Bad input gets a clear exception naming what is wrong, on both engines; state stays usable."""

import numpy as np
import pytest

from nvemu import TRACE_DTYPE, ConfigError, GuestFault, LifecycleError, Op, TraceError

from conftest import small_vm, trace


@pytest.fixture
def setup(make_hv):
    hv = make_hv()
    vm = small_vm(hv)
    return hv, vm, vm.nvdimms[0].gpa


@pytest.mark.parametrize("record, message", [
    ((Op.STORE, 0, 0, 3, 0, 1), "size 3 is not valid for STORE"),
    ((Op.LOAD, 0, 0, 16, 0, 0), "size 16 is not valid for LOAD"),
    ((Op.LOAD, 0, 0, 0, 0, 0), "size 0 is not valid for LOAD"),
    ((Op.STORE, 0, 0, 8, 60, 1), "crosses a 64-byte line"),
    ((Op.NT_STORE, 0, 0, 4, 62, 1), "crosses a 64-byte line"),
    ((Op.STORE, 0, 0, 1, 0, 0x100), "does not fit a 1-byte STORE"),
    ((Op.CLWB, 0, 0, 8, 0, 0), "size 8 is not valid for CLWB"),
    ((8, 0, 0, 8, 0, 0), "op 8 is not a known operation"),
    ((255, 0, 0, 0, 0, 0), "op 255 is not a known operation"),
    ((Op.LOAD, 3, 0, 8, 0, 0), "vcpu 3 does not exist in vm 0"),
    ((Op.LOAD, 0, 9, 8, 0, 0), "vm 9 does not exist"),
])
def test_malformed_record_names_index_and_field(setup, record, message):
    hv, vm, gpa = setup
    op, cpu, vmid, size, off, value = record
    good = (Op.STORE, 0, 0, 8, gpa, 5)
    ops = trace(good, (op, cpu, vmid, size, gpa + off, value))
    with pytest.raises(TraceError, match=message) as info:
        hv.run(ops)
    assert str(info.value).startswith("record 1:")
    assert vm.read(gpa, 8) == (5).to_bytes(8, "little")       # the records before it ran
    assert vm.stats()["ops"] == 1                             # the bad one did not
    hv.run(trace(good))                                     # and the hypervisor still works


def test_gpa_outside_the_vm_is_a_guest_fault_with_the_exit_fields(setup):
    hv, vm, gpa = setup
    with pytest.raises(GuestFault) as info:
        hv.run(trace((Op.LOAD, 0, 0, 8, gpa, 0), (Op.STORE, 0, 0, 8, 0x7_0000_0000, 1)))
    f = info.value
    assert (f.reason, f.qualification, f.gpa, f.op_index, f.vm, f.vcpu, f.op) == \
        (48, 0x182, 0x7_0000_0000, 1, 0, 0, Op.STORE)   # SDM: bits 7 and 8
    assert "EPT violation (reason 48) on write of GPA 0x700000000" in str(f)
    assert vm.stats().exits[48] == 1


def test_handler_can_skip_or_retry(setup):
    hv, vm, gpa = setup
    seen = []

    def skip(fault):
        seen.append(fault.gpa)
        return "skip"
    ops = trace((Op.STORE, 0, 0, 8, 0x7_0000_0000, 1), (Op.STORE, 0, 0, 8, gpa, 2))
    result = hv.run(ops, handler=skip)
    assert (result.ops, result.python_exits, seen) == (2, 1, [0x7_0000_0000])
    assert vm.read(gpa, 8) == (2).to_bytes(8, "little")

    def map_then_retry(fault):                                 # demand paging
        vm.page_table.map(fault.gpa & ~0xFFF, vm.dram[0].hpa, 0x1000)
        return "retry"
    hv.run(trace((Op.STORE, 0, 0, 8, 0x7_0000_0008, 3)), handler=map_then_retry)
    assert vm.read(0x7_0000_0008, 8) == (3).to_bytes(8, "little")
    with pytest.raises(ConfigError, match="expected 'skip' or 'retry'"):
        hv.run(trace((Op.LOAD, 0, 0, 8, 0x8_0000_0000, 0)), handler=lambda f: None)


@pytest.mark.parametrize("ops, message", [
    ([1, 2, 3], "numpy array of TRACE_DTYPE"),
    (np.zeros(3, np.uint64), "is not TRACE_DTYPE"),
    (np.zeros((2, 2), TRACE_DTYPE), "one-dimensional"),
])
def test_wrong_trace_containers(setup, ops, message):
    hv, vm, gpa = setup
    with pytest.raises(TraceError, match=message):
        hv.run(ops)


def test_start_outside_the_trace(setup):
    hv, vm, gpa = setup
    with pytest.raises(TraceError, match="start index"):
        hv.platform.engine.run(trace((Op.SFENCE, 0, 0, 0, 0, 0)), 5)
    with pytest.raises((TraceError, OverflowError)):
        hv.platform.engine.run(trace((Op.SFENCE, 0, 0, 0, 0, 0)), -1)


def test_strided_and_readonly_traces_replay(setup):
    hv, vm, gpa = setup
    ops = trace(*[(Op.STORE, 0, 0, 8, gpa + 8 * k, k) for k in range(8)])
    hv.run(ops[::2])
    ro = ops.copy()
    ro.flags.writeable = False
    hv.run(ro)
    assert vm.stats()["stores"] == 12


def test_paused_and_destroyed_vms_refuse_records(setup):
    hv, vm, gpa = setup
    vm.pause()
    with pytest.raises(LifecycleError, match="record 0: vm 0 is paused"):
        hv.run(trace((Op.LOAD, 0, 0, 8, gpa, 0)))
    vm.resume()
    hv.run(trace((Op.LOAD, 0, 0, 8, gpa, 0)))
    cpu = vm.vcpu(0)
    vm.destroy()
    with pytest.raises(LifecycleError, match="destroyed"):
        cpu.load(gpa)
    with pytest.raises(TraceError, match="vm 0 does not exist"):
        hv.run(trace((Op.LOAD, 0, 0, 8, gpa, 0)))
