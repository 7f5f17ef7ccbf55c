"""pytest-benchmark benchmarks of the core's hot paths: translate, access, drain, the
fault-and-fan-out path, and replay. Run: pytest bench --benchmark-enable

Groups follow STYLE.md: ``micro`` (one call through the Python API: call overhead),
``kernel`` (a batch through the C loop), ``scenario`` (a stored workload end to end).
"""

import numpy as np
import pytest

from nvemu import TRACE_DTYPE, Hypervisor, Op
from nvemu.guest.persist_loop import persist_loop

N = 200_000


@pytest.fixture(scope="module")
def hv_vm():
    hv = Hypervisor("default")
    vm = hv.create_vm(prefault=True).start()
    return hv, vm


def batch(vm, op, n=N, stride=64, size=8, value=1, pages=None):
    nv = vm.nvdimms[0]
    t = np.zeros(n, TRACE_DTYPE)
    t["op"], t["vm"], t["size"], t["value"] = op, vm.id, size, value
    span = nv.size if pages is None else pages * 4096
    t["gpa"] = nv.gpa + (np.arange(n, dtype=np.uint64) * stride) % span
    return t


def per_op(benchmark, n):
    benchmark.extra_info["ops"] = n


@pytest.mark.benchmark(group="micro")
def test_translate_one(benchmark, hv_vm):
    hv, vm = hv_vm
    engine, g = hv.platform.engine, vm.nvdimms[0].gpa
    benchmark(engine.translate, vm.id, 0, g)


@pytest.mark.benchmark(group="micro")
def test_store_one(benchmark, hv_vm):
    hv, vm = hv_vm
    cpu, g = vm.vcpu(0), vm.nvdimms[0].gpa
    benchmark(cpu.store, g, 1)


@pytest.mark.benchmark(group="kernel")
def test_loads_tlb_hits(benchmark, hv_vm):
    hv, vm = hv_vm
    t = batch(vm, Op.LOAD, pages=16)                     # 16 pages: every lookup hits the TLB
    benchmark(hv.replay, t)
    per_op(benchmark, N)


@pytest.mark.benchmark(group="kernel")
def test_loads_tlb_miss_walks(benchmark, hv_vm):
    hv, vm = hv_vm
    t = batch(vm, Op.LOAD, stride=4096 * 257)            # a new page each time: a 4-level walk each
    benchmark(hv.replay, t)
    per_op(benchmark, N)


@pytest.mark.benchmark(group="kernel")
def test_stores(benchmark, hv_vm):
    hv, vm = hv_vm
    benchmark(hv.replay, batch(vm, Op.STORE, pages=64))
    per_op(benchmark, N)


@pytest.mark.benchmark(group="kernel")
def test_store_clwb(benchmark, hv_vm):
    hv, vm = hv_vm
    t = batch(vm, Op.STORE, n=2 * N, pages=64)
    t["op"][1::2] = Op.CLWB
    t["size"][1::2] = 0
    t["gpa"][1::2] = t["gpa"][0::2]
    benchmark(hv.replay, t)
    per_op(benchmark, 2 * N)


@pytest.mark.benchmark(group="kernel")
def test_drain_full_wpqs(benchmark, hv_vm):
    hv, vm = hv_vm
    depth = hv.platform.config.wpq_depth
    fill = batch(vm, Op.NT_STORE, n=depth * hv.platform.n_controllers, stride=64)

    def fill_then_drain():
        hv.run(fill)
        return hv.platform.drain()
    assert benchmark(fill_then_drain) == len(fill)


@pytest.mark.benchmark(group="kernel")
def test_vfha_fault_and_fanout(benchmark, hv_vm):
    hv, vm = hv_vm
    t = np.zeros(20_000, TRACE_DTYPE)
    t["op"], t["vm"], t["size"], t["value"], t["gpa"] = Op.STORE, vm.id, 8, 1, vm.vfha_gpa
    benchmark(hv.replay, t)                               # write-protection fault + 4-way fan-out each
    per_op(benchmark, len(t))


@pytest.mark.benchmark(group="scenario")
def test_replay_persist_loop(benchmark, hv_vm):
    hv, vm = hv_vm
    nv = vm.nvdimms[0]
    t = persist_loop(1_000_000, nv.gpa, nv.size, vm.vfha_gpa, seed=3)
    benchmark(hv.replay, t)
    per_op(benchmark, len(t))
