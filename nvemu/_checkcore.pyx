# cython: language_level=3
"""The crash-consistency checker's model in C, without the GIL: the same rules as
``nvemu.tools.check_model.Model`` (the plain-Python oracle, which the differential tests compare it
with), fed one chunk of records at a time, which :class:`SpanMap` translates and classifies.

Per tracked line it keeps versions, not bytes: about 53 bytes of state (HPA, version on media,
queue count and newest queued copy, controller, mode, flags, two store lists, its store count, its
chunk index) and 4 bytes in the HPA -> slot hash table (8 to 16 bytes by its fill); settled lines
are dropped (``_checkcore_lines.pxi``). The bytes a lost store's report shows come from the
engine: each chunk, the lines the chunk stores to, writes back or may drain (the WPQs' lines) are
read from the engine before it runs the chunk, and the model moves their bytes through the chunk
itself; any other line's durable copy cannot change during the chunk, so the engine's media has
it when the chunk is done. Per pending store one 96-byte record, from the store until it is known
durable. A crash point costs in proportion to the lines whose completed stores or durable copy
changed since the last one (all lines at a ``full`` point).
"""

import threading

from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset

from nvemu._core cimport Engine, chunk_t, trace_rec_t, OP_STORE, OP_NT_STORE, OP_SFENCE

DEF LINE = 64

include "_checkcore_records.pxi"


cdef inline bint _in_pmem(Engine engine, int64_t hpa, int64_t size) noexcept nogil:
    """Is ``[hpa, hpa + size)`` inside the engine's NVDIMM space?"""
    return (hpa >= 0 and <uint64_t>hpa >= engine.pmem_base
            and <uint64_t>hpa - engine.pmem_base + <uint64_t>size <= engine.pmem_bytes)


cdef inline uint64_t _media_bytes(Engine engine, int64_t hpa, int size) noexcept nogil:
    """``size`` (<= 8) bytes of media at ``hpa`` (inside one vNVDIMM line), little-endian; 0
    outside the engine's NVDIMM space."""
    cdef uint64_t idx = engine.pmem_index + (<uint64_t>hpa - engine.pmem_base), out = 0
    if not _in_pmem(engine, hpa, size):
        return 0
    cdef chunk_t* ck = engine.chunk_at(idx, False)
    if ck.med != NULL:
        memcpy(&out, ck.med + (idx & engine.chunk_mask), size)
    return out


cdef void* _realloc(void* p, size_t n) except NULL nogil:
    """``realloc``, raising MemoryError when it fails (``p`` is then still valid)."""
    cdef void* q = realloc(p, n)
    if q == NULL:
        with gil:
            raise MemoryError()
    return q


include "_checkcore_lines.pxi"
include "_checkcore_spans.pxi"


cdef class CheckKernel(LineTable):
    """One check's model state: the lines (:class:`LineTable`: ``add_lines``, and each chunk's
    bytes by ``chunk_missing``/``chunk_add``), the stores in flight and the WPQs. ``run`` follows a
    chunk, ``found_from`` fills the reports' bytes from the engine after it, ``events`` hands over
    the violations settled so far, ``end_chunk`` drops the chunk's bytes."""

    cdef int32_t* fill              # records whose report bytes the engine's media gives after the chunk
    cdef int32_t n_fill, fill_cap
    cdef Rec* recs
    cdef int32_t rec_cap, free_rec
    cdef List* fence
    cdef List* fha_fence
    cdef List* fha
    cdef int32_t n_keys, n_vms, max_cpus
    cdef bint per_vcpu, deep, fence_only, ordering
    cdef int32_t depth
    cdef int32_t* q_slot
    cdef int64_t* q_ver
    cdef uint8_t* q_data
    cdef int32_t* q_head
    cdef int32_t* q_len
    cdef uint8_t* drain_mask
    cdef public object enqueued_arr, drained_arr, counts_arr
    cdef int64_t[::1] enqueued, drained, counts
    cdef public int64_t completed, rank, last
    cdef Event* events_buf
    cdef int64_t n_events, events_cap

    def __init__(self, int n_controllers, int depth, int n_vms, int max_cpus, bint per_vcpu, str protocol,
                 bint ordering, drain_mask):
        import numpy as np
        if self.q_head != NULL:
            raise TypeError("the kernel is initialised already")
        if not 0 < n_controllers < 32768:
            raise ValueError(f"{n_controllers} controllers: the kernel handles 1..32767")
        if not (0 < depth <= 4096 and 0 < n_vms <= 1 << 16 and 0 < max_cpus <= 1 << 8):
            raise ValueError(f"WPQ depth {depth}, {n_vms} VMs, {max_cpus} vCPUs: each must be 1 or more "
                             "(and at most 4096, 2**16, 2**8)")
        if protocol not in ("fence", "flush", "deep"):
            raise ValueError(f"unknown protocol {protocol!r}")
        self.depth, self.per_vcpu = depth, per_vcpu
        self.n_keys = n_vms * max_cpus if per_vcpu else n_vms
        self.deep, self.fence_only = protocol == "deep", protocol == "fence"
        self.ordering = ordering and self.deep
        self.free_rec = -1
        mask = np.ascontiguousarray(drain_mask, np.uint8).reshape(-1)
        if len(mask) != n_vms * n_controllers:
            raise ValueError("drain_mask must have n_vms * n_controllers entries")
        self.fence = <List*>_realloc(NULL, sizeof(List) * self.n_keys)
        self.fha_fence = <List*>_realloc(NULL, sizeof(List) * self.n_keys)
        self.fha = <List*>_realloc(NULL, sizeof(List) * n_vms)
        for k in range(self.n_keys):
            self.fence[k].head = self.fence[k].tail = -1
            self.fha_fence[k].head = self.fha_fence[k].tail = -1
        for k in range(n_vms):
            self.fha[k].head = self.fha[k].tail = -1
        self.q_slot = <int32_t*>_realloc(NULL, sizeof(int32_t) * n_controllers * depth)
        self.q_ver = <int64_t*>_realloc(NULL, sizeof(int64_t) * n_controllers * depth)
        self.q_data = <uint8_t*>_realloc(NULL, LINE * n_controllers * depth)
        self.q_len = <int32_t*>_realloc(NULL, sizeof(int32_t) * n_controllers)
        memset(self.q_len, 0, sizeof(int32_t) * n_controllers)
        self.drain_mask = <uint8_t*>_realloc(NULL, len(mask))
        for k in range(len(mask)):
            self.drain_mask[k] = mask[k]
        self.q_head = <int32_t*>_realloc(NULL, sizeof(int32_t) * n_controllers)
        memset(self.q_head, 0, sizeof(int32_t) * n_controllers)
        # the sizes last: until every table is there, the kernel refuses every record and slot
        self.nc, self.n_vms, self.max_cpus = n_controllers, n_vms, max_cpus
        self.enqueued_arr = np.zeros(n_controllers, np.int64)
        self.drained_arr = np.zeros(n_controllers, np.int64)
        self.counts_arr = np.zeros(5, np.int64)
        self.enqueued, self.drained, self.counts = self.enqueued_arr, self.drained_arr, self.counts_arr
        self.rank = -1
        self.last = -1

    def __dealloc__(self):
        free(self.fill); free(self.recs); free(self.fence); free(self.fha_fence); free(self.fha); free(self.q_slot)
        free(self.q_ver); free(self.q_data); free(self.q_head); free(self.q_len); free(self.drain_mask)
        free(self.events_buf)

    # ---- this chunk's lines and their bytes ----

    def chunk_missing(self, const int32_t[::1] slots):
        """Those of ``slots`` (line slots the next records reach; -1 ignored) and of the lines
        queued now that are not yet among this chunk's lines: distinct, as int32. Their bytes go
        in with :meth:`chunk_add` (the engine's, before it runs the records)."""
        cdef int32_t[::1] o
        cdef Py_ssize_t k, m
        cdef int32_t s, c
        with self.lock:
            import numpy as np
            out = np.empty(slots.shape[0] + self.nc * self.depth, np.int32)
            o = out
            m = 0
            with nogil:
                for k in range(slots.shape[0]):
                    s = slots[k]
                    if 0 <= s < self.n and self.cidx[s] == -1 and self.hpa[s] >= 0:
                        self.cidx[s] = -2
                        o[m] = s
                        m += 1
                for c in range(self.nc):
                    for k in range(self.q_len[c]):
                        s = self.q_slot[c * self.depth + (self.q_head[c] + k) % self.depth]
                        if self.cidx[s] == -1:
                            self.cidx[s] = -2
                            o[m] = s
                            m += 1
                for k in range(m):
                    self.cidx[o[k]] = -1
            return out[:m]

    def found_wanted(self):
        """(HPA, size) of each report whose durable bytes are still to be read (lines outside this
        chunk, whose media the chunk did not change): the engine's media has them now."""
        cdef int32_t k, r
        with self.lock:
            out = []
            for k in range(self.n_fill):
                r = self.fill[k]
                if self.recs[r].need_found:
                    out.append((self.hpa[self.recs[r].slot] + self.recs[r].off, self.recs[r].size))
            for k in range(self.n_events):
                if self.events_buf[k].need_found:
                    out.append((self.events_buf[k].hpa, self.events_buf[k].size))
            return out

    def found_give(self, values):
        """The bytes :meth:`found_wanted` asked for, as little-endian integers in its order."""
        cdef int32_t k, r
        cdef Py_ssize_t j = 0
        with self.lock:
            for k in range(self.n_fill):
                r = self.fill[k]
                if self.recs[r].need_found:
                    self.recs[r].found = values[j]
                    self.recs[r].need_found = 0
                    j += 1
            for k in range(self.n_events):
                if self.events_buf[k].need_found:
                    self.events_buf[k].found = values[j]
                    self.events_buf[k].need_found = 0
                    j += 1
            self.n_fill = 0

    def found_from(self, Engine engine):
        """:meth:`found_wanted` and :meth:`found_give` in one, reading ``engine`` (the compiled
        core; hold its lock)."""
        cdef int32_t k, r
        with self.lock:
            with nogil:
                for k in range(self.n_fill):
                    r = self.fill[k]
                    if self.recs[r].need_found:
                        self.recs[r].found = _media_bytes(engine, self.hpa[self.recs[r].slot] + self.recs[r].off,
                                                          self.recs[r].size)
                        self.recs[r].need_found = 0
                for k in range(self.n_events):
                    if self.events_buf[k].need_found:
                        self.events_buf[k].found = _media_bytes(engine, self.events_buf[k].hpa, self.events_buf[k].size)
                        self.events_buf[k].need_found = 0
                self.n_fill = 0

    def queue_initial(self, int64_t s, bytes data):
        """A copy of line ``s`` already queued when the check starts (version -1)."""
        with self.lock:
            if not 0 <= s < self.n or self.hpa[s] < 0 or len(data) != LINE:
                raise ValueError(f"slot {s} is not a tracked line, or {len(data)} bytes are not one line")
            self._enqueue(<int32_t>s, -1, <const uint8_t*><const char*>data)

    def queue_lines(self, int c):
        """Line HPAs and bytes of controller ``c``'s queue, oldest first."""
        cdef int k, pos
        with self.lock:
            out = []
            if not 0 <= c < self.nc:
                raise ValueError(f"controller {c} of {self.nc}")
            for k in range(self.q_len[c]):
                pos = c * self.depth + (self.q_head[c] + k) % self.depth
                out.append((self.hpa[self.q_slot[pos]], bytes((<char*>&self.q_data[pos * LINE])[:LINE])))
            return out

    # ---- records and events (nogil) ----

    cdef int32_t _new_rec(self) except -1 nogil:
        cdef int32_t r
        if self.free_rec < 0:
            self.recs = <Rec*>_realloc(self.recs, sizeof(Rec) * (2 * self.rec_cap + 256))
            for r in range(self.rec_cap, 2 * self.rec_cap + 256):
                self.recs[r].nxt = self.free_rec
                self.free_rec = r
            self.rec_cap = 2 * self.rec_cap + 256
        r = self.free_rec
        self.free_rec = self.recs[r].nxt
        return r

    cdef inline void _free_rec(self, int32_t r) noexcept nogil:
        self.refs[self.recs[r].slot] -= 1
        self.recs[r].nxt = self.free_rec
        self.free_rec = r

    cdef int _emit(self, int64_t kind, Rec* r, int64_t point, int64_t until, int64_t points) except -1 nogil:
        if self.n_events == self.events_cap:
            self.events_buf = <Event*>_realloc(self.events_buf, sizeof(Event) * (2 * self.events_cap + 64))
            self.events_cap = 2 * self.events_cap + 64
        cdef Event* e = &self.events_buf[self.n_events]
        self.n_events += 1
        e.kind, e.store, e.point, e.until, e.points = kind, r.i, point, until, points
        e.completed = r.done if kind == 0 else -1
        e.vm, e.cpu, e.op, e.size, e.gpa = r.vm, r.cpu, r.op, r.size, r.gpa
        e.hpa = self.hpa[r.slot] + r.off
        e.value, e.found, e.lost, e.need_found = r.value, r.found, r.lost, r.need_found
        return 0

    def events(self):
        """The violations settled since the last call, as tuples (see ``Event``)."""
        cdef Event* e
        with self.lock:
            out = []
            for k in range(self.n_events):
                e = &self.events_buf[k]
                out.append((e.kind, e.store, e.point, e.until, e.points, e.completed, e.vm, e.cpu, e.op, e.size,
                            e.gpa, e.hpa, e.value, e.found, e.lost))
            self.n_events = 0
            return out

    # ---- the WPQs ----

    cdef inline void _touch(self, int32_t s) noexcept nogil:
        if not self.touched[s]:
            self.touched[s] = 1
            self.touch_list[self.n_touched] = s
            self.n_touched += 1

    cdef void _drain_one(self, int32_t c) noexcept nogil:
        cdef int32_t pos = c * self.depth + self.q_head[c]
        cdef int32_t s = self.q_slot[pos]
        self.media_v[s] = self.q_ver[pos]
        if self.cidx[s] >= 0:           # every queued line is among the chunk's (chunk_missing)
            memcpy(&self.cmed[self.cidx[s] * LINE], &self.q_data[pos * LINE], LINE)
        self.queued[s] -= 1
        self.q_head[c] = (self.q_head[c] + 1) % self.depth
        self.q_len[c] -= 1
        self.drained[c] += 1
        self._touch(s)

    cdef void _enqueue(self, int32_t s, int64_t version, const uint8_t* data) noexcept nogil:
        cdef int32_t c = self.ctrl[s]
        if self.q_len[c] == self.depth:
            self._drain_one(c)
        cdef int32_t pos = c * self.depth + (self.q_head[c] + self.q_len[c]) % self.depth
        self.q_len[c] += 1
        self.q_slot[pos] = s
        self.q_ver[pos] = version
        memcpy(&self.q_data[pos * LINE], data, LINE)
        if version >= 0:
            self.enqueued[c] += 1
        self.newest_pos[s] = pos
        self.queued[s] += 1
        self.dirty[s] = 0
        self._touch(s)

    # ---- the trace ----

    cdef inline int32_t _key(self, int32_t vm, int32_t cpu) noexcept nogil:
        return vm * self.max_cpus + cpu if self.per_vcpu else vm

    def run(self, int64_t base, const int8_t[::1] kind, const uint8_t[::1] raw, const int64_t[::1] hpa,
            const int32_t[::1] slot, const uint8_t[::1] point):
        """Follow one chunk: record ``k`` of ``raw`` (TRACE_DTYPE bytes, which the engine accepted)
        is op ``base + k``; ``kind``, ``hpa`` and ``slot`` as :meth:`SpanMap.translate` gave them
        (kinds of skipped records zeroed); ``point[k]`` 1 judges the lines that changed after it,
        2 every line."""
        cdef Py_ssize_t n = kind.shape[0], k
        cdef int32_t bad = -1
        cdef const trace_rec_t* r
        with self.lock:
            if not (<Py_ssize_t>(raw.shape[0] // sizeof(trace_rec_t)) == hpa.shape[0] == slot.shape[0]
                    == point.shape[0] == n) or raw.shape[0] % sizeof(trace_rec_t):
                raise ValueError("all columns must have the same length")
            r = <const trace_rec_t*>&raw[0] if n else NULL
            with nogil:
                for k in range(n):
                    if ((kind[k] == K_STORE or kind[k] == K_NT) and slot[k] < 0) or (
                            kind[k] >= K_STORE and slot[k] >= 0 and (slot[k] >= self.n or self.cidx[slot[k]] < 0)):
                        bad = <int32_t>k
                        break
                    if kind[k] >= K_STORE and (hpa[k] < 0 or (kind[k] != K_FLUSH and (hpa[k] & (LINE - 1)) + r[k].size > LINE)):
                        bad = <int32_t>k
                        break
                    if kind[k] < 0 or kind[k] > K_FLUSH or (kind[k] != 0 and (r[k].vm >= self.n_vms
                                                                              or r[k].vcpu >= self.max_cpus)):
                        bad = <int32_t>k
                        break
            if bad >= 0:
                raise ValueError(f"record {base + bad}: kind {kind[bad]}, line slot {slot[bad]}, HPA {hpa[bad]:#x}, "
                                 f"VM {r[bad].vm} vCPU {r[bad].vcpu} is not a record of this chunk's lines "
                                 "(chunk_missing, chunk_add) or of this kernel's VMs")
            with nogil:
                self._run(base, kind, r, hpa, slot, point, n)

    cdef int _run(self, int64_t base, const int8_t[::1] kind, const trace_rec_t* rec, const int64_t[::1] hpa,
                  const int32_t[::1] slot, const uint8_t[::1] point, Py_ssize_t n) except -1 nogil:
        cdef Py_ssize_t k
        cdef int64_t i
        cdef int32_t s, key, r, c, v, off
        cdef int8_t kd
        cdef List done
        for k in range(n):
            i = base + k
            kd = kind[k]
            if kd == K_FENCE:
                self.counts[3] += 1
                key = self._key(rec[k].vm, rec[k].vcpu)
                if self.deep:
                    done = self.fha_fence[key]
                    self.fha_fence[key].head = self.fha_fence[key].tail = -1
                    if done.head >= 0:
                        self._complete(&done, i)
                    _splice(&self.fha[rec[k].vm], &self.fence[key], self.recs)
                else:
                    done = self.fence[key]
                    self.fence[key].head = self.fence[key].tail = -1
                    if done.head >= 0:
                        self._complete(&done, i)
            elif kd == K_VFHA:
                self.counts[4] += 1
                v = rec[k].vm
                key = self._key(v, rec[k].vcpu)
                if self.ordering:
                    r = self.fence[key].head
                    while r >= 0:
                        if not self.recs[r].flagged:
                            self.recs[r].flagged = 1
                            self._emit(1, &self.recs[r], i, i, 1)
                        r = self.recs[r].nxt
                _splice(&self.fha_fence[key], &self.fha[v], self.recs)
                for c in range(self.nc):
                    if self.drain_mask[v * self.nc + c]:
                        while self.q_len[c]:
                            self._drain_one(c)
            elif kd == K_STORE or kd == K_NT:
                s = slot[k]
                off = <int32_t>(hpa[k] & (LINE - 1))
                memcpy(&self.cmem[self.cidx[s] * LINE + off], &rec[k].value, rec[k].size)
                r = self._new_rec()
                self.refs[s] += 1
                self.recs[r].i = i
                self.recs[r].done = -1
                self.recs[r].gpa = rec[k].gpa
                self.recs[r].value = rec[k].value
                self.recs[r].slot = s
                self.recs[r].vm = rec[k].vm
                self.recs[r].cpu = rec[k].vcpu
                self.recs[r].off = <uint8_t>off
                self.recs[r].size = <uint8_t>rec[k].size
                self.recs[r].op = 2 if kd == K_NT else 1
                self.recs[r].is_open = 0
                self.recs[r].flagged = 0
                self.recs[r].need_found = 0
                self.counts[0] += 1
                if kd == K_NT:
                    self.counts[1] += 1
                    self._enqueue(s, i, &self.cmem[self.cidx[s] * LINE])
                else:
                    self.dirty[s] = 1
                if kd == K_NT or self.fence_only:
                    _push(&self.fence[self._key(rec[k].vm, rec[k].vcpu)], self.recs, r)
                else:
                    _push(&self.wb[s], self.recs, r)
            elif kd == K_FLUSH:
                self.counts[2] += 1
                s = slot[k]
                if s >= 0:
                    if self.dirty[s]:
                        self._enqueue(s, i, &self.cmem[self.cidx[s] * LINE])
                    self._flushed(s, rec[k].vm, self._key(rec[k].vm, rec[k].vcpu))
            if point[k]:
                self._judge(i, point[k] == 2)
        return 0

    cdef void _flushed(self, int32_t s, int32_t v, int32_t key) noexcept nogil:
        """Move the stores of VM ``v`` awaiting a write-back of line ``s`` to ``key``'s fence."""
        cdef List keep
        cdef int32_t r = self.wb[s].head, nxt
        keep.head = keep.tail = -1
        while r >= 0:
            nxt = self.recs[r].nxt
            if self.recs[r].vm == v:
                _push(&self.fence[key], self.recs, r)
            else:
                _push(&keep, self.recs, r)
            r = nxt
        self.wb[s] = keep

    cdef inline uint64_t _mask(self, Rec* r) noexcept nogil:
        return ((<uint64_t>1 << r.size) - 1) << r.off

    cdef int64_t _version(self, int32_t s) noexcept nogil:
        if self.mode[s] == CACHE:
            return 0x7FFFFFFFFFFFFFFF
        if self.mode[s] == QUEUE and self.queued[s]:
            return self.q_ver[self.newest_pos[s]]
        return self.media_v[s]

    cdef uint64_t _covered(self, int32_t s, int64_t i) noexcept nogil:
        """Bytes of line ``s`` that pending completed stores newer than op ``i`` wrote."""
        cdef uint64_t m = 0
        cdef int32_t q = self.pending[s].head
        while q >= 0:
            if self.recs[q].i > i:
                m |= self._mask(&self.recs[q])
            q = self.recs[q].nxt
        return m

    cdef int _complete(self, List* stores, int64_t at) except -1 nogil:
        cdef int32_t r = stores.head, nxt, s
        while r >= 0:
            nxt = self.recs[r].nxt
            self.completed += 1
            s = self.recs[r].slot
            self.recs[r].done = at
            if self.recs[r].i <= self._version(s) or self._mask(&self.recs[r]) & ~self._covered(s, self.recs[r].i) == 0:
                self._free_rec(r)             # durable already, or every byte has a later completed store
            else:
                _push(&self.pending[s], self.recs, r)
                self._touch(s)
            r = nxt
        return 0

    # ---- crash points ----

    cdef int _judge(self, int64_t point, bint full) except -1 nogil:
        cdef int64_t previous = self.last, t
        cdef int32_t s
        self.last = point
        self.rank += 1
        if full:
            for s in range(self.n):
                self._judge_line(s, previous, point)
        else:
            for t in range(self.n_touched):
                self._judge_line(self.touch_list[t], previous, point)
        for t in range(self.n_touched):
            self.touched[self.touch_list[t]] = 0
        self.n_touched = 0
        return 0

    cdef int _want_found(self, int32_t r) except -1 nogil:
        if self.n_fill == self.fill_cap:
            self.fill = <int32_t*>_realloc(self.fill, sizeof(int32_t) * (2 * self.fill_cap + 256))
            self.fill_cap = 2 * self.fill_cap + 256
        self.fill[self.n_fill] = r
        self.n_fill += 1
        return 0

    cdef int _judge_line(self, int32_t s, int64_t previous, int64_t point) except -1 nogil:
        if self.pending[s].head < 0:
            return 0
        cdef int64_t version = self._version(s)
        cdef List keep
        cdef int32_t r = self.pending[s].head, nxt
        cdef uint64_t lost
        while r >= 0:                   # first the verdicts, while the list is whole
            self.recs[r].cur = 0
            if self.recs[r].i > version:
                self.recs[r].cur = self._mask(&self.recs[r]) & ~self._covered(s, self.recs[r].i)
            r = self.recs[r].nxt
        keep.head = keep.tail = -1
        r = self.pending[s].head
        while r >= 0:
            nxt = self.recs[r].nxt
            lost = self.recs[r].cur
            if lost == 0:
                if self.recs[r].is_open:
                    self._emit(0, &self.recs[r], self.recs[r].first_point, previous,
                               self.rank - self.recs[r].first_rank)
                self._free_rec(r)
            else:
                if not self.recs[r].is_open:
                    self.recs[r].is_open = 1
                    self.recs[r].first_point = point
                    self.recs[r].first_rank = self.rank
                    self.recs[r].lost = lost >> self.recs[r].off
                    self.recs[r].found = 0
                    if self.mode[s] == QUEUE and self.queued[s]:
                        memcpy(&self.recs[r].found, &self.q_data[self.newest_pos[s] * LINE + self.recs[r].off],
                               self.recs[r].size)
                    elif self.cidx[s] >= 0:
                        memcpy(&self.recs[r].found, &self.cmed[self.cidx[s] * LINE + self.recs[r].off],
                               self.recs[r].size)
                    else:               # media the chunk does not change: the engine's, after it
                        self.recs[r].need_found = 1
                        self._want_found(r)
                _push(&keep, self.recs, r)
            r = nxt
        self.pending[s] = keep
        return 0

    def finish(self):
        """End every open run at the last crash point."""
        cdef int32_t s, r
        with self.lock:
            self.rank += 1
            for s in range(self.n):
                r = self.pending[s].head
                while r >= 0:
                    if self.recs[r].is_open:
                        self._emit(0, &self.recs[r], self.recs[r].first_point, self.last,
                                   self.rank - self.recs[r].first_rank)
                        self.recs[r].is_open = 0
                    r = self.recs[r].nxt
