"""Guest driver models and the virtual NFIT a guest reads its flush hints from."""

import pytest

from nvemu import Hypervisor, Op
from nvemu.formats import nfit
from nvemu.formats.nfit import virtual_nfit_of
from nvemu.guest.drivers import TraceWriter, nvdimm_flush, pmem_persist, write_persist

from conftest import tiny_platform


def ops_of(t):
    a = t.to_array()
    return [(Op(r["op"]).name, int(r["gpa"]), int(r["size"])) for r in a]


def test_nvdimm_flush_writes_one_hint_per_dimm_chosen_by_cpu():
    t = TraceWriter(vcpu=3)
    nvdimm_flush(t, [[0x100, 0x140], [0x200, 0x240, 0x280]])
    assert ops_of(t) == [("SFENCE", 0, 0), ("STORE", 0x140, 8), ("STORE", 0x200, 8), ("SFENCE", 0, 0)]


def test_nvdimm_flush_deduplicates_identical_hints():
    t = TraceWriter()
    nvdimm_flush(t, [[0x5000], [0x5000], [0x5000]])
    assert [o for o in ops_of(t) if o[0] == "STORE"] == [("STORE", 0x5000, 8)]


def test_pmem_persist_flushes_every_line_then_fences():
    t = TraceWriter()
    pmem_persist(t, 0x1000 + 60, 10, deep_flush=0x9000)
    assert ops_of(t) == [("CLWB", 0x1000, 0), ("CLWB", 0x1040, 0), ("SFENCE", 0, 0),
                         ("STORE", 0x9000, 8), ("SFENCE", 0, 0)]


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
