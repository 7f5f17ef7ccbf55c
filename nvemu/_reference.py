"""The reference model: the emulated machine written plainly (dicts, lists, Python ints).

This is the readable specification of what ``nvemu._core.Engine`` does fast. It has the same
class name, methods and results; the differential tests run both on the same inputs and demand
identical state and stats. Keep it naive: a reference that shares the fast path's tricks cannot
catch the fast path's bugs.

``Engine`` is here with its replay loop and its state capture; what it does to host memory and the
WPQs is ``nvemu._reference_memory.HostMemory``, to page tables, TLBs and VM slots
``nvemu._reference_tables.PageTables`` (parts of the one class, split to stay readable).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np

from ._constants import (CLOCK, CLOCK_FIELDS, NO_LINE, TIMING_FIELDS, BadRecord, ExitReason,
                         FhaMode, LineState, Op, RunStatus, STAT, STAT_NAMES, CTRL_STAT_NAMES,
                         TRACE_DTYPE)
from . import _state
from ._reference_memory import HostMemory
from ._reference_tables import PageTables, _Vm, exit_qualification
from ._constants import LINE_BYTES as LINE
from ._layout import EngineLayout, InterleaveLayout, budget_message, check_layout
from ._records import record_code
from .errors import ResourceError, TraceError

CAPI_VERSION = 5
STAT_COUNT = len(STAT_NAMES)
CTRL_STAT_COUNT = len(CTRL_STAT_NAMES)
CLOCK_COUNT = len(CLOCK_FIELDS)


class Engine(HostMemory, PageTables):
    """One host machine, plainly: memory, media, line states, WPQs, EPT tables, VMs."""

    def __init__(self, layout: EngineLayout) -> None:
        L = check_layout(layout)
        self.dram_bytes, self.pmem_base, self.pmem_bytes = L.dram_bytes, L.pmem_base, L.pmem_bytes
        self.n_controllers, self.wpq_depth, self.domain = L.n_controllers, L.wpq_depth, L.domain
        self.pool_tables, self.max_vms = L.pool_tables, L.max_vms
        self.tm = dict(zip(TIMING_FIELDS, L.timing))
        self.sets = [InterleaveLayout(*s) for s in L.sets]
        self.chunk_shift, self.memory_budget, self.pmem_index = L.chunk_shift, L.memory_budget, L.pmem_index
        self.touched: set[int] = set()          # memory index of every chunk written (the directory)
        self.touched_bytes = 0
        self.lock = threading.RLock()
        # Pages exist only inside touched chunks.
        self.mem: dict[int, bytearray] = {}     # page HPA -> 4096 bytes (absent pages are zero)
        self.med: dict[int, bytearray] = {}     # NVDIMM page HPA -> 4096 bytes
        self.state: dict[int, int] = {}         # line HPA -> LineState (absent = CLEAN)
        self.copies: dict[int, int] = {}        # line HPA -> copies of it in WPQs
        self.wpq: list[deque[tuple[int, bytes]]] = [deque() for _ in range(self.n_controllers)]
        self.ctrl = [[0] * CTRL_STAT_COUNT for _ in range(self.n_controllers)]
        # one WPQ per NVDIMM for time (set members, set after set): when each will have drained all it
        # accepted, and when each can start another read (ps); per NVDIMM because the iMC keeps its
        # pending queues per channel (nvemu.machine.config.IMC_QUEUES cites the sources)
        self.n_dimms = sum(len(s.controllers) for s in self.sets)
        self.busy = [0] * self.n_dimms
        self.read_busy = [0] * self.n_dimms
        self.pool: dict[int, list[int]] = {}    # table index -> 512 entries
        self.free_tables: list[int] = []
        self.next_table = 0
        self.vms: dict[int, _Vm] = {}
        self.exit = (0, 0, 0, 0, 0, 0, 0)
        self.bad_record = BadRecord.NONE
        self.last_value = 0

    # ---- the replay loop ----------------------------------------------------------------------

    def _handle_fha_exit(self, v: _Vm, st: list[int], clock: list[int], reason: int, write: bool, op: int) -> bool:
        mode, tm = v.fha_mode, self.tm
        if reason == ExitReason.EPT_MISCONFIG and mode == FhaMode.MMIO:
            path = "mmio"
        elif reason != ExitReason.EPT_VIOLATION or not write:
            return False
        elif mode in (FhaMode.WRITE_PROTECT, FhaMode.DROP):
            path = "write_protect"
        elif mode == FhaMode.HYPERCALL:
            path = "hypercall"
        else:
            return False
        st[STAT[{"mmio": "exits_ept_misconfig", "write_protect": "exits_ept_violation",
                 "hypercall": "exits_vmcall"}[path]]] += 1
        clock[CLOCK["now"]] += tm["exit"] + tm[path]
        st[STAT["exit_ps"]] += tm["exit"]
        st[STAT[path + "_ps"]] += tm[path]
        if write:
            st[STAT["vfha_writes"]] += 1
            if mode != FhaMode.DROP:
                self._fan_out(v, st, clock)
        elif op == Op.LOAD:
            st[STAT["vfha_reads"]] += 1
            self.last_value = 0      # an emulated MMIO read returns 0
        return True

    def _check_record(self, op: int, vm: int, cpu: int, size: int, gpa: int, value: int) -> BadRecord:
        if vm not in self.vms or not self.vms[vm].running:
            return BadRecord.VM
        if cpu >= self.vms[vm].nvcpus:
            return BadRecord.VCPU
        return record_code(op, size, gpa, value)

    def run(self, ops: np.ndarray, start: int = 0) -> tuple[int, int]:
        if not isinstance(ops, np.ndarray):
            raise TraceError(f"a trace must be a numpy array of TRACE_DTYPE, not {type(ops).__name__}")
        if ops.dtype != TRACE_DTYPE:
            raise TraceError(f"trace dtype {ops.dtype} is not TRACE_DTYPE {TRACE_DTYPE}")
        if ops.ndim != 1:
            raise TraceError(f"a trace must be one-dimensional, not of shape {ops.shape}")
        if not 0 <= start <= len(ops):
            raise TraceError(f"start index {start} is outside the trace of {len(ops)} records")
        self.bad_record = BadRecord.NONE
        for i in range(start, len(ops)):
            rec = ops[i]
            op, vm, cpu = int(rec["op"]), int(rec["vm"]), int(rec["vcpu"])
            size, gpa, value = int(rec["size"]), int(rec["gpa"]), int(rec["value"])
            bad = self._check_record(op, vm, cpu, size, gpa, value)
            if bad:
                self.bad_record = bad
                return i, RunStatus.BAD_RECORD
            if not self._step(i, op, vm, cpu, size, gpa, value):
                return i, RunStatus.EXIT
        return len(ops), RunStatus.DONE

    def _step(self, i: int, op: int, vm: int, cpu: int, size: int, gpa: int, value: int) -> bool:
        """Execute one valid record; False when it exits to Python (``self.exit`` says why)."""
        v = self.vms[vm]
        st, clock = v.stats[cpu], v.clock[cpu]
        tm = self.tm
        st[op] += 1
        st[STAT["ops"]] += 1
        st[STAT["ops_ps"]] += tm["op"]
        if op in (Op.SFENCE, Op.MFENCE):
            clock[CLOCK["now"]] += tm["op"]
            if op == Op.MFENCE:                 # an MFENCE also orders loads: their data must be in
                self._wait_for_loads(st, clock, clock[CLOCK["loads_done"]])
            # wait until every write-back of this vCPU is accepted, then close its WC buffer
            start = clock[CLOCK["now"]]
            ready = max(start, clock[CLOCK["pending"]])
            clock[CLOCK["now"]] = ready + tm["fence"]
            st[STAT["fence_ps"]] += ready + tm["fence"] - start
            clock[CLOCK["nt_line"]] = NO_LINE
            return True
        clock[CLOCK["now"]] += tm["op"]
        write = op in (Op.STORE, Op.NT_STORE)
        on_fha = (gpa >> 12) == v.fha_vpn
        refs = st[STAT["walk_refs"]]
        rc, result = self._translate(v, cpu, gpa, write, st)
        walk = (st[STAT["walk_refs"]] - refs) * tm["walk_ref"]
        st[STAT["walk_ps"]] += walk
        clock[CLOCK["now"]] += walk
        if rc:
            self._wait_for_loads(st, clock, clock[CLOCK["loads_done"]])    # exits serialise
            if on_fha and self._handle_fha_exit(v, st, clock, rc, write, op):
                return True
            st[STAT["exits_ept_misconfig" if rc == ExitReason.EPT_MISCONFIG else "exits_ept_violation"]] += 1
            st[STAT["exit_ps"]] += tm["exit"]
            clock[CLOCK["now"]] += tm["exit"]
            self.exit = (rc, exit_qualification(rc, write, result), gpa, i, vm, cpu, op)
            return False
        hpa = result
        if on_fha:
            if write:
                st[STAT["vfha_writes"]] += 1
                if v.fha_mode == FhaMode.NATIVE:
                    self._fan_out(v, st, clock)   # the physical FHAs, written directly
                    return True
            elif op == Op.LOAD:
                st[STAT["vfha_reads"]] += 1
        line = hpa - hpa % LINE
        if op == Op.LOAD:
            loaded = int.from_bytes(self._get(self.mem, hpa, size), "little")
            st[STAT["load_sum"]] = (st[STAT["load_sum"]] + loaded) % (1 << 64)
            self.last_value = loaded
            self._load(hpa, st, clock)
            return True
        if hpa // LINE == clock[CLOCK["load_line"]]:
            # a store or flush of the line last loaded needs that load's data first
            self._wait_for_loads(st, clock, clock[CLOCK["load_done"]])
        if write:
            try:
                self._touch(hpa)
            except ResourceError as e:
                raise ResourceError.at_record(i, str(e), "gpa") from None
            self._put(self.mem, hpa, value.to_bytes(size, "little"))
            if self._is_pmem(hpa):
                if op == Op.STORE:
                    self.state[line] = LineState.DIRTY
                else:
                    self._enqueue(line)      # a non-temporal store goes straight to the WPQ
            if op == Op.NT_STORE:
                self._write_back(hpa, True, st, clock)
        else:
            clock[CLOCK["now"]] += tm["flush_issue"]
            st[STAT["flush_ps"]] += tm["flush_issue"]
            if not self._is_pmem(hpa):
                self._write_back(hpa, False, st, clock)     # DRAM lines are not tracked: always written back
            elif self.state.get(line) == LineState.DIRTY:
                self._enqueue(line)
                st[STAT["lines_flushed"]] += 1
                self._write_back(hpa, False, st, clock)
        return True

    @property
    def last_exit(self) -> tuple[int, int, int, int, int, int, int]:
        return self.exit

    def get_state(self) -> dict[str, np.ndarray]:
        """Everything that evolves, in the canonical form (``nvemu._state``)."""
        return _state.capture(self)

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Replace everything with a checked ``state`` (ConfigError and no change when it is bad)."""
        with self.lock:
            s, vms = _state.check(self, state)
            self._load_state(s, vms)

    def _load_state(self, s: dict[str, np.ndarray], vms: list[_state.VmSlot]) -> None:
        need = {self._chunk(int(a)) for k in ("memory_hpa", "media_hpa", "line_hpa", "wpq_line") for a in s[k]}
        cost = sum(self._chunk_cost(i) for i in need)
        if cost > self.memory_budget:
            raise ResourceError(budget_message(self.memory_budget, 0, cost))
        self.touched, self.touched_bytes = need, cost

        def pages(addrs: np.ndarray, data: np.ndarray) -> dict[int, bytearray]:
            return {int(a): bytearray(d.tobytes()) for a, d in zip(addrs, data)}
        self.mem = pages(s["memory_hpa"], s["memory_data"])
        self.med = pages(s["media_hpa"], s["media_data"])
        self.state = {int(a): LineState(int(st)) for a, st in zip(s["line_hpa"], s["line_state"]) if st}
        self.wpq = [deque() for _ in range(self.n_controllers)]
        self.copies = {}
        for c, line, data in zip(s["wpq_ctrl"].tolist(), s["wpq_line"].tolist(), s["wpq_data"]):
            self.wpq[c].append((line, data.tobytes()))
            self.copies[line] = self.copies.get(line, 0) + 1
        self.ctrl = s["ctrl_stats"].tolist()
        self.busy = s["dimm_busy"].tolist()
        self.read_busy = s["dimm_read_busy"].tolist()
        self.pool = {int(t): [int(e) for e in row] for t, row in zip(s["table_ids"], s["table_data"])}
        self.free_tables = s["free_tables"].tolist()
        self.next_table, self.last_value = (int(x) for x in s["scalars"])
        self.vms = {}
        for slot in vms:
            v = _Vm(slot.root, slot.nvcpus, slot.tlb_entries, self.n_controllers)
            v.running = slot.running
            v.fha_vpn = None if slot.fha_vpn == _state.NO_VPN else slot.fha_vpn
            v.fha_mode = FhaMode(slot.fha_mode)
            v.fanout = [c for c, on in enumerate(slot.fanout.tolist()) if on]
            v.stats = slot.stats.tolist()
            v.drained = slot.drained.tolist()
            v.clock = slot.clock.tolist()
            rows = slot.tlb.tolist()
            for cpu in range(slot.nvcpus):
                for k in range(slot.tlb_entries):
                    vpn, e, page, where = rows[cpu * slot.tlb_entries + k]
                    v.tlb[cpu][k] = None if vpn == _state.NO_VPN else (vpn, e, page, (where // 512, where % 512))
            self.vms[slot.vm] = v


def _locked(method: Any) -> Any:
    def call(self: Engine, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)
    call.__name__, call.__doc__, call.__wrapped__ = method.__name__, method.__doc__, method  # type: ignore[attr-defined]
    return call


# One lock per engine around everything that reads or changes the machine, as in the core.
for _name in ("add_vm", "remove_vm", "set_fha", "set_running", "stats", "drained_by_controller", "reset_stats",
              "map", "protect", "unmap", "walk", "tables", "translate", "run", "drain", "prefault", "discard",
              "read_memory", "read_media", "write_memory", "line_states", "wpq_entries", "controller_stats",
              "memory_pages", "media_pages", "durable_read", "table_rows", "vm_slot", "get_state", "power_fail",
              "set_memory_budget", "touched_ranges"):
    setattr(Engine, _name, _locked(getattr(Engine, _name)))
