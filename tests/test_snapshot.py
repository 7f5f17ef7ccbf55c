"""Snapshot / restore: resuming from a snapshot is bit-identical to never stopping; bad files
are refused with a clear error and the running state is untouched."""

import json
import re
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvemu import restore_snapshot, save_snapshot
from nvemu import Hypervisor, Op, SnapshotError
from nvemu.guest.persist_loop import persist_loop
from nvemu.machine.snapshot import _digest

from conftest import BACKENDS, DEFAULT_BACKEND, tiny_platform, trace


def build(backend=DEFAULT_BACKEND, strategies=("write-protect", "mmio")):
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
       restore_on=st.sampled_from(BACKENDS))
def test_restore_then_finish_equals_uninterrupted(tmp_path_factory, seed, n, cut, restore_on):
    hv, vms = build()
    ops = workload(vms, n, seed)
    k = int(cut * len(ops))
    hv.run(ops)
    expected = everything(hv)

    hv2, vms2 = build()
    hv2.run(ops[:k])
    path = tmp_path_factory.mktemp("snap") / "hv.npz"
    save_snapshot(hv2, path)
    hv3 = restore_snapshot(path, backend=restore_on)
    hv3.run(ops[k:])
    assert everything(hv3) == expected


def test_vm_snapshot_restores_one_vm_on_a_fresh_host(tmp_path):
    hv, (vm,) = build(strategies=("write-protect",))
    ops = workload([vm], 3000, 5)
    hv.run(ops)
    expected = everything(hv)
    hv2, (vm2,) = build(strategies=("write-protect",))
    hv2.run(ops[:1234])
    save_snapshot(vm2, tmp_path / "vm.npz")
    hv3 = restore_snapshot(tmp_path / "vm.npz")
    assert list(hv3.vms) == [vm2.id] and hv3.vms[vm2.id].state.value == "running"
    hv3.run(ops[1234:])
    assert everything(hv3) == expected


def test_vm_snapshot_leaves_out_other_vms(tmp_path):
    hv, (a, b) = build()
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
    hv, vms = build()
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


# ---- doctored snapshots (issue 12, finding 4) ----------------------------------------------------------
# The digest is plain SHA-256, so anyone can re-seal an edited file: only the loader's own checks stand
# between such a file and the core. A restored VM may reach only the host ranges its description gives it.

def _files(path):
    with np.load(path, allow_pickle=False) as z:
        files = {k: z[k] for k in z.files}
    meta = json.loads(files.pop("meta").tobytes().decode())
    files.pop("digest")
    return files, meta


def _reseal(files, meta, out):
    text = json.dumps(meta, sort_keys=True)
    np.savez(out, meta=np.frombuffer(text.encode(), np.uint8),
             digest=np.frombuffer(_digest(files, text).encode(), np.uint8), **files)


def _leaf_slot(files, vm_id, gpa):
    """(row, index) in engine_table_data of the 4 KiB leaf that maps ``gpa`` in vm ``vm_id``."""
    ids = files["engine_table_ids"].tolist()
    t = int(files[f"engine_vm{vm_id}_meta"][0])
    for level in (4, 3, 2, 1):
        row, idx = ids.index(t), (gpa >> (12 + 9 * (level - 1))) & 511
        e = int(files["engine_table_data"][row, idx])
        if level == 1:
            return row, idx
        assert e & 7 and not e & 0x80
        t = (e & 0x000F_FFFF_FFFF_F000) >> 12


@pytest.fixture
def two_vms(tmp_path):
    """Two running VMs, each with a secret in its vNVDIMM and its DRAM, each having read it (so their
    TLBs hold the translations), saved to hv.npz."""
    hv, (a, b) = build(strategies=("write-protect", "write-protect"))
    for vm, secret in ((a, 0xA11CE), (b, 0xB0B)):
        for cpu, gpa in enumerate((vm.nvdimms[0].gpa, vm.dram[0].gpa)):
            vm.vcpu(cpu).store(gpa, secret)
            vm.vcpu(cpu).load(gpa)
    save_snapshot(hv, tmp_path / "hv.npz")
    return hv, a, b, tmp_path / "hv.npz"


@pytest.mark.parametrize("target", ["other vm's nvdimm", "other vm's dram", "unowned dram", "unowned nvdimm",
                                    "own vfha page"])
def test_a_leaf_into_memory_the_vm_does_not_own_is_refused(two_vms, target):
    """Re-point one of b's 4 KiB leaves (the mapped byte count stays the same) at a host page b does
    not own: restoring it would let b read and write there."""
    hv, a, b, path = two_vms
    files, meta = _files(path)
    free = hv.platform.alloc_dram(4 * 4096)
    hpa = {"other vm's nvdimm": a.nvdimms[0].hpa, "other vm's dram": a.dram[0].hpa, "unowned dram": free,
           "unowned nvdimm": hv.platform.alloc_pmem(64 << 10), "own vfha page": b.vfha_hpa}[target]
    row, idx = _leaf_slot(files, b.id, b.nvdimms[0].gpa + 4096)
    data = files["engine_table_data"].copy()
    data[row, idx] = (int(data[row, idx]) & 0xFFF) | hpa
    files["engine_table_data"] = data
    _reseal(files, meta, path)
    with pytest.raises(SnapshotError, match="vm 1.*owns"):
        restore_snapshot(path)


@pytest.mark.parametrize("field", ["hpa", "write permission", "leaf slot", "vpn"])
def test_a_tlb_entry_that_a_walk_would_not_give_is_refused(two_vms, field):
    """b's cached translation of its own vNVDIMM page doctored: pointing at a's page, granting a
    write the page table would not (b's vFHA is write-protected), naming another leaf to set D bits
    in, or caching a page under another page's number."""
    hv, a, b, path = two_vms
    files, meta = _files(path)
    tlb = files[f"engine_vm{b.id}_tlb"].copy()
    valid = np.flatnonzero(tlb[:, 0] != 2**64 - 1)
    k = next(i for i in valid if int(tlb[i, 0]) == b.nvdimms[0].gpa >> 12)
    if field == "hpa":
        tlb[k, 2] = a.nvdimms[0].hpa
    elif field == "write permission":
        row, idx = _leaf_slot(files, b.id, b.vfha_gpa)
        entry = int(files["engine_table_data"][row, idx])
        assert entry & 3 == 1                                   # write-protected: R, not W
        vfha = b.vfha_gpa >> 12
        j = next(i for i in range(len(tlb)) if i // 4 == k // 4 and i % 4 == vfha % 4)
        tlb[j] = (vfha, entry | 2, b.vfha_hpa, int(files["engine_table_ids"][row]) * 512 + idx)
    elif field == "leaf slot":
        row, idx = _leaf_slot(files, a.id, a.nvdimms[0].gpa)
        tlb[k, 3] = int(files["engine_table_ids"][row]) * 512 + idx
    else:
        tlb[k, 0] += 4                                          # same TLB slot (4 entries), another page
    files[f"engine_vm{b.id}_tlb"] = tlb
    _reseal(files, meta, path)
    with pytest.raises(SnapshotError, match=f"vm {b.id}.*TLB"):
        restore_snapshot(path)


def test_a_table_shared_between_vms_is_refused(two_vms):
    """b's PML4 entry pointing at a's level-3 table would walk b's guest addresses through a's tree."""
    hv, a, b, path = two_vms
    files, meta = _files(path)
    ids = files["engine_table_ids"].tolist()
    data = files["engine_table_data"].copy()
    ra, rb = (ids.index(int(files[f"engine_vm{v.id}_meta"][0])) for v in (a, b))
    data[rb] = data[ra]              # b's root: a copy of a's (same guest layout, so the same byte count)
    files["engine_table_data"] = data
    _reseal(files, meta, path)
    with pytest.raises(SnapshotError, match=f"vm {b.id}"):
        restore_snapshot(path)


def test_an_untouched_snapshot_restores_with_tlbs_intact(two_vms):
    """What the checks above must let through: the genuine file, TLB contents and all."""
    hv, a, b, path = two_vms
    restored = restore_snapshot(path)
    assert everything(restored) == everything(hv)
    for vm, secret in ((a, 0xA11CE), (b, 0xB0B)):          # a TLB hit on both: the TLBs were restored
        assert restored.vms[vm.id].vcpu(0).load(vm.nvdimms[0].gpa) == vm.vcpu(0).load(vm.nvdimms[0].gpa) == secret
    assert everything(restored) == everything(hv)


# ---- sizes are checked before anything is allocated ---------------------------------------------------

def _npy(shape, dtype="<u8", payload=b""):
    """An .npy member whose header claims ``shape`` and whose data is ``payload`` (perhaps far less)."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload


def _replace_member(path, name, data, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    members[name] = data
    with zipfile.ZipFile(path, "w") as z:
        for n, d in members.items():
            z.writestr(n, d, compress_type=compress if n == name else zipfile.ZIP_STORED)


def _refusal_and_peak(path) -> tuple[str, int]:
    """(the SnapshotError's message, peak bytes numpy and Python allocated while restoring ``path``)."""
    tracemalloc.start()
    try:
        with pytest.raises(SnapshotError) as refused:
            restore_snapshot(path)
        return str(refused.value), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("member,shape,dtype,present", [
    ("engine_memory_data", (1 << 18, 4096), "|u1", 8),       # 1 GiB claimed, 8 bytes present
    ("engine_memory_data", (1 << 30, 4096), "|u1", 8),       # 4 TiB: MemoryError if allocated
    ("engine_table_data", (1 << 62, 512), "<u8", 8),         # more bytes than an address space has
    ("engine_vm0_tlb", (1 << 26, 4), "<u8", 8),              # 2 GiB of TLB rows
    ("engine_vm0_tlb", (1 << 20, 4), "<u8", 32 << 20),       # 32 MiB truly there, for a 2-vCPU x 4-entry TLB
    ("meta", (1 << 31,), "|u1", 8),                          # a 2 GiB description
])
def test_arrays_claiming_huge_sizes_are_refused_before_allocation(tmp_path, member, shape, dtype, present):
    """A crafted member header claims a huge array (over a few bytes of data, or over data the
    description has no room for): SnapshotError, and no more than a few MiB allocated on the way
    (numpy reports its buffers to tracemalloc)."""
    hv, vms = build()
    path = tmp_path / "hv.npz"
    save_snapshot(hv, path)
    _replace_member(path, f"{member}.npy", _npy(shape, dtype, bytes(present)))
    error, peak = _refusal_and_peak(path)
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB allocated before refusing"
    assert re.search(f"member {member} claims", error), error


def test_a_compressed_member_bigger_than_its_place_is_refused_before_inflating(tmp_path):
    """A deflated member that inflates to 64 MiB where the description allows 2 numbers."""
    hv, vms = build()
    path = tmp_path / "hv.npz"
    save_snapshot(hv, path)
    _replace_member(path, "engine_scalars.npy", _npy((1 << 23,), payload=bytes(8 << 23)), zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 2 << 20
    error, peak = _refusal_and_peak(path)
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB allocated before refusing"
    assert "engine_scalars" in error, error


@pytest.mark.parametrize("damage", ["object dtype", "fortran order", "unknown member", "duplicate member",
                                    "bad header", "structured dtype"])
def test_malformed_members_are_refused_as_snapshot_errors(tmp_path, damage):
    hv, vms = build()
    path = tmp_path / "hv.npz"
    save_snapshot(hv, path)
    if damage == "object dtype":
        _replace_member(path, "engine_scalars.npy", _npy((2,), "|O", b"\0" * 16))
    elif damage == "fortran order":
        _replace_member(path, "engine_scalars.npy", _npy((2,), "<u8", b"\0" * 16).replace(b"False", b"True "))
    elif damage == "unknown member":
        _replace_member(path, "payload.npy", _npy((2,), "<u8", b"\0" * 16))
    elif damage == "duplicate member":
        with zipfile.ZipFile(path, "a") as z, pytest.warns(UserWarning, match="Duplicate"):
            z.writestr("engine_scalars.npy", _npy((2,), "<u8", b"\0" * 16))
    elif damage == "bad header":
        _replace_member(path, "engine_scalars.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': <u8}\n" + b"\0" * 16)
    else:
        _replace_member(path, "engine_scalars.npy", _npy((2,), [("a", "<u8")], b"\0" * 16))
    with pytest.raises(SnapshotError, match=str(path)):
        restore_snapshot(path)


# ---- the digest: corruption without a key, forgery with one -------------------------------------------

def test_a_keyed_snapshot_restores_only_with_its_key(tmp_path):
    hv, vms = build()
    hv.run(workload(vms, 300, 3))
    path = tmp_path / "hv.npz"
    save_snapshot(hv, path, key=b"our secret")
    assert everything(restore_snapshot(path, key=b"our secret")) == everything(hv)
    with pytest.raises(SnapshotError, match="key"):
        restore_snapshot(path, key=b"another secret")
    with pytest.raises(SnapshotError, match="sealed with a key"):
        restore_snapshot(path)                    # cannot be verified, so it is not trusted either


@pytest.mark.parametrize("forger", ["plain digest", "own key"])
def test_a_forged_snapshot_is_refused_when_a_key_is_given(tmp_path, forger):
    """Without the key a forger can re-seal an edited file with the plain digest (which an unkeyed
    restore accepts: it guards against corruption only) or with a key of their own; neither passes
    a restore that names the key."""
    hv, vms = build()
    path = tmp_path / "hv.npz"
    save_snapshot(hv, path, key=b"our secret")
    files, meta = _files(path)
    meta["vms"][0]["strategy"] = "writable"
    if forger == "plain digest":
        _reseal(files, meta, path)
        assert restore_snapshot(path).vms[vms[0].id].strategy == "writable"
    else:
        save_snapshot(restore_snapshot(path, key=b"our secret"), path, key=b"forger's key")
    with pytest.raises(SnapshotError, match="key"):
        restore_snapshot(path, key=b"our secret")


def test_a_key_must_be_bytes():
    hv, vms = build()
    with pytest.raises(TypeError, match="key"):
        save_snapshot(hv, "/nonexistent/x.npz", key="text")
    with pytest.raises(ValueError, match="key"):
        restore_snapshot("/nonexistent/x.npz", key=b"")
