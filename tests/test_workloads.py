"""Workload generators: persist_loop unchanged, every workload deterministic per seed, independent of
chunking, shaped as documented, and replayable with the durability each promises."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest

from nvemu import TRACE_DTYPE, ConfigError, Hypervisor, Op
from nvemu.machine.config import make_platform
from nvemu.guest.workloads import (
    DEFAULT_LAYOUT,
    WORKLOADS,
    VmLayout,
    generate,
    iter_generate,
)
from nvemu.guest.persist_loop import persist_loop, persist_loop_chunks

NAMES = list(WORKLOADS)
G = 1 << 32


def small_hv(domain: str = "adr") -> Hypervisor:
    """Two controllers, 4 MiB NVDIMMs, 64 MiB DRAM, deep WPQs (so drains come from flushes only)."""
    return Hypervisor(make_platform(sockets=1, imcs_per_socket=2, dimm_bytes=4 << 20, dram_bytes=64 << 20,
                                    wpq_depth=4096, domain=domain, name="test"))


def vms_on(hv: Hypervisor, n: int, vcpus: int = 1, **kw):
    return [hv.create_vm(dram=4 << 20, nvdimms=[2 << 20], vcpus=vcpus, **kw).start() for _ in range(n)]


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("args, expected", [
    ((0, G, 1 << 20, G + (1 << 20)), "e3b0c44298fc1c14"),
    ((650, G, 1 << 20, G + (1 << 20)), "d750355d2204e832"),
    ((1001, G, 3 << 20, 7, 5, 2, 3), "33aff5668366239b"),
    ((100_000, G, 256 << 20, G + (256 << 20), 1), "a7c558c6de0fe4d0"),
])
def test_persist_loop_output_is_unchanged(args, expected):
    assert digest(persist_loop(*args)) == expected       # digests taken before this module grew


@pytest.mark.parametrize("n, chunk_blocks", [(0, 3), (1, 1), (649, 1), (650, 1), (651, 1), (20_000, 3),
                                             (20_000, 7), (33_333, 1000)])
@pytest.mark.parametrize("nvdimm", [1 << 20, 12345 * 64])   # a power of two of lines, and not
def test_persist_loop_chunks_are_persist_loop_bit_for_bit(n, chunk_blocks, nvdimm):
    whole = persist_loop(n, G, nvdimm, G + nvdimm, seed=9)
    parts = list(persist_loop_chunks(n, G, nvdimm, G + nvdimm, seed=9, chunk_blocks=chunk_blocks))
    joined = np.concatenate(parts) if parts else np.zeros(0, TRACE_DTYPE)
    assert np.array_equal(joined, whole)


def test_one_stream_persist_loop_workload_is_persist_loop():
    lay = VmLayout(G, 2 << 20, G + (2 << 20))
    assert np.array_equal(generate("persist-loop", 5000, lay, seed=4), persist_loop(5000, G, 2 << 20, G + (2 << 20), 4))


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_per_seed_and_independent_of_chunking(name):
    kw = {"seed": 5, "vms": 2, "vcpus": 2}
    whole = generate(name, 30_000, **kw)
    assert whole.dtype == TRACE_DTYPE and len(whole) == 30_000
    assert np.array_equal(generate(name, 30_000, **kw), whole)
    chunks = list(iter_generate(name, 30_000, chunk_ops=4096, **kw))
    assert [len(c) for c in chunks] == [4096] * 7 + [30_000 - 7 * 4096]
    assert np.array_equal(np.concatenate(chunks), whole)
    assert np.array_equal(generate(name, 10_000, **kw), whole[:10_000])          # a prefix of a longer run
    assert not np.array_equal(generate(name, 30_000, seed=6, vms=2, vcpus=2), whole)
    assert set(zip(whole["vm"].tolist(), whole["vcpu"].tolist())) == {(0, 0), (0, 1), (1, 0), (1, 1)}


@pytest.mark.parametrize("name", NAMES)
def test_every_workload_replays_inside_its_footprint(name):
    hv = small_hv()
    vms = vms_on(hv, 2, vcpus=2, strategy="write-protect")
    layouts = [VmLayout.of(vm) for vm in vms]
    footprint = 1 << 20
    t = generate(name, 20_000, layouts, seed=1, vms=2, vcpus=2, footprint=footprint)
    data = np.isin(t["op"], (Op.LOAD, Op.STORE, Op.NT_STORE, Op.CLWB))
    fha = t["gpa"] == vms[0].vfha_gpa
    assert ((t["gpa"][data & ~fha] >= G) & (t["gpa"][data & ~fha] < G + footprint)).all()
    hv.run(t)
    for vm in vms:
        s = vm.stats()
        mine = t[t["vm"] == vm.id]
        assert s["ops"] == len(mine)
        fha_stores = (mine["gpa"] == vm.vfha_gpa) & (mine["op"] == Op.STORE)
        assert s.exits[48] == s["vfha_writes"] == int(fha_stores.sum())
        assert s["vfha_reads"] == int(((mine["gpa"] == vm.vfha_gpa) & (mine["op"] == Op.LOAD)).sum())
        assert s["clwb"] == int((mine["op"] == Op.CLWB).sum())


def test_linux_fsync_unit_is_block_writes_then_nvdimm_flush():
    t = generate("linux-fsync", 100_000, seed=3)
    ends = np.flatnonzero(t["gpa"] == DEFAULT_LAYOUT.fha_gpa)
    first = t[:ends[0] + 2]
    k = (len(first) - 3) // 512
    assert 1 <= k <= 8 and len(first) == 512 * k + 3
    assert (first["op"][:-3] == Op.NT_STORE).all() and (first["size"][:-3] == 8).all()
    assert np.array_equal(np.diff(first["gpa"][:-3].astype(np.int64)), np.full(512 * k - 1, 8))
    assert first["gpa"][0] % 4096 == 0
    assert first["op"][-3:].tolist() == [Op.SFENCE, Op.STORE, Op.SFENCE] and first["value"][-2] == 1


def test_pmdk_tx_unit_logs_then_writes_then_commits():
    t = generate("pmdk-tx", 5_000, seed=2)
    unit = t[:np.flatnonzero(t["gpa"] == DEFAULT_LAYOUT.fha_gpa)[0] + 2]
    ops = unit["op"].tolist()
    size = 8 * ops.count(Op.LOAD)
    assert size in (64, 128, 256) and ops[:size // 8] == [Op.LOAD] * (size // 8)
    obj = int(unit["gpa"][0])
    log_stores = unit[size // 8:size // 8 + (16 + size) // 8]
    assert (log_stores["op"] == Op.STORE).all() and int(log_stores["gpa"][0]) % 512 == 64   # entry after commit word
    log_slot = int(log_stores["gpa"][0]) - 64
    rest = unit[size // 8 + (16 + size) // 8:]
    n_log_lines = len(range((log_slot + 64) // 64, (log_slot + 64 + 16 + size - 1) // 64 + 1))
    assert rest["op"][:n_log_lines + 1].tolist() == [Op.CLWB] * n_log_lines + [Op.SFENCE]   # log persisted first
    data = rest[n_log_lines + 1:n_log_lines + 1 + size // 8]
    assert (data["op"] == Op.STORE).all() and data["gpa"].tolist() == list(range(obj, obj + size, 8))
    tail = rest[n_log_lines + 1 + size // 8:]
    assert tail["op"].tolist() == [Op.CLWB] * (size // 64) + [Op.SFENCE, Op.STORE, Op.CLWB, Op.SFENCE,
                                                              Op.SFENCE, Op.STORE, Op.SFENCE]   # deep: nvdimm_flush
    assert tail[size // 64 + 1][["gpa", "value"]].tolist() == (log_slot, 1)                # the commit record


def test_seq_log_appends_sequentially_wraps_and_group_commits():
    lay = VmLayout(G, 1 << 20, G + (1 << 20))
    footprint = 64 << 10
    t = generate("seq-log", 200_000, lay, seed=8, footprint=footprint)
    header, fha = G, lay.fha_gpa
    record = (t["op"] == Op.STORE) & (t["gpa"] != header) & (t["gpa"] != fha)
    first = record & np.r_[True, t["op"][:-1] == Op.SFENCE]           # a record's first store
    starts = t["gpa"][first].astype(np.int64)
    sizes = np.add.reduceat(np.where(record, t["size"], 0).astype(np.int64), np.flatnonzero(first))
    assert set(sizes[:-1].tolist()) == {64, 128, 192, 256}
    wrapped = 0
    for k in range(1, len(starts) - 1):
        end = starts[k - 1] + sizes[k - 1]
        if starts[k] != end:                  # not contiguous: it did not fit, so it wrapped to the log start
            assert starts[k] == G + 64 and end + sizes[k] > G + footprint
            wrapped += 1
    assert starts[0] == G + 64 and wrapped >= 2 and (starts + sizes <= G + footprint).all()
    tail_updates = int(((t["gpa"] == header) & (t["op"] == Op.STORE)).sum())
    assert int((t["gpa"] == fha).sum()) == tail_updates // 16           # every 16th append is deep


def test_random_rw_read_fraction_and_kv_put_value_sizes():
    t = generate("random-rw", 40_000, seed=1)
    units = int((t["op"] == Op.LOAD).sum()) + int((t["op"] == Op.STORE).sum())
    assert 0.45 < (t["op"] == Op.LOAD).sum() / units < 0.55
    assert (generate("random-rw", 1000, read_fraction=1.0)["op"] == Op.LOAD).all()
    assert not (generate("random-rw", 1000, deep_flush_every=0, read_fraction=0.0)["gpa"]
                == DEFAULT_LAYOUT.fha_gpa).any()
    kv = generate("kv-put", 20_000, seed=1)
    loads = np.flatnonzero(kv["op"] == Op.LOAD)
    value = (kv["op"] == Op.STORE) & (kv["gpa"] != DEFAULT_LAYOUT.fha_gpa)
    lengths = {int((value[a:b] & (kv["gpa"][a:b] != kv["gpa"][a])).sum()) * 8 for a, b in itertools.pairwise(loads)}
    assert lengths == {64, 128, 192, 256}                  # each put: a value, then the bucket (kv["gpa"][a])


@pytest.mark.parametrize("name", ["linux-fsync", "pmdk-tx", "kv-put"])
def test_deep_persisting_workloads_are_durable_without_a_persistence_domain(name):
    """SPEC 7.3: data written, flushed and then flushed through the vFHA is durable in every domain.
    linux-fsync (every unit), pmdk-tx and kv-put (every unit by default) end each unit that way."""
    hv = small_hv(domain="none")
    vm, = vms_on(hv, 1, strategy="write-protect")
    t = generate(name, 30_000, VmLayout.of(vm), seed=2)
    t = t[:np.flatnonzero(t["gpa"] == vm.vfha_gpa)[-1] + 2]          # end after a whole unit
    hv.run(t)
    hpa = vm.gpa_to_hpa(G)
    image = hv.platform.power_fail()
    base = hpa - hv.platform.pmem_base
    assert image[base:base + (2 << 20)].tobytes() == vm.read(G, 2 << 20)


def test_bad_requests_raise_config_error():
    with pytest.raises(ConfigError, match="unknown workload 'nope'"):
        generate("nope", 10)
    with pytest.raises(ConfigError, match="footprint"):
        generate("kv-put", 10, footprint=1 << 40)
    with pytest.raises(ConfigError, match="needs at least"):
        generate("pmdk-tx", 10, footprint=8192)
    with pytest.raises(ConfigError, match="takes no parameter 'read_fraction'"):
        generate("pmdk-tx", 10, read_fraction=0.5)
    with pytest.raises(ConfigError, match="3 VMs but only 2 layouts"):
        generate("seq-log", 10, [DEFAULT_LAYOUT] * 2, vms=3)
    with pytest.raises(ConfigError, match="seed"):
        generate("seq-log", 10, seed=-1)
    with pytest.raises(ConfigError, match="read_fraction"):
        generate("random-rw", 10, read_fraction=2.0)


def test_fha_readback_reads_exit_only_under_mmio():
    out = {}
    for strategy in ("write-protect", "mmio"):
        hv = small_hv()
        (vm,) = vms_on(hv, 1, vcpus=1, strategy=strategy)
        t = generate("fha-readback", 5000, [VmLayout.of(vm)], seed=2, reads=2)
        hv.run(t)
        s = vm.stats()
        reads = int(((t["gpa"] == vm.vfha_gpa) & (t["op"] == Op.LOAD)).sum())
        writes = int(((t["gpa"] == vm.vfha_gpa) & (t["op"] == Op.STORE)).sum())
        assert reads == 2 * writes > 0 and s["vfha_reads"] == reads
        out[strategy] = s.exits
    assert out["write-protect"] == {48: writes, 49: 0, 18: 0}
    assert out["mmio"] == {48: 0, 49: writes + reads, 18: 0}
