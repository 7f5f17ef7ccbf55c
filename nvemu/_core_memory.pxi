# Included by _core.pyx: host memory as chunks behind a two-level directory (issue 17), module
# functions so they stay out of the published vtable. A chunk is allocated on first write (memory,
# and for NVDIMM space media and line state with it), counted against the memory budget, and freed
# when scrubbed or when the state is replaced.

cdef uint8_t* _block(uint64_t n, bint huge) noexcept nogil:
    """``n`` zero bytes from the kernel, on a 2 MiB boundary when ``n`` is a multiple of 2 MiB (and
    advised for huge pages when ``huge``); NULL when refused. Pages are backed on first touch."""
    cdef uint64_t extra = HUGE if n % HUGE == 0 else 0
    cdef uint8_t* p = <uint8_t*>mmap(NULL, n + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    cdef uint8_t* a
    if <void*>p == MAP_FAILED:
        return NULL
    a = p
    if extra:
        a = <uint8_t*>((<uint64_t>p + HUGE - 1) & ~(HUGE - 1))
        if a > p:
            munmap(p, a - p)
        if p + n + extra > a + n:
            munmap(a + n, (p + n + extra) - (a + n))
        if huge:
            madvise(a, n, MADV_HUGEPAGE_)
    return a


cdef uint64_t _chunk_cost(Engine e, uint64_t idx) noexcept nogil:
    """Bytes a chunk at memory index ``idx`` takes: memory, and for NVDIMM space media and line state."""
    cdef uint64_t c = 1ULL << e.chunk_shift
    return c + (c + 2 * (c >> 6) if idx >= e.pmem_index else 0)


cdef void _drop_chunk(Engine e, chunk_t* ck, uint64_t idx) noexcept nogil:
    cdef uint64_t c = 1ULL << e.chunk_shift
    if ck.mem == NULL:
        return
    munmap(ck.mem, c)
    if ck.med != NULL:
        munmap(ck.med, c)
    if ck.lines != NULL:
        memset(ck.lines, 0, 2 * (c >> 6))       # it lives in its leaf's line-word region
    memset(ck, 0, sizeof(chunk_t))
    e.touched_bytes -= _chunk_cost(e, idx)


cdef uint64_t _index(Engine e, uint64_t hpa) noexcept nogil:
    """Memory index of host address ``hpa`` (DRAM or NVDIMM space)."""
    return hpa if hpa < e.pmem_base else hpa - e.pmem_base + e.pmem_index


cdef _raise_no_memory(Engine e):
    if e.alloc_error == 2:
        raise MemoryError("the operating system refused memory for a chunk of host memory")
    raise ResourceError(budget_message(e.memory_budget, e.touched_bytes, _chunk_cost(e, e.pmem_index)))


cdef chunk_t* _ensure(Engine e, uint64_t idx) except NULL:
    """The chunk at memory index ``idx``, allocated (ResourceError beyond the memory budget)."""
    cdef chunk_t* ck = _chunk_at(e, idx, True)
    if ck == NULL:
        e.alloc_error = 2
        _raise_no_memory(e)
    if _fill_chunk(e, ck, idx):
        _raise_no_memory(e)
    return ck


cdef _check_hpa(Engine e, object hpa, object length):
    hpa, length = integer(hpa, "hpa"), integer(length, "length")
    if not _state.hpa_ok(e, hpa, length):
        raise ConfigError(f"HPA range [{hpa:#x}, {hpa + length:#x}) is not host DRAM or NVDIMM space")
    return hpa, length


cdef _pmem_offset(Engine e, object hpa, object n):
    """Offset into NVDIMM space of ``[hpa, hpa+n)``, which must lie inside it."""
    _live(e)
    hpa, n = integer(hpa, "hpa"), integer(n, "n")
    if not (hpa >= e.pmem_base and hpa + n <= e.pmem_base + e.pmem_bytes):
        raise ConfigError(f"HPA range at {hpa:#x} is not NVDIMM space")
    return hpa - e.pmem_base


cdef list _chunk_indices(Engine e, uint64_t lo, uint64_t hi):
    """Memory indices of the allocated chunks that start in ``[lo, hi)``."""
    cdef uint64_t d, k, n = 1ULL << (LEAF_SHIFT - e.chunk_shift), idx
    cdef chunk_t* leaf
    out = []
    for d in range(lo >> LEAF_SHIFT, min(e.dir_len, (hi + (1ULL << LEAF_SHIFT) - 1) >> LEAF_SHIFT)):
        leaf = e.dir[d]
        if leaf == NULL:
            continue
        for k in range(n):
            idx = (d << LEAF_SHIFT) + (k << e.chunk_shift)
            if leaf[k].mem != NULL and lo <= idx < hi:
                out.append(idx)
    return out


cdef object _lines(chunk_t* ck, uint64_t n):
    """A numpy view of a chunk's ``n`` line words."""
    return np.asarray(<uint16_t[:n]> ck.lines)


cdef object _view(uint8_t* p, uint64_t n):
    """A numpy view of ``n`` bytes at ``p`` (valid while the chunk lives)."""
    if n == 0:
        return np.zeros(0, np.uint8)
    return np.asarray(<uint8_t[:n]> p)


cdef dict _nonzero_pages(Engine e, bint media):
    cdef uint64_t idx, c = 1ULL << e.chunk_shift, n, hpa0
    cdef chunk_t* ck
    out = {}
    for idx in _chunk_indices(e, 0 if not media else e.pmem_index, e.dir_len << LEAF_SHIFT):
        ck = _chunk_at(e, idx, False)
        if idx < e.pmem_index:
            hpa0, n = idx, min(c, e.dram_bytes - idx)
        else:
            hpa0, n = idx - e.pmem_index + e.pmem_base, min(c, e.pmem_index + e.pmem_bytes - idx)
        pages = _view(ck.med if media else ck.mem, n).reshape(-1, 4096)
        for p in np.flatnonzero(pages.any(axis=1)).tolist():
            out[hpa0 + 4096 * p] = pages[p].tobytes()
    return out


cdef bytes _copy_out(Engine e, uint64_t hpa, uint64_t n, bint media):
    """``n`` bytes of memory (or media) at ``hpa``, a range already checked; zeros where untouched."""
    cdef uint64_t pos = 0, idx, piece, c = 1ULL << e.chunk_shift
    cdef chunk_t* ck
    cdef uint8_t* src
    out = bytearray(n)
    cdef uint8_t[::1] dst = out if n else bytearray(1)
    while pos < n:
        idx = _index(e, hpa + pos)
        piece = min(n - pos, c - (idx & e.chunk_mask))
        ck = _chunk_at(e, idx, False)
        src = ck.med if media else ck.mem
        if src != NULL:
            memcpy(&dst[pos], src + (idx & e.chunk_mask), piece)
        pos += piece
    return bytes(out)


cdef _drop_queued(Engine e, uint64_t first, uint64_t last):
    """Remove the WPQ copies of NVDIMM lines ``[first, last)``, keeping the others in order."""
    cdef uint32_t c
    cdef uint64_t k, slot, kept, line
    cdef chunk_t* ck
    for c in range(e.n_controllers):
        entries = []
        for k in range(e.wlen[c]):
            slot = c * e.wpq_depth + (e.whead[c] + k) % e.wpq_depth
            entries.append((e.wline[slot], e._wpq_data[slot * 64:(slot + 1) * 64].copy()))
        kept = 0
        for line, data in entries:
            if first <= line < last:
                ck = _chunk_at(e, e.pmem_index + (line << 6), False)
                ck.lines[((line << 6) & e.chunk_mask) >> 6] -= ONE_COPY
                continue
            slot = c * e.wpq_depth + kept
            e.wline[slot] = line
            e._wpq_data[slot * 64:(slot + 1) * 64] = data
            kept += 1
        e.whead[c] = 0
        e.wlen[c] = kept


cdef _write_memory(Engine self, hpa, data):
    """``Engine.write_memory``, with the lock held: its arguments unchecked until here."""
    cdef uint64_t pos, idx, piece, c = 1ULL << self.chunk_shift, h
    cdef chunk_t* ck
    cdef const uint8_t[::1] src
    _live(self)
    h, n = _check_hpa(self, hpa, len(data))
    src = data if n else b"\0"
    pos = 0
    while pos < <uint64_t>n:
        idx = _index(self, h + pos)
        piece = min(<uint64_t>n - pos, c - (idx & self.chunk_mask))
        ck = _ensure(self, idx)
        memcpy(ck.mem + (idx & self.chunk_mask), &src[pos], piece)
        pos += piece


cdef _prefault(Engine self, hpa, n):
    """``Engine.prefault``, with the lock held: its arguments unchecked until here."""
    cdef uint64_t pos, idx, c = 1ULL << self.chunk_shift, h, end
    cdef chunk_t* ck
    _live(self)
    h, n = _check_hpa(self, hpa, n)
    end = _index(self, h) + n
    pos = _index(self, h) & ~self.chunk_mask
    while pos < end:
        ck = _ensure(self, pos)
        nvemu_touch(ck.mem, c, 4096)
        if ck.med != NULL:
            nvemu_touch(ck.med, c, 4096)
        pos += c


cdef _discard(Engine self, hpa, n):
    """``Engine.discard``, with the lock held: its arguments unchecked until here."""
    cdef uint64_t c = 1ULL << self.chunk_shift, idx, lo, hi, a, b, space_end
    cdef chunk_t* ck
    _live(self)
    h, n = _check_hpa(self, hpa, n)
    if h % 4096 or n % 4096:
        raise ConfigError(f"discard of {n:#x} bytes at {h:#x} is not whole 4 KiB pages")
    if n == 0:
        return
    lo = _index(self, h)
    hi = lo + n
    if h >= self.pmem_base:
        _drop_queued(self, (h - self.pmem_base) >> 6, (h - self.pmem_base + n) >> 6)
        space_end = self.pmem_index + self.pmem_bytes
    else:
        space_end = self.dram_bytes
    for idx in _chunk_indices(self, lo & ~self.chunk_mask, hi):
        ck = _chunk_at(self, idx, False)
        a, b = max(idx, lo), min(idx + c, hi)
        if a == idx and b >= min(idx + c, space_end):
            _drop_chunk(self, ck, idx)
            continue
        memset(ck.mem + (a - idx), 0, b - a)
        if ck.med != NULL:
            memset(ck.med + (a - idx), 0, b - a)
            memset(ck.lines + ((a - idx) >> 6), 0, ((b - a) >> 6) * 2)


cdef _touched_ranges(Engine self):
    """``Engine.touched_ranges``, with the lock held: its arguments unchecked until here."""
    cdef uint64_t c = 1ULL << self.chunk_shift
    _live(self)
    out = []
    for idx in _chunk_indices(self, 0, self.dir_len << LEAF_SHIFT):
        if idx < self.pmem_index:
            out.append((idx, min(c, self.dram_bytes - idx)))
        else:
            out.append((idx - self.pmem_index + self.pmem_base,
                        min(c, self.pmem_index + self.pmem_bytes - idx)))
    return out
