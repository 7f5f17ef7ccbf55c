"""Guest driver models and the virtual NFIT a guest reads its flush hints from."""

import pytest

from nvemu import Hypervisor, Op
from nvemu.formats import nfit
from nvemu.formats.nfit import virtual_nfit_of
from nvemu.guest.drivers import (NvdimmRegion, TraceWriter, hash_32, nvdimm_flush, pmem_deep_persist, pmem_persist,
                                 pmem_submit_bio, write_persist)

from conftest import tiny_platform


def ops_of(t):
    a = t.to_array()
    return [(Op(r["op"]).name, int(r["gpa"]), int(r["size"])) for r in a]


def test_nvdimm_flush_writes_one_hint_per_dimm_chosen_by_cpu():
    """generic_nvdimm_flush (drivers/nvdimm/region_devs.c): hints_shift = ilog2(min num_flush) = 1,
    idx = this_cpu_add_return(flush_idx, hash_32(pid + idx, 8)) = hash_32(1, 8) = 97 on the first
    call: slot 97 & 1 = 1 of each DIMM (the third hint of the second DIMM is never used)."""
    t = TraceWriter(vcpu=3)
    nvdimm_flush(t, [[0x100, 0x140], [0x200, 0x240, 0x280]])
    assert ops_of(t) == [("SFENCE", 0, 0), ("STORE", 0x140, 8), ("STORE", 0x240, 8), ("SFENCE", 0, 0)]


def test_the_per_cpu_index_rotates_over_a_power_of_two_of_the_hints():
    region = NvdimmRegion([[0xA00, 0xA40, 0xA80, 0xAC0, 0xB00]])     # 5 hints: 1 << ilog2(5) = 4 used
    assert region.hints_used == 4 and hash_32(1, 8) == 97
    t0, t1 = TraceWriter(vcpu=0), TraceWriter(vcpu=1)
    for _ in range(4):
        region.flush(t0)                    # idx 97, 207, 321, 575: slots 1, 3, 1, 3
    region.flush(t1)                        # another CPU starts from its own index
    assert [g for n, g, _ in ops_of(t0) if n == "STORE"] == [0xA40, 0xAC0, 0xA40, 0xAC0]
    assert [g for n, g, _ in ops_of(t1) if n == "STORE"] == [0xA40]
    assert region.flush_idx == {0: 575, 1: 97}


def test_nvdimm_flush_deduplicates_identical_hints():
    t = TraceWriter()
    nvdimm_flush(t, [[0x5000], [0x5000], [0x5000]])
    assert [o for o in ops_of(t) if o[0] == "STORE"] == [("STORE", 0x5000, 8)]


def test_deduplication_looks_at_slot_0_only():
    """nd_region_activate clears a DIMM's slot 0 when it equals an earlier DIMM's slot 0, and
    generic_nvdimm_flush skips a DIMM whose slot 0 is empty, whatever slot idx picks."""
    t = TraceWriter()
    nvdimm_flush(t, [[0x100, 0x140], [0x100, 0x1C0], [0x200, 0x140]])     # idx 97: slot 1
    assert [g for n, g, _ in ops_of(t) if n == "STORE"] == [0x140, 0x140]   # DIMM 1 skipped, 0x140 twice


def test_pmem_submit_bio_flushes_for_preflush_and_fua():
    """drivers/nvdimm/pmem.c pmem_submit_bio: nvdimm_flush before the data for REQ_PREFLUSH, after
    it for REQ_FUA; jbd2's commit block carries both, so a journalled fsync costs two."""
    region = NvdimmRegion([[0x9000]])
    t = TraceWriter()
    pmem_submit_bio(t, region, 0x1000, 16, preflush=True, fua=True)
    assert ops_of(t) == [("SFENCE", 0, 0), ("STORE", 0x9000, 8), ("SFENCE", 0, 0),
                         ("NT_STORE", 0x1000, 8), ("NT_STORE", 0x1008, 8),
                         ("SFENCE", 0, 0), ("STORE", 0x9000, 8), ("SFENCE", 0, 0)]
    t = TraceWriter()
    pmem_submit_bio(t, region, 0x1000, 8)
    assert ops_of(t) == [("NT_STORE", 0x1000, 8)]


def test_linux_fsync_workload_makes_two_flushes_per_fsync():
    from nvemu.guest.workloads import VmLayout, generate
    hv = Hypervisor(tiny_platform())
    vm = hv.create_vm(dram=1 << 20, nvdimms=[512 << 10]).start()
    ops = generate("linux-fsync", 20_000, VmLayout.of(vm), seed=1, max_blocks=2)
    hv.run(ops)
    fsyncs = int(((ops["op"] == Op.SFENCE)).sum()) // 4
    assert int(((ops["op"] == Op.STORE) & (ops["gpa"] == vm.vfha_gpa)).sum()) == 2 * fsyncs > 0
    assert vm.stats().exits[48] == 2 * fsyncs


def test_pmem_deep_persist_writes_deep_flush_unless_it_reads_0():
    """PMDK 2.1: pmem_deep_persist = pmem_deep_flush (write-backs) + pmem_deep_drain (pmem_drain,
    then pmem2_deep_flush_write, which reads the region's deep_flush and skips the write on "0";
    Linux's deep_flush reads nvdimm_has_flush and a write is nvdimm_flush)."""
    t = TraceWriter()
    pmem_deep_persist(t, 0x1000, 8, NvdimmRegion([[0x9000]]))
    assert ops_of(t) == [("CLWB", 0x1000, 0), ("SFENCE", 0, 0), ("SFENCE", 0, 0), ("STORE", 0x9000, 8),
                         ("SFENCE", 0, 0)]
    no_hints = NvdimmRegion([[], []])
    assert no_hints.deep_flush == 0
    t = TraceWriter()
    pmem_deep_persist(t, 0x1000, 8, no_hints)
    assert ops_of(t) == [("CLWB", 0x1000, 0), ("SFENCE", 0, 0)]


def test_pmdk_on_eadr_skips_write_backs_but_not_the_fence():
    """PMDK pmem_init: with eADR detected Funcs.flush is flush_empty; the fence stays, and the deep
    flush keeps the real write-back (Funcs.deep_flush)."""
    t = TraceWriter()
    pmem_persist(t, 0x1000 + 60, 10, eadr=True)
    assert ops_of(t) == [("SFENCE", 0, 0)]


def test_pmem_persist_flushes_every_line_then_fences():
    t = TraceWriter()
    pmem_persist(t, 0x1000 + 60, 10, deep_flush=0x9000)
    assert ops_of(t) == [("CLWB", 0x1000, 0), ("CLWB", 0x1040, 0), ("SFENCE", 0, 0),     # deep: then
                         ("SFENCE", 0, 0), ("STORE", 0x9000, 8), ("SFENCE", 0, 0)]          # nvdimm_flush


def test_write_persist_splits_into_aligned_pieces():
    t = TraceWriter()
    write_persist(t, 0x1003, bytes(range(1, 12)))
    stores = [(g, s) for name, g, s in ops_of(t) if name == "STORE"]
    assert stores == [(0x1003, 1), (0x1004, 4), (0x1008, 4), (0x100C, 2)]
    assert [n for n, _, _ in ops_of(t)][-2:] == ["CLWB", "SFENCE"]


def test_virtual_nfit_names_the_vfha_once_per_vnvdimm():
    hv = Hypervisor(tiny_platform(domain="adr"))
    vm = hv.create_vm(dram=1 << 20, nvdimms=[256 << 10, 256 << 10]).start()
    table = nfit.parse(virtual_nfit_of(vm))
    hints = table.select(nfit.FlushHintAddress)
    assert len(hints) == 2 and all(list(h.hint_addresses) == [vm.vfha_gpa] for h in hints)
    assert nfit.persistence_domain(table) == "adr"                 # never stronger than the host
    spa = table.select(nfit.SpaRange)
    assert [(s.address, s.length) for s in spa] == [(r.gpa, r.size) for r in vm.nvdimms]

    # a Linux guest reads its hints from that table and flushes: one trapping store
    per_dimm = [list(h.hint_addresses) for h in hints]
    g = vm.nvdimms[1].gpa
    t = TraceWriter(vm=vm.id)
    t.store(g, 42)
    pmem_persist(t, g, 8)
    nvdimm_flush(t, per_dimm)
    hv.run(t.to_array())
    s = vm.stats()
    assert (s.exits[48], s["vfha_writes"], s["lines_drained"]) == (1, 1, 1)
    assert hv.platform.read_media(vm.nvdimms[1].hpa, 8) == (42).to_bytes(8, "little")


@pytest.mark.parametrize("domain", ["none", "adr", "eadr"])
def test_virtual_nfit_mirrors_the_host_domain(domain):
    hv = Hypervisor(tiny_platform(domain=domain))
    vm = hv.create_vm(dram=1 << 20, nvdimms=[256 << 10])
    assert nfit.persistence_domain(virtual_nfit_of(vm)) == domain
