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
    cdef chunk_t* ck = e.chunk_at(idx, True)
    if ck == NULL:
        e.alloc_error = 2
        _raise_no_memory(e)
    if e.fill_chunk(ck, idx):
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
        ck = e.chunk_at(idx, False)
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
        ck = e.chunk_at(idx, False)
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
                ck = e.chunk_at(e.pmem_index + (line << 6), False)
                ck.lines[((line << 6) & e.chunk_mask) >> 6] -= ONE_COPY
                continue
            slot = c * e.wpq_depth + kept
            e.wline[slot] = line
            e._wpq_data[slot * 64:(slot + 1) * 64] = data
            kept += 1
        e.whead[c] = 0
        e.wlen[c] = kept


cdef _load_state(Engine self, dict s, list vms):
    """Install a state ``nvemu._state.check`` accepted: host memory first (chunks as needed,
    ResourceError beyond the budget, before anything else changes), then the rest."""
    cdef uint64_t idx, d, k
    cdef chunk_t* ck
    need = set()
    for hpa in s["memory_hpa"].tolist():
        need.add(_index(self, hpa) & ~self.chunk_mask)
    for name in ("media_hpa", "line_hpa", "wpq_line"):
        for hpa in s[name].tolist():
            need.add(_index(self, hpa) & ~self.chunk_mask)
    cost = sum(_chunk_cost(self, i) for i in need)
    if cost > self.memory_budget:
        raise ResourceError(budget_message(self.memory_budget, 0, cost))
    for vm in list(self._vms):
        memset(&self.vms[vm], 0, sizeof(vm_t))
    self._vms = {}
    for d in range(self.dir_len):
        if self.dir[d] != NULL:
            for k in range(1ULL << (LEAF_SHIFT - self.chunk_shift)):
                _drop_chunk(self, &self.dir[d][k], (d << LEAF_SHIFT) + (k << self.chunk_shift))
    for i in sorted(need):
        _ensure(self, i)
    for hpa, page in zip(s["memory_hpa"].tolist(), s["memory_data"]):
        idx = _index(self, hpa)
        ck = self.chunk_at(idx, False)
        _view(ck.mem + (idx & self.chunk_mask), 4096)[:] = page
    for hpa, page in zip(s["media_hpa"].tolist(), s["media_data"]):
        idx = _index(self, hpa)
        ck = self.chunk_at(idx, False)
        _view(ck.med + (idx & self.chunk_mask), 4096)[:] = page
    for hpa, st in zip(s["line_hpa"].tolist(), s["line_state"].tolist()):
        idx = _index(self, hpa)
        ck = self.chunk_at(idx, False)
        k = (idx & self.chunk_mask) >> 6
        ck.lines[k] = (ck.lines[k] & ~(<uint16_t>LINE_STATE_MASK)) | st
    self._wpq_head[:] = 0
    self._wpq_len[:] = 0
    for c, hpa, data in zip(s["wpq_ctrl"].tolist(), s["wpq_line"].tolist(), s["wpq_data"]):
        slot = c * self.wpq_depth + self.wlen[c]
        self.wline[slot] = (hpa - self.pmem_base) >> 6
        self._wpq_data[slot * 64:(slot + 1) * 64] = data
        self.wlen[c] += 1
        idx = _index(self, hpa)
        self.chunk_at(idx, False).lines[(idx & self.chunk_mask) >> 6] += ONE_COPY
    self._ctrl_stats[:] = s["ctrl_stats"]
    self._ctrl_busy[:] = s["ctrl_busy"]
    self._pool[:<uint64_t>self.next_table * ENTRIES] = 0      # tables past the high-water mark are zero
    pool = self._pool.reshape(-1, ENTRIES)
    for t, row in zip(s["table_ids"].tolist(), s["table_data"]):
        pool[t] = row
    self._free_tables = s["free_tables"].tolist()
    self.next_table, self.last_value = (int(x) for x in s["scalars"])
    for slot in vms:
        a = VmArrays(slot.nvcpus, slot.tlb_entries, self.n_controllers)
        a.tlb_vpn[:], a.tlb_entry[:], a.tlb_hpa[:], a.tlb_slot[:] = slot.tlb.T
        a.stats[:], a.fanout[:], a.drained[:], a.clock[:] = slot.stats, slot.fanout, slot.drained, slot.clock
        _install_vm(self, slot.vm, slot.root, slot.nvcpus, slot.tlb_entries, slot.running, slot.fha_vpn,
                    slot.fha_mode, a)
