"""The compiled core never crashes the interpreter (issue 8, part 3).

Every ``def`` of ``nvemu._core.Engine`` (and ``_trace_bytes``) is called with every wrong argument we
could think of -- wrong types, negatives, huge values, sums that wrap past 2**64, wrong dtypes and
shapes, non-contiguous arrays, destroyed VM ids, malformed state dicts, bad layouts, an engine that
was never initialised -- in a subprocess, so a segfault or a hang is a failed test case, not a dead
test run. Many calls share one subprocess; after a crash the rest run in a new one.

A wrong argument must raise one of ``ALLOWED``: an ``NvemuError`` (ConfigError, TraceError, ...),
``TypeError``, ``ValueError``, ``OverflowError`` (Cython's conversion of a too-large or negative
integer) or ``MemoryError`` (an absurd allocation). Anything else -- a signal, a hang (``alarm``),
another exception type, or returning as if the call were fine -- fails the case, as does an engine
that no longer runs a valid trace after refusing a call (and, for ``set_state``, one whose state
changed). Calls whose contract is a status rather than an exception (``run`` on a malformed
record) say so and check the status themselves.

Cases the current core fails are marked ``xfail(strict=True)`` with the reproducer in the reason
(``KNOWN``), so the suite passes until the core is fixed and then tells us to drop the mark.
``NVEMU_NO_CRASH_TIMEOUT`` sets the per-call alarm (default 10 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import pytest

from nvemu import COMPILED

pytestmark = pytest.mark.skipif(not COMPILED, reason="the compiled core is not built")

CASE_SECONDS = int(os.environ.get("NVEMU_NO_CRASH_TIMEOUT", "10"))
ALLOWED = ("NvemuError", "TypeError", "ValueError", "OverflowError", "MemoryError")


@dataclass(frozen=True)
class Case:
    id: str
    entry: str          # the Engine method (or module function) under test
    code: str           # run with the names RUNNER defines; `e` is a fresh engine
    expect: str = "raise"   # "raise": an ALLOWED exception; "return": returns (the code asserts)
    unchanged: bool = False  # after the refusal the engine state must equal the one before


# ---- the subprocess side ---------------------------------------------------------------------------

RUNNER = r'''
import dataclasses, json, os, pickle, copy, resource, signal, sys
import numpy as np
from nvemu._core import Engine, _trace_bytes
from nvemu import TRACE_DTYPE, NvemuError, Op
from nvemu.machine.platform import Platform
from nvemu.machine.config import make_platform

resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))     # a runaway allocation: MemoryError, not the OOM killer
ALLOWED = (NvemuError, TypeError, ValueError, OverflowError, MemoryError)
CFG = make_platform(sockets=1, imcs_per_socket=2, dimm_bytes=1 << 20, dram_bytes=16 << 20, wpq_depth=8,
                    domain="adr", name="tiny")
L = Platform(CFG, backend="core").layout
S0 = L.sets[0]
DRAM, PMEM = L.dram_bytes, L.pmem_base
PMEND = PMEM + L.pmem_bytes
NV, FHA = 1 << 32, (1 << 32) + (1 << 20)
STORE, NT, LOAD, CLWB, SFENCE = int(Op.STORE), int(Op.NT_STORE), int(Op.LOAD), int(Op.CLWB), int(Op.SFENCE)


def rec(*records):
    return np.array(list(records), TRACE_DTYPE)


def lay(**kw):
    return dataclasses.replace(L, **kw)


def sets(**kw):
    return (dataclasses.replace(S0, **kw),)


def fresh():
    """VM 0: 2 vCPUs, 1 MiB DRAM at GPA 0, 1 MiB of NVDIMM at 4 GiB, a write-protected vFHA; VM 1
    created and removed; some lines dirty and queued."""
    e = Engine(L)
    e.add_vm(0, 2, 4)
    e.map(0, 0, 0, 1 << 20, 7)
    e.map(0, NV, PMEM, 1 << 20, 7)
    e.map(0, FHA, DRAM - 4096, 4096, 1)
    e.set_fha(0, FHA, 1, [0, 1])
    e.add_vm(1, 1)
    e.remove_vm(1)
    n, status = e.run(rec((STORE, 0, 0, 8, NV, 1), (CLWB, 0, 0, 0, NV, 0), (STORE, 1, 0, 8, NV + 4096, 2),
                          (NT, 0, 0, 8, NV + 8192, 3), (SFENCE, 0, 0, 0, 0, 0)))
    assert (n, status) == (5, 0)
    return e


def state(e, **changes):
    """e's state with some arrays replaced (None: removed)."""
    s = e.get_state()
    for k, v in changes.items():
        if v is None:
            s.pop(k, None)
        else:
            s[k] = v
    return s


def health(e):
    """A valid trace touching both controllers' lines, then every reader."""
    ops = rec((STORE, 0, 0, 8, NV + 64, 0x1234), (CLWB, 0, 0, 0, NV + 64, 0),
              (STORE, 1, 0, 8, NV + 4096 + 64, 0x5678), (CLWB, 1, 0, 0, NV + 4096 + 64, 0), (SFENCE, 0, 0, 0, 0, 0),
              (STORE, 0, 0, 8, FHA, 1), (LOAD, 1, 0, 8, NV + 64, 0), (STORE, 1, 0, 8, 64, 5))
    assert e.run(ops) == (8, 0), "a valid trace no longer runs"
    assert e.read_memory(64, 8) == (5).to_bytes(8, "little")
    assert e.durable_read(PMEM + 64, 8) == (0x1234).to_bytes(8, "little")
    assert e.durable_read(PMEM + 4096 + 64, 8) == (0x5678).to_bytes(8, "little")
    e.walk(0, NV); e.translate(0, 1, NV); e.get_state(); e.wpq_entries(0); e.stats(0)


def same_state(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def out(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


BASE = {k: v for k, v in globals().items() if not k.startswith("__")}
for case in json.loads(sys.stdin.read()):
    out(start=case["id"])
    signal.alarm(int(os.environ.get("CASE_SECONDS", "10")))    # default action: the process dies (a hang)
    e = fresh()
    before = e.get_state() if case["unchanged"] else None
    env = dict(BASE, e=e)
    result = {"id": case["id"]}
    try:
        exec(case["code"], env)
        result.update(outcome="returned")
    except BaseException as x:                                   # noqa: BLE001 - we report everything
        result.update(outcome="raised", exc=type(x).__name__, allowed=isinstance(x, ALLOWED),
                      msg=str(x)[:300])
    try:
        if before is not None and not same_state(before, e.get_state()):
            result["health"] = "the engine state changed although the call was refused"
        else:
            health(e)
            result["health"] = "ok"
    except BaseException as x:                                   # noqa: BLE001
        result["health"] = f"{type(x).__name__}: {str(x)[:200]}"
    signal.alarm(0)
    del env, e, before
    out(**result)
'''


def run_cases(cases: list[Case]) -> dict[str, dict]:
    """Run every case, resuming after crashes; {id: result} where result["status"] is
    ok | crash | hang | wrong-exception | no-exception | unhealthy | failed."""
    todo = list(cases)
    results: dict[str, dict] = {}
    env = {**os.environ, "CASE_SECONDS": str(CASE_SECONDS), "PYTHONFAULTHANDLER": ""}
    while todo:
        payload = json.dumps([{"id": c.id, "code": c.code, "unchanged": c.unchanged} for c in todo])
        try:
            proc = subprocess.run([sys.executable, "-c", RUNNER], check=False, input=payload, capture_output=True,
                                  text=True, env=env, timeout=CASE_SECONDS * len(todo) + 120)
            stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as t:
            text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
            stdout, stderr, rc = text(t.stdout), text(t.stderr), None
        started = None
        for line in stdout.splitlines():
            msg = json.loads(line)
            if "start" in msg:
                started = msg["start"]
            else:
                results[msg["id"]] = msg
                started = None
        done = {c.id for c in todo if c.id in results}
        if started is None and len(done) < len(todo):
            raise RuntimeError(f"the case runner failed before any case (rc={rc}):\n{stderr[-3000:]}")
        if started is not None:                      # died inside `started`: a signal, the alarm or the timeout
            if rc is None or rc == -signal.SIGALRM:
                results[started] = {"id": started, "status": "hang"}
            else:
                name = signal.Signals(-rc).name if rc < 0 else f"exit status {rc}"
                results[started] = {"id": started, "status": "crash", "signal": name}
            done.add(started)
        todo = [c for c in todo if c.id not in done]
    by_id = {c.id: c for c in cases}
    for cid, r in results.items():
        if "status" in r:
            continue
        c = by_id[cid]
        if c.expect == "raise":
            r["status"] = ("ok" if r["allowed"] else "wrong-exception") if r["outcome"] == "raised" else "no-exception"
        else:
            r["status"] = "ok" if r["outcome"] == "returned" else "failed"
        if r["status"] == "ok" and r["health"] != "ok":
            r["status"] = "unhealthy"
    return results


# ---- the cases -------------------------------------------------------------------------------------

BAD_VM = {"neg": "-1", "2**31": "2**31", "2**64": "2**64", "None": "None", "float": "1.5", "str": "'0'",
          "list": "[0]", "destroyed": "1", "never-created": "7", "max_vms": "256", "np-float": "np.float64(0)"}
BAD_U64 = {"neg": "-1", "2**64": "2**64", "2**65": "2**65", "None": "None", "float": "1.5", "str": "'0'",
           "list": "[0]", "np-float": "np.float64(4096)", "np-neg": "np.int64(-1)"}
BAD_INT = {"neg": "-1", "2**31": "2**31", "2**64": "2**64", "None": "None", "float": "1.5", "str": "'1'"}


def calls(entry: str, template: str, params: dict[str, dict[str, str]], **kw) -> list[Case]:
    """One case per (parameter, bad value): ``template`` with every other parameter valid."""
    out = []
    for name, bad in params.items():
        for label, value in bad.items():
            if label == "ok":
                continue
            code = template.format(**{k: v["ok"] if k != name else value for k, v in params.items()})
            out.append(Case(f"{entry}-{name}-{label}", entry, code, **kw))
    return out


def p(ok: str, bad: dict[str, str]) -> dict[str, str]:
    return {"ok": ok, **bad}


def _drop_ok(params: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return params


def vm_only(entry: str, template: str) -> list[Case]:
    return calls(entry, template, {"vm": p("0", BAD_VM)})


def _cases() -> list[Case]:
    cases: list[Case] = []
    add = cases.extend

    # -- VMs
    add(calls("add_vm", "e.add_vm({vm}, {nvcpus}, {tlb})", {
        "vm": p("2", {**{k: v for k, v in BAD_VM.items() if k not in ("destroyed", "never-created")},
                      "in-use": "0"}),
        "nvcpus": p("1", {**BAD_INT, "zero": "0", "257": "257"}),
        "tlb": p("4", {**BAD_INT, "zero": "0", "not-pow2": "3", "2**21": "2**21"})}))
    add(vm_only("remove_vm", "e.remove_vm({vm})"))
    add([Case("remove_vm-twice", "remove_vm", "e.add_vm(2, 1); e.remove_vm(2); e.remove_vm(2)")])
    add(calls("set_fha", "e.set_fha({vm}, {gpa}, {mode}, {fanout})", {
        "vm": p("0", BAD_VM),
        "gpa": p("FHA", {"neg": "-1", "2**48": "2**48", "2**64": "2**64", "float": "1.5", "str": "'x'", "list": "[0]"}),
        "mode": p("1", {**BAD_INT, "7": "7"}),
        "fanout": p("[0, 1]", {"None": "None", "int": "5", "neg": "[-1]", "missing": "[2]", "2**64": "[2**64]",
                               "float": "[0.5]", "str": "['0']", "None-item": "[None]", "np-neg": "np.array([-1])",
                               "iter-missing": "iter([0, 99])"})}))
    add(vm_only("set_running", "e.set_running({vm}, True)"))
    add(vm_only("stats", "e.stats({vm})"))
    add(vm_only("drained_by_controller", "e.drained_by_controller({vm})"))
    add(vm_only("reset_stats", "e.reset_stats({vm})"))
    add(vm_only("clock", "e.clock({vm})"))

    # -- page tables
    add(calls("map", "e.map({vm}, {gpa}, {hpa}, {length}, {perms}, {page})", {
        "vm": p("0", BAD_VM),
        "gpa": p("0x200000", {**BAD_U64, "unaligned": "1", "2**48": "2**48", "wraps": "2**64 - 4096"}),
        "hpa": p("0x100000", {**BAD_U64, "unaligned": "1", "gap": "DRAM", "pmem-end": "PMEND",
                              "wraps": "2**64 - 4096"}),
        "length": p("4096", {**BAD_U64, "zero": "0", "unaligned": "1", "wraps": "2**64 - 4096",
                             "past-pmem": "PMEND"}),
        "perms": p("7", {**BAD_INT, "zero": "0", "8": "8"}),
        "page": p("4096", {**BAD_U64, "zero": "0", "1": "1", "8k": "8192", "1g": "1 << 30"})}))
    add([Case("map-pmem-straddles-end", "map", "e.map(0, 0x200000, PMEND - 4096, 8192, 7)"),
         Case("map-2m-unaligned-gpa", "map", "e.map(0, 0x201000, 0x200000, 2 << 20, 7, 2 << 20)"),
         Case("map-2m-over-4k-table", "map", "e.map(0, 0, 0, 2 << 20, 7, 2 << 20)"),
         Case("map-hpa-wraps-then-store", "map",
              "e.map(0, 0x200000, 2**64 - 4096, 4096, 7)\nr = e.run(rec((STORE, 0, 0, 8, 0x200000, 1)))"),
         Case("map-pool-exhausted", "map",
              "for k in range(70000):\n    e.map(0, (k + 8) << 30, 0, 4096, 7)")])
    for entry, template, extra in (
            ("protect", "e.protect({vm}, {gpa}, {length}, {perms})", {"perms": p("1", {**BAD_INT, "8": "8"})}),
            ("unmap", "e.unmap({vm}, {gpa}, {length})", {})):
        add(calls(entry, template, {
            "vm": p("0", BAD_VM),
            "gpa": p("NV", {**BAD_U64, "unaligned": "NV + 1", "unmapped": "0x7000_0000", "2**48": "2**48",
                            "wraps": "2**64 - 4096"}),
            "length": p("4096", {**BAD_U64, "zero": "0", "unaligned": "1", "past-mapping": "2 << 20",
                                 "wraps": "2**64 - NV"}),
            **extra}))
    add(calls("walk", "e.walk({vm}, {gpa})", {"vm": p("0", BAD_VM),
                                               "gpa": p("NV", {**BAD_U64, "2**48": "2**48"})}))
    add(calls("translate", "e.translate({vm}, {vcpu}, {gpa}, {write})", {
        "vm": p("0", BAD_VM), "vcpu": p("1", {**BAD_INT, "missing": "2", "256": "256"}),
        "gpa": p("NV", {**BAD_U64, "2**48": "2**48", "unmapped": "0x7000_0000"}),
        "write": p("False", {})}))
    # a write to the write-protected vFHA page is a fault: translate of FHA for write must raise
    add([Case("translate-write-protected", "translate", "e.translate(0, 0, FHA, True)")])

    # -- replay
    ops_bad = {"None": "None", "list": "[1, 2, 3]", "str": "'abc'", "u64": "np.zeros(3, np.uint64)",
               "2d": "np.zeros((2, 2), TRACE_DTYPE)", "0d": "np.zeros((), TRACE_DTYPE)",
               "big-endian": "np.zeros(3, TRACE_DTYPE.newbyteorder('>'))",
               "fewer-fields": "np.zeros(3, [('op', 'u1'), ('vcpu', 'u1')])",
               "padded": "np.zeros(3, np.dtype({'names': TRACE_DTYPE.names, 'formats': [TRACE_DTYPE[n] for n in "
                         "TRACE_DTYPE.names], 'offsets': [TRACE_DTYPE.fields[n][1] for n in TRACE_DTYPE.names], "
                         "'itemsize': 32}))",
               "object": "np.array([None, 1], object)", "bytes": "b'x' * 24"}
    add(calls("run", "e.run({ops}, {start})", {"ops": p("rec((SFENCE, 0, 0, 0, 0, 0))", ops_bad),
                                               "start": p("0", {"neg": "-1", "past-end": "2", "2**63": "2**63",
                                                                "2**64": "2**64", "None": "None",
                                                                "float": "0.5"})}))
    add(calls("_trace_bytes", "_trace_bytes({ops})", {"ops": p("rec((SFENCE, 0, 0, 0, 0, 0))", ops_bad)}))
    bad_records = {"op-8": "(8, 0, 0, 8, NV, 0)", "op-255": "(255, 0, 0, 8, NV, 0)",
                   "vm-destroyed": "(STORE, 0, 1, 8, NV, 0)", "vm-65535": "(STORE, 0, 65535, 8, NV, 0)",
                   "vcpu-2": "(STORE, 2, 0, 8, NV, 0)", "vcpu-255": "(STORE, 255, 0, 8, NV, 0)",
                   "size-3": "(STORE, 0, 0, 3, NV, 0)", "size-2**32-1": "(LOAD, 0, 0, 2**32 - 1, NV, 0)",
                   "size-16": "(LOAD, 0, 0, 16, NV, 0)", "crosses-line": "(STORE, 0, 0, 8, NV + 60, 0)",
                   "value-too-big": "(STORE, 0, 0, 1, NV, 256)", "flush-size-8": "(CLWB, 0, 0, 8, NV, 0)",
                   "gpa-2**64-8": "(STORE, 0, 0, 8, 2**64 - 8, 1)", "gpa-2**48": "(LOAD, 0, 0, 8, 2**48, 0)",
                   "gpa-unmapped": "(STORE, 0, 0, 8, 0x7000_0000, 1)"}
    for label, r in bad_records.items():
        # the contract is a status (1: an exit back to Python, 2: a refused record) at that record
        add([Case(f"run-record-{label}", "run",
                  f"ops = rec((SFENCE, 0, 0, 0, 0, 0), {r}, (SFENCE, 0, 0, 0, 0, 0))\n"
                  f"i, status = e.run(ops)\nassert (i, status in (1, 2)) == (1, True), (i, status)\n"
                  f"assert e.run(ops[::2]) == (2, 0)", expect="return")])
    add([Case("run-strided-readonly-ok", "run",
              "ops = rec(*[(STORE, 0, 0, 8, NV + 8 * k, k) for k in range(8)])[::3].copy()[::-1]\n"
              "ops.flags.writeable = False\nassert e.run(ops) == (3, 0)", expect="return"),
         Case("run-zero-strides-ok", "run",
              "ops = np.broadcast_to(rec((STORE, 0, 0, 8, NV, 1)), (4,))\nassert e.run(ops) == (4, 0)",
              expect="return")])
    add(calls("drain", "e.drain({ctl})", {"ctl": p("[0, 1]", {
        "None": "None", "int": "5", "neg": "[-1]", "missing": "[2]", "2**64": "[2**64]", "float": "[0.5]",
        "str": "['0']", "None-item": "[None]", "np-neg": "np.array([-1])", "iter-missing": "iter([0, 2])"})}))

    # -- host memory
    hpa_n = {"hpa-neg": "(-1, 64)", "hpa-2**64": "(2**64, 64)", "hpa-None": "(None, 64)", "n-None": "(0, None)",
             "n-neg": "(0, -1)", "n-2**64": "(0, 2**64)", "hpa-float": "(0.5, 64)", "gap": "(DRAM, 64)",
             "dram-straddles": "(DRAM - 32, 64)", "pmem-end": "(PMEND, 64)", "pmem-straddles": "(PMEND - 32, 64)",
             "wraps-dram": "(2**64 - 4096, 4096)", "wraps-pmem": "(PMEM + 64, 2**64 - 64)",
             "wraps-top": "(2**64 - 64, 64)", "huge-n": "(0, 2**63)"}
    for entry in ("prefault", "read_memory", "read_media", "durable_read"):
        add([Case(f"{entry}-{label}", entry, f"e.{entry}(*{args})") for label, args in hpa_n.items()])
    add([Case("read_media-dram", "read_media", "e.read_media(0, 64)"),
         Case("durable_read-dram", "durable_read", "e.durable_read(0, 64)")])
    add([Case(f"write_memory-{label}", "write_memory", f"e.write_memory({args})") for label, args in {
        "hpa-neg": "-1, b'x'", "hpa-2**64": "2**64, b'x'", "gap": "DRAM, b'x'", "pmem-end": "PMEND - 1, b'xy'",
        "wraps-top": "2**64 - 1, b'x'", "wraps-page": "2**64 - 4096, bytes(4096)", "data-None": "0, None",
        "data-int": "0, 5", "data-str": "0, 'text'", "data-300": "0, [300]", "data-neg": "0, [-1]",
        "data-float": "0, [0.5]", "hpa-None": "None, b'x'"}.items()])
    add(calls("wpq_entries", "e.wpq_entries({c})", {"c": p("0", {**BAD_INT, "missing": "2"})}))
    add(calls("controller_of", "e.controller_of({hpa})", {"hpa": p("PMEM", {**BAD_U64, "dram": "0",
                                                                            "pmem-end": "PMEND"})}))
    add(calls("discard", "e.discard({hpa}, {n})", {"hpa": p("PMEM", {**BAD_U64, "unaligned": "PMEM + 64"}),
                                                    "n": p("4096", {**BAD_U64, "pmem-end": "PMEND",
                                                                     "unaligned": "64"})}))
    add(calls("vm_slot", "e.vm_slot({vm})", {"vm": p("0", BAD_VM)}))
    add(calls("set_memory_budget", "e.set_memory_budget({n})", {"n": p("1 << 30", BAD_U64)}))

    # -- state
    for key in ("memory_hpa", "memory_data", "media_hpa", "media_data", "line_hpa", "line_state", "wpq_ctrl",
                "wpq_line", "wpq_data", "ctrl_stats", "table_ids", "table_data", "free_tables", "scalars",
                "vm_ids", "vm0_meta", "vm0_tlb", "vm0_stats", "vm0_fanout", "vm0_drained"):
        for label, value in {"missing": "None", "3d": "np.zeros((2, 2, 2), np.uint64)", "float": "np.zeros(4)",
                             "bool": "np.zeros(4, bool)", "str": "'x'", "object": "np.array([None, 1], object)",
                             "0d": "np.uint64(1)", "neg": "np.array([-1, -2])"}.items():
            add([Case(f"set_state-{key}-{label}", "set_state", f"e.set_state(state(e, {key}={value}))",
                      unchanged=True)])
    corrupt = {
        "not-a-dict": "None", "empty": "{}", "list": "[]", "str": "'state'",
        "vm-id-300": "state(e, vm_ids=np.array([0, 300], np.uint32), vm300_meta=e.get_state()['vm0_meta'])",
        "vm-without-meta": "state(e, vm_ids=np.array([0, 3], np.uint32))",
        "root-out-of-pool": "state(e, vm0_meta=np.array([99999, 2, 4, 1, FHA >> 12, 1], np.uint64))",
        "root-not-a-table": "state(e, vm0_meta=np.array([5000, 2, 4, 1, FHA >> 12, 1], np.uint64))",
        "nvcpus-0": "state(e, vm0_meta=np.array([0, 0, 4, 1, FHA >> 12, 1], np.uint64))",
        "nvcpus-300": "state(e, vm0_meta=np.array([0, 300, 4, 1, FHA >> 12, 1], np.uint64))",
        "tlb-entries-3": "state(e, vm0_meta=np.array([0, 2, 3, 1, FHA >> 12, 1], np.uint64))",
        "tlb-entries-0": "state(e, vm0_meta=np.array([0, 2, 0, 1, FHA >> 12, 1], np.uint64))",
        "tlb-entries-2**40": "state(e, vm0_meta=np.array([0, 2, 2**40, 1, FHA >> 12, 1], np.uint64))",
        "fha-mode-99": "state(e, vm0_meta=np.array([0, 2, 4, 1, FHA >> 12, 99], np.uint64))",
        "meta-short": "state(e, vm0_meta=np.array([0, 2], np.uint64))",
        "tlb-rows-short": "state(e, vm0_tlb=e.get_state()['vm0_tlb'][:3])",
        "tlb-hpa-outside": "state(e, vm0_tlb=np.array([[0, 7, 2**40, 0]] * 8, np.uint64))",
        "tlb-slot-outside": "state(e, vm0_tlb=np.array([[0, 7, 0, 2**40]] * 8, np.uint64))",
        "tlb-hpa-gap": "state(e, vm0_tlb=np.array([[0, 7, DRAM, 0]] * 8, np.uint64))",
        "stats-rows-short": "state(e, vm0_stats=e.get_state()['vm0_stats'][:1])",
        "fanout-long": "state(e, vm0_fanout=np.ones(300, np.uint8))",
        "drained-short": "state(e, vm0_drained=np.zeros(1, np.uint64))",
        "table-points-outside": "(lambda s: (s['table_data'].__setitem__((0, 4), (2**30 << 12) | 7), s)[1])"
                                "(state(e))",
        "leaf-hpa-outside": "(lambda s: (s['table_data'].__setitem__((-1, 0), (2**40) | 7), s)[1])(state(e))",
        "large-page-1g-outside": "(lambda s: (s['table_data'].__setitem__((1, 7), (2**40) | 0x87), s)[1])"
                                 "(state(e))",
        "large-page-at-pml4": "(lambda s: (s['table_data'].__setitem__((0, 9), 0x87), s)[1])(state(e))",
        "table-ids-duplicate": "state(e, table_ids=np.r_[e.get_state()['table_ids'], 0].astype(np.uint32), "
                               "table_data=np.r_[e.get_state()['table_data'], e.get_state()['table_data'][:1]])",
        "table-data-rows-short": "state(e, table_data=e.get_state()['table_data'][:1])",
        "free-table-outside": "state(e, free_tables=np.array([2**31], np.uint32))",
        "free-table-in-use": "state(e, free_tables=np.array([0], np.uint32))",
        "next-table-huge": "state(e, scalars=np.array([2**40, 0], np.uint64))",
        "next-table-small": "state(e, scalars=np.array([1, 0], np.uint64))",
        "scalars-short": "state(e, scalars=np.array([1], np.uint64))",
        "memory-unaligned": "state(e, memory_hpa=np.array([8], np.uint64), memory_data=np.zeros((1, 4096), np.uint8))",
        "memory-gap": "state(e, memory_hpa=np.array([DRAM], np.uint64), memory_data=np.zeros((1, 4096), np.uint8))",
        "memory-rows-mismatch": "state(e, memory_data=np.zeros((0, 4096), np.uint8))",
        "memory-data-wide": "state(e, memory_data=np.zeros((len(e.get_state()['memory_hpa']), 8192), np.uint8))",
        "media-in-dram": "state(e, media_hpa=np.array([0], np.uint64), media_data=np.zeros((1, 4096), np.uint8))",
        "media-past-end": "state(e, media_hpa=np.array([PMEND], np.uint64), media_data=np.zeros((1, 4096), np.uint8))",
        "line-outside": "state(e, line_hpa=np.array([2**40], np.uint64), line_state=np.array([1], np.uint8))",
        "line-unaligned": "state(e, line_hpa=np.array([PMEM + 1], np.uint64), line_state=np.array([1], np.uint8))",
        "line-state-7": "state(e, line_hpa=np.array([PMEM], np.uint64), line_state=np.array([7], np.uint8))",
        "wpq-controller-9": "state(e, wpq_ctrl=np.array([9], np.uint32), wpq_line=np.array([PMEM], np.uint64), "
                            "wpq_data=np.zeros((1, 64), np.uint8))",
        "wpq-overfull": "state(e, wpq_ctrl=np.zeros(9, np.uint32), wpq_line=np.full(9, PMEM, np.uint64), "
                        "wpq_data=np.zeros((9, 64), np.uint8))",
        "wpq-line-outside": "state(e, wpq_ctrl=np.array([0], np.uint32), wpq_line=np.array([0], np.uint64), "
                            "wpq_data=np.zeros((1, 64), np.uint8))",
        "wpq-length-mismatch": "state(e, wpq_ctrl=np.array([0, 0, 0], np.uint32))",
        "ctrl-stats-rows": "state(e, ctrl_stats=np.zeros((5, 4), np.uint64))",
    }
    add([Case(f"set_state-{label}", "set_state", f"e.set_state({code})", unchanged=True)
         for label, code in corrupt.items()])
    add([Case("set_state-empty-dict", "set_state", "e.set_state({})", unchanged=True)])
    # sparse memory (issue 17): a 64 TiB host costs nothing until touched
    add([Case("__init__-dram-huge-is-sparse", "__init__",
              "h = Engine(lay(dram_bytes=2**46, pmem_base=2**47, sets=sets(hpa_base=2**47)))\n"
              "assert h.touched_bytes == 0 and h.read_memory(2**46 - 64, 64) == bytes(64)", expect="return")])

    # -- construction
    layouts = {
        "None": "None", "object": "object()", "ctl-0": "lay(n_controllers=0)", "ctl-257": "lay(n_controllers=257)",
        "ctl-float": "lay(n_controllers=1.5)", "ctl-None": "lay(n_controllers=None)",
        "wpq-0": "lay(wpq_depth=0)", "wpq-4097": "lay(wpq_depth=4097)", "wpq-2**64": "lay(wpq_depth=2**64)",
        "max-vms-0": "lay(max_vms=0)", "max-vms-65537": "lay(max_vms=65537)", "pool-0": "lay(pool_tables=0)",
        "pool-2**25": "lay(pool_tables=2**25)", "domain-3": "lay(domain=3)", "domain-neg": "lay(domain=-1)",
        "domain-float": "lay(domain=1.0)", "domain-str": "lay(domain='adr')",
        "dram-unaligned": "lay(dram_bytes=4097)", "dram-neg": "lay(dram_bytes=-4096)",
        "dram-above-pmem": "lay(dram_bytes=L.pmem_base + 4096)",
        "dram-2**64": "lay(dram_bytes=2**64)", "pmem-base-unaligned": "lay(pmem_base=L.pmem_base + 1)",
        "pmem-base-2**64": "lay(pmem_base=2**64 - 4096, sets=sets(hpa_base=2**64 - 4096))",
        "set-gap": "lay(sets=sets(hpa_base=L.pmem_base + 4096))",
        "set-length-unaligned": "lay(sets=sets(length=S0.length + 64))",
        "set-length-neg": "lay(sets=sets(length=-4096))",
        "set-ctl-missing": "lay(sets=sets(controllers=(0, 5)))", "set-ctl-neg": "lay(sets=sets(controllers=(0, -1)))",
        "set-ctl-empty": "lay(sets=sets(controllers=()))", "set-ctl-None": "lay(sets=sets(controllers=None))",
        "set-granularity-0": "lay(sets=sets(granularity=0))",
        "set-granularity-neg": "lay(sets=sets(granularity=-4096))",
        "set-granularity-3": "lay(sets=sets(granularity=3))",
        "sets-None": "lay(sets=None)", "sets-of-None": "lay(sets=(None,))",
        "costs-short": "lay(timing=(1, 2))", "costs-neg": "lay(timing=(-1,) * 20)", "costs-None": "lay(timing=None)",
        "costs-str": "lay(timing=('a',) * 20)", "costs-2**64": "lay(timing=(2**64,) * 20)",
    }
    add([Case(f"__init__-{label}", "__init__", f"Engine({code})") for label, code in layouts.items()])
    add([Case("__init__-pmem-above-52-bits", "__init__", "Engine(lay(pmem_base=1 << 52, sets=sets(hpa_base=1 << 52)))"),
         Case("__init__-pmem-past-2**64", "__init__",
              "Engine(lay(pmem_base=2**64 - 4096, sets=sets(hpa_base=2**64 - 4096)))"),
         Case("__init__-pmem-ends-at-2**64", "__init__",
              "Engine(lay(pmem_base=2**64 - S0.length, sets=sets(hpa_base=2**64 - S0.length)))"),
         Case("__init__-pmem-past-2**64-then-store", "__init__",
              "top = 2**64 - S0.length\nx = Engine(lay(pmem_base=top, sets=sets(hpa_base=top)))\n"
              "x.add_vm(0, 1); x.map(0, NV, top, S0.length, 7)\nx.run(rec((STORE, 0, 0, 8, NV, 1)))"),
         # the same through the public API: a platform (or an NFIT) whose SPA range lies above 52 bits
         Case("platform-spa-past-2**64-then-store", "__init__",
              "from nvemu import Hypervisor\n"
              "h = Hypervisor(make_platform(sockets=1, imcs_per_socket=1, dimm_bytes=1 << 20, dram_bytes=16 << 20,"
              " spa_base=2**64 - (1 << 20)))\n"
              "v = h.create_vm(dram=1 << 20, nvdimms=[1 << 20]).start()\nv.vcpu(0).store(v.nvdimms[0].gpa, 1)"),
         Case("platform-spa-above-52-bits-store-lands-in-dram", "__init__",
              "from nvemu import Hypervisor\n"
              "h = Hypervisor(make_platform(sockets=1, imcs_per_socket=1, dimm_bytes=1 << 20, dram_bytes=16 << 20,"
              " spa_base=1 << 52))\n"
              "v = h.create_vm(dram=1 << 20, nvdimms=[1 << 20]).start()\nv.vcpu(0).store(v.nvdimms[0].gpa, 0x55)\n"
              "assert h.platform.read_memory(0, 8) == bytes(8), 'the vNVDIMM store landed in host DRAM at 0'")])
    # __init__ again on a live engine: a refused layout must leave the engine as it was
    for label, code in {"ctl-missing-bigger-pmem": "lay(sets=sets(length=S0.length * 64, controllers=(0, 9)))",
                        "ctl-200-bad-set": "lay(n_controllers=200, sets=sets(controllers=(0, 250)))",
                        "wpq-4096-bad-set": "lay(wpq_depth=4096, sets=sets(controllers=(0, 9)))",
                        "costs-short": "lay(timing=(1, 2))", "None": "None"}.items():
        add([Case(f"__init__-again-{label}", "__init__", f"e.__init__({code})")])
    add([Case("__init__-again-bigger-pmem-then-store", "__init__",
              "try:\n    e.__init__(lay(sets=sets(length=S0.length * 64, controllers=(0, 9))))\n"
              "finally:\n    e.map(0, 2 << 32, PMEM + (60 << 20), 4096, 7)\n"
              "    e.run(rec((STORE, 0, 0, 8, 2 << 32, 1)))")])
    add([Case("__init__-no-args", "__init__", "Engine()"), Case("__init__-two-args", "__init__", "Engine(L, L)"),
         Case("pickle", "__reduce__", "pickle.dumps(e)"), Case("copy", "__reduce__", "copy.copy(e)")])

    # -- an engine that was never initialised (Engine.__new__): every method must refuse, not crash
    uninit = {"run": "u.run(rec((STORE, 0, 0, 8, 0, 1)))", "add_vm": "u.add_vm(0, 1)", "map": "u.map(0, 0, 0, 4096, 7)",
              "walk": "u.walk(0, 0)", "translate": "u.translate(0, 0, 0)", "drain": "u.drain([0])",
              "read_memory": "u.read_memory(0, 64)", "write_memory": "u.write_memory(0, b'x')",
              "read_media": "u.read_media(0, 64)", "durable_read": "u.durable_read(0, 64)",
              "prefault": "u.prefault(0, 4096)", "wpq_entries": "u.wpq_entries(0)",
              "controller_of": "u.controller_of(0)",
              "controller_stats": "u.controller_stats()", "memory_pages": "u.memory_pages()",
              "media_pages": "u.media_pages()", "get_state": "u.get_state()", "set_state": "u.set_state(e.get_state())",
              "power_fail": "u.power_fail()", "tables": "u.tables()", "tables_in_use": "u.tables_in_use",
              "stats": "u.stats(0)", "remove_vm": "u.remove_vm(0)", "set_fha": "u.set_fha(0, 0, 1, [])",
              "set_running": "u.set_running(0, True)", "protect": "u.protect(0, 0, 4096, 1)",
              "unmap": "u.unmap(0, 0, 4096)", "reset_stats": "u.reset_stats(0)",
              "drained_by_controller": "u.drained_by_controller(0)", "line_states": "u.line_states()",
              "discard": "u.discard(0, 4096)", "touched_ranges": "u.touched_ranges()", "vm_slot": "u.vm_slot(0)",
              "table_rows": "u.table_rows()", "clock": "u.clock(0)", "controller_busy": "u.controller_busy()",
              "dimm_busy": "u.dimm_busy()", "dimm_read_busy": "u.dimm_read_busy()"}
    add([Case("uninitialised-vm_ids", "vm_ids", "assert Engine.__new__(Engine).vm_ids() == []", expect="return"),
         Case("uninitialised-free_table_list", "free_table_list",
              "assert Engine.__new__(Engine).free_table_list() == []", expect="return")])
    add([Case(f"uninitialised-{name}", name, f"u = Engine.__new__(Engine)\n{code}") for name, code in uninit.items()
         if name not in ("run", "line_states")])
    add([Case("uninitialised-run", "run", "u = Engine.__new__(Engine)\n"
                                          "assert u.run(rec((STORE, 0, 0, 8, 0, 1))) == (0, 2)", expect="return"),
         Case("uninitialised-line_states", "line_states", "u = Engine.__new__(Engine)\nassert u.line_states() == {}",
              expect="return")])
    return cases


CASES = _cases()
assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"

# Cases the current core fails, by root cause (see the report of issue 8). A fixed cause makes its cases
# XPASS, which strict xfail turns into a failure: then delete the cause here.
_CAUSES = {
    'R1': (
        'CRASH: Engine._check_hpa computes hpa + length in uint64, so a range ending past 2**64 wraps and'
        ' passes as DRAM; map() then installs EPT leaves pointing outside host memory and the next access'
        ' segfaults; read_memory/read_media/durable_read/prefault/write_memory silently return wrong or '
        'empty data'
    ),
    'R2': (
        'CRASH: Engine.__init__ accepts NVDIMM space above the 52 address bits an EPT entry holds, or '
        'ending at/past 2**64 (reachable from make_platform(spa_base=...) or an NFIT SPA range): a store '
        'segfaults, or at spa_base=2**52 the vNVDIMM store lands in host DRAM at HPA 0'
    ),
    'R3': (
        'CRASH: Engine.__init__ on a live engine assigns pmem_bytes/n_controllers/wpq_depth before '
        'validating the sets; a refused layout leaves the new geometry over the old arrays and the next '
        'store/drain segfaults'
    ),
    'R4': (
        'silent: gpa + length wraps past 2**64 in map/protect/unmap/_each_leaf, so the 48-bit check '
        'passes; map installs an aliased mapping, protect/unmap do nothing'
    ),
    'R5': (
        'silent: run() executes a record whose GPA is >= 2**48 as GPA & (2**48 - 1) (walk indices are '
        'masked)'
    ),
    'R6': (
        'silent: C-integer parameters take floats by truncation (Cython falls back to __int__): '
        'add_vm(1.5) makes VM 1, remove_vm(np.float64(0)) removes VM 0'
    ),
    'R7': (
        'silent: set_fha(mode=-1) passes `FHA_NONE <= mode` (the C enum compares unsigned); afterwards '
        'get_state() raises OverflowError (no snapshot) and vFHA writes exit to Python'
    ),
    'R8': (
        'state: set_state checks VM slots only in _install_vm, after memory, media, WPQs and tables were '
        'replaced and every VM slot cleared, so a refused state does change the engine (VM 0 is gone)'
    ),
    'R9': (
        'silent: set_state casts with astype, so negative numbers wrap (fan-out -1 -> 255, drained -1 -> '
        '2**64-1)'
    ),
    'R10': (
        'wrong exception type (AttributeError/IndexError/KeyError, not TypeError/ValueError/ConfigError)'
    ),
}
_KNOWN_IDS: dict[str, list[str]] = {}     # every cause above is fixed in the core
KNOWN: dict[str, str] = {cid: f"{cause}: {_CAUSES[cause]}" for cause, ids in _KNOWN_IDS.items() for cid in ids}


@pytest.fixture(scope="module")
def outcomes() -> dict[str, dict]:
    return run_cases(CASES)


def _param(c: Case):
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN[c.id])] if c.id in KNOWN else []
    return pytest.param(c, id=c.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_wrong_argument_is_refused_not_fatal(case: Case, outcomes):
    r = outcomes[case.id]
    assert r["status"] == "ok", (f"{case.entry}: {r['status']}: {json.dumps(r)}\nreproducer (names from "
                                 f"RUNNER; e = fresh()):\n{case.code}")


def test_every_entry_point_is_exercised():
    """Every method of the compiled Engine (and the no-argument ones, on an uninitialised engine)."""
    from nvemu._core import Engine
    methods = {name for name, member in vars(Engine).items() if callable(member) and not name.startswith("__")}
    missing = sorted((methods | {"__init__", "tables_in_use"}) - {c.entry for c in CASES})
    assert not missing, f"entry points without a wrong-argument case: {missing}"
