"""Snapshot / restore: resuming from a snapshot is bit-identical to never stopping; bad files
are refused with a clear error and the running state is untouched."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvemu import restore_snapshot, save_snapshot
from nvemu import Hypervisor, Op, SnapshotError
from nvemu.guest.workloads import persist_loop

from conftest import tiny_platform, trace


def build(backend, strategies=("write-protect", "mmio")):
    hv = Hypervisor(tiny_platform(domain="adr", wpq_depth=4), backend=backend)
    vms = [hv.create_vm(dram=128 << 10, nvdimms=[128 << 10], vcpus=2, strategy=s, tlb_entries=4).start()
           for s in strategies]
    return hv, vms


def workload(vms, n, seed):
    parts = [persist_loop(n, vm.nvdimms[0].gpa, vm.nvdimms[0].size, vm.vfha_gpa, seed=seed + k, vm=vm.id)
             for k, vm in enumerate(vms)]
    out = np.concatenate(parts)
    order = np.random.default_rng(seed).permutation(len(out))
    out = out[np.sort(order)]                     # keep each VM's order, interleave the VMs
    out["vcpu"] = np.random.default_rng(seed + 1).integers(0, 2, len(out))
    return out


def everything(hv):
    e = hv.platform.engine
    return (e.memory_pages(), e.media_pages(), e.line_states(),
            [e.wpq_entries(c) for c in range(e.n_controllers)], e.tables(), e.controller_stats().tolist(),
            {i: vm.stats().rows.tolist() for i, vm in hv.vms.items()}, e.tables_in_use,
            hv.platform.dram.free_bytes)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(50, 1500), cut=st.floats(0, 1),
       restore_on=st.sampled_from(["core", "reference"]))
def test_restore_then_finish_equals_uninterrupted(tmp_path_factory, seed, n, cut, restore_on):
    hv, vms = build("core")
    ops = workload(vms, n, seed)
    k = int(cut * len(ops))
    hv.run(ops)
    expected = everything(hv)

    hv2, vms2 = build("core")
    hv2.run(ops[:k])
    path = tmp_path_factory.mktemp("snap") / "hv.npz"
    save_snapshot(hv2, path)
    hv3 = restore_snapshot(path, backend=restore_on)
    hv3.run(ops[k:])
    assert everything(hv3) == expected


def test_vm_snapshot_restores_one_vm_on_a_fresh_host(tmp_path):
    hv, (vm,) = build("core", strategies=("write-protect",))
    ops = workload([vm], 3000, 5)
    hv.run(ops)
    expected = everything(hv)
    hv2, (vm2,) = build("core", strategies=("write-protect",))
    hv2.run(ops[:1234])
    save_snapshot(vm2, tmp_path / "vm.npz")
    hv3 = restore_snapshot(tmp_path / "vm.npz")
    assert list(hv3.vms) == [vm2.id] and hv3.vms[vm2.id].state.value == "running"
    hv3.run(ops[1234:])
    assert everything(hv3) == expected


def test_vm_snapshot_leaves_out_other_vms(tmp_path):
    hv, (a, b) = build("core")
    hv.run(trace((Op.STORE, 0, a.id, 8, a.nvdimms[0].gpa, 1), (Op.STORE, 0, b.id, 8, b.nvdimms[0].gpa, 2)))
    save_snapshot(a, tmp_path / "a.npz")
    only_a = restore_snapshot(tmp_path / "a.npz")
    assert list(only_a.vms) == [a.id]
    assert only_a.vms[a.id].read(a.nvdimms[0].gpa, 8) == (1).to_bytes(8, "little")
    assert b.nvdimms[0].hpa not in {x - x % 4096 for x in only_a.platform.engine.memory_pages()}
    assert only_a.platform.engine.tables_in_use == sum(1 for _ in only_a.platform.engine.tables())
    c = only_a.create_vm(dram=128 << 10, nvdimms=[128 << 10]).start()      # the freed space is usable
    c.vcpu(0).store(c.nvdimms[0].gpa, 3)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "missing"])
def test_bad_snapshot_files_are_refused(tmp_path, damage):
    hv, vms = build("core")
    hv.run(workload(vms, 400, 1))
    path = tmp_path / "hv.npz"
    save_snapshot(hv, path)
    before = everything(hv)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "flip":
        i = data.index(b"engine_memory_data") + 300       # inside that array's bytes (stored, not deflated)
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif damage == "garbage":
        path.write_bytes(b"not a snapshot at all")
    else:
        path = tmp_path / "nope.npz"
    with pytest.raises(SnapshotError, match="nvemu snapshot|corrupted|cannot restore"):
        restore_snapshot(path)
    assert everything(hv) == before
    hv.run(workload(vms, 50, 2))                        # still running fine
