"""Exit qualifications as the Intel SDM defines them (issue 16, item 3).

Source: Intel 64 and IA-32 Architectures Software Developer's Manual, Vol. 3C, section 27.2.1
("Basic VM-Exit Information"), table "Exit Qualification for EPT Violations": bits 0-2 the access
(read, write, fetch), bits 3-5 the logical AND of the R/W/X bits of the EPT entries used, bit 7 set
when the guest linear-address field is valid (every EPT violation except a PDPTE load by MOV CR),
bit 8 set when the access was to the final translation of that linear address (not to a guest
paging-structure entry). Every guest data access nvemu models is a final-translation access, so a
store to a read-only leaf reports 0x18a and a read of a not-present entry 0x181. An EPT
misconfiguration is not among the exits that save a qualification (the field is cleared; KVM's
``handle_ept_misconfig`` reads only the guest-physical address): it reports 0.
"""

from __future__ import annotations

import pytest

from nvemu import _constants as c
from nvemu._constants import EPT_R, EPT_W, ExitReason, Op
from nvemu.errors import GuestFault

from conftest import small_vm, trace


def fault_of(hv, *records) -> GuestFault:
    with pytest.raises(GuestFault) as info:
        hv.run(trace(*records))
    return info.value


def test_store_to_a_read_only_leaf_reports_0x18a(make_hv):
    hv = make_hv()
    vm = small_vm(hv)
    g = vm.nvdimms[0].gpa
    vm.page_table.protect(g, 4096, EPT_R)
    f = fault_of(hv, (Op.STORE, 0, vm.id, 8, g, 1))
    assert (f.reason, f.qualification) == (ExitReason.EPT_VIOLATION, 0x18a)
    assert f.qualification == (c.QUAL_WRITE | EPT_R << 3 | c.QUAL_LINEAR_VALID | c.QUAL_FINAL_TRANSLATION)
    assert (f.write, f.readable, f.writable) == (True, True, False)


def test_not_present_read_and_write_report_bits_7_and_8(make_hv):
    hv = make_hv()
    vm = small_vm(hv)
    hole = 0x7_0000_0000
    assert fault_of(hv, (Op.LOAD, 0, vm.id, 8, hole, 0)).qualification == 0x181
    assert fault_of(hv, (Op.NT_STORE, 0, vm.id, 8, hole, 0)).qualification == 0x182
    assert fault_of(hv, (Op.CLWB, 0, vm.id, 0, hole, 0)).qualification == 0x181   # a flush reads


def test_host_side_translate_reports_the_same_qualification(make_hv):
    hv = make_hv()
    vm = small_vm(hv)
    g = vm.nvdimms[0].gpa
    vm.page_table.protect(g, 4096, EPT_R)
    with pytest.raises(GuestFault) as info:
        hv.platform.engine.translate(vm.id, 0, g, write=True)
    assert info.value.qualification == 0x18a


def test_ept_misconfiguration_saves_no_qualification(make_hv):
    hv = make_hv()
    vm = small_vm(hv)
    g = vm.nvdimms[0].gpa
    vm.page_table.protect(g, 4096, EPT_W)                         # W without R: misconfigured
    for op in (Op.LOAD, Op.STORE):
        f = fault_of(hv, (op, 0, vm.id, 8, g, 0))
        assert (f.reason, f.qualification, f.gpa, f.op) == (ExitReason.EPT_MISCONFIG, 0, g, op)
    assert "EPT misconfiguration (reason 49) on write" in str(f)
    with pytest.raises(GuestFault) as info:
        hv.platform.engine.translate(vm.id, 0, g)
    assert (info.value.reason, info.value.qualification) == (ExitReason.EPT_MISCONFIG, 0)
