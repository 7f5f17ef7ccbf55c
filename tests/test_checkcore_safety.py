"""The checker kernel (``nvemu._checkcore``) never crashes the interpreter (issue 12: nothing a
Python caller can reach breaks the core).

``CheckKernel`` and ``SpanMap`` are importable, so every public method is called wrongly here --
before ``__init__``, twice initialised, with slots, controllers, VMs and vCPUs it does not have,
lines outside the engine's NVDIMM space, records it cannot hold, spans never resolved -- in a
subprocess, so that a segfault fails the test instead of ending the run. Each call must raise
``ValueError``/``TypeError``/``IndexError`` or return, and the kernel must still follow a valid
chunk afterwards. Threads calling one kernel are serialized by its lock."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import needs_compiled

_CASES = r'''
import json, sys
import numpy as np
sys.path.insert(0, "tests")
from conftest import small_vm, tiny_platform
from nvemu import Hypervisor, Op
from nvemu._checkcore import CheckKernel, SpanMap
from nvemu._constants import TRACE_DTYPE

hv = Hypervisor(tiny_platform())
vm = small_vm(hv)
engine = hv.platform.engine
mask = np.zeros((1, 2), np.uint8)

def kernel():
    return CheckKernel(2, 4, 1, 1, True, "flush", False, mask)

def records(*rows):
    return np.array(list(rows), TRACE_DTYPE).view(np.uint8)

def columns(n):
    return np.full(n, -1, np.int64), np.full(n, -1, np.int32), np.zeros(n, np.int8)

results = {}
def case(name, call):
    try:
        call()
        results[name] = "returned"
    except (ValueError, TypeError, IndexError) as e:
        results[name] = type(e).__name__
    sys.stdout.flush()

line = vm.gpa_to_hpa(vm.nvdimms[0].gpa)
fresh = CheckKernel.__new__(CheckKernel)
case("init: no controllers", lambda: CheckKernel(0, 4, 1, 1, True, "flush", False, mask))
case("init: depth 0", lambda: CheckKernel(2, 0, 1, 1, True, "flush", False, mask))
case("init: no VMs", lambda: CheckKernel(2, 4, 0, 1, True, "flush", False, np.zeros((0, 2), np.uint8)))
case("init: no vCPUs", lambda: CheckKernel(2, 4, 1, 0, True, "flush", False, mask))
case("init: unknown protocol", lambda: CheckKernel(2, 4, 1, 1, True, "hope", False, mask))
case("init: wrong mask", lambda: CheckKernel(2, 4, 1, 1, True, "flush", False, np.zeros(3, np.uint8)))
case("init: twice", lambda: kernel().__init__(2, 4, 1, 1, True, "flush", False, mask))
n = 2
hpa, slot, kind = columns(n)
rec = records((Op.STORE, 0, 0, 8, 0, 1), (Op.SFENCE, 0, 0, 0, 0, 0))
case("uninitialised: run", lambda: fresh.run(0, np.array([3, 1], np.int8), rec, hpa, slot, np.ones(n, np.uint8)))
case("uninitialised: run of nothing", lambda: fresh.run(0, np.zeros(n, np.int8), rec, hpa, slot, np.ones(n, np.uint8)))
case("uninitialised: chunk_missing", lambda: fresh.chunk_missing(np.array([0, 5], np.int32)))
case("uninitialised: queue_lines", lambda: fresh.queue_lines(0))
case("uninitialised: queue_initial", lambda: fresh.queue_initial(0, bytes(64)))
case("uninitialised: found_from", lambda: fresh.found_from(engine))
case("uninitialised: events, finish", lambda: (fresh.events(), fresh.finish(), fresh.end_chunk()))
case("uninitialised: add_line", lambda: fresh.add_line(line, 0, 1, False))
k = kernel()
s = k.add_line(line, 0, 1, False)
case("queue_initial: no such slot", lambda: k.queue_initial(99, bytes(64)))
case("queue_initial: short data", lambda: k.queue_initial(s, b"x"))
case("queue_lines: no such controller", lambda: k.queue_lines(7))
case("queue_lines: negative controller", lambda: k.queue_lines(-1))
case("add_line: no such controller", lambda: k.add_line(line + 64, 9, 1, False))
case("slot_hpas: no such slot", lambda: k.slot_hpas(np.array([5], np.int32)))
case("chunk_add: no such slot", lambda: k.chunk_add(engine, np.array([5], np.int32)))
case("chunk_add: twice the same", lambda: k.chunk_add(engine, np.array([s, s], np.int32)))
case("chunk_add_bytes: short rows", lambda: k.chunk_add_bytes(np.array([s], np.int32), np.zeros((1, 8), np.uint8),
                                                               np.zeros((1, 8), np.uint8)))
one = records((Op.STORE, 0, 0, 8, vm.nvdimms[0].gpa, 1))
h1, s1, k1 = columns(1)
case("run: store to a line not in the chunk", lambda: k.run(0, np.array([3], np.int8), one, np.array([line], np.int64),
                                                           np.array([s], np.int32), np.zeros(1, np.uint8)))
k.chunk_add(engine, np.array([s], np.int32))
case("run: store without a slot", lambda: k.run(0, np.array([3], np.int8), one, np.array([line], np.int64),
                                                np.array([-1], np.int32), np.zeros(1, np.uint8)))
case("run: store across its line", lambda: k.run(0, np.array([3], np.int8), one, np.array([line + 60], np.int64),
                                                 np.array([s], np.int32), np.zeros(1, np.uint8)))
case("run: a VM the kernel lacks", lambda: k.run(0, np.array([1], np.int8), records((Op.SFENCE, 0, 5, 0, 0, 0)),
                                                 h1, s1, np.zeros(1, np.uint8)))
case("run: a vCPU the kernel lacks", lambda: k.run(0, np.array([2], np.int8), records((Op.STORE, 9, 0, 8, 0, 0)),
                                                   h1, s1, np.zeros(1, np.uint8)))
case("run: columns of other lengths", lambda: k.run(0, np.zeros(2, np.int8), one, h1, s1, np.zeros(1, np.uint8)))
case("run: unknown kinds", lambda: k.run(0, np.array([99], np.int8), one, h1, s1, np.zeros(1, np.uint8)))
spans = SpanMap(np.array([vm.vfha_gpa >> 12], np.int64))
case("spans: translate before missing", lambda: spans.translate(k, one, h1, s1, k1))
case("spans: short columns", lambda: spans.translate(k, one, *columns(0)))
(key,) = spans.missing(one).tolist()
case("spans: base below -1", lambda: spans.set_base(key, -7))
case("spans: negative key", lambda: spans.set_base(-1, 0))
case("spans: negative key of a row", lambda: spans.set_row(-5, np.zeros(512, np.int64)))
case("spans: short row", lambda: spans.set_row(key, np.zeros(3, np.int64)))
case("spans: row of huge pages", lambda: (spans.set_row(key, np.full(512, 1 << 60, np.int64)),
                                          spans.translate(k, one, h1, s1, k1, engine, 1)))
case("spans: engine but no mode", lambda: spans.translate(k, one, h1, s1, k1, engine))
k.end_chunk()
k.sweep_min = 0
k.end_chunk()                                        # the line is settled: dropped
case("dropped slot: chunk_add", lambda: k.chunk_add(engine, np.array([s], np.int32)))
case("dropped slot: queue_initial", lambda: k.queue_initial(s, bytes(64)))

# still sound: a valid chunk is followed
spans.clear()
for key in spans.missing(one).tolist():
    spans.set_base(key, line)
h1, s1, k1 = columns(1)
spans.translate(k, one, h1, s1, k1, engine, 1)
k.chunk_add(engine, k.chunk_missing(s1))
k.run(0, k1, one, h1, s1, np.ones(1, np.uint8))
results["after"] = [int(h1[0] == line), int(k1[0]), k.tracked, int(k.counts_arr[0])]
print(json.dumps(results))
'''


@needs_compiled("calls the compiled checker kernel")
def test_every_wrong_call_into_the_checker_kernel_raises_and_the_kernel_still_works():
    proc = subprocess.run([sys.executable, "-c", _CASES], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the kernel crashed the interpreter (status {proc.returncode}): {proc.stderr[-2000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    after = results.pop("after")
    assert after == [1, 3, 1, 1]                     # translated as a store, tracked, counted
    allowed_to_return = {"uninitialised: run of nothing", "uninitialised: chunk_missing",
                         "uninitialised: found_from", "uninitialised: events, finish", "spans: engine but no mode"}
    refused = {name for name, outcome in results.items() if outcome != "returned"}
    expected = set(results) - allowed_to_return
    assert refused == expected, {n: results[n] for n in refused ^ expected}


@needs_compiled("calls the compiled checker kernel")
def test_the_checker_kernel_serializes_its_callers():
    """Every method holds the kernel's lock (the GIL is released inside): a call waits while
    another caller holds it, and threads hammering one kernel lose no update."""
    import threading

    import numpy as np

    from nvemu import Op
    from nvemu._checkcore import CheckKernel
    from nvemu._constants import TRACE_DTYPE
    kernel = CheckKernel(2, 4, 1, 2, True, "flush", False, np.zeros((1, 2), np.uint8))
    n = 4096
    fences = np.array([(Op.SFENCE, k % 2, 0, 0, 0, 0) for k in range(n)], TRACE_DTYPE).view(np.uint8)
    kind, hpa, slot = np.ones(n, np.int8), np.full(n, -1, np.int64), np.full(n, -1, np.int32)
    point = np.zeros(n, np.uint8)
    point[::64] = 1

    def follow(times):
        for _ in range(times):
            kernel.run(0, kind, fences, hpa, slot, point)
            kernel.events()
            kernel.end_chunk()
    with kernel.lock:                           # held: a caller waits for it
        waiting = threading.Thread(target=follow, args=(1,))
        waiting.start()
        waiting.join(0.3)
        assert waiting.is_alive() and kernel.counts_arr[3] == 0
    waiting.join()
    threads = [threading.Thread(target=follow, args=(50,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert kernel.counts_arr[3] == n * (1 + 4 * 50) and kernel.rank == (n // 64) * (1 + 4 * 50) - 1
