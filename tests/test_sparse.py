"""Sparse host memory (issue 17): chunks allocated on first write in both engines, reads of untouched
memory allocate nothing, the TLB's cached chunk stays right when another vCPU or VM allocates it,
sparse durable images, the memory budget, and scrubbing a destroyed VM's host ranges (issue 12)."""

from __future__ import annotations

import pytest

from nvemu import Hypervisor, Op, ResourceError
from nvemu._image import DurableImage
from nvemu.machine.config import GiB, MiB, preset
from nvemu.machine.platform import Platform

from conftest import ENGINES, needs_compiled, small_vm, tiny_platform, trace



def hv_on(backend, chunk_shift=21, **kw):
    return Hypervisor(Platform(tiny_platform(**kw), backend=backend, chunk_shift=chunk_shift))


def test_reads_of_untouched_memory_are_zero_and_allocate_nothing(backend):
    hv = hv_on(backend)
    vm = small_vm(hv)
    p = hv.platform
    assert p.touched_bytes == 0
    nv, dram = vm.nvdimms[0], vm.dram[0]
    cpu = vm.vcpu(0)
    assert cpu.load(nv.gpa + 8) == 0 and cpu.load(dram.gpa) == 0
    hv.run(trace((Op.CLWB, 0, vm.id, 0, nv.gpa, 0), (Op.CLFLUSH, 0, vm.id, 64, nv.gpa + 64, 0)))
    assert p.read_memory(nv.hpa, 4096) == bytes(4096) and p.read_media(nv.hpa, 4096) == bytes(4096)
    assert p.durable_read(nv.hpa, 4096) == bytes(4096)
    assert p.touched_bytes == 0 and p.engine.touched_ranges() == []
    cpu.store(nv.gpa + 8, 0x1234)
    chunk = 2 * MiB
    assert len(p.engine.touched_ranges()) == 1
    assert p.touched_bytes == 2 * chunk + 2 * chunk // 64        # memory, media, line words of one chunk
    assert cpu.load(nv.gpa + 8) == 0x1234


def test_a_cached_empty_chunk_sees_a_write_by_another_vcpu(backend):
    """vCPU 0 caches the translation of a page never written; vCPU 1 writes it; vCPU 0 must read the value."""
    hv = hv_on(backend, chunk_shift=12)
    vm = small_vm(hv, vcpus=2)
    g = vm.nvdimms[0].gpa + 4096
    hv.run(trace((Op.LOAD, 0, vm.id, 8, g, 0), (Op.STORE, 1, vm.id, 8, g, 77), (Op.LOAD, 0, vm.id, 8, g, 0)))
    assert hv.platform.engine.last_value == 77
    assert vm.stats()["tlb_hits"] == 1         # vCPU 0's second load hit its TLB and still saw the store


@needs_compiled("compares the compiled core with the reference model")
def test_core_and_reference_touch_the_same_chunks_and_leave_the_same_image():
    images, ranges = [], []
    for backend in ENGINES:
        hv = Hypervisor(Platform(tiny_platform(), backend=backend, chunk_shift=14))
        vm = small_vm(hv)
        nv = vm.nvdimms[0]
        recs = []
        for k, off in enumerate((0, 5000, 70000, 300000)):
            recs += [(Op.STORE, 0, vm.id, 8, nv.gpa + off, k + 1), (Op.CLWB, 0, vm.id, 0, nv.gpa + off, 0)]
        recs += [(Op.STORE, 0, vm.id, 8, vm.dram[0].gpa + 123 * 8, 5), (Op.STORE, 0, vm.id, 8, vm.vfha_gpa, 1)]
        hv.run(trace(*recs))
        ranges.append(hv.platform.engine.touched_ranges())
        images.append(hv.platform.power_fail())
        ranges.append(hv.platform.engine.touched_ranges())      # DRAM chunks are gone after the reboot
    assert ranges[0] == ranges[2] and ranges[1] == ranges[3]
    assert len(ranges[1]) == len(ranges[0]) - 1
    core, ref = images
    assert core == ref and core.ranges() == ref.ranges() and core.diff(ref) == []
    assert len(core.ranges()) == 3 and core.touched_bytes == 3 * (1 << 14)   # 0 and 5000 share one


def test_durable_image_reads_lists_compares_and_copies(backend):
    hv = hv_on(backend, domain="adr")
    vm = small_vm(hv)
    cpu, nv = vm.vcpu(0), vm.nvdimms[0]
    cpu.store(nv.gpa + 64, 0xAB); cpu.clwb(nv.gpa + 64); cpu.sfence()
    p = hv.platform
    probe = p.durable_read(nv.hpa, 256)
    image = p.power_fail()
    assert isinstance(image, DurableImage) and len(image) == p.pmem_bytes
    assert image.read(nv.hpa, 256) == probe and probe[64] == 0xAB
    off = nv.hpa - p.pmem_base
    assert image[off + 64] == 0xAB and bytes(image[off:off + 256]) == probe
    (start, length), = image.ranges()
    assert start <= nv.hpa < start + length
    dense = image.to_array()
    assert dense.shape == (p.pmem_bytes,) and dense[off + 64] == 0xAB and int(dense.sum()) == 0xAB
    with pytest.raises(ResourceError, match="limit"):
        image.to_array(limit=1024)
    cpu.store(nv.gpa + 64, 0xCD); cpu.clwb(nv.gpa + 64); cpu.sfence()
    later = p.power_fail()
    assert later.diff(image) == [(nv.hpa + 64, 1)] and later != image
    assert image == DurableImage(p.pmem_base, p.pmem_bytes, 4096,
                                 {off - off % 4096: image.read(nv.hpa - off % 4096, 4096)})


def test_touched_memory_beyond_the_budget_is_a_resource_error(backend):
    p = Platform(tiny_platform(), backend=backend, memory_budget=5 * MiB)
    hv = Hypervisor(p)
    vm = small_vm(hv)
    cpu = vm.vcpu(0)
    cpu.store(vm.nvdimms[0].gpa, 1)                       # one NVDIMM chunk: about 4.1 MiB
    with pytest.raises(ResourceError, match=r"memory budget of 5 MiB .*NVEMU_MEMORY_BUDGET") as e:
        hv.run(trace((Op.LOAD, 0, vm.id, 8, vm.dram[0].gpa, 0), (Op.STORE, 0, vm.id, 8, vm.dram[0].gpa, 2)))
    assert e.value.index == 1
    assert cpu.load(vm.dram[0].gpa) == 0                  # refused, nothing written
    p.memory_budget = 16 * MiB
    cpu.store(vm.dram[0].gpa, 2)
    assert cpu.load(vm.dram[0].gpa) == 2
    assert p.touched_bytes <= p.memory_budget


def test_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv("NVEMU_MEMORY_BUDGET", "3G")
    assert Platform(tiny_platform()).memory_budget == 3 * GiB
    monkeypatch.setenv("NVEMU_MEMORY_BUDGET", "lots")
    with pytest.raises(Exception, match="NVEMU_MEMORY_BUDGET='lots' is not a size"):
        Platform(tiny_platform())


@pytest.mark.parametrize("chunk_shift", [12, 21])
def test_a_destroyed_vms_memory_media_and_queued_lines_never_reach_the_next_vm(backend, chunk_shift):
    """SPEC 7.8 / issue 12: scrubbed before the host ranges are reused (whole chunks dropped, partial
    chunks zeroed), read from the next VM and from a power-failure image."""
    hv = hv_on(backend, chunk_shift=chunk_shift, domain="adr", wpq_depth=16)
    other = small_vm(hv)
    victim = small_vm(hv)
    g, d = victim.nvdimms[0].gpa, victim.dram[0].gpa
    cpu = victim.vcpu(0)
    cpu.store(g, 0x1111); cpu.clwb(g); cpu.sfence(); hv.platform.drain()       # on media
    cpu.store(g + 64, 0x2222); cpu.clwb(g + 64)                               # queued in a WPQ
    cpu.store(g + 128, 0x3333)                                                # dirty
    cpu.store(d, 0x4444)                                                      # DRAM
    ocpu = other.vcpu(0)
    ocpu.store(other.nvdimms[0].gpa, 0x5555); ocpu.clwb(other.nvdimms[0].gpa)  # another VM's queued line stays
    old = (victim.nvdimms[0].hpa, victim.dram[0].hpa)
    victim.destroy()
    heir = small_vm(hv)
    assert (heir.nvdimms[0].hpa, heir.dram[0].hpa) == old                     # the same host ranges, reused
    h = heir.vcpu(0)
    assert heir.read(heir.nvdimms[0].gpa, 192) == bytes(192) and h.load(heir.dram[0].gpa) == 0
    p = hv.platform
    assert p.read_media(old[0], 192) == bytes(192) and p.durable_read(old[0], 192) == bytes(192)
    assert all(not old[0] <= line < old[0] + victim.nvdimms[0].size for c in range(p.n_controllers)
               for line, _ in p.wpq(c))
    assert [a for a in p.line_states() if old[0] <= a < old[0] + victim.nvdimms[0].size] == []
    image = p.power_fail()
    assert image.read(old[0], victim.nvdimms[0].size) == bytes(victim.nvdimms[0].size)
    assert image.read(other.nvdimms[0].hpa, 8) == (0x5555).to_bytes(8, "little")


def test_optane_3t_is_the_published_machine_and_costs_nothing_to_build():
    cfg = preset("optane-3t")
    assert len(cfg.controllers) == 4 and len(cfg.nvdimms) == 12
    assert {d.size for d in cfg.nvdimms} == {256 * GiB} and cfg.pmem_bytes == 3 << 40
    assert [len(s.dimms) for s in cfg.interleave_sets] == [6, 6]
    assert {s.granularity for s in cfg.interleave_sets} == {4096}
    assert all(len(cfg.controller_flush_hints(c)) == 1 for c in range(4))
    assert cfg.domain == "adr" and cfg.dram_bytes == 384 * GiB
    for s in cfg.interleave_sets:                                              # a set stays on its socket
        assert len({cfg.controllers[cfg.nvdimms[d].controller].socket for d in s.dimms}) == 1
    hv = Hypervisor("optane-3t")
    assert hv.platform.touched_bytes == 0
    vm = hv.create_vm(nvdimms=[1 * GiB] * 64).start()
    assert len(vm.nvdimms) == 64
    last = vm.nvdimms[-1]
    vm.vcpu(0).store(last.gpa + last.size - 8, 9)
    assert vm.vcpu(0).load(last.gpa + last.size - 8) == 9
    with pytest.raises(Exception, match="64"):
        hv.create_vm(nvdimms=[4096] * 65)


def test_a_trace_made_for_default_replays_on_optane_3t():
    """vm_sizes keeps the default VM wherever it fits, so the guest layout does not depend on the host."""
    from nvemu.guest.workloads import generate
    from nvemu.tools.prepare import vm_layouts
    from nvemu.tools.replayer import replay
    assert vm_layouts("default")[0] == vm_layouts("optane-3t")[0]
    t = generate("kv-put", 3000, vm_layouts("default")[0], seed=1)
    a, b = replay(t, platform="default"), replay(t, platform="optane-3t")
    assert a.ops == b.ops == len(t)
