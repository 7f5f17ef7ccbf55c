"""Power failure (SPEC 7.3): the durable image per persistence domain, exactly, and the
post-reboot state; the vFHA protocol per domain x strategy, failing before and after the write."""

import pytest

from nvemu import Op

from conftest import small_vm, trace

LINE = 64


def line(value: int) -> bytes:
    return value.to_bytes(8, "little") + bytes(56)


def image_line(image, hv, hpa: int) -> bytes:
    off = hpa - hv.platform.pmem_base
    return bytes(image[off:off + LINE])


@pytest.mark.parametrize("domain", ["none", "adr", "eadr"])
def test_durable_image_per_domain(make_hv, domain):
    hv = make_hv(domain=domain)
    vm = small_vm(hv)
    cpu, gpa, hpa = vm.vcpu(0), vm.nvdimms[0].gpa, vm.nvdimms[0].hpa
    a, b, c, d = (gpa + k * LINE for k in range(4))
    cpu.store(d, 4); cpu.clwb(d); hv.platform.drain()          # D: on media
    cpu.store(a, 1)                                            # A: dirty only
    cpu.store(b, 2); cpu.clwb(b)                               # B: queued
    cpu.store(c, 3); cpu.clwb(c); cpu.store(c, 33); cpu.clwb(c)  # C: queued twice
    cpu.store(c, 333)                                          # ... and dirty again
    cpu.store(vm.dram[0].gpa, 0x77)                            # DRAM: lost in every domain
    probe = hv.platform.durable_read(hpa + 8, 4 * LINE - 8)    # the same answer, nothing failed
    assert hv.platform.line_states()[hpa] == 1
    image = hv.platform.power_fail()
    assert probe == hv.platform.read_media(hpa + 8, 4 * LINE - 8)
    expect = {
        "none": [0, 0, 0, 4],
        "adr": [0, 2, 33, 4],
        "eadr": [1, 2, 333, 4],
    }[domain]
    got = [int.from_bytes(image_line(image, hv, hpa + k * LINE)[:8], "little") for k in range(4)]
    assert got == expect
    whole = bytearray(hv.platform.pmem_bytes)                  # nothing else in the image
    for k, value in enumerate(expect):
        off = hpa - hv.platform.pmem_base + k * LINE
        whole[off:off + 8] = value.to_bytes(8, "little")
    assert bytes(image) == bytes(whole)
    # after the reboot: media is the image, CPUs see it, caches/WPQs empty, DRAM zero
    p = hv.platform
    assert p.read_media(hpa, 4 * LINE) == bytes(image[hpa - p.pmem_base:hpa - p.pmem_base + 4 * LINE])
    assert vm.read(gpa, 4 * LINE) == p.read_media(hpa, 4 * LINE)
    assert p.line_states() == {} and p.wpq(0) == [] and p.wpq(1) == []
    assert vm.read(vm.dram[0].gpa, 8) == bytes(8)


def persist_then_flush_hint(vm, value: int):
    """Guest: store, clwb, sfence, then the vFHA write and a fence (index of the vFHA write)."""
    g = vm.nvdimms[0].gpa
    ops = [(Op.STORE, 0, vm.id, 8, g, value), (Op.CLWB, 0, vm.id, 0, g, 0), (Op.SFENCE, 0, vm.id, 0, 0, 0),
           (Op.STORE, 0, vm.id, 8, vm.vfha_gpa, 1), (Op.SFENCE, 0, vm.id, 0, 0, 0)]
    return trace(*ops), 3


@pytest.mark.parametrize("domain", ["none", "adr", "eadr"])
@pytest.mark.parametrize("strategy", ["write-protect", "mmio", "hypercall", "writable", "drop"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_vfha_protocol_durability(make_hv, domain, strategy, when):
    """SPEC 7.3: written, flushed and fenced, then the vFHA write and fence: durable in every
    domain when the hypervisor drains; without the vFHA write only under adr/eadr."""
    hv = make_hv(domain=domain)
    vm = small_vm(hv, strategy=strategy)
    ops, fha_index = persist_then_flush_hint(vm, 0x5EED)
    hv.run(ops[:fha_index] if when == "before" else ops)
    image = hv.platform.power_fail()
    durable = image_line(image, hv, vm.nvdimms[0].hpa)[:8] == (0x5EED).to_bytes(8, "little")
    drains = strategy in ("write-protect", "mmio", "hypercall")
    assert durable == (domain != "none" or (when == "after" and drains))


def test_no_flush_hints_means_auto_is_writable_with_zero_exits(make_hv):
    hv = make_hv(hints=0, domain="adr")
    vm = small_vm(hv)
    assert vm.strategy == "writable" and not hv.platform.wpq_flush
    ops, _ = persist_then_flush_hint(vm, 1)
    hv.run(ops)
    assert vm.stats().exit_count == 0
    assert vm.stats()["lines_drained"] == 0
    assert vm.read(vm.vfha_gpa, 8) == (1).to_bytes(8, "little")   # an ordinary page
