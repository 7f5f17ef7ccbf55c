# Included by _core.pyx: the machine as a whole, built from a layout, replaced by a whole state (one
# nvemu._state checked) and losing power. Module functions, so they stay out of the published vtable.


cdef _init(Engine self, layout):
    """``Engine.__init__``: its arguments unchecked until here."""
    if self.vms != NULL:
        raise ConfigError("this Engine is already initialised; build a new one")
    L = check_layout(layout)
    sets = L.sets
    dir_len = -(-(L.pmem_index + L.pmem_bytes) // (1 << LEAF_SHIFT))
    self.sets = <iset_t*>calloc(max(1, len(sets)), sizeof(iset_t))
    self.set_ctl = <uint8_t*>calloc(max(1, sum(len(c) for _, _, _, c in sets)), 1)
    self.dir = <chunk_t**>calloc(max(1, dir_len), sizeof(chunk_t*))
    self.meta = <uint8_t**>calloc(max(1, dir_len), sizeof(uint8_t*))
    self.vms = <vm_t*>calloc(L.max_vms, sizeof(vm_t))
    if self.sets == NULL or self.set_ctl == NULL or self.dir == NULL or self.meta == NULL or self.vms == NULL:
        raise MemoryError("cannot allocate the engine's tables")
    first = 0
    for k, (base, length, g, ctls) in enumerate(sets):
        self.sets[k].offset, self.sets[k].length = base - L.pmem_base, length
        self.sets[k].gshift, self.sets[k].ways, self.sets[k].first = g.bit_length() - 1, len(ctls), first
        self.sets[k].ways_mask = len(ctls) - 1 if len(ctls) & (len(ctls) - 1) == 0 else 0
        for c in ctls:
            self.set_ctl[first] = c
            first += 1
    self.nsets, self.dir_len, self.n_dimms = len(sets), dir_len, first
    self.chunk_shift, self.chunk_mask, self.pmem_index = L.chunk_shift, (1 << L.chunk_shift) - 1, L.pmem_index
    self.memory_budget, self.huge_pages = L.memory_budget, L.huge_pages
    self.dram_bytes, self.pmem_base, self.pmem_bytes = L.dram_bytes, L.pmem_base, L.pmem_bytes
    self.n_controllers, self.wpq_depth, self.domain = L.n_controllers, L.wpq_depth, L.domain
    self.pool_tables, self.max_vms = L.pool_tables, L.max_vms
    (self.tm.op, self.tm.walk_ref, self.tm.load_seq, self.tm.load_rand, self.tm.dram_load_seq,
     self.tm.dram_load_rand, self.tm.flush_issue, self.tm.wb_seq, self.tm.wb_rand, self.tm.nt_seq,
     self.tm.nt_rand, self.tm.dram_wb, self.tm.dram_nt, self.tm.fence, self.tm.drain_line, self.tm.fha_write,
     self.tm.exit, self.tm.write_protect, self.tm.mmio, self.tm.hypercall, self.tm.read_line,
     self.tm.fill_buffers) = L.timing
    nctl, depth = L.n_controllers, L.wpq_depth
    self._wpq_line = np.zeros(nctl * depth, np.uint64)
    self._wpq_data = np.zeros(nctl * depth * 64, np.uint8)
    self._wpq_head = np.zeros(nctl, np.uint32)
    self._wpq_len = np.zeros(nctl, np.uint32)
    self._ctrl_stats = np.zeros((nctl, CT_COUNT), np.uint64)
    self._dimm_busy = np.zeros(max(1, self.n_dimms), np.uint64)
    self._dimm_read_busy = np.zeros(max(1, self.n_dimms), np.uint64)
    self._pool = np.zeros(<uint64_t>L.pool_tables * ENTRIES, np.uint64)
    self._free_tables = []
    self._vms = {}
    self.next_table = 0
    self.wline = <uint64_t*>_ptr(self._wpq_line)
    self.wdata = <uint8_t*>_ptr(self._wpq_data)
    self.whead = <uint32_t*>_ptr(self._wpq_head)
    self.wlen = <uint32_t*>_ptr(self._wpq_len)
    self.cstats = <uint64_t*>_ptr(self._ctrl_stats)
    self.dbusy = <uint64_t*>_ptr(self._dimm_busy)
    self.drbusy = <uint64_t*>_ptr(self._dimm_read_busy)
    self.ept = <uint64_t*>_ptr(self._pool)


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
        ck = _chunk_at(self, idx, False)
        _view(ck.mem + (idx & self.chunk_mask), 4096)[:] = page
    for hpa, page in zip(s["media_hpa"].tolist(), s["media_data"]):
        idx = _index(self, hpa)
        ck = _chunk_at(self, idx, False)
        _view(ck.med + (idx & self.chunk_mask), 4096)[:] = page
    for hpa, st in zip(s["line_hpa"].tolist(), s["line_state"].tolist()):
        idx = _index(self, hpa)
        ck = _chunk_at(self, idx, False)
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
        _chunk_at(self, idx, False).lines[(idx & self.chunk_mask) >> 6] += ONE_COPY
    self._ctrl_stats[:] = s["ctrl_stats"]
    self._dimm_busy[:len(s["dimm_busy"])] = s["dimm_busy"]
    self._dimm_read_busy[:len(s["dimm_read_busy"])] = s["dimm_read_busy"]
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


cdef _power_fail(Engine self, set gone):
    """``Engine.power_fail``, with the lock held: ``gone`` holds the line numbers (from the NVDIMM
    base) whose queued copies and dirty data are lost."""
    cdef uint32_t c
    cdef uint64_t k, slot, line, idx, csz = 1ULL << self.chunk_shift, lo
    cdef chunk_t* ck
    _live(self)
    if self.domain >= DOMAIN_ADR:
        for c in range(self.n_controllers):
            for k in range(self.wlen[c]):
                slot = c * self.wpq_depth + (self.whead[c] + k) % self.wpq_depth
                line = self.wline[slot]
                if gone and line in gone:
                    continue
                ck = _chunk_at(self, self.pmem_index + (line << 6), False)
                memcpy(ck.med + ((line << 6) & self.chunk_mask), self.wdata + slot * 64, 64)
    chunks = {}
    for idx in _chunk_indices(self, 0, self.dir_len << LEAF_SHIFT):
        ck = _chunk_at(self, idx, False)
        if idx < self.pmem_index:
            _drop_chunk(self, ck, idx)
            continue
        if self.domain == DOMAIN_EADR:
            for lo in np.flatnonzero((_lines(ck, csz >> 6) & LINE_STATE_MASK) == LINE_DIRTY).tolist():
                if gone and ((idx - self.pmem_index) >> 6) + lo in gone:
                    continue
                memcpy(ck.med + (lo << 6), ck.mem + (lo << 6), 64)
        memcpy(ck.mem, ck.med, csz)
        memset(ck.lines, 0, 2 * (csz >> 6))
        chunks[idx - self.pmem_index] = _view(ck.med, csz).tobytes()
    self._wpq_head[:] = 0
    self._wpq_len[:] = 0
    for vm in self._vms:
        _flush_tlbs(&self.vms[vm])
    return DurableImage(self.pmem_base, self.pmem_bytes, csz, chunks)
