"""The emulation core: EPT walks, the software TLB, write-protection faults, WPQ enqueue/drain
fan-out and the trace replay loop, over sparse host memory and without the GIL.

Host memory, NVDIMM media and per-line state live in chunks allocated on first write behind a
two-level directory (``chunk_t``, see ``_core.pxd``); reading what was never written gives zeros and
allocates nothing. A TLB entry caches its chunk's directory record, so a TLB hit reaches memory
without walking the directory. Chunks of 2 MiB and more are mapped on 2 MiB boundaries and advised
``MADV_HUGEPAGE``: the kernel can back them with huge pages, which spares the CPU's own TLB the
misses that random accesses over hundreds of MiB cause (bench/chunk_size.py measures the choice).

Directives (boundscheck, wraparound, initializedcheck off; cdivision on) come from setup.py.
``nvemu/_reference.py`` is the same machine written plainly; tests demand identical results.
Every ``def`` here validates its arguments and holds ``self.lock``; the ``cdef ... nogil`` kernels
trust them. Canonical state capture, checking and restore live once in ``nvemu/_state.py``.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from libc.stdlib cimport calloc, free
from posix.mman cimport mmap, munmap, madvise, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_FAILED

import operator
import threading

import numpy as np

from nvemu import _state
from nvemu._constants import TRACE_DTYPE
from nvemu._image import DurableImage
from nvemu._layout import budget_message, check_layout, integer
from nvemu.errors import ConfigError, GuestFault, ResourceError, TraceError

cdef extern from *:
    """
    #include <sys/mman.h>
    #ifndef MADV_HUGEPAGE
    #define MADV_HUGEPAGE 0
    #endif
    /* Write every step-th byte back to itself, so the kernel backs each page now. */
    static void nvemu_touch(volatile unsigned char* p, size_t n, size_t step) {
        for (size_t i = 0; i < n; i += step) p[i] = p[i];
    }
    /* Ask for the cache line at p, to be written soon (a hint: never faults, changes nothing). The empty
       volatile asm keeps GCC from deeming a caller that only prefetches pure and deleting the call. */
    static inline void nvemu_prefetch(const void* p) { __builtin_prefetch(p, 1, 3); __asm__ __volatile__("" : : "r"(p)); }
    """
    int MADV_HUGEPAGE_ "MADV_HUGEPAGE"
    void nvemu_touch(uint8_t* p, size_t n, size_t step) noexcept nogil
    void nvemu_prefetch(const void* p) noexcept nogil

CAPI_VERSION = NVEMU_CAPI_VERSION
STAT_COUNT = ST_COUNT
CTRL_STAT_COUNT = CT_COUNT
CLOCK_COUNT = CK_COUNT

cdef enum:
    E_R = 1
    E_W = 2
    E_RWX = 7
    Q_LINEAR = 0x180                # EPT-violation qualification bits 7 and 8 of a guest data access (SDM)
    E_MEMTYPE_WB = 0x30
    E_LARGE = 0x80
    E_ACCESSED = 0x100
    E_DIRTY = 0x200
    ENTRIES = 512
    LEAF_SHIFT = 30                  # one directory leaf covers 1 GiB of memory index space
    META_PER_LEAF = 2 << 24          # bytes of line words (uint16 per 64-byte line) of a leaf
    LINE_STATE_MASK = 3              # a line word: queued copies << 2 | line_state_t
    ONE_COPY = 4
    PREFETCH_AHEAD = 16              # records: how far ahead the replay loop asks for host memory

cdef uint64_t ADDR_MASK = 0x000FFFFFFFFFF000ULL
cdef uint64_t NO_VPN = 0xFFFFFFFFFFFFFFFFULL
cdef uint64_t GPA_LIMIT = 1ULL << 48
cdef uint64_t HUGE = 2 << 20
cdef chunk_t EMPTY                   # the record of every chunk whose directory leaf does not exist yet


cdef inline uint64_t _ptr(object arr):
    return <uint64_t>arr.ctypes.data


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


def _trace_bytes(ops):
    """The raw bytes of a trace array, after checking it is one (dtype, shape, layout)."""
    if not isinstance(ops, np.ndarray):
        raise TraceError(f"a trace must be a numpy array of TRACE_DTYPE, not {type(ops).__name__}")
    if ops.dtype != TRACE_DTYPE:
        raise TraceError(f"trace dtype {ops.dtype} is not TRACE_DTYPE {TRACE_DTYPE}")
    if ops.ndim != 1:
        raise TraceError(f"a trace must be one-dimensional, not of shape {ops.shape}")
    if not ops.flags.c_contiguous:
        ops = np.ascontiguousarray(ops)
    return ops.view(np.uint8)


# ---- private helpers: module functions, so they stay out of the published vtable ---------------

cdef _live(Engine e):
    if e.vms == NULL:
        raise ConfigError("this Engine was never initialised (construct it with an EngineLayout)")


include "_core_memory.pxi"
include "_core_tables.pxi"



cdef class Engine:
    """One host machine: sparse memory and media, line states, WPQs, the EPT table pool and its VMs.

    Built from an :class:`nvemu._layout.EngineLayout`. The Python layer (``nvemu.machine``) owns
    policy; this class owns the per-access work. Every method holds ``lock``.
    """

    def __cinit__(self, *args, **kwargs):
        self.vms = NULL
        self.dir = NULL
        self.meta = NULL
        self.sets = NULL
        self.set_ctl = NULL
        self.lock = threading.RLock()

    def __dealloc__(self):
        cdef uint64_t d, k
        if self.dir != NULL:
            for d in range(self.dir_len):
                if self.dir[d] != NULL:
                    for k in range(1ULL << (LEAF_SHIFT - self.chunk_shift)):
                        _drop_chunk(self, &self.dir[d][k], 0)
                    free(self.dir[d])
                if self.meta != NULL and self.meta[d] != NULL:
                    munmap(self.meta[d], META_PER_LEAF)
        free(self.dir)
        free(self.meta)
        free(self.vms)
        free(self.sets)
        free(self.set_ctl)

    def __init__(self, layout):
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
        self.nsets, self.dir_len = len(sets), dir_len
        self.chunk_shift, self.chunk_mask, self.pmem_index = L.chunk_shift, (1 << L.chunk_shift) - 1, L.pmem_index
        self.memory_budget, self.huge_pages = L.memory_budget, L.huge_pages
        self.dram_bytes, self.pmem_base, self.pmem_bytes = L.dram_bytes, L.pmem_base, L.pmem_bytes
        self.n_controllers, self.wpq_depth, self.domain = L.n_controllers, L.wpq_depth, L.domain
        self.pool_tables, self.max_vms = L.pool_tables, L.max_vms
        (self.tm.op, self.tm.walk_ref, self.tm.load_seq, self.tm.load_rand, self.tm.dram_load_seq,
         self.tm.dram_load_rand, self.tm.flush_issue, self.tm.wb_seq, self.tm.wb_rand, self.tm.nt_seq,
         self.tm.nt_rand, self.tm.dram_wb, self.tm.dram_nt, self.tm.fence, self.tm.drain_line, self.tm.fha_write,
         self.tm.exit, self.tm.write_protect, self.tm.mmio, self.tm.hypercall) = L.timing
        nctl, depth = L.n_controllers, L.wpq_depth
        self._wpq_line = np.zeros(nctl * depth, np.uint64)
        self._wpq_data = np.zeros(nctl * depth * 64, np.uint8)
        self._wpq_head = np.zeros(nctl, np.uint32)
        self._wpq_len = np.zeros(nctl, np.uint32)
        self._ctrl_stats = np.zeros((nctl, CT_COUNT), np.uint64)
        self._ctrl_busy = np.zeros(nctl, np.uint64)
        self._pool = np.zeros(<uint64_t>L.pool_tables * ENTRIES, np.uint64)
        self._free_tables = []
        self._vms = {}
        self.next_table = 0
        self.wline = <uint64_t*>_ptr(self._wpq_line)
        self.wdata = <uint8_t*>_ptr(self._wpq_data)
        self.whead = <uint32_t*>_ptr(self._wpq_head)
        self.wlen = <uint32_t*>_ptr(self._wpq_len)
        self.cstats = <uint64_t*>_ptr(self._ctrl_stats)
        self.cbusy = <uint64_t*>_ptr(self._ctrl_busy)
        self.ept = <uint64_t*>_ptr(self._pool)

    # ---- read-only views of the engine's own tables --------------------------------------------

    @property
    def chunk_bytes(self):
        """Bytes of one chunk of host memory (the unit of allocation)."""
        return 1 << self.chunk_shift

    @property
    def pool(self):
        """Every VM's EPT tables, ``uint64[pool_tables * 512]`` (read-only view)."""
        return _readonly(self._pool) if self._pool is not None else None

    @property
    def wpq_head(self):
        return _readonly(self._wpq_head) if self._wpq_head is not None else None

    @property
    def wpq_len(self):
        return _readonly(self._wpq_len) if self._wpq_len is not None else None

    @property
    def ctrl_stats(self):
        return _readonly(self._ctrl_stats) if self._ctrl_stats is not None else None

    def set_memory_budget(self, budget):
        """Allow at most ``budget`` bytes of touched chunks (ResourceError beyond)."""
        with self.lock:
            self.memory_budget = integer(budget, "memory_budget")

    # ---- page-table pool -------------------------------------------------------------------

    @property
    def tables_in_use(self):
        """Page-table pages currently allocated, over all VMs."""
        _live(self)
        return self.next_table - len(self._free_tables)

    # ---- VMs -------------------------------------------------------------------------------

    def add_vm(self, vm, nvcpus, tlb_entries=256):
        """Register VM ``vm`` with an empty page table; returns its root table index."""
        with self.lock:
            _live(self)
            vm, nvcpus, tlb_entries = integer(vm, "vm"), integer(nvcpus, "nvcpus"), integer(tlb_entries, "tlb_entries")
            if not 0 <= vm < self.max_vms or self.vms[vm].active:
                raise ConfigError(f"vm id {vm} is out of range or in use")
            if not 1 <= nvcpus <= 256:
                raise ConfigError(f"nvcpus={nvcpus}: must be 1..256")
            if tlb_entries < 1 or tlb_entries & (tlb_entries - 1) or tlb_entries > (1 << 20):
                raise ConfigError(f"tlb_entries={tlb_entries}: must be a power of two up to 2**20")
            root = _alloc_table(self)
            _install_vm(self, vm, root, nvcpus, tlb_entries, True, NO_VPN, FHA_NONE,
                        VmArrays(nvcpus, tlb_entries, self.n_controllers))
            return root

    def remove_vm(self, vm):
        """Forget VM ``vm`` and free its page-table pages; returns how many were freed."""
        with self.lock:
            v = _vm(self, vm)
            freed = _free_tree(self, v.root, 4)
            memset(v, 0, sizeof(vm_t))
            del self._vms[operator.index(vm)]
            return freed

    def vm_ids(self):
        """Ids of the VMs in the engine, ascending."""
        return sorted(self._vms) if self._vms is not None else []

    def vm_slot(self, vm):
        """VM ``vm`` as a :class:`nvemu._state.VmSlot` (copies of its arrays)."""
        with self.lock:
            v = _vm(self, vm)
            a = self._vms[operator.index(vm)]
            return _state.VmSlot(operator.index(vm), v.root, v.nvcpus, v.tlb_entries, v.running, v.fha_vpn,
                                 v.fha_mode, np.stack([a.tlb_vpn, a.tlb_entry, a.tlb_hpa, a.tlb_slot], axis=1),
                                 a.stats.copy(), a.fanout.copy(), a.drained.copy(), a.clock.copy())

    def set_fha(self, vm, fha_gpa, mode, fanout):
        """Register the vFHA page of ``vm`` (or None), how accesses to it are handled (FhaMode)
        and the controllers a vFHA flush writes (``fanout``, a sequence of controller indices)."""
        with self.lock:
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

    def set_running(self, vm, running):
        """Whether records of ``vm`` may execute (a paused VM's records are refused)."""
        with self.lock:
            _vm(self, vm).running = bool(running)

    def stats(self, vm):
        """Per-vCPU counters of ``vm``: a copy, ``uint64[nvcpus, STAT_COUNT]``."""
        with self.lock:
            _vm(self, vm)
            return self._vms[operator.index(vm)].stats.copy()

    def drained_by_controller(self, vm):
        """Lines the flushes of ``vm`` drained, per controller: a copy, ``uint64[n_controllers]``."""
        with self.lock:
            _vm(self, vm)
            return self._vms[operator.index(vm)].drained.copy()

    def clock(self, vm):
        """Per-vCPU clock words of ``vm`` (CLOCK_FIELDS): a copy, ``uint64[nvcpus, CLOCK_COUNT]``."""
        with self.lock:
            _vm(self, vm)
            return self._vms[operator.index(vm)].clock.copy()

    def controller_busy(self):
        """Per controller, the time (ps) at which its WPQ will have drained every line it accepted."""
        with self.lock:
            _live(self)
            return self._ctrl_busy.copy()

    def reset_stats(self, vm):
        with self.lock:
            _vm(self, vm)
            self._vms[operator.index(vm)].stats[:] = 0
            self._vms[operator.index(vm)].drained[:] = 0

    # ---- page tables -----------------------------------------------------------------------

    def map(self, vm, gpa, hpa, length, perms, page_size=4096):
        """Map ``[gpa, gpa+length)`` to ``[hpa, ...)`` with R/W/X ``perms`` (bits 0-2) in pages of
        ``page_size`` (4 KiB or 2 MiB). Existing leaves of the same size are replaced."""
        cdef uint64_t off, entry
        cdef int target
        with self.lock:
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

    def protect(self, vm, gpa, length, perms):
        """Set the R/W/X bits of every leaf mapping ``[gpa, gpa+length)`` (splitting large pages
        that the range covers only in part), then invalidate every vCPU's TLB."""
        with self.lock:
            v = _vm(self, vm)
            perms = integer(perms, "perms")
            if not 0 <= perms <= 7:
                raise ConfigError(f"perms {perms}: must be an R/W/X mask 0..7")
            try:
                for slot in _each_leaf(self, v, gpa, length):
                    self.ept[slot] = (self.ept[slot] & ~(<uint64_t>E_RWX)) | <uint64_t>perms
            finally:
                _flush_tlbs(v)

    def unmap(self, vm, gpa, length):
        """Remove the mappings of ``[gpa, gpa+length)``; tables stay until the VM is removed."""
        with self.lock:
            v = _vm(self, vm)
            try:
                for slot in _each_leaf(self, v, gpa, length):
                    self.ept[slot] = 0
            finally:
                _flush_tlbs(v)

    def walk(self, vm, gpa):
        """Every level a hardware walk of ``gpa`` visits: a list of (level, table, index, entry),
        level 4 (PML4) first, ending at the leaf or the first non-present or misconfigured
        entry. Inspection only: sets no accessed bits and counts nothing."""
        cdef uint64_t t, x, idx
        cdef int level
        with self.lock:
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

    def table_rows(self):
        """``(ids, rows)``: every allocated table, ascending, and its 512 entries."""
        with self.lock:
            _live(self)
            free = set(self._free_tables)
            ids = [t for t in range(self.next_table) if t not in free]
            rows = self._pool.reshape(-1, ENTRIES)[ids].copy() if ids else np.zeros((0, ENTRIES), np.uint64)
            return ids, rows

    def free_table_list(self):
        """Freed table indices in the order they will be reused (last first)."""
        return list(self._free_tables) if self._free_tables is not None else []

    def tables(self):
        """Non-zero entries of every allocated table: {table: {index: entry}} (for comparisons)."""
        ids, rows = self.table_rows()
        return {t: {int(i): int(row[i]) for i in np.flatnonzero(row)} for t, row in zip(ids, rows)}

    # ---- memory chunks ---------------------------------------------------------------------

    cdef chunk_t* chunk_at(self, uint64_t idx, bint create) noexcept nogil:
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

    cdef int fill_chunk(self, chunk_t* ck, uint64_t idx) noexcept nogil:
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

    # ---- translation and the replay loop ---------------------------------------------------

    cdef int walk_leaf(self, vm_t* vm, uint64_t gpa, uint64_t* st, uint64_t* entry,
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

    cdef int translate_nogil(self, vm_t* vm, uint32_t vcpu, uint64_t gpa, bint write, uint64_t* st,
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
            rc = self.walk_leaf(vm, gpa, st, &e, &page, &leaf)
            if rc:
                entry[0] = e
                return rc
            vm.tlb_vpn[ts] = vpn
            vm.tlb_entry[ts] = e
            vm.tlb_hpa[ts] = page
            vm.tlb_slot[ts] = leaf
            vm.tlb_chunk[ts] = self.chunk_at(_index(self, page), False)
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

    def translate(self, vm, vcpu, gpa, write=False):
        """HPA of ``gpa`` as ``vcpu`` of ``vm`` sees it (TLB, walk, A/D bits, counters);
        raises GuestFault when the access would exit."""
        cdef uint64_t hpa = 0, entry = 0, ts = 0
        cdef int rc
        with self.lock:
            v = _vm(self, vm)
            vcpu, gpa = integer(vcpu, "vcpu"), integer(gpa, "gpa")
            if not 0 <= vcpu < v.nvcpus:
                raise ConfigError(f"vcpu {vcpu} does not exist in vm {vm}")
            if gpa >= GPA_LIMIT:
                raise ConfigError(f"GPA {gpa:#x} is outside the 48-bit guest-physical space")
            rc = self.translate_nogil(v, vcpu, gpa, bool(write), &v.stats[vcpu * ST_COUNT], &hpa, &entry, &ts)
            if rc:
                raise GuestFault(rc, _qualification(rc, bool(write), entry), gpa, 0, vm, vcpu, 1 if write else 0)
            return hpa

    cdef uint32_t controller_of_line(self, uint64_t line) noexcept nogil:
        """Controller of NVDIMM line ``line`` (offset >> 6): granule k of a set belongs to member k mod ways."""
        cdef uint64_t off = line << 6, rel
        cdef uint32_t k
        for k in range(self.nsets):
            rel = off - self.sets[k].offset
            if rel < self.sets[k].length:
                if self.sets[k].ways_mask:
                    return self.set_ctl[self.sets[k].first + ((rel >> self.sets[k].gshift) & self.sets[k].ways_mask)]
                return self.set_ctl[self.sets[k].first + (rel >> self.sets[k].gshift) % self.sets[k].ways]
        return 0

    cdef void drain_one(self, uint32_t c) noexcept nogil:
        cdef uint64_t slot = <uint64_t>c * self.wpq_depth + self.whead[c]
        cdef uint64_t line = self.wline[slot]
        cdef uint64_t idx = self.pmem_index + (line << 6)
        cdef chunk_t* ck = self.chunk_at(idx, False)     # allocated: a queued line's chunk always is
        cdef uint64_t lo = (idx & self.chunk_mask) >> 6
        memcpy(ck.med + (lo << 6), self.wdata + slot * 64, 64)
        ck.lines[lo] -= ONE_COPY
        if ck.lines[lo] == LINE_QUEUED:              # no copy left: the line is clean
            ck.lines[lo] = LINE_CLEAN
        self.whead[c] = (self.whead[c] + 1) % self.wpq_depth
        self.wlen[c] -= 1
        self.cstats[c * CT_COUNT + CT_DRAINED] += 1

    cdef uint64_t drain_controller(self, uint32_t c) noexcept nogil:
        cdef uint64_t n = 0, line
        while self.wlen[c]:
            if self.wlen[c] > PREFETCH_AHEAD:      # the media line of a later entry, so its miss overlaps
                line = self.wline[<uint64_t>c * self.wpq_depth + (self.whead[c] + PREFETCH_AHEAD) % self.wpq_depth]
                nvemu_prefetch(self.chunk_at(self.pmem_index + (line << 6), False).med +
                               ((line << 6) & self.chunk_mask))
            self.drain_one(c)
            n += 1
        return n

    cdef void enqueue(self, chunk_t* ck, uint64_t line) noexcept nogil:
        """Write back pmem line ``line`` of allocated chunk ``ck``: its 64 bytes as of now join its
        controller's WPQ."""
        cdef uint32_t c = self.controller_of_line(line)
        cdef uint64_t slot, lo = ((line << 6) & self.chunk_mask) >> 6
        if self.wlen[c] == self.wpq_depth:
            self.drain_one(c)
            self.cstats[c * CT_COUNT + CT_DRAINED_FULL] += 1
        slot = <uint64_t>c * self.wpq_depth + (self.whead[c] + self.wlen[c]) % self.wpq_depth
        self.wline[slot] = line
        memcpy(self.wdata + slot * 64, ck.mem + (lo << 6), 64)
        self.wlen[c] += 1
        ck.lines[lo] = ((ck.lines[lo] & ~(<uint16_t>LINE_STATE_MASK)) + ONE_COPY) | LINE_QUEUED
        self.cstats[c * CT_COUNT + CT_ENQUEUED] += 1

    cdef void wpq_accept(self, uint32_t c, uint64_t arrival, uint64_t* st, uint64_t* clk) noexcept nogil:
        """Timing of one write-back reaching controller ``c`` at ``arrival`` (ps). The controller
        drains continuously, one line per ``drain_line`` ps, so ``ceil((busy - t) / drain_line)``
        lines occupy its WPQ at time t; a full WPQ stalls the writer until a slot frees."""
        cdef uint64_t t_line = self.tm.drain_line, busy = self.cbusy[c], reserve, wait = 0
        reserve = <uint64_t>(self.wpq_depth - 1) * t_line
        if t_line and busy > reserve and busy - reserve > arrival:
            wait = busy - reserve - arrival
            clk[CK_NOW] += wait
            st[ST_WPQ_STALL_PS] += wait
        self.cbusy[c] = _umax(busy, arrival + wait) + t_line
        clk[CK_PENDING] = _umax(clk[CK_PENDING], arrival + wait)

    cdef void write_back(self, uint64_t hpa, bint nt, uint64_t* st, uint64_t* clk) noexcept nogil:
        """Timing of a line leaving the vCPU (a clwb of a dirty line or an nt-store): it travels to
        its controller (sequential or random latency) and joins the WPQ there; an nt-store to the
        line of the open write-combining buffer merges into it. DRAM has no WPQ to wait for."""
        cdef uint64_t line = hpa >> 6, travel
        cdef bint seq
        if nt:
            if clk[CK_NT_LINE] == line:
                return
            clk[CK_NT_LINE] = line
        seq = _near(line, clk[CK_WB_LINE])
        clk[CK_WB_LINE] = line
        if hpa < self.pmem_base:
            travel = self.tm.dram_nt if nt else self.tm.dram_wb
            clk[CK_PENDING] = _umax(clk[CK_PENDING], clk[CK_NOW] + travel)
            return
        if nt:
            travel = self.tm.nt_seq if seq else self.tm.nt_rand
        else:
            travel = self.tm.wb_seq if seq else self.tm.wb_rand
        self.wpq_accept(self.controller_of_line((hpa - self.pmem_base) >> 6), clk[CK_NOW] + travel, st, clk)

    cdef uint64_t fan_out(self, vm_t* vm, uint64_t* st, uint64_t* clk) noexcept nogil:
        """One physical FHA write per fan-out controller, each draining its WPQ fully, FIFO.
        Time: the writes go out together; each completes when its controller's WPQ is empty, and
        the vCPU waits for the slowest, not the sum."""
        cdef uint32_t c
        cdef uint64_t n, total = 0, issued = clk[CK_NOW] + self.tm.fha_write, done = 0
        for c in range(self.n_controllers):
            if vm.fanout[c]:
                st[ST_FHA_WRITES] += 1
                self.cstats[c * CT_COUNT + CT_FHA_WRITES] += 1
                n = self.drain_controller(c)
                vm.drained[c] += n
                total += n
                done = _umax(done, _umax(issued, self.cbusy[c]))
        st[ST_LINES_DRAINED] += total
        if done:
            st[ST_FHA_PS] += self.tm.fha_write
            st[ST_DRAIN_WAIT_PS] += done - issued
            clk[CK_NOW] = done
        return total

    cdef bint handle_fha_exit(self, vm_t* vm, uint64_t* st, uint64_t* clk, int reason, bint write,
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
                self.fan_out(vm, st, clk)
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
                self.fan_out(vm, st, clk)
            return True
        if mode == FHA_HYPERCALL:
            st[ST_EXITS_VMCALL] += 1
            clk[CK_NOW] += self.tm.exit + self.tm.hypercall
            st[ST_EXIT_PS] += self.tm.exit
            st[ST_HYPERCALL_PS] += self.tm.hypercall
            st[ST_VFHA_WRITES] += 1
            self.fan_out(vm, st, clk)
            return True
        return False

    cdef int run_nogil(self, const trace_rec_t* ops, uint64_t start, uint64_t n,
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
                # a fence waits until the vCPU's write-backs are accepted, then closes its WC buffer
                t = _umax(clk[CK_NOW] + t_op, clk[CK_PENDING])
                st[ST_FENCE_PS] += t - clk[CK_NOW] - t_op + self.tm.fence
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
            rc = self.translate_nogil(vm, r.vcpu, r.gpa, write, st, &hpa, &entry, &ts)
            refs = (st[ST_WALK_REFS] - refs) * self.tm.walk_ref
            st[ST_WALK_PS] += refs
            clk[CK_NOW] += refs
            if rc:
                if (r.gpa >> 12) == vm.fha_vpn and self.handle_fha_exit(vm, st, clk, rc, write, op):
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
                        self.fan_out(vm, st, clk)
                        continue
                elif op == OP_LOAD:
                    st[ST_VFHA_READS] += 1
            ck = vm.tlb_chunk[ts]
            if ck.mem == NULL:
                # first access since the chunk was allocated elsewhere, or a chunk never written
                idx = _index(self, hpa)
                ck = self.chunk_at(idx, write)
                if ck == NULL or (write and self.fill_chunk(ck, idx)):
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
                if hpa >= pmem_base:
                    t = self.tm.load_seq if _near(hpa >> 6, clk[CK_LOAD_LINE]) else self.tm.load_rand
                else:
                    t = self.tm.dram_load_seq if _near(hpa >> 6, clk[CK_LOAD_LINE]) else self.tm.dram_load_rand
                clk[CK_LOAD_LINE] = hpa >> 6
                clk[CK_NOW] += t
                st[ST_LOAD_PS] += t
            elif op <= OP_NT_STORE:
                store_le(ck.mem + off, r.value, size)
                if hpa >= pmem_base:
                    if op == OP_STORE:
                        ck.lines[off >> 6] = (ck.lines[off >> 6] & ~(<uint16_t>LINE_STATE_MASK)) | LINE_DIRTY
                    else:
                        self.enqueue(ck, (hpa - pmem_base) >> 6)
                if op == OP_NT_STORE:
                    self.write_back(hpa, True, st, clk)
            else:
                clk[CK_NOW] += self.tm.flush_issue
                st[ST_FLUSH_PS] += self.tm.flush_issue
                if hpa < pmem_base:
                    self.write_back(hpa, False, st, clk)     # DRAM lines are not tracked: always written back
                elif ck.lines != NULL and (ck.lines[off >> 6] & LINE_STATE_MASK) == LINE_DIRTY:
                    self.enqueue(ck, (hpa - pmem_base) >> 6)
                    st[ST_LINES_FLUSHED] += 1
                    self.write_back(hpa, False, st, clk)
        stopped[0] = n
        return RUN_DONE

    def run(self, ops, Py_ssize_t start=0):
        """Replay ``ops[start:]`` (a TRACE_DTYPE array). Returns ``(index, status)``: status 0 when
        the end was reached (index = len(ops)), 1 on an exit the core does not handle (see
        ``last_exit``), 2 on a refused record (see ``bad_record``); index is that record. A write
        that needs memory beyond the budget raises ResourceError (the record is counted, not done)."""
        cdef const uint8_t[::1] raw = _trace_bytes(ops)
        cdef uint64_t n = raw.shape[0] // sizeof(trace_rec_t)
        cdef uint64_t stopped = n
        cdef int status = RUN_DONE
        cdef const trace_rec_t* recs
        with self.lock:
            if self.vms == NULL:
                self.bad_record = BAD_VM
                return 0, RUN_BAD_RECORD
            if start < 0 or <uint64_t>start > n:
                raise TraceError(f"start index {start} is outside the trace of {n} records")
            self.bad_record = BAD_NONE
            if <uint64_t>start == n:
                return n, RUN_DONE
            recs = <const trace_rec_t*>&raw[0]
            with nogil:
                status = self.run_nogil(recs, start, n, &stopped)
            if status == RUN_NO_MEMORY:
                try:
                    _raise_no_memory(self)
                except ResourceError as e:
                    raise ResourceError.at_record(stopped, str(e), "gpa") from None
            return stopped, status

    @property
    def last_exit(self):
        """The last exit returned to Python: (reason, qualification, gpa, op_index, vm, vcpu, op)."""
        return (self.exit.reason, self.exit.qualification, self.exit.gpa, self.exit.op_index,
                self.exit.vm, self.exit.vcpu, self.exit.op)

    def drain(self, controllers):
        """Drain the WPQs of ``controllers`` fully, FIFO (an FHA write with no VM behind it);
        returns the number of lines written to media."""
        cdef uint64_t total = 0
        with self.lock:
            _live(self)
            chosen = [integer(c, "controller") for c in controllers]
            for c in chosen:
                if not 0 <= c < self.n_controllers:
                    raise ConfigError(f"controller {c} does not exist")
            for c in chosen:
                self.cstats[c * CT_COUNT + CT_FHA_WRITES] += 1
                total += self.drain_controller(c)
            return total

    # ---- host memory, for the Python layer -------------------------------------------------

    def read_memory(self, hpa, n):
        """``n`` bytes of host memory (what CPUs see) at ``hpa``; untouched memory reads as zeros."""
        with self.lock:
            _live(self)
            hpa, n = _check_hpa(self, hpa, n)
            return _copy_out(self, hpa, n, False)

    def read_media(self, hpa, n):
        """``n`` bytes of NVDIMM media at ``hpa`` (NVDIMM space only)."""
        with self.lock:
            off = _pmem_offset(self, hpa, n)
            return _copy_out(self, self.pmem_base + off, n, True)

    def write_memory(self, hpa, data):
        """Host write (no guest, no line state): how the hypervisor fills a page."""
        cdef uint64_t pos, idx, piece, c = 1ULL << self.chunk_shift, h
        cdef chunk_t* ck
        cdef const uint8_t[::1] src
        data = memoryview(data).tobytes()          # a bytes-like object, not bytes(int)
        with self.lock:
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

    def prefault(self, hpa, n):
        """Allocate the chunks behind ``[hpa, hpa+n)`` (memory, and for NVDIMM space media and
        line state) and have the kernel back their pages now, without changing them."""
        cdef uint64_t pos, idx, c = 1ULL << self.chunk_shift, h, end
        cdef chunk_t* ck
        with self.lock:
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

    def discard(self, hpa, n):
        """Scrub ``[hpa, hpa+n)`` (whole 4 KiB pages): its queued WPQ copies are removed, its
        memory, media and line states become zero, and the chunks it covers wholly are freed."""
        cdef uint64_t c = 1ULL << self.chunk_shift, idx, lo, hi, a, b, space_end
        cdef chunk_t* ck
        with self.lock:
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
                ck = self.chunk_at(idx, False)
                a, b = max(idx, lo), min(idx + c, hi)
                if a == idx and b >= min(idx + c, space_end):
                    _drop_chunk(self, ck, idx)
                    continue
                memset(ck.mem + (a - idx), 0, b - a)
                if ck.med != NULL:
                    memset(ck.med + (a - idx), 0, b - a)
                    memset(ck.lines + ((a - idx) >> 6), 0, ((b - a) >> 6) * 2)

    def line_states(self):
        """{line HPA: state} for every NVDIMM line that is not CLEAN."""
        cdef uint64_t idx, c = 1ULL << self.chunk_shift
        cdef chunk_t* ck
        if self.vms == NULL:
            return {}
        out = {}
        with self.lock:
            for idx in _chunk_indices(self, self.pmem_index, self.dir_len << LEAF_SHIFT):
                ck = self.chunk_at(idx, False)
                states = _lines(ck, c >> 6) & LINE_STATE_MASK
                base = self.pmem_base + idx - self.pmem_index
                for k in np.flatnonzero(states).tolist():
                    out[base + 64 * k] = int(states[k])
        return out

    def wpq_entries(self, c):
        """The WPQ of controller ``c``, oldest first: [(line HPA, 64 bytes)]."""
        with self.lock:
            _live(self)
            c = integer(c, "controller")
            if not 0 <= c < self.n_controllers:
                raise ConfigError(f"controller {c} does not exist")
            out = []
            for k in range(self.wlen[c]):
                slot = c * self.wpq_depth + (self.whead[c] + k) % self.wpq_depth
                out.append((int(self.pmem_base + 64 * self.wline[slot]),
                            self._wpq_data[slot * 64:(slot + 1) * 64].tobytes()))
            return out

    def controller_of(self, hpa):
        """Controller index of the NVDIMM line at ``hpa`` (the interleave rule)."""
        with self.lock:
            off = _pmem_offset(self, hpa, 1)
            return int(self.controller_of_line(off >> 6))

    def controller_stats(self):
        with self.lock:
            _live(self)
            return self._ctrl_stats.copy()

    def memory_pages(self):
        """{page HPA: 4096 bytes} for every non-zero page of host memory."""
        with self.lock:
            _live(self)
            return _nonzero_pages(self, False)

    def media_pages(self):
        """{page HPA: 4096 bytes} for every non-zero page of NVDIMM media."""
        with self.lock:
            _live(self)
            return _nonzero_pages(self, True)

    def touched_ranges(self):
        """``(hpa, bytes)`` of every allocated chunk of host memory, in address order."""
        cdef uint64_t c = 1ULL << self.chunk_shift
        with self.lock:
            _live(self)
            out = []
            for idx in _chunk_indices(self, 0, self.dir_len << LEAF_SHIFT):
                if idx < self.pmem_index:
                    out.append((idx, min(c, self.dram_bytes - idx)))
                else:
                    out.append((idx - self.pmem_index + self.pmem_base,
                                min(c, self.pmem_index + self.pmem_bytes - idx)))
            return out

    def durable_read(self, hpa, n):
        """``n`` bytes at ``hpa`` as they would survive a power failure now (SPEC 7.3), without
        failing (``nvemu._state.durable_read``): lets a checker probe crash points mid-run."""
        with self.lock:
            _pmem_offset(self, hpa, n)
            return _state.durable_read(self, hpa, n)

    # ---- canonical state (nvemu/_state.py does the work) -----------------------------------

    def get_state(self):
        """Everything that evolves, as a dict of numpy arrays in the engines' shared canonical
        form (see ``nvemu._state``)."""
        with self.lock:
            _live(self)
            return _state.capture(self)

    def set_state(self, state):
        """Replace everything with ``state`` (from ``get_state`` of either engine, same layout).
        The whole state is checked first: a bad one raises ConfigError and changes nothing."""
        with self.lock:
            _live(self)
            s, vms = _state.check(self, state)
            _load_state(self, s, vms)

    def power_fail(self):
        """Lose power, then reboot. Returns the durable image (a sparse :class:`DurableImage`):
        media, then under adr/eadr the queued copies in FIFO order, then under eadr the dirty lines.
        Afterwards media holds that image, memory shows it, DRAM is zero, caches, WPQs and TLBs
        are empty. Page tables (hypervisor state) are kept."""
        cdef uint32_t c
        cdef uint64_t k, slot, line, idx, csz = 1ULL << self.chunk_shift, lo
        cdef chunk_t* ck
        with self.lock:
            _live(self)
            if self.domain >= DOMAIN_ADR:
                for c in range(self.n_controllers):
                    for k in range(self.wlen[c]):
                        slot = c * self.wpq_depth + (self.whead[c] + k) % self.wpq_depth
                        line = self.wline[slot]
                        ck = self.chunk_at(self.pmem_index + (line << 6), False)
                        memcpy(ck.med + ((line << 6) & self.chunk_mask), self.wdata + slot * 64, 64)
            chunks = {}
            for idx in _chunk_indices(self, 0, self.dir_len << LEAF_SHIFT):
                ck = self.chunk_at(idx, False)
                if idx < self.pmem_index:
                    _drop_chunk(self, ck, idx)
                    continue
                if self.domain == DOMAIN_EADR:
                    for lo in np.flatnonzero((_lines(ck, csz >> 6) & LINE_STATE_MASK) == LINE_DIRTY).tolist():
                        memcpy(ck.med + (lo << 6), ck.mem + (lo << 6), 64)
                memcpy(ck.mem, ck.med, csz)
                memset(ck.lines, 0, 2 * (csz >> 6))
                chunks[idx - self.pmem_index] = _view(ck.med, csz).tobytes()
            self._wpq_head[:] = 0
            self._wpq_len[:] = 0
            for vm in self._vms:
                _flush_tlbs(&self.vms[vm])
            return DurableImage(self.pmem_base, self.pmem_bytes, csz, chunks)
