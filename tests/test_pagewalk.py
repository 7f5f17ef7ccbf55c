"""Second-level page tables: hand-computed walks, large pages, permissions, A/D bits, and the
software TLB's invalidation rule (a changed permission is never missed, by any vCPU)."""

import pytest

from nvemu import ConfigError, GuestFault, Op, ResourceError
from nvemu._constants import (EPT_ACCESSED, EPT_DIRTY, EPT_LARGE, EPT_MEMTYPE_WB, EPT_R, EPT_RWX, EPT_W,
                              PAGE_2M)
from nvemu.machine.hypervisor import Hypervisor

from conftest import small_vm, tiny_platform, trace

GPA = 0x1234_5678_9000      # indices 36, 209, 179, 393 (bits 47:39, 38:30, 29:21, 20:12)


@pytest.fixture
def engine(backend):
    """A bare engine with one VM (id 0, 2 vCPUs) and nothing mapped."""
    hv = Hypervisor(tiny_platform(), backend=backend)
    e = hv.platform.engine
    e.add_vm(0, 2, 16)
    return e


def test_walk_indices_and_entries_are_the_ept_layout(engine):
    engine.map(0, GPA, 0x5000, 0x1000, EPT_R | EPT_W)
    path = engine.walk(0, GPA)
    assert [(lvl, idx) for lvl, _, idx, _ in path] == [(4, 36), (3, 209), (2, 179), (1, 393)]
    root, pdpt, pd, pt = (t for _, t, _, _ in path)
    assert (root, pdpt, pd, pt) == (0, 1, 2, 3)          # tables allocated in walk order
    # non-leaf entries point at the next table with RWX; the leaf holds HPA | WB | perms
    assert [e for *_, e in path[:3]] == [(1 << 12) | 7, (2 << 12) | 7, (3 << 12) | 7]
    assert path[3][3] == 0x5000 | EPT_MEMTYPE_WB | EPT_R | EPT_W
    assert engine.tables_in_use == 4


def test_translation_sets_accessed_then_dirty(engine):
    engine.map(0, GPA, 0x5000, 0x1000, EPT_RWX)
    assert engine.translate(0, 0, GPA + 0x10) == 0x5010
    leaf = engine.walk(0, GPA)[-1][3]
    assert leaf & EPT_ACCESSED and not leaf & EPT_DIRTY
    assert all(e & EPT_ACCESSED for *_, e in engine.walk(0, GPA))
    engine.translate(0, 0, GPA, write=True)                # a TLB hit that must still set D
    assert engine.walk(0, GPA)[-1][3] & EPT_DIRTY
    s = engine.stats(0)[0]
    from nvemu._constants import STAT
    assert (s[STAT["tlb_misses"]], s[STAT["tlb_hits"]], s[STAT["walk_refs"]]) == (1, 1, 4)


def test_walk_of_unmapped_gpa_stops_at_the_first_empty_entry(engine):
    path = engine.walk(0, GPA)
    assert len(path) == 1 and path[0][3] == 0
    with pytest.raises(GuestFault) as info:
        engine.translate(0, 0, GPA)
    f = info.value
    assert (f.reason, f.read, f.write, f.readable, f.writable, f.gpa) == (48, True, False, False, False, GPA)


def test_2mib_mapping_walks_three_levels(engine):
    engine.map(0, 0x4000_0000, 0x20_0000, PAGE_2M, EPT_RWX, PAGE_2M)
    path = engine.walk(0, 0x4000_0000 + 0x12345)
    assert [lvl for lvl, *_ in path] == [4, 3, 2]
    assert path[-1][3] & EPT_LARGE
    assert engine.translate(0, 0, 0x4000_0000 + 0x12345) == 0x20_0000 + 0x12345


def test_protect_inside_a_large_page_splits_it(engine):
    engine.map(0, 0x4000_0000, 0x20_0000, PAGE_2M, EPT_RWX, PAGE_2M)
    engine.protect(0, 0x4000_0000 + 0x3000, 0x1000, EPT_R)
    path = engine.walk(0, 0x4000_0000 + 0x3000)
    assert [lvl for lvl, *_ in path] == [4, 3, 2, 1]
    assert path[-1][3] & EPT_RWX == EPT_R and not path[-1][3] & EPT_LARGE
    assert engine.translate(0, 0, 0x4000_0000 + 0x3008) == 0x20_3008   # same HPA after the split
    assert engine.walk(0, 0x4000_0000 + 0x4000)[-1][3] & EPT_RWX == EPT_RWX
    with pytest.raises(GuestFault):
        engine.translate(0, 0, 0x4000_0000 + 0x3000, write=True)


def test_unmap_and_map_errors(engine):
    engine.map(0, GPA, 0x5000, 0x2000, EPT_RWX)
    engine.unmap(0, GPA, 0x1000)
    assert engine.walk(0, GPA)[-1][3] == 0
    assert engine.translate(0, 0, GPA + 0x1000) == 0x6000
    with pytest.raises(ConfigError, match="not mapped"):
        engine.protect(0, GPA, 0x1000, EPT_R)
    with pytest.raises(ConfigError, match="aligned"):
        engine.map(0, GPA + 8, 0x5000, 0x1000, EPT_RWX)
    with pytest.raises(ConfigError, match="not host DRAM or NVDIMM"):
        engine.map(0, GPA, 0x7000_0000, 0x1000, EPT_RWX)
    with pytest.raises(ConfigError, match="48-bit"):
        engine.map(0, 1 << 48, 0x5000, 0x1000, EPT_RWX)
    with pytest.raises(ConfigError, match="perms"):
        engine.map(0, GPA, 0x5000, 0x1000, 0)
    with pytest.raises(ConfigError, match="does not exist"):
        engine.walk(7, GPA)


def test_pool_exhaustion_is_a_resource_error(backend):
    from nvemu.machine.platform import Platform
    p = Platform(tiny_platform(), pool_tables=3, backend=backend)
    p.engine.add_vm(0, 1, 16)
    with pytest.raises(ResourceError, match="pool is exhausted"):
        p.engine.map(0, GPA, 0x5000, 0x1000, EPT_RWX)


@pytest.mark.parametrize("change", ["protect", "unmap", "remap"])
def test_no_stale_tlb_entry_on_any_vcpu(make_hv, change):
    """SPEC 7.2: flip W off (or unmap, or remap) while both vCPUs cache the translation; the
    next store exits on each of them."""
    hv = make_hv()
    vm = small_vm(hv, vcpus=2)
    gpa = vm.nvdimms[0].gpa
    for cpu in vm.vcpus:
        cpu.store(gpa, 1)                       # both TLBs now hold a writable translation
    hits_before = vm.stats().total["tlb_hits"]
    if change == "protect":
        vm.page_table.protect(gpa, 0x1000, EPT_R)
    elif change == "unmap":
        vm.page_table.unmap(gpa, 0x1000)
    else:                                       # same GPA, another host page, read-only
        vm.page_table.map(gpa, vm.nvdimms[0].hpa + 0x1000, 0x1000, EPT_R)
    for cpu in vm.vcpus:
        with pytest.raises(GuestFault) as info:
            cpu.store(gpa, 2)
        assert info.value.reason == 48 and info.value.write
        assert info.value.writable is False
        assert info.value.readable is (change != "unmap")
    assert vm.stats().total["tlb_hits"] == hits_before     # both stores walked again
    if change != "unmap":
        assert vm.read(gpa, 8) == (1 if change == "protect" else 0).to_bytes(8, "little")


def test_tlb_conflict_misses_are_counted(make_hv):
    hv = make_hv()
    vm = small_vm(hv, tlb_entries=4)
    base = vm.nvdimms[0].gpa
    # pages 0 and 4 share slot 0 of a 4-entry direct-mapped TLB
    ops = [(Op.LOAD, 0, vm.id, 8, base + p * 0x1000, 0) for p in (0, 4, 0, 4, 1, 1)]
    hv.run(trace(*ops))
    t = vm.stats().total
    assert (t["tlb_misses"], t["tlb_hits"]) == (5, 1)
