# Included by _core.pyx: the EPT table pool and the VM slots, module functions so they stay out of
# the published vtable (the Engine's def methods validate, these trust).

def _readonly(arr):
    """A view of ``arr`` that nobody can write through (its WRITEABLE flag cannot be set back)."""
    return np.frombuffer(memoryview(arr).toreadonly(), arr.dtype).reshape(arr.shape)


class VmArrays:
    """The numpy arrays behind one VM slot, by name (the slot's raw pointers borrow them)."""

    __slots__ = ("tlb_vpn", "tlb_entry", "tlb_hpa", "tlb_slot", "tlb_chunk", "stats", "fanout", "drained", "clock")

    def __init__(self, nvcpus, tlb_entries, n_controllers):
        n = nvcpus * tlb_entries
        self.tlb_vpn = np.full(n, NO_VPN, np.uint64)
        self.tlb_entry = np.zeros(n, np.uint64)
        self.tlb_hpa = np.zeros(n, np.uint64)
        self.tlb_slot = np.zeros(n, np.uint64)
        self.tlb_chunk = np.full(n, <uint64_t>&EMPTY, np.uint64)     # chunk_t* per entry
        self.stats = np.zeros((nvcpus, ST_COUNT), np.uint64)
        self.fanout = np.zeros(n_controllers, np.uint8)
        self.drained = np.zeros(n_controllers, np.uint64)
        self.clock = np.zeros((nvcpus, CK_COUNT), np.uint64)     # time 0, nothing pending, no last lines
        self.clock[:, CK_LOAD_LINE:CK_LOAD_DONE] = NO_VPN


cdef uint32_t _alloc_table(Engine e) except? 0xFFFFFFFF:
    cdef uint32_t t
    if e._free_tables:
        t = e._free_tables.pop()
    elif e.next_table < e.pool_tables:
        t = e.next_table
        e.next_table += 1
    else:
        raise ResourceError(f"the page-table pool is exhausted ({e.pool_tables} tables of 4 KiB)")
    memset(&e.ept[<uint64_t>t * ENTRIES], 0, ENTRIES * 8)
    return t


cdef uint64_t _free_tree(Engine e, uint64_t t, int level):
    """Free table ``t`` (at ``level``) and every table below it; returns how many."""
    cdef uint64_t n = 1, x
    cdef int i
    if level > 1:
        for i in range(ENTRIES):
            x = e.ept[t * ENTRIES + i]
            if (x & E_RWX) and not (x & E_LARGE):
                n += _free_tree(e, (x & ADDR_MASK) >> 12, level - 1)
    e._free_tables.append(t)
    return n


cdef vm_t* _vm(Engine e, vm) except NULL:
    try:
        v = operator.index(vm)
    except TypeError:
        raise TypeError(f"vm must be an integer, not {type(vm).__name__}") from None
    _live(e)
    if not 0 <= v < e.max_vms or not e.vms[v].active:
        raise ConfigError(f"vm {v!r} does not exist in the engine")
    return &e.vms[v]


cdef _install_vm(Engine e, int vm, uint64_t root, uint64_t nvcpus, uint64_t tlb_entries, bint running,
                 uint64_t fha_vpn, int fha_mode, object a):
    """Fill VM slot ``vm`` from its VmArrays ``a`` (shapes already checked)."""
    cdef vm_t* v = &e.vms[vm]
    cdef uint64_t k, n = nvcpus * tlb_entries
    cdef uint64_t* hpa
    cdef chunk_t** chunk
    e._vms[vm] = a
    v.root, v.nvcpus, v.tlb_entries, v.running = root, nvcpus, tlb_entries, running
    v.fha_vpn, v.fha_mode = fha_vpn, fha_mode
    v.tlb_vpn = <uint64_t*>_ptr(a.tlb_vpn)
    v.tlb_entry = <uint64_t*>_ptr(a.tlb_entry)
    v.tlb_hpa = <uint64_t*>_ptr(a.tlb_hpa)
    v.tlb_slot = <uint64_t*>_ptr(a.tlb_slot)
    v.tlb_chunk = <chunk_t**>_ptr(a.tlb_chunk)
    v.stats = <uint64_t*>_ptr(a.stats)
    v.fanout = <uint8_t*>_ptr(a.fanout)
    v.drained = <uint64_t*>_ptr(a.drained)
    v.clock = <uint64_t*>_ptr(a.clock)
    hpa, chunk = v.tlb_hpa, v.tlb_chunk
    for k in range(n):
        chunk[k] = _chunk_at(e, _index(e, hpa[k]), False) if v.tlb_vpn[k] != NO_VPN else &EMPTY
    v.active = True


cdef void _flush_tlbs(vm_t* v) noexcept:
    """INVEPT single-context: drop every cached translation of every vCPU of the VM."""
    cdef uint64_t i
    for i in range(<uint64_t>v.nvcpus * v.tlb_entries):
        v.tlb_vpn[i] = NO_VPN
    for i in range(v.nvcpus):
        v.stats[i * ST_COUNT + ST_TLB_FLUSHES] += 1


cdef uint64_t _split(Engine e, uint64_t slot, int level) except? 0:
    """Replace the large leaf at ``slot`` (a ``level`` 2 or 3 entry) by a table of 512 smaller
    leaves with the same permissions and attributes; returns the new table."""
    cdef uint64_t x = e.ept[slot], t = _alloc_table(e), i
    cdef uint64_t child = 1ULL << (12 + 9 * (level - 2))
    cdef uint64_t base = x & ADDR_MASK & ~((child << 9) - 1)
    cdef uint64_t attrs = (x & 0xFFF) & ~(<uint64_t>E_LARGE) if level == 2 else (x & 0xFFF)
    for i in range(ENTRIES):
        e.ept[t * ENTRIES + i] = (base + i * child) | attrs
    e.ept[slot] = (t << 12) | E_RWX
    return t


cdef object _leaf(Engine e, vm_t* v, uint64_t gpa, int target, bint create, uint64_t span):
    """Slot of the entry that maps ``gpa`` at level ``target`` (1: 4 KiB, 2: 2 MiB), creating
    tables on the way when ``create``; a large leaf above the target is split unless it lies
    wholly inside ``[gpa, gpa + span)``, in which case its own (level, slot) is returned.
    Returns (level, slot) or None when nothing is mapped there."""
    cdef uint64_t t = v.root, s, x
    cdef int level, shift
    for level in range(4, target, -1):
        shift = 12 + 9 * (level - 1)
        s = t * ENTRIES + ((gpa >> shift) & 511)
        x = e.ept[s]
        if not (x & E_RWX):
            if not create:
                return None
            t = _alloc_table(e)
            e.ept[s] = (t << 12) | E_RWX
        elif x & E_LARGE:
            if not create and gpa % (1ULL << shift) == 0 and span >= (1ULL << shift):
                return (level, s)
            t = _split(e, s, level)
        else:
            t = (x & ADDR_MASK) >> 12
    return (target, t * ENTRIES + ((gpa >> (12 + 9 * (target - 1))) & 511))


cdef list _each_leaf(Engine e, vm_t* v, gpa, length):
    gpa, length = integer(gpa, "gpa"), integer(length, "length")
    if gpa % 4096 or length % 4096 or length == 0 or gpa + length > GPA_LIMIT:
        raise ConfigError(f"range of {length:#x} bytes at GPA {gpa:#x} is not whole 4 KiB pages "
                          f"inside the 48-bit guest-physical space")
    cdef uint64_t pos = gpa, end = gpa + length
    leaves = []
    while pos < end:
        found = _leaf(e, v, pos, 1, False, end - pos)
        if found is None or not (e.ept[found[1]] & E_RWX):
            raise ConfigError(f"GPA {pos:#x} is not mapped")
        leaves.append(found[1])
        pos += 1ULL << (12 + 9 * (found[0] - 1))
    return leaves


cdef _map(Engine self, vm, gpa, hpa, length, perms, page_size):
    """``Engine.map``, with the lock held: its arguments unchecked until here."""
    cdef uint64_t off, entry
    cdef int target
    v = _vm(self, vm)
    gpa, hpa, length = integer(gpa, "gpa"), integer(hpa, "hpa"), integer(length, "length")
    perms, page_size = integer(perms, "perms"), integer(page_size, "page_size")
    if page_size == 4096:
        target = 1
    elif page_size == 2 << 20:
        target = 2
    else:
        raise ConfigError(f"page_size {page_size:#x}: must be 4 KiB or 2 MiB")
    if gpa % page_size or hpa % page_size or length % page_size or length == 0:
        raise ConfigError(f"map of {length:#x} bytes at GPA {gpa:#x} -> HPA {hpa:#x} is not "
                          f"aligned to its {page_size:#x}-byte pages")
    if gpa + length > GPA_LIMIT:
        raise ConfigError(f"GPA range ending at {gpa + length:#x} exceeds the 48-bit guest-physical space")
    if not 1 <= perms <= 7:
        raise ConfigError(f"perms {perms}: must be a non-empty R/W/X mask (use unmap to remove)")
    _check_hpa(self, hpa, length)
    try:
        for off in range(0, length, page_size):
            level, slot = _leaf(self, v, gpa + off, target, True, page_size)
            if level == 2 and target == 2 and (self.ept[slot] & E_RWX) and not (self.ept[slot] & E_LARGE):
                raise ConfigError(f"GPA {gpa + off:#x} is already mapped with 4 KiB pages")
            entry = (hpa + off) | E_MEMTYPE_WB | <uint64_t>perms
            if target == 2:
                entry |= E_LARGE
            self.ept[slot] = entry
    finally:
        _flush_tlbs(v)


cdef _walk(Engine self, vm, gpa):
    """``Engine.walk``, with the lock held: its arguments unchecked until here."""
    cdef uint64_t t, x, idx
    cdef int level
    v = _vm(self, vm)
    t = v.root
    gpa = integer(gpa, "gpa")
    if gpa >= GPA_LIMIT:
        raise ConfigError(f"GPA {gpa:#x} is outside the 48-bit guest-physical space")
    path = []
    for level in range(4, 0, -1):
        idx = (gpa >> (12 + 9 * (level - 1))) & 511
        x = self.ept[t * ENTRIES + idx]
        path.append((level, t, idx, x))
        if not (x & E_RWX) or (x & 3) == E_W or level == 1 or (x & E_LARGE):
            break
        t = (x & ADDR_MASK) >> 12
    return path


cdef _set_fha(Engine self, vm, fha_gpa, mode, fanout):
    """``Engine.set_fha``, with the lock held: its arguments unchecked until here."""
    v = _vm(self, vm)
    mode = integer(mode, "fha mode", FHA_NONE, FHA_NATIVE + 1)
    if fha_gpa is not None:
        fha_gpa = integer(fha_gpa, "vFHA GPA")
        if fha_gpa >= GPA_LIMIT:
            raise ConfigError(f"vFHA GPA {fha_gpa:#x} is outside the 48-bit guest-physical space")
    ctl = np.zeros(self.n_controllers, np.uint8)
    try:
        controllers = [integer(c, "fan-out controller") for c in fanout]
    except TypeError as e:
        raise TypeError(f"fanout must be a sequence of controller indices: {e}") from None
    for c in controllers:
        if not 0 <= c < self.n_controllers:
            raise ConfigError(f"fan-out names controller {c}, which does not exist")
        ctl[c] = 1
    self._vms[operator.index(vm)].fanout[:] = ctl
    v.fha_vpn = NO_VPN if fha_gpa is None else fha_gpa >> 12
    v.fha_mode = mode if fha_gpa is not None else FHA_NONE
