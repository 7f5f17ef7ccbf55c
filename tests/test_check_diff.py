"""The checker's compiled kernel (nvemu._checkcore) against its plain-Python model, the oracle
(issue 14 item 1): hypothesis-generated traces over a few lines, on every persistence domain,
a broken and a correct strategy, an NVDIMM armed or not, WPQs of one to four entries, every
protocol and fence scope, the engine running chunks of one record to the whole trace (the kernel
holds a line's bytes only for a chunk), the kernel dropping settled lines after every chunk or
not at all; both must report the same violations (durable bytes included), the same completed
stores and the same counts."""

from __future__ import annotations

import dataclasses
import numpy as np
import pytest
from conftest import ENGINES, needs_compiled, small_vm, tiny_platform, tracked_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nvemu.tools.check_fast as check_fast
import nvemu.tools.checker as checker_module

from nvemu import Hypervisor, Op
from nvemu._constants import TRACE_DTYPE
from nvemu.tools.checker import check

EXAMPLES = 300

SIZES = (1, 2, 4, 8)


@st.composite
def traces(draw):
    """(setup, records as (op, vcpu, line, offset, size, value) with line -1 for the vFHA)."""
    setup = {"domain": draw(st.sampled_from(["none", "adr", "eadr"])),
             "strategy": draw(st.sampled_from(["drop", "write-protect"])),
             "depth": draw(st.integers(1, 4)),
             "protocol": draw(st.sampled_from(["auto", "fence", "flush", "deep"])),
             "scope": draw(st.sampled_from(["vcpu", "vm"])),
             "full_every": draw(st.integers(1, 9)),
             "chunk": draw(st.sampled_from([1, 2, 3, 7, 1 << 16])),
             "unarmed": draw(st.booleans()),
             "sweep": draw(st.sampled_from([0, 1 << 16]))}
    n = draw(st.integers(1, 60))
    records = []
    for _ in range(n):
        kind = draw(st.sampled_from(["store", "store", "store", "nt", "flush", "flush", "fence", "fence", "vfha",
                                     "load"]))
        cpu = draw(st.integers(0, 1))
        line = draw(st.integers(0, 5))
        size = draw(st.sampled_from(SIZES))
        offset = draw(st.integers(0, 64 // size - 1)) * size
        value = draw(st.sampled_from([0, 1, 0xFF, 0x0123456789ABCDEF, draw(st.integers(0, (1 << 64) - 1))]))
        value &= (1 << (8 * size)) - 1
        op = {"store": Op.STORE, "nt": Op.NT_STORE, "load": Op.LOAD, "vfha": Op.STORE,
              "flush": draw(st.sampled_from([Op.CLWB, Op.CLFLUSHOPT, Op.CLFLUSH])),
              "fence": draw(st.sampled_from([Op.SFENCE, Op.MFENCE]))}[kind]
        records.append((int(op), cpu, -1 if kind == "vfha" else line, offset, size, value,
                        kind in ("fence",), kind in ("flush",)))
    return setup, records


def run(setup, records, model):
    cfg = tiny_platform(domain=setup["domain"], wpq_depth=setup["depth"])
    if setup.get("unarmed"):             # one NVDIMM without ADR's guarantee: lines of two modes
        cfg = cfg.with_(nvdimms=(dataclasses.replace(cfg.nvdimms[0], armed=False),) + tuple(cfg.nvdimms[1:]))
    hv = Hypervisor(cfg)
    vm = small_vm(hv, strategy=setup["strategy"], vcpus=2)
    base = vm.nvdimms[0].gpa
    rows = []
    for op, cpu, line, offset, size, value, fence, flush in records:
        if fence:
            rows.append((op, cpu, 0, 0, 0, 0))
        elif flush:
            rows.append((op, cpu, 0, 0, base + 64 * line, 0))
        elif line < 0:
            rows.append((op, cpu, 0, 8, vm.vfha_gpa, 1))
        else:
            rows.append((op, cpu, 0, size, base + 64 * line + offset, value))
    ops = np.array(rows, TRACE_DTYPE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checker_module, "CHUNK_OPS", setup.get("chunk", 1 << 16))
        patch.setattr(check_fast, "SWEEP_MIN_LINES", setup.get("sweep", 1 << 16))
        result = check(hv, ops, protocol=setup["protocol"], fence_scope=setup["scope"],
                       full_every=setup["full_every"], model=model)
    return result.violations, result.completed_stores, result.trace_counts, result.points


@needs_compiled("compares the compiled checker kernel with the plain-Python model")
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces())
def test_the_kernel_and_the_python_model_find_the_same_violations(case):
    setup, records = case
    assert run(setup, records, "compiled") == run(setup, records, "python")


@needs_compiled("compares the compiled checker kernel with the plain-Python model")
def test_the_kernel_and_the_python_model_agree_on_a_hand_case_with_every_kind_of_violation():
    """Lost (drop on none), unfenced (vFHA write before the fence), zero-valued and later-durable."""
    setup = {"domain": "none", "strategy": "drop", "depth": 2, "protocol": "auto", "scope": "vcpu", "full_every": 3}
    F, S, C, V = (Op.SFENCE, 0, -1, 0, 0, 0, True, False), Op.STORE, Op.CLWB, (Op.STORE, 0, -1, 0, 8, 1, False, False)
    records = [(S, 0, 0, 0, 8, 0, False, False), (C, 0, 0, 0, 0, 0, False, True), V, F,
               (S, 0, 1, 8, 4, 7, False, False), (C, 0, 1, 0, 0, 0, False, True), F, V, F,
               (S, 1, 2, 0, 8, 9, False, False), (C, 1, 2, 0, 0, 0, False, True), (C, 0, 3, 0, 0, 0, False, True),
               (Op.SFENCE, 1, -1, 0, 0, 0, True, False), V, F]
    compiled, python = run(setup, records, "compiled"), run(setup, records, "python")
    assert compiled == python
    kinds = {v.kind for v in compiled[0]}
    assert kinds == {"lost", "unfenced"}


@needs_compiled("runs the compiled checker kernel")
@pytest.mark.parametrize("chunk", [97, 1 << 16])
def test_the_kernel_on_the_reference_engine_reads_lines_through_the_python_api(chunk, monkeypatch):
    """On the reference engine the kernel cannot read the engine's memory in C: a chunk's lines
    and a lost store's durable bytes on other lines come through the Python API, with the same
    result."""
    from nvemu.guest.workloads import VmLayout, generate
    monkeypatch.setattr(checker_module, "CHUNK_OPS", chunk)
    out = []
    for model in ("compiled", "python"):
        hv = Hypervisor(tiny_platform(domain="none"), backend=ENGINES[1])       # the reference model
        vm = small_vm(hv, strategy="drop")
        result = check(hv, generate("pmdk-tx", 1500, VmLayout.of(vm), seed=2), model=model)
        out.append((result.violations, result.completed_stores))
    assert out[0] == out[1] and out[0][0]


def test_check_trace_streams_a_trace_file(tmp_path, monkeypatch):
    """``check`` reads a trace file chunk by chunk and never builds the whole trace (issue 12
    item 6): TraceSource.array is not called, and the result is that of the array."""
    from nvemu.formats.trace import TraceSource, save_trace
    from nvemu.guest.workloads import generate
    from nvemu.tools import checker
    from nvemu.tools.checker import check_trace
    from nvemu.tools.prepare import vm_layouts
    path = tmp_path / "t.npy"
    ops = generate("kv-put", 5000, vm_layouts("small")[0], seed=3)
    save_trace(path, ops)
    whole = check_trace(ops, platform="small", domain="none", strategy="drop")
    monkeypatch.setattr(checker, "CHUNK_OPS", 777)
    monkeypatch.setattr(TraceSource, "array", lambda self: pytest.fail("the whole trace was built"))
    streamed = check_trace(path, platform="small", domain="none", strategy="drop")
    assert streamed.violations == whole.violations and streamed.points == whole.points and whole.violations


@needs_compiled("runs the compiled checker kernel")
@pytest.mark.parametrize("backend", ENGINES)
def test_a_lost_store_on_a_line_outside_the_chunk_reports_the_media_bytes_of_that_point(backend, monkeypatch):
    """The kernel keeps no bytes of a line between chunks: a store whose completing fence comes
    in a later chunk that does not touch its line reports the durable bytes from the engine's
    media after that chunk, which are those of the crash point (the value persisted before)."""
    monkeypatch.setattr(checker_module, "CHUNK_OPS", 3)
    out = []
    for model in ("compiled", "python"):
        hv = Hypervisor(tiny_platform(domain="none", wpq_depth=1), backend=backend)
        vm = small_vm(hv, strategy="write-protect")
        line, other = vm.nvdimms[0].gpa, vm.nvdimms[0].gpa + 4096
        rows = [(Op.STORE, 0, 0, 8, line, 0xA1A1), (Op.CLWB, 0, 0, 0, line, 0), (Op.SFENCE, 0, 0, 0, 0, 0),
                (Op.STORE, 0, 0, 8, vm.vfha_gpa, 1), (Op.SFENCE, 0, 0, 0, 0, 0),     # 0xA1A1 now on media
                (Op.STORE, 0, 0, 8, line, 0xB2B2),                                    # never written back
                (Op.LOAD, 0, 0, 8, other, 0), (Op.LOAD, 0, 0, 8, other, 0), (Op.SFENCE, 0, 0, 0, 0, 0)]
        result = check(hv, np.array(rows, TRACE_DTYPE), protocol="fence", model=model)
        out.append(result.violations)
    lost = [v for v in out[0] if v.store == 5]
    assert out[0] == out[1]
    assert [(v.point, v.found, v.expected) for v in lost] == [(8, (0xA1A1).to_bytes(8, "little"),
                                                              (0xB2B2).to_bytes(8, "little"))]


@needs_compiled("runs the compiled checker kernel")
def test_a_settled_line_is_dropped_and_comes_back_new_with_the_same_verdicts(monkeypatch):
    """A line whose store is durable, with nothing queued, is dropped at the next sweep (memory
    follows the lines in flight); stored again, of the value it already holds, it comes back as a
    new line and the unpersisted store is still reported lost, as the Python model reports it."""
    from nvemu.tools import check_fast
    monkeypatch.setattr(checker_module, "CHUNK_OPS", 5)
    monkeypatch.setattr(check_fast, "SWEEP_MIN_LINES", 0)
    tracked = tracked_lines(monkeypatch)
    out = []
    for model in ("compiled", "python"):
        hv = Hypervisor(tiny_platform(domain="none"))
        vm = small_vm(hv, strategy="write-protect")
        line = vm.nvdimms[0].gpa
        rows = [(Op.STORE, 0, 0, 8, line, 0xA1A1), (Op.CLWB, 0, 0, 0, line, 0), (Op.SFENCE, 0, 0, 0, 0, 0),
                (Op.STORE, 0, 0, 8, vm.vfha_gpa, 1), (Op.SFENCE, 0, 0, 0, 0, 0),      # durable: settled
                (Op.STORE, 0, 0, 8, line, 0xA1A1), (Op.CLWB, 0, 0, 0, line, 0), (Op.SFENCE, 0, 0, 0, 0, 0)]
        out.append(check(hv, np.array(rows, TRACE_DTYPE), protocol="flush", model=model).violations)
    assert tracked == [0, 1]                 # dropped after the first chunk; back in the second
    assert out[0] == out[1]
    assert [(v.store, v.kind, v.found) for v in out[0]] == [(0, "lost", bytes(8)),          # until the vFHA write
                                                            (5, "lost", (0xA1A1).to_bytes(8, "little"))]


@needs_compiled("runs the compiled checker kernel")
def test_the_kernel_refuses_lines_outside_the_engines_nvdimm_space():
    """What a caller hands the kernel directly (a span mapped anywhere, a line added by hand)
    is checked against the engine's NVDIMM space before the kernel reads the engine: a clear
    ValueError, never a read outside it."""
    from nvemu._checkcore import CheckKernel, SpanMap
    hv = Hypervisor(tiny_platform())
    vm = small_vm(hv)
    engine = hv.platform.engine
    kernel = CheckKernel(hv.platform.n_controllers, 4, 1, 1, True, "flush", False, np.zeros((1, 2), np.uint8))
    spans = SpanMap(np.array([vm.vfha_gpa >> 12], np.int64))
    ops = np.array([(Op.STORE, 0, 0, 8, 0x1000, 7)], TRACE_DTYPE)
    raw = ops.view(np.uint8)
    (key,) = spans.missing(raw).tolist()
    spans.set_base(key, 1 << 50)                        # far beyond the NVDIMMs
    hpa, slot, kind = np.empty(1, np.int64), np.empty(1, np.int32), np.empty(1, np.int8)
    with pytest.raises(ValueError, match="outside the engine's NVDIMM space"):
        spans.translate(kernel, raw, hpa, slot, kind, engine, 1)
    with pytest.raises(ValueError, match="not a line of the engine's NVDIMM space"):
        kernel.add_lines(engine, np.array([1 << 50], np.int64), np.ones(1, np.int8))
    s = kernel.add_line(1 << 50, 0, 1, False)
    with pytest.raises(ValueError, match="not in the engine's NVDIMM space"):
        kernel.chunk_add(engine, np.array([s], np.int32))
    with pytest.raises(ValueError, match="known already"):
        kernel.add_line(1 << 50, 0, 1, False)


@needs_compiled("tests the compiled checker kernel's line table")
@settings(max_examples=100, deadline=None)
@given(st.integers(1, 3000), st.integers(0, 2**32 - 1), st.sampled_from([0.0, 0.1, 0.5, 0.9]))
def test_dropping_lines_keeps_the_hash_table_exact(n, seed, share):
    """Lines with a queued copy stay; the others go at a sweep (backward-shift deletion in the
    open-addressed hash table, filled a quarter to a half, so probe runs are common); every lookup
    afterwards finds exactly the kept lines at their slots, and lines added again reuse the freed
    slots."""
    from nvemu._checkcore import CheckKernel
    rng = np.random.default_rng(seed)
    kernel = CheckKernel(2, 4096, 1, 1, True, "flush", False, np.zeros((1, 2), np.uint8))
    lines = (1 << 32) + 64 * rng.choice(1 << 20, n, replace=False).astype(np.int64)
    slots = np.array([kernel.add_line(int(h), 0, 1, False) for h in lines], np.int32)
    kept = np.flatnonzero(rng.random(n) < share)
    for k in kept:
        kernel.queue_initial(int(slots[k]), bytes(64))
    kernel.sweep_min = 0
    kernel.end_chunk()
    expect = np.full(n, -1, np.int32)
    expect[kept] = slots[kept]
    assert kernel.tracked == len(kept)
    assert np.array_equal(kernel.slot_lookup(lines), expect)
    for k in np.flatnonzero(expect < 0):
        expect[k] = kernel.add_line(int(lines[k]), 0, 1, False)
    assert np.array_equal(kernel.slot_lookup(lines), expect)
    assert sorted(expect.tolist()) == list(range(n))        # freed slots reused, none leaked
