# Included by _checkcore.pyx: the checker kernel's per-line table -- a line's versions, queue
# count, controller, mode and store lists by slot, the HPA -> slot hash table, and the bytes of this
# chunk's lines (read from the engine before it runs the chunk) -- which CheckKernel extends.
#
# A settled line (no store of it pending, no copy queued, clean, not touched since the last crash
# point) is dropped when the table has doubled since the last sweep: nothing of it can matter again.
# Its version on media is older than any store the trace makes after it, which is all a version is
# compared with, so the line comes back as new (version -1) when it is stored to again. Memory thus
# follows the lines in flight, not the trace's length or footprint.


cdef class LineTable:
    """The tracked lines by slot: about 53 bytes each, plus 4 in the hash table (at a fill of a
    quarter to a half: 8 to 16), and the bytes of the lines of the chunk being followed."""

    cdef int64_t n, cap             # slots in use or free (below n), allocated
    cdef int32_t* refs              # live store records of the line (in any list)
    cdef int64_t free_head, n_free  # dropped slots, chained through newest_pos
    cdef int64_t swept              # lines live after the last sweep
    cdef public int64_t sweep_min   # no sweep below this many live lines
    cdef readonly object lock       # held by every method: one caller at a time, GIL released or not
    cdef int64_t* hpa
    cdef int64_t* media_v
    cdef int32_t* queued
    cdef int16_t* ctrl
    cdef int32_t* newest_pos        # queue position of the newest queued copy (while queued)
    cdef int8_t* mode
    cdef uint8_t* dirty
    cdef uint8_t* touched
    cdef int32_t* cidx              # index in this chunk's byte buffers, -1: not in this chunk
    cdef List* wb
    cdef List* pending
    cdef int32_t* touch_list
    cdef int64_t n_touched
    cdef uint8_t* cmem              # this chunk's lines: bytes in memory ...
    cdef uint8_t* cmed              # ... and on media, as the model moves them through the chunk
    cdef int32_t* cslot
    cdef int32_t cn, ccap
    cdef int32_t nc
    cdef int32_t* hvals             # line HPA -> slot: open addressing on hpa[slot], -1 empty, power-of-two size
    cdef int64_t hcap, hcount

    def __dealloc__(self):
        free(self.hpa); free(self.refs); free(self.media_v); free(self.queued); free(self.ctrl); free(self.newest_pos)
        free(self.mode); free(self.dirty); free(self.touched); free(self.cidx); free(self.wb); free(self.pending)
        free(self.touch_list); free(self.cmem); free(self.cmed); free(self.cslot); free(self.hvals)

    def __cinit__(self):
        self.free_head = -1
        self.sweep_min = 1 << 16
        self.lock = threading.Lock()

    cdef void _init_line(self, int64_t s, int64_t hpa, int ctrl, int mode, bint dirty) noexcept nogil:
        self.hpa[s] = hpa
        self.refs[s] = 0
        self.media_v[s] = -1
        self.queued[s] = 0
        self.ctrl[s] = <int16_t>ctrl
        self.newest_pos[s] = -1
        self.mode[s] = <int8_t>mode
        self.dirty[s] = dirty
        self.touched[s] = 0
        self.cidx[s] = -1
        self.wb[s].head = self.wb[s].tail = -1
        self.pending[s].head = self.pending[s].tail = -1

    def add_line(self, int64_t hpa, int ctrl, int mode, bint dirty):
        """Add line ``hpa`` (not known yet); returns its slot."""
        cdef int32_t s
        with self.lock:
            if not 0 <= ctrl < self.nc:
                raise ValueError(f"controller {ctrl} of {self.nc}")
            if hpa < 0 or self._lookup(hpa) >= 0:
                raise ValueError(f"line {hpa:#x} is known already or not an HPA")
            self._room(1)
            s = self._append(hpa, ctrl, mode)
            self.dirty[s] = dirty
            return s

    def add_lines(self, Engine engine, const int64_t[::1] hpas, const int8_t[::1] modes):
        """Add each line (NVDIMM HPAs, distinct, not known yet, checked by the caller), its
        controller as ``engine`` (the compiled core) maps it; returns their slots (int32). Lines
        start clean."""
        cdef Py_ssize_t k, n
        cdef int32_t[::1] o
        with self.lock:
            import numpy as np
            n = hpas.shape[0]
            if modes.shape[0] != n:
                raise ValueError("hpas and modes differ in length")
            out = np.empty(n, np.int32)
            o = out
            for k in range(n):
                if not _in_pmem(engine, hpas[k], LINE) or hpas[k] & (LINE - 1):
                    raise ValueError(f"{hpas[k]:#x} is not a line of the engine's NVDIMM space")
            self._room(n)
            with nogil:
                for k in range(n):
                    o[k] = self._append(hpas[k], engine.controller_of_line((<uint64_t>hpas[k] - engine.pmem_base) >> 6),
                                        modes[k])
            return out

    @property
    def tracked(self):
        """Lines tracked now (settled lines dropped by a sweep are not)."""
        return self.n - self.n_free

    cdef int _room(self, Py_ssize_t more) except -1:
        """Make room for ``more`` lines in the table and the hash before a nogil loop adds them."""
        if self.n + more > self.cap:
            self._grow(max(256, 2 * self.cap, self.n + more))
        if (self.hcount + more) * 2 > self.hcap:
            self._rehash(max(1024, self.hcap * 2, 2 * (self.hcount + more)))
        return 0

    cdef inline int32_t _append(self, int64_t hpa, int ctrl, int mode) noexcept nogil:
        """Add clean line ``hpa`` (not known yet) in the room :meth:`_room` made (a dropped slot,
        else the next); returns its slot."""
        cdef int32_t s
        if self.free_head >= 0:
            s = <int32_t>self.free_head
            self.free_head = self.newest_pos[s]
            self.n_free -= 1
        else:
            s = <int32_t>self.n
            self.n += 1
        self._init_line(s, hpa, ctrl, mode, False)
        self._hput(s)
        return s

    cdef void _sweep(self) noexcept nogil:
        """Drop every settled line (see the top of this file)."""
        cdef int64_t s
        for s in range(self.n):
            if (self.hpa[s] >= 0 and self.refs[s] == 0 and self.queued[s] == 0 and not self.dirty[s]
                    and not self.touched[s] and self.cidx[s] == -1):
                self._hdel(s)
                self.hpa[s] = -1
                self.newest_pos[s] = <int32_t>self.free_head
                self.free_head = s
                self.n_free += 1
        self.swept = self.n - self.n_free

    def slot_hpas(self, const int32_t[::1] slots):
        """The line HPA of each slot, as int64."""
        cdef Py_ssize_t k
        with self.lock:
            import numpy as np
            out = np.empty(slots.shape[0], np.int64)
            for k in range(slots.shape[0]):
                if not 0 <= slots[k] < self.n:
                    raise ValueError(f"no line slot {slots[k]}")
                out[k] = self.hpa[slots[k]]
            return out

    cdef int _chunk_room(self, Py_ssize_t more) except -1:
        """Room in this chunk's buffers for ``more`` lines, and checks nothing else."""
        cdef int64_t want = self.cn + more
        if want > self.ccap:
            self.ccap = max(1024, 2 * self.ccap, want)
            self.cmem = <uint8_t*>_realloc(self.cmem, <size_t>self.ccap * LINE)
            self.cmed = <uint8_t*>_realloc(self.cmed, <size_t>self.ccap * LINE)
            self.cslot = <int32_t*>_realloc(self.cslot, <size_t>self.ccap * 4)
        return 0

    cdef int _chunk_check(self, const int32_t[::1] slots) except -1:
        """``slots`` are distinct lines not yet in this chunk; then room for them."""
        cdef Py_ssize_t k, j
        for k in range(slots.shape[0]):
            if not 0 <= slots[k] < self.n or self.cidx[slots[k]] != -1 or self.hpa[slots[k]] < 0:
                for j in range(k):
                    self.cidx[slots[j]] = -1
                raise ValueError(f"slot {slots[k]} is not a tracked line outside this chunk, or given twice")
            self.cidx[slots[k]] = -2
        for k in range(slots.shape[0]):
            self.cidx[slots[k]] = -1
        self._chunk_room(slots.shape[0])
        return 0

    cdef inline int32_t _chunk_take(self, int32_t s) noexcept nogil:
        """Line ``s`` (checked by _chunk_check) becomes the next of this chunk's lines: its index."""
        cdef int32_t c = self.cn
        self.cn += 1
        self.cidx[s] = c
        self.cslot[c] = s
        return c

    def chunk_add(self, Engine engine, const int32_t[::1] slots):
        """Make ``slots`` (from :meth:`chunk_missing`) this chunk's lines, their bytes read from
        ``engine`` (the compiled core; hold its lock) as it has them now."""
        cdef Py_ssize_t k
        cdef int32_t c, s
        cdef uint64_t idx
        cdef chunk_t* ck
        with self.lock:
            for k in range(slots.shape[0]):
                if 0 <= slots[k] < self.n and not _in_pmem(engine, self.hpa[slots[k]], LINE):
                    raise ValueError(f"slot {slots[k]}: line {self.hpa[slots[k]]:#x} is not in the engine's NVDIMM space")
            self._chunk_check(slots)
            with nogil:
                for k in range(slots.shape[0]):
                    s = slots[k]
                    c = self._chunk_take(s)
                    idx = engine.pmem_index + (<uint64_t>self.hpa[s] - engine.pmem_base)
                    ck = engine.chunk_at(idx, False)
                    if ck.mem != NULL:
                        memcpy(&self.cmem[c * LINE], ck.mem + (idx & engine.chunk_mask), LINE)
                    else:
                        memset(&self.cmem[c * LINE], 0, LINE)
                    if ck.med != NULL:
                        memcpy(&self.cmed[c * LINE], ck.med + (idx & engine.chunk_mask), LINE)
                    else:
                        memset(&self.cmed[c * LINE], 0, LINE)

    def chunk_add_bytes(self, const int32_t[::1] slots, const uint8_t[:, ::1] mem, const uint8_t[:, ::1] media):
        """:meth:`chunk_add` with the lines' bytes given (row ``k``: line ``slots[k]``; any engine)."""
        cdef Py_ssize_t k
        cdef int32_t c
        with self.lock:
            if not (mem.shape[0] == media.shape[0] == slots.shape[0]) or mem.shape[1] != LINE or media.shape[1] != LINE:
                raise ValueError("mem and media must be one 64-byte row per slot")
            self._chunk_check(slots)
            for k in range(slots.shape[0]):
                c = self._chunk_take(slots[k])
                memcpy(&self.cmem[c * LINE], &mem[k, 0], LINE)
                memcpy(&self.cmed[c * LINE], &media[k, 0], LINE)

    def end_chunk(self):
        """Forget this chunk's lines (their bytes are the engine's again); drop the settled lines
        when the live ones have doubled since the last sweep (and are at least ``sweep_min``)."""
        cdef int32_t c
        cdef int64_t live
        with self.lock:
            for c in range(self.cn):
                self.cidx[self.cslot[c]] = -1
            self.cn = 0
            live = self.n - self.n_free
            if live >= self.sweep_min and live > 2 * self.swept:
                with nogil:
                    self._sweep()

    cdef inline int64_t _hpos(self, int64_t line) noexcept nogil:
        return <int64_t>(((<uint64_t>line >> 6) * 0x9E3779B97F4A7C15ULL) >> 20) & (self.hcap - 1)

    def slot_lookup(self, const int64_t[::1] lines):
        """The slot of each line HPA (-1: none), as int32."""
        cdef int32_t[::1] o
        cdef Py_ssize_t k
        with self.lock:
            import numpy as np
            out = np.empty(lines.shape[0], np.int32)
            o = out
            with nogil:
                for k in range(lines.shape[0]):
                    o[k] = self._lookup(lines[k])
            return out

    cdef inline int32_t _lookup(self, int64_t line) noexcept nogil:
        """The slot of ``line`` (-1: none)."""
        cdef int64_t pos
        if self.hcap:
            pos = self._hpos(line)
            while self.hvals[pos] != -1:
                if self.hpa[self.hvals[pos]] == line:
                    return self.hvals[pos]
                pos = (pos + 1) & (self.hcap - 1)
        return -1

    cdef void _hdel(self, int32_t slot) noexcept nogil:
        """Take ``slot`` out of the hash table: later entries of its probe run shift back."""
        cdef int64_t mask = self.hcap - 1, pos = self._hpos(self.hpa[slot]), j, home
        while self.hvals[pos] != slot:
            pos = (pos + 1) & mask
        j = pos
        while True:
            j = (j + 1) & mask
            if self.hvals[j] == -1:
                break
            home = self._hpos(self.hpa[self.hvals[j]])
            if (j - home) & mask >= (j - pos) & mask:      # home at or before the hole: may move
                self.hvals[pos] = self.hvals[j]
                pos = j
        self.hvals[pos] = -1
        self.hcount -= 1

    cdef void _hput(self, int32_t slot) noexcept nogil:
        cdef int64_t line = self.hpa[slot]
        cdef int64_t pos = self._hpos(line)
        while self.hvals[pos] != -1 and self.hpa[self.hvals[pos]] != line:
            pos = (pos + 1) & (self.hcap - 1)
        if self.hvals[pos] == -1:
            self.hcount += 1
        self.hvals[pos] = slot

    cdef int _rehash(self, int64_t want) except -1:
        cdef int64_t cap = 1, k, old_cap = self.hcap
        while cap < want:
            cap <<= 1
        cdef int32_t* old_vals = self.hvals
        self.hvals = <int32_t*>malloc(sizeof(int32_t) * cap)
        if self.hvals == NULL:
            self.hvals = old_vals
            raise MemoryError()
        memset(self.hvals, 0xFF, sizeof(int32_t) * cap)
        self.hcap, self.hcount = cap, 0
        for k in range(old_cap):
            if old_vals[k] != -1:
                self._hput(old_vals[k])
        free(old_vals)
        return 0

    cdef int _grow(self, int64_t cap) except -1:
        if cap > 0x7FFFFFFF:
            raise MemoryError("the checker tracks at most 2**31 - 1 lines")
        self.hpa = <int64_t*>_realloc(self.hpa, cap * 8)
        self.refs = <int32_t*>_realloc(self.refs, cap * 4)
        self.media_v = <int64_t*>_realloc(self.media_v, cap * 8)
        self.queued = <int32_t*>_realloc(self.queued, cap * 4)
        self.ctrl = <int16_t*>_realloc(self.ctrl, cap * 2)
        self.newest_pos = <int32_t*>_realloc(self.newest_pos, cap * 4)
        self.mode = <int8_t*>_realloc(self.mode, cap)
        self.dirty = <uint8_t*>_realloc(self.dirty, cap)
        self.touched = <uint8_t*>_realloc(self.touched, cap)
        self.cidx = <int32_t*>_realloc(self.cidx, cap * 4)
        self.wb = <List*>_realloc(self.wb, cap * sizeof(List))
        self.pending = <List*>_realloc(self.pending, cap * sizeof(List))
        self.touch_list = <int32_t*>_realloc(self.touch_list, cap * 4)
        self.cap = cap
        return 0
