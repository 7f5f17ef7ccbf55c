# Included by _checkcore.pyx: where a chunk's records land -- SpanMap, a cache of what the model
# resolved from the VMs' page tables per (VM, 2 MiB GPA span), and the one pass over a chunk that
# gives each record its HPA, its line's slot and its kind, adding the new lines.
#
# A span maps to one vNVDIMM base HPA (a large leaf), a row of 512 page HPAs (4 KiB leaves) or
# nothing; the model resolves each span once until the page tables may have changed (clear()).

DEF SPAN_SHIFT = 21
DEF GPA_BITS = 48
DEF UNRESOLVED = -2             # a span handed out by missing(), not yet set
DEF ROW = -16                   # vals <= ROW: row index -16 - val


cdef inline int64_t span_key(const trace_rec_t* r) noexcept nogil:
    """(vm, 2 MiB span) as one key, as check_model.Model.translate forms it."""
    return (<int64_t>r.vm << 40) | <int64_t>(r.gpa >> SPAN_SHIFT)


cdef inline bint _reaches_line(const trace_rec_t* r) noexcept nogil:
    """A STORE, NT_STORE or write-back: the records the checker translates (not loads or fences)."""
    return OP_STORE <= r.op < OP_SFENCE and r.gpa < (1ULL << GPA_BITS)


cdef class SpanMap:
    """(VM, 2 MiB GPA span) -> vNVDIMM HPAs, as the model resolved them: :meth:`missing` names the
    spans a chunk needs that are not known yet, :meth:`set_base` / :meth:`set_row` record them, and
    :meth:`translate` maps the chunk. :meth:`clear` forgets everything (the page tables changed)."""

    cdef int64_t* keys              # open addressing, -1 empty
    cdef int64_t* vals              # >= 0 base HPA; -1 not vNVDIMM; UNRESOLVED; <= ROW a row
    cdef int64_t cap, count
    cdef int64_t* rows              # 512 page HPAs a row (-1: not vNVDIMM)
    cdef int64_t n_rows, rows_cap
    cdef int64_t* vfha              # VM id -> its vFHA's GPA page (-1: none)
    cdef int64_t n_vfha
    cdef readonly object lock       # held by every method (translate holds the line table's too)

    def __cinit__(self, const int64_t[::1] vfha_pages):
        self.lock = threading.Lock()
        self.cap = 64
        self.keys = <int64_t*>_realloc(NULL, self.cap * 8)
        self.vals = <int64_t*>_realloc(NULL, self.cap * 8)
        memset(self.keys, 0xFF, self.cap * 8)
        self.n_vfha = vfha_pages.shape[0]
        self.vfha = <int64_t*>_realloc(NULL, max(self.n_vfha, 1) * 8)
        if self.n_vfha:
            memcpy(self.vfha, &vfha_pages[0], self.n_vfha * 8)

    def __dealloc__(self):
        free(self.keys); free(self.vals); free(self.rows); free(self.vfha)

    cdef inline int64_t _pos(self, int64_t key) noexcept nogil:
        cdef int64_t pos = <int64_t>((<uint64_t>key * 0x9E3779B97F4A7C15ULL) >> 24) & (self.cap - 1)
        while self.keys[pos] != -1 and self.keys[pos] != key:
            pos = (pos + 1) & (self.cap - 1)
        return pos

    cdef int _put(self, int64_t key, int64_t val) except -1:
        cdef int64_t pos, k, old_cap = self.cap
        cdef int64_t* old_keys
        cdef int64_t* old_vals
        cdef int64_t* new_keys
        cdef int64_t* new_vals
        if key < 0:
            raise ValueError(f"span key {key} is not vm << 40 | gpa >> 21")
        if (self.count + 1) * 2 > self.cap:
            old_keys, old_vals = self.keys, self.vals
            new_keys = <int64_t*>_realloc(NULL, old_cap * 16)
            try:
                new_vals = <int64_t*>_realloc(NULL, old_cap * 16)
            except MemoryError:
                free(new_keys)
                raise
            self.keys, self.vals, self.cap = new_keys, new_vals, old_cap * 2
            memset(self.keys, 0xFF, self.cap * 8)
            self.count = 0
            for k in range(old_cap):
                if old_keys[k] != -1:
                    pos = self._pos(old_keys[k])
                    self.keys[pos], self.vals[pos] = old_keys[k], old_vals[k]
                    self.count += 1
            free(old_keys); free(old_vals)
        pos = self._pos(key)
        if self.keys[pos] == -1:
            self.count += 1
        self.keys[pos], self.vals[pos] = key, val
        return 0

    def clear(self):
        """Forget every span (their leaves may have changed)."""
        with self.lock:
            memset(self.keys, 0xFF, self.cap * 8)
            self.count = self.n_rows = 0

    def missing(self, const uint8_t[::1] raw):
        """The distinct span keys (``vm << 40 | gpa >> 21``) of the records in ``raw`` (TRACE_DTYPE
        bytes) that the checker translates and that are not known yet, as int64; each is then
        known as unresolved until :meth:`set_base` or :meth:`set_row` names it."""
        cdef const trace_rec_t* r
        cdef Py_ssize_t k, n
        cdef int64_t key, last
        with self.lock:
            import numpy as np
            r = <const trace_rec_t*>&raw[0] if raw.shape[0] else NULL
            n = raw.shape[0] // sizeof(trace_rec_t)
            last = -1
            out = []
            for k in range(n):
                if _reaches_line(&r[k]):
                    key = span_key(&r[k])
                    if key != last and self.keys[self._pos(key)] != key:
                        self._put(key, UNRESOLVED)
                        out.append(key)
                    last = key
            return np.array(out, np.int64)

    def set_base(self, int64_t key, int64_t base):
        """Span ``key`` maps to vNVDIMM HPAs ``base``.. (one large leaf), or nowhere there (-1)."""
        with self.lock:
            if base < -1:
                raise ValueError(f"span base {base} is neither an HPA nor -1")
            self._put(key, base)

    def set_row(self, int64_t key, const int64_t[::1] pages):
        """Span ``key`` has 4 KiB leaves: the HPA of each of its 512 pages (-1: not vNVDIMM)."""
        with self.lock:
            if pages.shape[0] != 512:
                raise ValueError(f"a span has 512 pages, not {pages.shape[0]}")
            if self.n_rows == self.rows_cap:
                self.rows = <int64_t*>_realloc(self.rows, (self.rows_cap * 2 + 8) * 512 * 8)
                self.rows_cap = self.rows_cap * 2 + 8
            memcpy(&self.rows[self.n_rows * 512], &pages[0], 512 * 8)
            self._put(key, ROW - self.n_rows)
            self.n_rows += 1

    def translate(self, LineTable lines, const uint8_t[::1] raw, int64_t[::1] hpa, int32_t[::1] slot,
                  int8_t[::1] kind, Engine engine=None, int mode=-1, bint refill=False):
        """Fill ``hpa``, ``slot`` and ``kind`` for the records in ``raw`` (TRACE_DTYPE bytes): each
        record's HPA on a vNVDIMM (-1 elsewhere, or a load or fence; -2 a STORE/NT_STORE to its VM's
        vFHA page), its line's slot in ``lines`` (-1: none, or no vNVDIMM line) and what the kernel
        makes of it (K_FENCE, K_VFHA, K_STORE, K_NT, K_FLUSH of a vNVDIMM line, else K_NONE).

        Given ``engine`` (the compiled core) and a ``mode`` for every new line, a STORE or NT_STORE
        to a line without a slot adds it (clean, its controller as ``engine`` maps it) and returns
        nothing; else it returns those lines, as int64 (distinct from their neighbours in the list,
        not overall), for the caller to add and then fill their slots with ``refill``."""
        cdef Py_ssize_t k, n
        cdef int64_t[::1] nw
        cdef const trace_rec_t* r
        cdef int64_t m, v, h, page, line, key, pos, last_key, last_line
        cdef int32_t last_slot
        cdef Py_ssize_t bad
        cdef bint adding
        with self.lock, lines.lock:
            import numpy as np
            n = raw.shape[0] // sizeof(trace_rec_t)
            if hpa.shape[0] != n or slot.shape[0] != n or kind.shape[0] != n:
                raise ValueError("hpa, slot and kind must hold one entry per record")
            new = np.empty(n, np.int64)
            nw = new
            r = <const trace_rec_t*>&raw[0] if n else NULL
            m = 0
            v = UNRESOLVED
            last_key = -1
            last_line = -1
            last_slot = -1
            bad = -1
            adding = engine is not None and mode >= 0 and not refill
            if adding:
                lines._room(n)
            with nogil:
                for k in range(n):
                    if refill:
                        if hpa[k] < 0 or slot[k] >= 0:
                            continue
                    else:
                        hpa[k], slot[k], kind[k] = -1, -1, K_FENCE if r[k].op >= OP_SFENCE else K_NONE
                        if not _reaches_line(&r[k]):
                            continue
                        key = span_key(&r[k])
                        if key != last_key:
                            last_key, pos = key, self._pos(key)
                            v = self.vals[pos] if self.keys[pos] == key else UNRESOLVED
                        if v == UNRESOLVED:
                            bad = k
                            break
                        h = -1
                        if v >= 0:
                            h = v + <int64_t>(r[k].gpa & ((1ULL << SPAN_SHIFT) - 1))
                        elif v <= ROW:
                            page = self.rows[(ROW - v) * 512 + <int64_t>((r[k].gpa >> 12) & 511)]
                            if page >= 0:
                                h = page | <int64_t>(r[k].gpa & 4095)
                        if (r[k].op <= OP_NT_STORE and r[k].vm < self.n_vfha
                                and <int64_t>(r[k].gpa >> 12) == self.vfha[r[k].vm]):
                            h = -2
                        hpa[k] = h
                        if h == -2:
                            kind[k] = K_VFHA
                        if h < 0:
                            continue
                        kind[k] = K_STORE if r[k].op == OP_STORE else K_NT if r[k].op == OP_NT_STORE else K_FLUSH
                    line = hpa[k] & ~(<int64_t>LINE - 1)
                    if line != last_line:
                        last_line, last_slot = line, lines._lookup(line)
                    if last_slot < 0 and r[k].op <= OP_NT_STORE:
                        if adding and not _in_pmem(engine, line, LINE):
                            bad = k
                            break
                        if adding:
                            last_slot = lines._append(line, engine.controller_of_line(
                                (<uint64_t>line - engine.pmem_base) >> 6), mode)
                        elif m == 0 or nw[m - 1] != line:
                            nw[m] = line
                            m += 1
                    slot[k] = last_slot
            if bad >= 0:
                raise ValueError(f"record {bad}: its span is not resolved (missing() then set_base/set_row first), or "
                                 "it maps outside the engine's NVDIMM space")
            return new[:m]
