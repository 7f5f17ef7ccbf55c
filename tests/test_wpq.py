"""Cache-line states and WPQs (SPEC 1-2): exact memory, media, states and queue contents."""

import pytest

from nvemu import LineState, Op

from conftest import small_vm, trace

LINE = 64


def q(value: int) -> bytes:
    """A 64-byte line image whose first 8 bytes hold ``value``."""
    return value.to_bytes(8, "little") + bytes(56)


@pytest.fixture
def setup(make_hv):
    hv = make_hv()
    vm = small_vm(hv)
    return hv, vm, vm.vcpu(0), vm.nvdimms[0].gpa, vm.nvdimms[0].hpa


def test_interleave_puts_4k_granules_on_alternate_controllers(setup):
    hv, vm, cpu, gpa, hpa = setup
    assert [hv.platform.controller_of(hpa + k * 4096) for k in range(4)] == [0, 1, 0, 1]
    assert hv.platform.controller_of(hpa + 4095) == 0
    assert [hv.platform.nvdimm_of(hpa + k * 4096) for k in range(2)] == [0, 1]


def test_store_clwb_store_keeps_the_queued_copy(setup):
    hv, vm, cpu, gpa, hpa = setup
    p = hv.platform
    cpu.store(gpa, 0x11)
    assert p.line_states() == {hpa: LineState.DIRTY}
    cpu.clwb(gpa)
    assert p.line_states() == {hpa: LineState.QUEUED}
    assert p.wpq(0) == [(hpa, q(0x11))]
    cpu.store(gpa, 0x22)                         # dirty again; the queued copy stays 0x11
    assert p.line_states() == {hpa: LineState.DIRTY}
    assert p.wpq(0) == [(hpa, q(0x11))]
    cpu.clwb(gpa)                                # a second copy joins the queue
    assert p.wpq(0) == [(hpa, q(0x11)), (hpa, q(0x22))]
    cpu.store(gpa, 0x33)
    assert p.drain([0]) == 2
    assert p.read_media(hpa, LINE) == q(0x22)    # the queued copy, not what memory holds now
    assert p.read_memory(hpa, 8) == q(0x33)[:8]
    assert p.line_states() == {hpa: LineState.DIRTY}
    assert p.wpq(0) == []


def test_drain_clears_queued_lines(setup):
    hv, vm, cpu, gpa, hpa = setup
    cpu.store(gpa + 8, 5)
    cpu.clflushopt(gpa)
    hv.platform.drain()
    assert hv.platform.line_states() == {}
    assert hv.platform.read_media(hpa, 16) == bytes(8) + (5).to_bytes(8, "little")


@pytest.mark.parametrize("flush", [Op.CLWB, Op.CLFLUSHOPT, Op.CLFLUSH])
def test_flush_of_clean_or_queued_line_queues_nothing(setup, flush):
    hv, vm, cpu, gpa, hpa = setup
    cpu.execute(flush, gpa, 0)                    # clean: nothing to write back
    assert hv.platform.wpq(0) == []
    cpu.store(gpa, 1)
    cpu.execute(flush, gpa, 64)
    cpu.execute(flush, gpa, 0)                    # already queued, not dirty: nothing more
    assert hv.platform.wpq(0) == [(hpa, q(1))]
    assert vm.stats()["lines_flushed"] == 1
    assert vm.stats()[Op(flush).name.lower()] == 3


def test_nt_store_goes_straight_to_the_wpq(setup):
    hv, vm, cpu, gpa, hpa = setup
    cpu.store(gpa, 7)                             # the rest of the line is dirty in the cache
    cpu.nt_store(gpa + 8, 9)
    assert hv.platform.line_states() == {hpa: LineState.QUEUED}
    assert hv.platform.wpq(0) == [(hpa, q(7)[:8] + (9).to_bytes(8, "little") + bytes(48))]


def test_full_wpq_drains_its_oldest_line(setup):
    hv, vm, cpu, gpa, hpa = setup
    depth = hv.platform.config.wpq_depth
    lines = [gpa + k * LINE for k in range(depth + 1)]      # all in page 0: controller 0
    ops = []
    for k, line in enumerate(lines):
        ops += [(Op.STORE, 0, 0, 8, line, k + 1), (Op.CLWB, 0, 0, 0, line, 0)]
    hv.run(trace(*ops))
    p = hv.platform
    assert [a for a, _ in p.wpq(0)] == [hpa + k * LINE for k in range(1, depth + 1)]
    assert p.read_media(hpa, LINE) == q(1)
    assert p.line_states()[hpa + LINE] == LineState.QUEUED and hpa not in p.line_states()
    c = p.controller_stats()[0]
    assert (c["enqueued"], c["drained"], c["drained_full"]) == (depth + 1, 1, 1)


def test_dram_has_no_persistence_state(setup):
    hv, vm, cpu, gpa, hpa = setup
    dram = vm.dram[0]
    cpu.store(dram.gpa + 0x100, 0xABCD, 2)
    cpu.clwb(dram.gpa + 0x100)
    assert hv.platform.line_states() == {}
    assert all(hv.platform.wpq(c) == [] for c in range(2))
    assert cpu.load(dram.gpa + 0x100, 2) == 0xABCD
    assert hv.platform.read_memory(dram.hpa + 0x100, 2) == b"\xcd\xab"


def test_loads_of_every_size_are_little_endian(setup):
    hv, vm, cpu, gpa, hpa = setup
    cpu.store(gpa, 0x0807060504030201)
    assert [cpu.load(gpa, n) for n in (1, 2, 4, 8)] == [0x01, 0x0201, 0x04030201, 0x0807060504030201]
    assert cpu.load(gpa + 6, 2) == 0x0807
    cpu.store(gpa + 3, 0xFF, 1)
    assert cpu.load(gpa, 8) == 0x08070605FF030201


def test_fences_are_counted(setup):
    hv, vm, cpu, gpa, hpa = setup
    cpu.sfence(); cpu.sfence(); cpu.mfence()
    t = vm.stats().total
    assert (t["sfence"], t["mfence"], t["ops"]) == (2, 1, 3)


def test_vfha_write_drains_every_wpq_fifo_before_the_next_op(setup):
    hv, vm, cpu, gpa, hpa = setup
    ops = []
    for k in range(3):                       # lines on controller 0 (page 0) and 1 (page 1)
        for page in (0, 1):
            ops += [(Op.STORE, 0, 0, 8, gpa + page * 4096 + k * LINE, 10 * page + k + 1),
                    (Op.CLWB, 0, 0, 0, gpa + page * 4096 + k * LINE, 0)]
    ops += [(Op.STORE, 0, 0, 8, gpa, 99), (Op.CLWB, 0, 0, 0, gpa, 0)]      # line 0 queued twice
    ops += [(Op.SFENCE, 0, 0, 0, 0, 0), (Op.STORE, 0, 0, 8, vm.vfha_gpa, 1)]
    ops += [(Op.LOAD, 0, 0, 8, gpa + 4096, 0)]
    hv.run(trace(*ops))
    p = hv.platform
    assert p.wpq(0) == [] and p.wpq(1) == [] and p.line_states() == {}
    assert p.read_media(hpa, 8) == q(99)[:8]                 # FIFO: the later copy wins
    for k in range(1, 3):
        assert p.read_media(hpa + k * LINE, 8) == q(k + 1)[:8]
        assert p.read_media(hpa + 4096 + k * LINE, 8) == q(10 + k + 1)[:8]
    s = vm.stats()
    assert (s.exits[48], s["vfha_writes"], s["fha_writes"], s["lines_drained"]) == (1, 1, 2, 7)
    assert s["load_sum"] == 11
    assert [c["drained"] for c in p.controller_stats()] == [4, 3]
