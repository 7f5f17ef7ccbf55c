"""Nothing a Python caller can reach corrupts the compiled core (issue 12, SPEC 7.8): every attribute
the engine exposes is read-only or a read-only view, and one lock serializes concurrent callers, so
two threads replaying on one Hypervisor end where a serial run ends."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from nvemu import COMPILED, Hypervisor, Op
from nvemu.errors import LifecycleError, TraceError
from nvemu.machine.config import make_platform

from conftest import ENGINES, trace

CORE = ENGINES[0]

JUNK = (10**6, -1, 2**64, None, "x", np.zeros(4, np.uint64))


def workload(vm, n, seed):
    """Stores, clwbs, fences and vFHA writes over ``vm``'s vNVDIMM and DRAM."""
    rng = np.random.default_rng(seed)
    nv, dram = vm.nvdimms[0], vm.dram[0]
    recs = []
    for k in range(n):
        g = nv.gpa + int(rng.integers(0, nv.size // 64)) * 64
        recs += [(Op.STORE, 0, vm.id, 8, g, k + 1), (Op.CLWB, 0, vm.id, 0, g, 0),
                 (Op.STORE, 0, vm.id, 8, dram.gpa + 8 * (k % 512), k)]
        if k % 7 == 6:
            recs += [(Op.SFENCE, 0, vm.id, 0, 0, 0), (Op.STORE, 0, vm.id, 8, vm.vfha_gpa, 1)]
    return trace(*recs)


def machine(backend=CORE):
    hv = Hypervisor(make_platform(sockets=1, imcs_per_socket=2, dimm_bytes=4 << 20, dram_bytes=16 << 20,
                                  wpq_depth=4, name="t"), backend=backend)
    vms = [hv.create_vm(dram=1 << 20, nvdimms=[1 << 20]).start() for _ in range(2)]
    return hv, vms


def outcome(hv, vms):
    """What must not depend on how two VMs' runs interleave: memory, media after a full drain, line
    states, each VM's counters other than which flush drained whose lines."""
    p = hv.platform
    p.drain()
    e = p.engine
    # controllers are shared: which flush drains whose lines, and how long a writer waits for a
    # WPQ slot, a fence or a drain, follow the order in which the VMs' arrivals reach them
    drain_stats = {"lines_drained", "fha_writes", "fha_ps", "drain_wait_ps", "wpq_stall_ps", "fence_ps"}
    return {"memory": e.memory_pages(), "media": e.media_pages(), "lines": e.line_states(),
            "enqueued": [c["enqueued"] for c in p.controller_stats()],
            "stats": [{k: v for k, v in vm.stats().total.items() if k not in drain_stats} for vm in vms]}


@pytest.mark.skipif(not COMPILED, reason="the compiled core is not built")
def test_writing_every_exposed_attribute_breaks_nothing():
    hv, (a, b) = machine()
    e = hv.platform.engine
    refused = {}
    for name in [n for n in dir(e) if not n.startswith("__")]:
        value = getattr(e, name)
        for junk in JUNK:
            try:
                setattr(e, name, junk)
            except (AttributeError, TypeError):
                refused[name] = True
            else:
                raise AssertionError(f"Engine.{name} accepted an assignment of {junk!r}")
        if isinstance(value, np.ndarray):
            with pytest.raises(ValueError):
                value[...] = 2**31
            with pytest.raises(ValueError):
                value.flags.writeable = True
    assert {"pool", "wpq_head", "wpq_len", "ctrl_stats", "memory_budget", "touched_bytes"} <= set(refused)
    for name in ("vms", "_vms", "vm_arrays", "memory", "media", "line_state", "queued", "granule_ctrl"):
        assert not hasattr(e, name), f"Engine.{name} is reachable from Python"
    for s in (e.stats(a.id), e.drained_by_controller(a.id), e.controller_stats(), e.vm_slot(a.id).tlb):
        s[...] = 2**40                                   # copies: the engine does not see this
    hv.run(workload(a, 200, 1))
    hv.run(workload(b, 200, 2))
    fresh, (fa, fb) = machine()
    fresh.run(workload(fa, 200, 1))
    fresh.run(workload(fb, 200, 2))
    assert outcome(hv, [a, b]) == outcome(fresh, [fa, fb])


def test_two_threads_replaying_on_one_hypervisor_end_as_a_serial_run(backend):
    n = 20000 if backend == CORE else 300
    hv, vms = machine(backend)
    traces = [workload(vm, n, seed) for seed, vm in enumerate(vms)]
    chunk = 4999 if backend == CORE else 97

    def replay(t):
        for i in range(0, len(t), chunk):
            hv.run(t[i:i + chunk])

    threads = [threading.Thread(target=replay, args=(t,)) for t in traces]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    serial, svms = machine(backend)
    for t in traces:
        serial.run(t)
    got, want = outcome(hv, vms), outcome(serial, svms)
    assert got == want
    assert all(st["ops"] == len(t) for st, t in zip(got["stats"], traces))


def test_the_engine_lock_serializes_callers(backend):
    hv, (a, _) = machine(backend)
    e = hv.platform.engine
    entered = threading.Event()
    done = []

    def other():
        entered.set()
        hv.run(workload(a, 5, 3))          # must wait for the lock
        done.append(True)

    with e.lock:
        th = threading.Thread(target=other)
        th.start()
        entered.wait()
        th.join(0.2)
        assert not done                   # blocked while this thread holds the engine
    th.join()
    assert done


def test_records_ahead_of_the_one_running_change_nothing(backend):
    """The compiled loop peeks at records ahead of the one it runs (to prefetch their page tables,
    host memory and, when draining, media): whatever those records are (other VMs, a paused or a
    removed one, vCPUs and GPAs out of range, unmapped or never-written memory, the vFHA), the run
    ends exactly where running one record at a time ends."""
    def replay(batches):
        hv, (a, b) = machine(backend)
        b.pause()
        gone = hv.create_vm(dram=1 << 20, nvdimms=[1 << 20]).start()
        gone_id = gone.id
        gone.destroy()
        nv, dram = a.nvdimms[0], a.dram[0]
        body = workload(a, 40, seed=3)
        odd = trace(*[(Op.LOAD, 0, a.id, 8, nv.gpa + nv.size - 64 * k, 0) for k in range(1, 9)],
                    (Op.STORE, 0, a.id, 8, 0x7000_0000_0000, 1), (Op.LOAD, 0, a.id, 8, a.vfha_gpa, 0),
                    (Op.CLWB, 0, a.id, 0, dram.gpa + 4096, 0), (Op.STORE, 0, a.id, 8, nv.gpa + 64, 5))
        tail = trace((Op.STORE, 0, b.id, 8, b.nvdimms[0].gpa, 1), (Op.STORE, 0, gone_id, 8, nv.gpa, 1),
                     (Op.STORE, 200, a.id, 8, nv.gpa, 1), (Op.STORE, 0, a.id, 8, 1 << 60, 1),
                     (Op.LOAD, 0, 999, 8, nv.gpa, 0), *[(Op.STORE, 0, a.id, 8, nv.gpa + 64 * k, k) for k in range(40)])
        ops = np.concatenate([body, odd, body[:50], tail])
        stop = None
        for start, end in batches(len(ops)):
            try:
                hv.run(ops[start:end], handler=lambda fault: "skip")
            except (TraceError, LifecycleError) as e:
                stop = start + e.index
                break
        return stop, hv.platform.engine.get_state()

    whole_stop, whole = replay(lambda n: [(0, n)])
    one_stop, one = replay(lambda n: [(k, k + 1) for k in range(n)])
    assert whole_stop == one_stop is not None
    assert whole.keys() == one.keys()
    assert all(np.array_equal(whole[k], one[k]) for k in whole)
