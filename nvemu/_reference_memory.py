"""The reference model's host memory: sparse pages in touched chunks, media, line states, the
WPQs and their drain timing, power failure (a part of ``nvemu._reference.Engine``, which holds the
state these methods work on)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ._constants import (CLOCK, NO_LINE, CTRL_STAT, Domain, LineState, STAT, CTRL_STAT_NAMES)
from . import _state
from ._image import DurableImage
from ._constants import LINE_BYTES as LINE, PAGE_BYTES as PAGE
from ._layout import budget_message
from .errors import ConfigError, ResourceError

if TYPE_CHECKING:
    from ._reference_tables import _Vm

CTRL_STAT_COUNT = len(CTRL_STAT_NAMES)


class HostMemory:
    """What the reference Engine does to host memory, media and the WPQs."""

    # ---- host memory -----------------------------------------------------------------------

    def _is_pmem(self, hpa: int) -> bool:
        return self.pmem_base <= hpa < self.pmem_base + self.pmem_bytes

    def _check_hpa(self, hpa: int, length: int) -> None:
        if hpa + length <= self.dram_bytes:
            return
        if hpa >= self.pmem_base and hpa + length <= self.pmem_base + self.pmem_bytes:
            return
        raise ConfigError(f"HPA range [{hpa:#x}, {hpa + length:#x}) is not host DRAM or NVDIMM space")

    @property
    def chunk_bytes(self) -> int:
        return 1 << self.chunk_shift

    def _chunk(self, hpa: int) -> int:
        """Memory index of the chunk holding ``hpa`` (DRAM at its address, NVDIMM from pmem_index)."""
        idx = hpa if hpa < self.pmem_base else hpa - self.pmem_base + self.pmem_index
        return idx - idx % self.chunk_bytes

    def _chunk_cost(self, idx: int) -> int:
        c = self.chunk_bytes
        return c + (c + 2 * c // 64 if idx >= self.pmem_index else 0)

    def _touch(self, hpa: int) -> None:
        """Allocate the chunk holding ``hpa`` unless it is (ResourceError beyond the budget)."""
        idx = self._chunk(hpa)
        if idx in self.touched:
            return
        cost = self._chunk_cost(idx)
        if self.touched_bytes + cost > self.memory_budget:
            raise ResourceError(budget_message(self.memory_budget, self.touched_bytes,
                                               self._chunk_cost(self.pmem_index)))
        self.touched.add(idx)
        self.touched_bytes += cost

    def _chunk_hpa(self, idx: int) -> tuple[int, int]:
        """(HPA, bytes of host space) of the chunk at memory index ``idx``."""
        if idx < self.pmem_index:
            return idx, min(self.chunk_bytes, self.dram_bytes - idx)
        return idx - self.pmem_index + self.pmem_base, min(self.chunk_bytes, self.pmem_index + self.pmem_bytes - idx)

    def set_memory_budget(self, budget: int) -> None:
        if not isinstance(budget, int) or budget < 0:
            raise ConfigError(f"memory_budget={budget!r} is out of range (>= 0)")
        self.memory_budget = budget

    def touched_ranges(self) -> list[tuple[int, int]]:
        return [self._chunk_hpa(i) for i in sorted(self.touched)]

    @staticmethod
    def _get(pages: dict[int, bytearray], addr: int, n: int) -> bytes:
        out = bytearray()
        for a in range(addr, addr + n):
            page = pages.get(a - a % PAGE)
            out.append(page[a % PAGE] if page is not None else 0)
        return bytes(out)

    @staticmethod
    def _put(pages: dict[int, bytearray], addr: int, data: bytes) -> None:
        for k, byte in enumerate(data):
            a = addr + k
            page = pages.setdefault(a - a % PAGE, bytearray(PAGE))
            page[a % PAGE] = byte

    def controller_of(self, hpa: int) -> int:
        """The interleave rule: granule k of a set belongs to member k mod ways."""
        for s in self.sets:
            if s.hpa_base <= hpa < s.hpa_base + s.length:
                member = (hpa - s.hpa_base) // s.granularity % len(s.controllers)
                return s.controllers[member]
        raise ConfigError(f"HPA {hpa:#x} is not NVDIMM space")

    def _dimm_controllers(self) -> list[int]:
        """The controller of every NVDIMM (set member), in NVDIMM order."""
        return [c for s in self.sets for c in s.controllers]

    def _dimm_of(self, hpa: int) -> int:
        """The NVDIMM of ``hpa``: its set member, numbering the members of all sets in turn."""
        first = 0
        for s in self.sets:
            if s.hpa_base <= hpa < s.hpa_base + s.length:
                return first + (hpa - s.hpa_base) // s.granularity % len(s.controllers)
            first += len(s.controllers)
        raise ConfigError(f"HPA {hpa:#x} is not NVDIMM space")

    # ---- WPQs --------------------------------------------------------------------------------

    def _enqueue(self, line: int) -> None:
        c = self.controller_of(line)
        if len(self.wpq[c]) == self.wpq_depth:
            self._drain_one(c)
            self.ctrl[c][CTRL_STAT["drained_full"]] += 1
        self.wpq[c].append((line, self._get(self.mem, line, LINE)))
        self.copies[line] = self.copies.get(line, 0) + 1
        self.state[line] = LineState.QUEUED
        self.ctrl[c][CTRL_STAT["enqueued"]] += 1

    def _drain_one(self, c: int) -> None:
        line, data = self.wpq[c].popleft()
        self._put(self.med, line, data)
        self.copies[line] -= 1
        if self.copies[line] == 0:
            del self.copies[line]
            if self.state.get(line) == LineState.QUEUED:
                del self.state[line]
        self.ctrl[c][CTRL_STAT["drained"]] += 1

    def _drain_controller(self, c: int) -> int:
        n = 0
        while self.wpq[c]:
            self._drain_one(c)
            n += 1
        return n

    def _wpq_accept(self, d: int, arrival: int) -> int:
        """A write-back reaches the WPQ of NVDIMM d at ``arrival``; returns when the WPQ takes it.
        The NVDIMM writes one line to media every ``drain_line`` ps, without pause while it has
        any; so at time t its WPQ holds ceil((busy - t) / drain_line) lines. While that is the
        whole depth, the line waits (in its line buffer) for a slot."""
        per_line = self.tm["drain_line"]
        accepted = arrival
        if per_line:
            slot_free = self.busy[d] - (self.wpq_depth - 1) * per_line
            accepted = max(arrival, slot_free)
        self.busy[d] = max(self.busy[d], accepted) + per_line
        return accepted

    def _take_buffer(self, st: list[int], clock: list[int], counter: str) -> int:
        """Index in ``clock`` of the vCPU's line buffer that is free first (lowest on a tie),
        after waiting for it if needed (the wait counts as ``counter``)."""
        first = CLOCK["fill0"]
        words = list(range(first, first + self.tm["fill_buffers"]))
        best = words[0]
        for w in words:
            if clock[w] < clock[best]:
                best = w
        wait = clock[best] - clock[CLOCK["now"]]
        if wait > 0:
            clock[CLOCK["now"]] += wait
            st[STAT[counter]] += wait
        return best

    def _wait_for_loads(self, st: list[int], clock: list[int], until: int) -> None:
        if until > clock[CLOCK["now"]]:
            st[STAT["load_ps"]] += until - clock[CLOCK["now"]]
            clock[CLOCK["now"]] = until

    def _load(self, hpa: int, st: list[int], clock: list[int]) -> None:
        """Timing of one load: issued into a line buffer, its data arrives later (see TimingModel)."""
        line = hpa // LINE
        last = clock[CLOCK["load_line"]]
        if line == last and clock[CLOCK["load_done"]] > clock[CLOCK["now"]]:
            return                              # the line is being filled already: same buffer
        seq = last != NO_LINE and line in (last, last + 1)
        w = self._take_buffer(st, clock, "load_ps")
        issue = clock[CLOCK["now"]]
        if self._is_pmem(hpa):
            d = self._dimm_of(hpa)
            issue = max(issue, self.read_busy[d])
            self.read_busy[d] = issue + self.tm["read_line"]
            arrives = issue + self.tm["load_seq" if seq else "load_rand"]
        else:
            arrives = issue + self.tm["dram_load_seq" if seq else "dram_load_rand"]
        clock[w] = arrives
        clock[CLOCK["load_line"]] = line
        clock[CLOCK["load_done"]] = arrives
        clock[CLOCK["loads_done"]] = max(clock[CLOCK["loads_done"]], arrives)

    def _write_back(self, hpa: int, nt: bool, st: list[int], clock: list[int]) -> None:
        """Timing of a line leaving the vCPU: it takes a line buffer, travels (sequential when it
        follows the vCPU's last write-back) and keeps the buffer until the WPQ takes it; an
        nt-store to the open write-combining line merges."""
        line = hpa // LINE
        if nt:
            if clock[CLOCK["nt_line"]] == line:
                return
            clock[CLOCK["nt_line"]] = line
        last = clock[CLOCK["wb_line"]]
        seq = last != NO_LINE and line in (last, last + 1)
        clock[CLOCK["wb_line"]] = line
        w = self._take_buffer(st, clock, "wpq_stall_ps")
        if not self._is_pmem(hpa):
            accepted = clock[CLOCK["now"]] + self.tm["dram_nt" if nt else "dram_wb"]
        else:
            travel = self.tm[("nt_" if nt else "wb_") + ("seq" if seq else "rand")]
            accepted = self._wpq_accept(self._dimm_of(hpa), clock[CLOCK["now"]] + travel)
        clock[w] = accepted
        clock[CLOCK["pending"]] = max(clock[CLOCK["pending"]], accepted)

    def _fan_out(self, vm: _Vm, st: list[int], clock: list[int]) -> None:
        total = 0
        issued = clock[CLOCK["now"]] + self.tm["fha_write"]
        done = None
        for c in range(self.n_controllers):
            if c in vm.fanout:
                st[STAT["fha_writes"]] += 1
                self.ctrl[c][CTRL_STAT["fha_writes"]] += 1
                n = self._drain_controller(c)
                vm.drained[c] += n
                total += n
                # the hint write returns once the WPQs of the controller's NVDIMMs are empty
                finished = max([issued] + [self.busy[d] for d, ctl in enumerate(self._dimm_controllers())
                                           if ctl == c])
                done = finished if done is None else max(done, finished)
        st[STAT["lines_drained"]] += total
        if done is not None:                            # the slowest controller, not the sum
            st[STAT["fha_ps"]] += self.tm["fha_write"]
            st[STAT["drain_wait_ps"]] += done - issued
            clock[CLOCK["now"]] = done

    def drain(self, controllers: Iterable[int]) -> int:
        total = 0
        for c in controllers:
            if not 0 <= c < self.n_controllers:
                raise ConfigError(f"controller {c} does not exist")
            self.ctrl[c][CTRL_STAT["fha_writes"]] += 1
            total += self._drain_controller(c)
        return total

    # ---- state -----------------------------------------------------------------------------------

    def prefault(self, hpa: int, n: int) -> None:
        self._check_hpa(hpa, n)
        for a in range(hpa - hpa % PAGE, hpa + n, PAGE):
            self._touch(a)

    def discard(self, hpa: int, n: int) -> None:
        """Scrub ``[hpa, hpa+n)``: queued copies removed, memory, media and lines zero, the
        chunks it covers wholly forgotten."""
        self._check_hpa(hpa, n)
        if hpa % PAGE or n % PAGE:
            raise ConfigError(f"discard of {n:#x} bytes at {hpa:#x} is not whole 4 KiB pages")
        inside = range(hpa, hpa + n)
        for c in range(self.n_controllers):
            kept = deque()
            for line, data in self.wpq[c]:
                if line in inside:
                    self.copies[line] -= 1
                    if not self.copies[line]:
                        del self.copies[line]
                else:
                    kept.append((line, data))
            self.wpq[c] = kept
        for table in (self.mem, self.med, self.state, self.copies):
            for a in [a for a in table if a in inside]:
                del table[a]
        for idx in sorted(self.touched):
            start, size = self._chunk_hpa(idx)
            if hpa <= start and start + size <= hpa + n:
                self.touched.discard(idx)
                self.touched_bytes -= self._chunk_cost(idx)

    def read_memory(self, hpa: int, n: int) -> bytes:
        self._check_hpa(hpa, n)
        return self._get(self.mem, hpa, n)

    def read_media(self, hpa: int, n: int) -> bytes:
        if not (hpa >= self.pmem_base and hpa + n <= self.pmem_base + self.pmem_bytes):
            raise ConfigError(f"HPA range at {hpa:#x} is not NVDIMM space")
        return self._get(self.med, hpa, n)

    def write_memory(self, hpa: int, data: bytes) -> None:
        self._check_hpa(hpa, len(data))
        for a in range(hpa - hpa % PAGE, hpa + len(data), PAGE):
            self._touch(a)
        self._put(self.mem, hpa, bytes(data))

    def line_states(self) -> dict[int, int]:
        return dict(sorted(self.state.items()))

    def wpq_entries(self, c: int) -> list[tuple[int, bytes]]:
        if not 0 <= c < self.n_controllers:
            raise ConfigError(f"controller {c} does not exist")
        return list(self.wpq[c])

    def controller_stats(self) -> np.ndarray:
        return np.array(self.ctrl, dtype=np.uint64)

    @staticmethod
    def _nonzero(pages: dict[int, bytearray]) -> dict[int, bytes]:
        return {a: bytes(p) for a, p in sorted(pages.items()) if any(p)}

    def memory_pages(self) -> dict[int, bytes]:
        return self._nonzero(self.mem)

    def media_pages(self) -> dict[int, bytes]:
        return self._nonzero(self.med)

    def durable_read(self, hpa: int, n: int) -> bytes:
        """What ``[hpa, hpa+n)`` would hold after a power failure now (SPEC 7.3), without one."""
        self.read_media(hpa, n)                     # NVDIMM space only
        return _state.durable_read(self, hpa, n)

    def power_fail(self, lost: Any = None) -> DurableImage:
        """Lose power and reboot; the durable image (SPEC 7.3), sparse, chunk by chunk. ``lost``:
        HPAs of lines ADR does not protect this time, whose queued copies and dirty data are lost."""
        gone = set() if lost is None else {int(a) for a in lost}
        if self.domain >= Domain.ADR:
            for q in self.wpq:
                for line, data in q:        # FIFO: a later copy of a line wins
                    if line not in gone:
                        self._put(self.med, line, data)
        if self.domain == Domain.EADR:
            for line, state in self.state.items():
                if state == LineState.DIRTY and line not in gone:
                    self._put(self.med, line, self._get(self.mem, line, LINE))
        for a in [a for a in self.mem if a not in self.med]:      # DRAM, and lines never written back
            del self.mem[a]
        for a, p in self.med.items():                # memory shows media, rewritten in place (no copy)
            if a in self.mem:
                self.mem[a][:] = p
            else:
                self.mem[a] = bytearray(p)
        self.state, self.copies = {}, {}
        self.wpq = [deque() for _ in range(self.n_controllers)]
        for v in self.vms.values():
            self._flush_tlbs(v)
        for idx in [i for i in self.touched if i < self.pmem_index]:   # DRAM is gone
            self.touched.discard(idx)
            self.touched_bytes -= self._chunk_cost(idx)
        chunks = {}
        for idx in sorted(self.touched):
            start, size = self._chunk_hpa(idx)
            chunks[start - self.pmem_base] = self._get(self.med, start, size)
        return DurableImage(self.pmem_base, self.pmem_bytes, self.chunk_bytes, chunks)
