# Included by _core.pyx: the kernels, the per-access work of the replay loop without the GIL (the walk
# and the TLB, line states, WPQ enqueue and drain, write-back timing, fan-out, the loop itself). Module
# functions: the Engine's cdef methods (the embedding API in _core.pxd) are one-line doors to them, and
# they call each other directly. They trust their arguments; every def entry point validates them and
# holds the engine's lock.


cdef inline uint64_t _qualification(int reason, bint write, uint64_t entry) noexcept nogil:
    """Exit qualification (Intel SDM Vol. 3C, 27.2.1, table "Exit Qualification for EPT Violations"):
    a data access's bits 0/1, the entry's R/W/X in bits 3-5, bit 7 (guest linear address valid) and
    bit 8 (access to the final translation); an EPT misconfiguration saves none (0)."""
    if reason == EXIT_EPT_MISCONFIG:
        return 0
    return (2 if write else 1) | ((entry & E_RWX) << 3) | Q_LINEAR


cdef inline uint64_t load_le(const uint8_t* p, uint32_t size) noexcept nogil:
    cdef uint64_t v = 0
    if size == 8:
        memcpy(&v, p, 8)
    elif size == 4:
        memcpy(&v, p, 4)
    elif size == 2:
        memcpy(&v, p, 2)
    else:
        v = p[0]
    return v


cdef inline bint _near(uint64_t line, uint64_t last) noexcept nogil:
    """``line`` is the same as or the one after ``last`` (a sequential access); ~0 is no line."""
    return last != NO_VPN and (line == last or line == last + 1)


cdef inline uint64_t _umax(uint64_t a, uint64_t b) noexcept nogil:
    return a if a > b else b


cdef inline void store_le(uint8_t* p, uint64_t v, uint32_t size) noexcept nogil:
    if size == 8:
        memcpy(p, &v, 8)
    elif size == 4:
        memcpy(p, &v, 4)
    elif size == 2:
        memcpy(p, &v, 2)
    else:
        p[0] = <uint8_t>v


cdef inline void _prefetch(Engine e, const trace_rec_t* r, bint table_only) noexcept nogil:
    """Ask the CPU for what a later record will touch, so its cache misses overlap the records
    before it (a replay knows its future, and the loop is bound by misses on random lines): with
    ``table_only`` the EPT leaf entry a walk will read, else the host memory and line word, found
    through the TLB or the page tables and the chunk directory. A read-only peek: nothing is counted,
    allocated or changed (no accessed bits), and a record that would exit or be refused is skipped."""
    cdef vm_t* vm
    cdef uint64_t vpn = r.gpa >> 12, ts, hpa, t, x, idx, s
    cdef chunk_t* ck
    cdef chunk_t* leaf
    cdef int level
    if r.op >= OP_SFENCE or r.vm >= e.max_vms or r.gpa >= GPA_LIMIT:
        return
    vm = &e.vms[r.vm]
    if not vm.running or r.vcpu >= vm.nvcpus:
        return
    ts = <uint64_t>r.vcpu * vm.tlb_entries + (vpn & (vm.tlb_entries - 1))
    if vm.tlb_vpn[ts] == vpn:
        if table_only:
            return
        hpa = vm.tlb_hpa[ts]
        ck = vm.tlb_chunk[ts]
    else:
        t = vm.root
        for level in range(4, 0, -1):
            s = t * ENTRIES + ((r.gpa >> (12 + 9 * (level - 1))) & 511)
            if table_only and level == 1:
                nvemu_prefetch(&e.ept[s])
                return
            x = e.ept[s]
            if not (x & E_RWX) or (x & 3) == E_W:
                return
            if level == 1 or (x & E_LARGE):
                break
            t = (x & ADDR_MASK) >> 12
        if table_only:
            return
        hpa = x & ADDR_MASK & ~((1ULL << (12 + 9 * (level - 1))) - 1)
        hpa |= r.gpa & ((1ULL << (12 + 9 * (level - 1))) - 1) & ~(<uint64_t>0xFFF)
        idx = _index(e, hpa)
        if (idx >> LEAF_SHIFT) >= e.dir_len:
            return
        leaf = e.dir[idx >> LEAF_SHIFT]
        if leaf == NULL:
            return
        ck = &leaf[(idx & ((1ULL << LEAF_SHIFT) - 1)) >> e.chunk_shift]
    if ck.mem == NULL:
        return
    hpa |= r.gpa & 0xFFF
    idx = (hpa - e.pmem_base if hpa >= e.pmem_base else hpa) & e.chunk_mask
    nvemu_prefetch(ck.mem + idx)
    if ck.lines != NULL:
        nvemu_prefetch(&ck.lines[idx >> 6])


cdef chunk_t* _chunk_at(Engine self, uint64_t idx, bint create) noexcept nogil:
    """The directory record of the chunk holding memory index ``idx``: ``&EMPTY`` when its
    leaf does not exist and ``create`` is false, NULL when the leaf cannot be allocated."""
    cdef chunk_t* leaf = self.dir[idx >> LEAF_SHIFT]
    if leaf == NULL:
        if not create:
            return &EMPTY
        leaf = <chunk_t*>calloc(1ULL << (LEAF_SHIFT - self.chunk_shift), sizeof(chunk_t))
        if leaf == NULL:
            return NULL
        self.dir[idx >> LEAF_SHIFT] = leaf
    return &leaf[(idx & ((1ULL << LEAF_SHIFT) - 1)) >> self.chunk_shift]


cdef int _fill_chunk(Engine self, chunk_t* ck, uint64_t idx) noexcept nogil:
    """Allocate chunk ``ck`` (memory index ``idx``) unless it is: memory, and for NVDIMM space
    media and line state too (so drains and line updates never allocate). Returns 0, or -1
    with ``alloc_error`` 1 (over the memory budget) or 2 (the OS refused)."""
    cdef uint64_t c = 1ULL << self.chunk_shift, cost
    cdef uint8_t* mem
    cdef uint8_t* med = NULL
    cdef uint8_t* meta = NULL
    if ck.mem != NULL:
        return 0
    cost = _chunk_cost(self, idx)
    if self.touched_bytes + cost > self.memory_budget:
        self.alloc_error = 1
        return -1
    if idx >= self.pmem_index and self.meta[idx >> LEAF_SHIFT] == NULL:
        # line states and queue counts of the whole leaf in one region, so they too sit on huge pages
        self.meta[idx >> LEAF_SHIFT] = _block(META_PER_LEAF, self.huge_pages)
        if self.meta[idx >> LEAF_SHIFT] == NULL:
            self.alloc_error = 2
            return -1
    mem = _block(c, self.huge_pages)
    if mem != NULL and idx >= self.pmem_index:
        meta = self.meta[idx >> LEAF_SHIFT] + ((idx & ((1ULL << LEAF_SHIFT) - 1)) >> self.chunk_shift) * 2 * (c >> 6)
        med = _block(c, self.huge_pages)
        if med == NULL:
            munmap(mem, c)
            mem = NULL
    if mem == NULL:
        self.alloc_error = 2
        return -1
    ck.mem, ck.med, ck.lines = mem, med, <uint16_t*>meta
    self.touched_bytes += cost
    return 0


cdef int _walk_leaf(Engine self, vm_t* vm, uint64_t gpa, uint64_t* st, uint64_t* entry,
                           uint64_t* hpa_page, uint64_t* slot) noexcept nogil:
    """Hardware walk of ``gpa``: sets accessed bits, counts references. Returns 0 with the
    leaf, or the exit reason (48 not present, 49 misconfigured) with the entry that stopped it."""
    cdef uint64_t t = vm.root, s, e, mask
    cdef int level, shift
    for level in range(4, 0, -1):
        shift = 12 + 9 * (level - 1)
        s = t * ENTRIES + ((gpa >> shift) & 511)
        e = self.ept[s]
        st[ST_WALK_REFS] += 1
        if not (e & E_RWX):
            entry[0] = e
            return EXIT_EPT_VIOLATION
        if (e & 3) == E_W:
            entry[0] = e
            return EXIT_EPT_MISCONFIG
        e |= E_ACCESSED
        self.ept[s] = e
        if level == 1 or (e & E_LARGE):
            mask = (1ULL << shift) - 1
            hpa_page[0] = (e & ADDR_MASK & ~mask) | (gpa & mask & ~(<uint64_t>0xFFF))
            entry[0] = e
            slot[0] = s
            return 0
        t = (e & ADDR_MASK) >> 12
    return EXIT_EPT_VIOLATION


cdef int _translate_nogil(Engine self, vm_t* vm, uint32_t vcpu, uint64_t gpa, bint write, uint64_t* st,
                                 uint64_t* hpa, uint64_t* entry, uint64_t* tlb_index) noexcept nogil:
    """TLB, then walk; permission check; D bit on writes. Returns 0 with the HPA and the TLB
    entry that holds the translation, or the exit reason with the entry whose permissions
    the qualification reports."""
    cdef uint64_t vpn = gpa >> 12, e, page, leaf
    cdef uint64_t ts = <uint64_t>vcpu * vm.tlb_entries + (vpn & (vm.tlb_entries - 1))
    cdef int rc
    if vm.tlb_vpn[ts] == vpn:
        st[ST_TLB_HITS] += 1
        e = vm.tlb_entry[ts]
    else:
        st[ST_TLB_MISSES] += 1
        rc = _walk_leaf(self, vm, gpa, st, &e, &page, &leaf)
        if rc:
            entry[0] = e
            return rc
        vm.tlb_vpn[ts] = vpn
        vm.tlb_entry[ts] = e
        vm.tlb_hpa[ts] = page
        vm.tlb_slot[ts] = leaf
        vm.tlb_chunk[ts] = _chunk_at(self, _index(self, page), False)
    entry[0] = e
    tlb_index[0] = ts
    if write:
        if not (e & E_W):
            return EXIT_EPT_VIOLATION
        if not (e & E_DIRTY):
            self.ept[vm.tlb_slot[ts]] |= E_DIRTY
            vm.tlb_entry[ts] = e | E_DIRTY
    elif not (e & E_R):
        return EXIT_EPT_VIOLATION
    hpa[0] = vm.tlb_hpa[ts] | (gpa & 0xFFF)
    return 0


cdef uint32_t _dimm_of_line(Engine self, uint64_t line) noexcept nogil:
    """NVDIMM (set member, numbered set after set) of NVDIMM line ``line`` (offset >> 6): granule
    k of a set belongs to member k mod ways."""
    cdef uint64_t off = line << 6, rel
    cdef uint32_t k
    for k in range(self.nsets):
        rel = off - self.sets[k].offset
        if rel < self.sets[k].length:
            if self.sets[k].ways_mask:
                return self.sets[k].first + ((rel >> self.sets[k].gshift) & self.sets[k].ways_mask)
            return self.sets[k].first + (rel >> self.sets[k].gshift) % self.sets[k].ways
    return 0


cdef uint32_t _controller_of_line(Engine self, uint64_t line) noexcept nogil:
    """Controller of NVDIMM line ``line``: the one its NVDIMM sits on."""
    return self.set_ctl[_dimm_of_line(self, line)]


cdef void _drain_one(Engine self, uint32_t c) noexcept nogil:
    cdef uint64_t slot = <uint64_t>c * self.wpq_depth + self.whead[c]
    cdef uint64_t line = self.wline[slot]
    cdef uint64_t idx = self.pmem_index + (line << 6)
    cdef chunk_t* ck = _chunk_at(self, idx, False)     # allocated: a queued line's chunk always is
    cdef uint64_t lo = (idx & self.chunk_mask) >> 6
    memcpy(ck.med + (lo << 6), self.wdata + slot * 64, 64)
    ck.lines[lo] -= ONE_COPY
    if ck.lines[lo] == LINE_QUEUED:              # no copy left: the line is clean
        ck.lines[lo] = LINE_CLEAN
    self.whead[c] = (self.whead[c] + 1) % self.wpq_depth
    self.wlen[c] -= 1
    self.cstats[c * CT_COUNT + CT_DRAINED] += 1


cdef uint64_t _drain_controller(Engine self, uint32_t c) noexcept nogil:
    cdef uint64_t n = 0, line
    while self.wlen[c]:
        if self.wlen[c] > PREFETCH_AHEAD:      # the media line of a later entry, so its miss overlaps
            line = self.wline[<uint64_t>c * self.wpq_depth + (self.whead[c] + PREFETCH_AHEAD) % self.wpq_depth]
            nvemu_prefetch(_chunk_at(self, self.pmem_index + (line << 6), False).med +
                           ((line << 6) & self.chunk_mask))
        _drain_one(self, c)
        n += 1
    return n


cdef void _enqueue(Engine self, chunk_t* ck, uint64_t line) noexcept nogil:
    """Write back pmem line ``line`` of allocated chunk ``ck``: its 64 bytes as of now join its
    controller's WPQ."""
    cdef uint32_t c = _controller_of_line(self, line)
    cdef uint64_t slot, lo = ((line << 6) & self.chunk_mask) >> 6
    if self.wlen[c] == self.wpq_depth:
        _drain_one(self, c)
        self.cstats[c * CT_COUNT + CT_DRAINED_FULL] += 1
    slot = <uint64_t>c * self.wpq_depth + (self.whead[c] + self.wlen[c]) % self.wpq_depth
    self.wline[slot] = line
    memcpy(self.wdata + slot * 64, ck.mem + (lo << 6), 64)
    self.wlen[c] += 1
    ck.lines[lo] = ((ck.lines[lo] & ~(<uint16_t>LINE_STATE_MASK)) + ONE_COPY) | LINE_QUEUED
    self.cstats[c * CT_COUNT + CT_ENQUEUED] += 1


cdef uint64_t _wpq_accept(Engine self, uint32_t d, uint64_t arrival) noexcept nogil:
    """Timing of one write-back reaching the WPQ of NVDIMM ``d`` at ``arrival`` (ps); returns
    when the WPQ accepts it. The iMC keeps a WPQ per NVDIMM (Yang et al., FAST 2020, section 2.1),
    drained continuously, one line per ``drain_line`` ps, so ``ceil((busy - t) / drain_line)``
    lines occupy it at time t; a full WPQ holds the line (and the line buffer carrying it) until
    a slot frees."""
    cdef uint64_t t_line = self.tm.drain_line, busy = self.dbusy[d], reserve, accepted = arrival
    reserve = <uint64_t>(self.wpq_depth - 1) * t_line
    if t_line and busy > reserve and busy - reserve > arrival:
        accepted = busy - reserve
    self.dbusy[d] = _umax(busy, accepted) + t_line
    return accepted


cdef uint64_t* _line_buffer(Engine self, uint64_t* st, uint64_t* clk, uint32_t stat) noexcept nogil:
    """The vCPU's line buffer that frees first (the lowest index on a tie); when it is still
    busy the vCPU waits for it, and the wait is added to time counter ``stat``."""
    cdef uint64_t* best = clk + CK_FILL
    cdef uint32_t k
    for k in range(1, <uint32_t>self.tm.fill_buffers):
        if clk[CK_FILL + k] < best[0]:
            best = clk + CK_FILL + k
    if best[0] > clk[CK_NOW]:
        st[stat] += best[0] - clk[CK_NOW]
        clk[CK_NOW] = best[0]
    return best


cdef void _load_timing(Engine self, uint64_t hpa, uint64_t* st, uint64_t* clk) noexcept nogil:
    """Timing of a load that reached memory: a load to the line still being filled shares its
    buffer; any other takes a line buffer (waiting for one when all are busy) and is issued,
    without waiting for its data. An NVDIMM starts one read per ``read_line`` ps."""
    cdef uint64_t line = hpa >> 6, start, done
    cdef uint64_t* buf
    cdef uint32_t d
    cdef bint seq = _near(line, clk[CK_LOAD_LINE])
    if line == clk[CK_LOAD_LINE] and clk[CK_LOAD_DONE] > clk[CK_NOW]:
        return
    buf = _line_buffer(self, st, clk, ST_LOAD_PS)
    start = clk[CK_NOW]
    if hpa >= self.pmem_base:
        d = _dimm_of_line(self, (hpa - self.pmem_base) >> 6)
        start = _umax(start, self.drbusy[d])
        self.drbusy[d] = start + self.tm.read_line
        done = start + (self.tm.load_seq if seq else self.tm.load_rand)
    else:
        done = start + (self.tm.dram_load_seq if seq else self.tm.dram_load_rand)
    buf[0] = done
    clk[CK_LOAD_LINE] = line
    clk[CK_LOAD_DONE] = done
    clk[CK_LOADS_DONE] = _umax(clk[CK_LOADS_DONE], done)


cdef inline void _wait_loads(uint64_t* st, uint64_t* clk, uint64_t until) noexcept nogil:
    """The vCPU waits (load time) until ``until``: for its loads' data."""
    if until > clk[CK_NOW]:
        st[ST_LOAD_PS] += until - clk[CK_NOW]
        clk[CK_NOW] = until


cdef void _write_back(Engine self, uint64_t hpa, bint nt, uint64_t* st, uint64_t* clk) noexcept nogil:
    """Timing of a line leaving the vCPU (a clwb of a dirty line or an nt-store): it takes a line
    buffer (the writer stalls while none is free), travels to its controller (sequential or
    random latency) and holds the buffer until the WPQ there accepts it; an nt-store to the line
    of the open write-combining buffer merges into it. DRAM has no WPQ to wait for."""
    cdef uint64_t line = hpa >> 6, travel, accepted
    cdef uint64_t* buf
    cdef bint seq
    if nt:
        if clk[CK_NT_LINE] == line:
            return
        clk[CK_NT_LINE] = line
    seq = _near(line, clk[CK_WB_LINE])
    clk[CK_WB_LINE] = line
    buf = _line_buffer(self, st, clk, ST_WPQ_STALL_PS)
    if hpa < self.pmem_base:
        accepted = clk[CK_NOW] + (self.tm.dram_nt if nt else self.tm.dram_wb)
    else:
        if nt:
            travel = self.tm.nt_seq if seq else self.tm.nt_rand
        else:
            travel = self.tm.wb_seq if seq else self.tm.wb_rand
        accepted = _wpq_accept(self, _dimm_of_line(self, (hpa - self.pmem_base) >> 6), clk[CK_NOW] + travel)
    buf[0] = accepted
    clk[CK_PENDING] = _umax(clk[CK_PENDING], accepted)


cdef uint64_t _fan_out(Engine self, vm_t* vm, uint64_t* st, uint64_t* clk) noexcept nogil:
    """One physical FHA write per fan-out controller, each draining its WPQ fully, FIFO.
    Time: the writes go out together; each completes when the WPQs of its controller's NVDIMMs
    are empty, and the vCPU waits for the slowest, not the sum."""
    cdef uint32_t c, d
    cdef uint64_t n, total = 0, issued = clk[CK_NOW] + self.tm.fha_write, done = 0
    for c in range(self.n_controllers):
        if vm.fanout[c]:
            st[ST_FHA_WRITES] += 1
            self.cstats[c * CT_COUNT + CT_FHA_WRITES] += 1
            n = _drain_controller(self, c)
            vm.drained[c] += n
            total += n
            done = _umax(done, issued)
            for d in range(self.n_dimms):
                if self.set_ctl[d] == c:
                    done = _umax(done, self.dbusy[d])
    st[ST_LINES_DRAINED] += total
    if done:
        st[ST_FHA_PS] += self.tm.fha_write
        st[ST_DRAIN_WAIT_PS] += done - issued
        clk[CK_NOW] = done
    return total


cdef bint _handle_fha_exit(Engine self, vm_t* vm, uint64_t* st, uint64_t* clk, int reason, bint write,
                                  uint8_t op) noexcept nogil:
    """Finish an exit on the vFHA page inside the core when the VM's mode says how: the
    round trip, the handling cost of the path, then the fan-out."""
    cdef int mode = vm.fha_mode
    if reason == EXIT_EPT_MISCONFIG and mode == FHA_MMIO:
        st[ST_EXITS_EPT_MISCONFIG] += 1
        clk[CK_NOW] += self.tm.exit + self.tm.mmio
        st[ST_EXIT_PS] += self.tm.exit
        st[ST_MMIO_PS] += self.tm.mmio
        if write:
            st[ST_VFHA_WRITES] += 1
            _fan_out(self, vm, st, clk)
        elif op == OP_LOAD:
            st[ST_VFHA_READS] += 1
            self.last_value = 0
        return True
    if reason != EXIT_EPT_VIOLATION or not write:
        return False
    if mode == FHA_WRITE_PROTECT or mode == FHA_DROP:
        st[ST_EXITS_EPT_VIOLATION] += 1
        clk[CK_NOW] += self.tm.exit + self.tm.write_protect
        st[ST_EXIT_PS] += self.tm.exit
        st[ST_WRITE_PROTECT_PS] += self.tm.write_protect
        st[ST_VFHA_WRITES] += 1
        if mode == FHA_WRITE_PROTECT:
            _fan_out(self, vm, st, clk)
        return True
    if mode == FHA_HYPERCALL:
        st[ST_EXITS_VMCALL] += 1
        clk[CK_NOW] += self.tm.exit + self.tm.hypercall
        st[ST_EXIT_PS] += self.tm.exit
        st[ST_HYPERCALL_PS] += self.tm.hypercall
        st[ST_VFHA_WRITES] += 1
        _fan_out(self, vm, st, clk)
        return True
    return False


cdef int _run_nogil(Engine self, const trace_rec_t* ops, uint64_t start, uint64_t n,
                           uint64_t* stopped) noexcept nogil:
    """Replay ``ops[start:n]``. Returns RUN_DONE, or RUN_EXIT / RUN_BAD_RECORD / RUN_NO_MEMORY
    with ``stopped[0]`` the index of the record (the exit in ``self.exit``, the reason a record
    was refused in ``self.bad_record``, the allocation failure in ``self.alloc_error``)."""
    cdef uint64_t i, hpa, entry, idx, line, value, ts, off, refs, t
    cdef const trace_rec_t* r
    cdef vm_t* vm
    cdef chunk_t* ck
    cdef uint64_t* st
    cdef uint64_t* clk
    cdef uint32_t size
    cdef uint8_t op
    cdef bint write
    cdef int rc
    cdef uint64_t pmem_base = self.pmem_base
    cdef uint64_t chunk_mask = self.chunk_mask
    cdef uint64_t t_op = self.tm.op
    cdef uint32_t max_vms = self.max_vms
    cdef uint64_t pf_line = NO_VPN, pf_table = NO_VPN
    for i in range(start, n):
        if i + 2 * PREFETCH_AHEAD < n:       # page tables first, host memory later, once per line
            r = &ops[i + 2 * PREFETCH_AHEAD]
            if (r.gpa >> 6) != pf_table:
                pf_table = r.gpa >> 6
                _prefetch(self, r, True)
        if i + PREFETCH_AHEAD < n:
            r = &ops[i + PREFETCH_AHEAD]
            if (r.gpa >> 6) != pf_line:
                pf_line = r.gpa >> 6
                _prefetch(self, r, False)
        r = &ops[i]
        op = r.op
        if r.vm >= max_vms or not self.vms[r.vm].running:
            self.bad_record = BAD_VM
            stopped[0] = i
            return RUN_BAD_RECORD
        vm = &self.vms[r.vm]
        if r.vcpu >= vm.nvcpus:
            self.bad_record = BAD_VCPU
            stopped[0] = i
            return RUN_BAD_RECORD
        st = vm.stats + <uint64_t>r.vcpu * ST_COUNT
        clk = vm.clock + <uint64_t>r.vcpu * CK_COUNT
        if op >= OP_SFENCE:
            if op > OP_MFENCE:
                self.bad_record = BAD_OP
                stopped[0] = i
                return RUN_BAD_RECORD
            st[op] += 1
            st[ST_OPS] += 1
            st[ST_OPS_PS] += t_op
            # an MFENCE waits for the vCPU's loads' data (load time); a fence waits until its
            # write-backs are accepted, then closes its WC buffer
            clk[CK_NOW] += t_op
            if op == OP_MFENCE:
                _wait_loads(st, clk, clk[CK_LOADS_DONE])
            t = _umax(clk[CK_NOW], clk[CK_PENDING])
            st[ST_FENCE_PS] += t - clk[CK_NOW] + self.tm.fence
            clk[CK_NOW] = t + self.tm.fence
            clk[CK_NT_LINE] = NO_VPN
            continue
        if r.gpa >= GPA_LIMIT:
            self.bad_record = BAD_GPA
            stopped[0] = i
            return RUN_BAD_RECORD
        size = r.size
        if op <= OP_NT_STORE:
            if size != 8 and size != 4 and size != 2 and size != 1:
                self.bad_record = BAD_SIZE
                stopped[0] = i
                return RUN_BAD_RECORD
            if (r.gpa & 63) + size > 64:
                self.bad_record = BAD_CROSSES_LINE
                stopped[0] = i
                return RUN_BAD_RECORD
            if op != OP_LOAD and size < 8 and (r.value >> (size * 8)) != 0:
                self.bad_record = BAD_VALUE
                stopped[0] = i
                return RUN_BAD_RECORD
            write = op != OP_LOAD
        else:
            if size != 0 and size != 64:
                self.bad_record = BAD_SIZE
                stopped[0] = i
                return RUN_BAD_RECORD
            write = False
        st[op] += 1
        st[ST_OPS] += 1
        st[ST_OPS_PS] += t_op
        clk[CK_NOW] += t_op
        refs = st[ST_WALK_REFS]
        rc = _translate_nogil(self, vm, r.vcpu, r.gpa, write, st, &hpa, &entry, &ts)
        refs = (st[ST_WALK_REFS] - refs) * self.tm.walk_ref
        st[ST_WALK_PS] += refs
        clk[CK_NOW] += refs
        if rc:
            _wait_loads(st, clk, clk[CK_LOADS_DONE])        # an exit is serialising
            if (r.gpa >> 12) == vm.fha_vpn and _handle_fha_exit(self, vm, st, clk, rc, write, op):
                continue
            if rc == EXIT_EPT_MISCONFIG:
                st[ST_EXITS_EPT_MISCONFIG] += 1
            else:
                st[ST_EXITS_EPT_VIOLATION] += 1
            st[ST_EXIT_PS] += self.tm.exit
            clk[CK_NOW] += self.tm.exit
            self.exit.reason = rc
            self.exit.qualification = _qualification(rc, write, entry)
            self.exit.gpa = r.gpa
            self.exit.op_index = i
            self.exit.vm = r.vm
            self.exit.vcpu = r.vcpu
            self.exit.op = op
            stopped[0] = i
            return RUN_EXIT
        if (r.gpa >> 12) == vm.fha_vpn:
            if write:
                st[ST_VFHA_WRITES] += 1
                if vm.fha_mode == FHA_NATIVE:
                    _fan_out(self, vm, st, clk)
                    continue
            elif op == OP_LOAD:
                st[ST_VFHA_READS] += 1
        ck = vm.tlb_chunk[ts]
        if ck.mem == NULL:
            # first access since the chunk was allocated elsewhere, or a chunk never written
            idx = _index(self, hpa)
            ck = _chunk_at(self, idx, write)
            if ck == NULL or (write and _fill_chunk(self, ck, idx)):
                if ck == NULL:
                    self.alloc_error = 2
                stopped[0] = i
                return RUN_NO_MEMORY
            vm.tlb_chunk[ts] = ck
        off = (hpa - pmem_base if hpa >= pmem_base else hpa) & chunk_mask
        if op == OP_LOAD:
            value = load_le(ck.mem + off, size) if ck.mem != NULL else 0
            st[ST_LOAD_SUM] += value
            self.last_value = value
            _load_timing(self, hpa, st, clk)
            continue
        if (hpa >> 6) == clk[CK_LOAD_LINE]:              # read-modify-write: wait for the load's data
            _wait_loads(st, clk, clk[CK_LOAD_DONE])
        if op <= OP_NT_STORE:
            store_le(ck.mem + off, r.value, size)
            if hpa >= pmem_base:
                if op == OP_STORE:
                    ck.lines[off >> 6] = (ck.lines[off >> 6] & ~(<uint16_t>LINE_STATE_MASK)) | LINE_DIRTY
                else:
                    _enqueue(self, ck, (hpa - pmem_base) >> 6)
            if op == OP_NT_STORE:
                _write_back(self, hpa, True, st, clk)
        else:
            clk[CK_NOW] += self.tm.flush_issue
            st[ST_FLUSH_PS] += self.tm.flush_issue
            if hpa < pmem_base:
                _write_back(self, hpa, False, st, clk)     # DRAM lines are not tracked: always written back
            elif ck.lines != NULL and (ck.lines[off >> 6] & LINE_STATE_MASK) == LINE_DIRTY:
                _enqueue(self, ck, (hpa - pmem_base) >> 6)
                st[ST_LINES_FLUSHED] += 1
                _write_back(self, hpa, False, st, clk)
    stopped[0] = n
    return RUN_DONE
