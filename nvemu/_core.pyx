"""The emulation core: EPT walks, the software TLB, write-protection faults, WPQ enqueue/drain
fan-out and the trace replay loop, over numpy arrays and without the GIL.

Directives (boundscheck, wraparound, initializedcheck off; cdivision on) come from setup.py.
``nvemu/_reference.py`` is the same machine written plainly; tests demand identical results.
Every ``def`` here validates its arguments; the ``cdef ... nogil`` kernels trust them.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from libc.stdlib cimport calloc, free

import operator

import numpy as np

from nvemu._constants import TRACE_DTYPE
from nvemu.errors import ConfigError, GuestFault, ResourceError, TraceError

CAPI_VERSION = NVEMU_CAPI_VERSION
STAT_COUNT = ST_COUNT
CTRL_STAT_COUNT = CT_COUNT

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

cdef uint64_t ADDR_MASK = 0x000FFFFFFFFFF000ULL
cdef uint64_t NO_VPN = 0xFFFFFFFFFFFFFFFFULL
cdef uint64_t GPA_LIMIT = 1ULL << 48
HPA_LIMIT = 1 << 52                  # an EPT entry holds address bits 12-51


def _int(x, name, lo=0, hi=None):
    """``x`` as a Python int (integers only: no float truncation), at least ``lo`` and below
    ``hi`` when given; TypeError or ConfigError naming ``name`` otherwise."""
    try:
        v = operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(x).__name__}") from None
    if v < lo or (hi is not None and v >= hi):
        bound = f"{lo}..{hi - 1}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{name}={v} is out of range ({bound})")
    return v


def _live(engine):
    if engine.memory is None:
        raise ConfigError("this Engine was never initialised (construct it with an EngineLayout)")


def _nonzero_pages(arr, base_hpa):
    pages = arr.reshape(-1, 4096)
    nz = np.flatnonzero(pages.any(axis=1))
    return {int(base_hpa + 4096 * p): pages[p].tobytes() for p in nz}


def _check_vm_slot(n_controllers, pool_tables, vm, root, nvcpus, tlb_entries, fha_mode, arrays):
    """Everything the nogil loop will index by, for one VM slot: ConfigError otherwise."""
    if root >= pool_tables or not 1 <= nvcpus <= 256 or tlb_entries < 1 or tlb_entries & (tlb_entries - 1) \
            or tlb_entries > (1 << 20):
        raise ConfigError(f"vm {vm}: root table {root}, {nvcpus} vCPUs, {tlb_entries} TLB entries are not valid")
    if not FHA_NONE <= fha_mode <= FHA_NATIVE:
        raise ConfigError(f"vm {vm}: fha mode {fha_mode} is not an FhaMode")
    n = nvcpus * tlb_entries
    shapes = [(n,), (n,), (n,), (n,), (nvcpus, ST_COUNT), (n_controllers,), (n_controllers,)]
    dtypes = [np.uint64] * 5 + [np.uint8, np.uint64]
    if len(arrays) != len(shapes):
        raise ConfigError(f"vm {vm}: {len(arrays)} state arrays where {len(shapes)} are needed")
    for a, shape, dtype in zip(arrays, shapes, dtypes):
        if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dtype or not a.flags.c_contiguous:
            raise ConfigError(f"vm {vm}: state array of shape {getattr(a, 'shape', None)} where {shape} "
                              f"{np.dtype(dtype).name} is needed")


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


cdef inline void store_le(uint8_t* p, uint64_t v, uint32_t size) noexcept nogil:
    if size == 8:
        memcpy(p, &v, 8)
    elif size == 4:
        memcpy(p, &v, 4)
    elif size == 2:
        memcpy(p, &v, 2)
    else:
        p[0] = <uint8_t>v


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


cdef class Engine:
    """One host machine: memory, media, line states, WPQs, the EPT table pool and its VMs.

    Built from an :class:`nvemu._layout.EngineLayout`. The Python layer (``nvemu.platform``,
    ``nvemu.hypervisor``) owns policy; this class owns the per-access work.
    """

    def __cinit__(self, *args, **kwargs):
        self.vms = NULL

    def __dealloc__(self):
        free(self.vms)

    def __init__(self, layout):
        if self.memory is not None:
            raise ConfigError("this Engine is already initialised; build a new one")
        try:
            nctl = _int(layout.n_controllers, "n_controllers", 1, 257)
            depth = _int(layout.wpq_depth, "wpq_depth", 1, 4097)
            max_vms = _int(layout.max_vms, "max_vms", 1, 65537)
            pool_tables = _int(layout.pool_tables, "pool_tables", 1, (1 << 24) + 1)
            domain = _int(layout.domain, "domain", DOMAIN_NONE, DOMAIN_EADR + 1)
            dram = _int(layout.dram_bytes, "dram_bytes")
            pmem_base = _int(layout.pmem_base, "pmem_base")
            costs = [_int(c, "cost") for c in layout.costs]
            sets = [(_int(s.hpa_base, "set hpa_base"), _int(s.length, "set length", 1),
                     _int(s.granularity, "set granularity", 64),
                     [_int(c, "set controller", 0, nctl) for c in s.controllers]) for s in layout.sets]
        except (AttributeError, TypeError) as e:
            raise ConfigError(f"not an engine layout: {e}") from None
        pmem_bytes = sum(length for _, length, _, _ in sets)
        if len(costs) != 8 or any(c >= 1 << 63 for c in costs):
            raise ConfigError("costs must be 8 non-negative cycle counts below 2**63")
        if dram % 4096 or pmem_base % 4096 or dram > pmem_base:
            raise ConfigError("DRAM must be 4 KiB aligned and lie below pmem_base")
        if pmem_base + pmem_bytes > HPA_LIMIT:
            raise ConfigError(f"NVDIMM space ends at {pmem_base + pmem_bytes:#x}, beyond the 52 address bits "
                              f"an EPT entry holds")
        granularity = min((g for _, _, g, _ in sets), default=4096)
        offset = 0
        for base, length, g, ctls in sets:
            if g & (g - 1) or not ctls or base != pmem_base + offset or length % g:
                raise ConfigError("interleave sets must lie back to back from pmem_base, each a whole "
                                  "number of power-of-two granules of at least 64 bytes over some controllers")
            offset += length
        self.dram_bytes = dram
        self.pmem_base = pmem_base
        self.pmem_bytes = pmem_bytes
        self.pmem_delta = pmem_base - dram
        self.n_controllers = nctl
        self.wpq_depth = depth
        self.domain = domain
        self.pool_tables = pool_tables
        self.max_vms = max_vms
        (self.cost.op, self.cost.walk_level, self.cost.exit, self.cost.write_protect, self.cost.mmio,
         self.cost.hypercall, self.cost.fha_write, self.cost.drain_line) = costs
        self.granule_shift = granularity.bit_length() - 1
        granule_ctrl = np.zeros(pmem_bytes >> self.granule_shift, np.uint8)
        offset = 0
        for base, length, g, ctls in sets:
            granule = np.arange(length >> self.granule_shift, dtype=np.uint64) << self.granule_shift
            member = (granule // g) % len(ctls)
            start = offset >> self.granule_shift
            granule_ctrl[start:start + len(granule)] = np.asarray(ctls, np.uint8)[member]
            offset += length

        nctl, depth = self.n_controllers, self.wpq_depth
        self.memory = np.zeros(self.dram_bytes + pmem_bytes, np.uint8)
        self.media = np.zeros(pmem_bytes, np.uint8)
        self.line_state = np.zeros(pmem_bytes // 64, np.uint8)
        self.queued = np.zeros(pmem_bytes // 64, np.uint16)
        self.granule_ctrl = granule_ctrl
        self.wpq_line = np.zeros(nctl * depth, np.uint64)
        self.wpq_data = np.zeros(nctl * depth * 64, np.uint8)
        self.wpq_head = np.zeros(nctl, np.uint32)
        self.wpq_len = np.zeros(nctl, np.uint32)
        self.ctrl_stats = np.zeros((nctl, CT_COUNT), np.uint64)
        self.pool = np.zeros(<uint64_t>self.pool_tables * ENTRIES, np.uint64)
        self._free_tables = []
        self.next_table = 0
        self.vm_arrays = {}
        self._bind()
        self.vms = <vm_t*>calloc(self.max_vms, sizeof(vm_t))
        if self.vms == NULL:
            raise MemoryError("cannot allocate the VM table")

    cdef _bind(self):
        self.mem = <uint8_t*>_ptr(self.memory)
        self.med = <uint8_t*>_ptr(self.media)
        self.lstate = <uint8_t*>_ptr(self.line_state)
        self.nqueued = <uint16_t*>_ptr(self.queued)
        self.gctrl = <uint8_t*>_ptr(self.granule_ctrl)
        self.wline = <uint64_t*>_ptr(self.wpq_line)
        self.wdata = <uint8_t*>_ptr(self.wpq_data)
        self.whead = <uint32_t*>_ptr(self.wpq_head)
        self.wlen = <uint32_t*>_ptr(self.wpq_len)
        self.cstats = <uint64_t*>_ptr(self.ctrl_stats)
        self.ept = <uint64_t*>_ptr(self.pool)

    # ---- page-table pool -------------------------------------------------------------------

    @property
    def tables_in_use(self):
        """Page-table pages currently allocated, over all VMs."""
        return self.next_table - len(self._free_tables)

    cdef uint32_t _alloc_table(self) except? 0xFFFFFFFF:
        cdef uint32_t t
        if self._free_tables:
            t = self._free_tables.pop()
        elif self.next_table < self.pool_tables:
            t = self.next_table
            self.next_table += 1
        else:
            raise ResourceError(f"the page-table pool is exhausted ({self.pool_tables} tables of 4 KiB)")
        memset(&self.ept[<uint64_t>t * ENTRIES], 0, ENTRIES * 8)
        return t

    cdef uint64_t _free_tree(self, uint64_t t, int level):
        """Free table ``t`` (at ``level``) and every table below it; returns how many."""
        cdef uint64_t n = 1, e
        cdef int i
        if level > 1:
            for i in range(ENTRIES):
                e = self.ept[t * ENTRIES + i]
                if (e & E_RWX) and not (e & E_LARGE):
                    n += self._free_tree((e & ADDR_MASK) >> 12, level - 1)
        self._free_tables.append(t)
        return n

    cdef vm_t* _vm(self, vm) except NULL:
        try:
            v = operator.index(vm)
        except TypeError:
            raise TypeError(f"vm must be an integer, not {type(vm).__name__}") from None
        if not 0 <= v < self.max_vms or not self.vms[v].active:
            raise ConfigError(f"vm {v!r} does not exist in the engine")
        return &self.vms[v]

    # ---- VMs -------------------------------------------------------------------------------

    def add_vm(self, vm, nvcpus, tlb_entries=256):
        """Register VM ``vm`` with an empty page table; returns its root table index."""
        _live(self)
        vm, nvcpus, tlb_entries = _int(vm, "vm"), _int(nvcpus, "nvcpus"), _int(tlb_entries, "tlb_entries")
        if not 0 <= vm < self.max_vms or self.vms[vm].active:
            raise ConfigError(f"vm id {vm} is out of range or in use")
        if not 1 <= nvcpus <= 256:
            raise ConfigError(f"nvcpus={nvcpus}: must be 1..256")
        if tlb_entries < 1 or tlb_entries & (tlb_entries - 1) or tlb_entries > (1 << 20):
            raise ConfigError(f"tlb_entries={tlb_entries}: must be a power of two up to 2**20")
        root = self._alloc_table()
        n = nvcpus * tlb_entries
        arrays = (np.full(n, NO_VPN, np.uint64), np.zeros(n, np.uint64), np.zeros(n, np.uint64),
                  np.zeros(n, np.uint64), np.zeros((nvcpus, ST_COUNT), np.uint64),
                  np.zeros(self.n_controllers, np.uint8), np.zeros(self.n_controllers, np.uint64))
        self._install_vm(vm, root, nvcpus, tlb_entries, True, NO_VPN, FHA_NONE, arrays)
        return root

    cdef _install_vm(self, int vm, uint64_t root, uint64_t nvcpus, uint64_t tlb_entries, bint running,
                     uint64_t fha_vpn, int fha_mode, tuple arrays):
        """Fill VM slot ``vm`` from its numpy arrays (TLB vpn/entry/hpa/slot, stats, fan-out,
        drained), after checking every shape the nogil loop will index by."""
        _check_vm_slot(self.n_controllers, self.pool_tables, vm, root, nvcpus, tlb_entries, fha_mode, arrays)
        self.vm_arrays[vm] = arrays
        cdef vm_t* v = &self.vms[vm]
        v.root, v.nvcpus, v.tlb_entries, v.running = root, nvcpus, tlb_entries, running
        v.fha_vpn, v.fha_mode = fha_vpn, fha_mode
        v.tlb_vpn = <uint64_t*>_ptr(arrays[0])
        v.tlb_entry = <uint64_t*>_ptr(arrays[1])
        v.tlb_hpa = <uint64_t*>_ptr(arrays[2])
        v.tlb_slot = <uint64_t*>_ptr(arrays[3])
        v.stats = <uint64_t*>_ptr(arrays[4])
        v.fanout = <uint8_t*>_ptr(arrays[5])
        v.drained = <uint64_t*>_ptr(arrays[6])
        v.active = True

    def remove_vm(self, vm):
        """Forget VM ``vm`` and free its page-table pages; returns how many were freed."""
        cdef vm_t* v = self._vm(vm)
        freed = self._free_tree(v.root, 4)
        memset(v, 0, sizeof(vm_t))
        del self.vm_arrays[operator.index(vm)]
        return freed

    def set_fha(self, vm, fha_gpa, mode, fanout):
        """Register the vFHA page of ``vm`` (or None), how accesses to it are handled (FhaMode)
        and the controllers a vFHA flush writes (``fanout``, a sequence of controller indices)."""
        cdef vm_t* v = self._vm(vm)
        mode = _int(mode, "fha mode", FHA_NONE, FHA_NATIVE + 1)
        if fha_gpa is not None:
            fha_gpa = _int(fha_gpa, "vFHA GPA")
            if fha_gpa >= GPA_LIMIT:
                raise ConfigError(f"vFHA GPA {fha_gpa:#x} is outside the 48-bit guest-physical space")
        ctl = np.zeros(self.n_controllers, np.uint8)
        try:
            controllers = [_int(c, "fan-out controller") for c in fanout]
        except TypeError as e:
            raise TypeError(f"fanout must be a sequence of controller indices: {e}") from None
        for c in controllers:
            if not 0 <= c < self.n_controllers:
                raise ConfigError(f"fan-out names controller {c}, which does not exist")
            ctl[c] = 1
        self.vm_arrays[operator.index(vm)][5][:] = ctl
        v.fha_vpn = NO_VPN if fha_gpa is None else fha_gpa >> 12
        v.fha_mode = mode if fha_gpa is not None else FHA_NONE

    def set_running(self, vm, bint running):
        """Whether records of ``vm`` may execute (a paused VM's records are refused)."""
        self._vm(vm).running = running

    def stats(self, vm):
        """Per-vCPU counters of ``vm``: a copy, ``uint64[nvcpus, STAT_COUNT]``."""
        self._vm(vm)
        return self.vm_arrays[operator.index(vm)][4].copy()

    def drained_by_controller(self, vm):
        """Lines the flushes of ``vm`` drained, per controller: a copy, ``uint64[n_controllers]``."""
        self._vm(vm)
        return self.vm_arrays[operator.index(vm)][6].copy()

    def reset_stats(self, vm):
        self._vm(vm)
        self.vm_arrays[operator.index(vm)][4][:] = 0
        self.vm_arrays[operator.index(vm)][6][:] = 0

    # ---- page tables -----------------------------------------------------------------------

    cdef void _flush_tlbs(self, vm_t* v) noexcept:
        """INVEPT single-context: drop every cached translation of every vCPU of the VM."""
        cdef uint64_t i
        for i in range(<uint64_t>v.nvcpus * v.tlb_entries):
            v.tlb_vpn[i] = NO_VPN
        for i in range(v.nvcpus):
            v.stats[i * ST_COUNT + ST_TLB_FLUSHES] += 1

    cdef uint64_t _split(self, uint64_t slot, int level) except? 0:
        """Replace the large leaf at ``slot`` (a ``level`` 2 or 3 entry) by a table of 512
        smaller leaves with the same permissions and attributes; returns the new table."""
        cdef uint64_t e = self.ept[slot], t = self._alloc_table(), i
        cdef uint64_t child = 1ULL << (12 + 9 * (level - 2))
        cdef uint64_t base = e & ADDR_MASK & ~((child << 9) - 1)
        cdef uint64_t attrs = (e & 0xFFF) & ~(<uint64_t>E_LARGE) if level == 2 else (e & 0xFFF)
        for i in range(ENTRIES):
            self.ept[t * ENTRIES + i] = (base + i * child) | attrs
        self.ept[slot] = (t << 12) | E_RWX
        return t

    cdef object _leaf(self, vm_t* v, uint64_t gpa, int target, bint create, uint64_t span):
        """Slot of the entry that maps ``gpa`` at level ``target`` (1: 4 KiB, 2: 2 MiB), creating
        tables on the way when ``create``; a large leaf above the target is split unless it lies
        wholly inside ``[gpa, gpa + span)``, in which case its own (level, slot) is returned.
        Returns (level, slot) or None when nothing is mapped there."""
        cdef uint64_t t = v.root, s, e
        cdef int level, shift
        for level in range(4, target, -1):
            shift = 12 + 9 * (level - 1)
            s = t * ENTRIES + ((gpa >> shift) & 511)
            e = self.ept[s]
            if not (e & E_RWX):
                if not create:
                    return None
                t = self._alloc_table()
                self.ept[s] = (t << 12) | E_RWX
            elif e & E_LARGE:
                if not create and gpa % (1ULL << shift) == 0 and span >= (1ULL << shift):
                    return (level, s)
                t = self._split(s, level)
            else:
                t = (e & ADDR_MASK) >> 12
        return (target, t * ENTRIES + ((gpa >> (12 + 9 * (target - 1))) & 511))

    cdef _check_hpa(self, object hpa, object length):
        hpa, length = _int(hpa, "hpa"), _int(length, "length")
        if hpa + length <= self.dram_bytes:
            return
        if hpa >= self.pmem_base and hpa + length <= self.pmem_base + self.pmem_bytes:
            return
        raise ConfigError(f"HPA range [{hpa:#x}, {hpa + length:#x}) is not host DRAM or NVDIMM space")

    def map(self, vm, gpa, hpa, length, perms, page_size=4096):
        """Map ``[gpa, gpa+length)`` to ``[hpa, ...)`` with R/W/X ``perms`` (bits 0-2) in pages of
        ``page_size`` (4 KiB or 2 MiB). Existing leaves of the same size are replaced."""
        cdef vm_t* v = self._vm(vm)
        cdef uint64_t off, entry
        cdef int target
        gpa, hpa, length = _int(gpa, "gpa"), _int(hpa, "hpa"), _int(length, "length")
        perms, page_size = _int(perms, "perms"), _int(page_size, "page_size")
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
        self._check_hpa(hpa, length)
        try:
            for off in range(0, length, page_size):
                level, slot = self._leaf(v, gpa + off, target, True, page_size)
                if level == 2 and target == 2 and (self.ept[slot] & E_RWX) and not (self.ept[slot] & E_LARGE):
                    raise ConfigError(f"GPA {gpa + off:#x} is already mapped with 4 KiB pages")
                entry = (hpa + off) | E_MEMTYPE_WB | <uint64_t>perms
                if target == 2:
                    entry |= E_LARGE
                self.ept[slot] = entry
        finally:
            self._flush_tlbs(v)

    def _each_leaf(self, vm, gpa, length):
        cdef vm_t* v = self._vm(vm)
        gpa, length = _int(gpa, "gpa"), _int(length, "length")
        if gpa % 4096 or length % 4096 or length == 0 or gpa + length > GPA_LIMIT:
            raise ConfigError(f"range of {length:#x} bytes at GPA {gpa:#x} is not whole 4 KiB pages "
                              f"inside the 48-bit guest-physical space")
        cdef uint64_t pos = gpa, end = gpa + length
        leaves = []
        while pos < end:
            found = self._leaf(v, pos, 1, False, end - pos)
            if found is None or not (self.ept[found[1]] & E_RWX):
                raise ConfigError(f"GPA {pos:#x} is not mapped")
            leaves.append(found[1])
            pos += 1ULL << (12 + 9 * (found[0] - 1))
        return leaves

    def protect(self, vm, gpa, length, perms):
        """Set the R/W/X bits of every leaf mapping ``[gpa, gpa+length)`` (splitting large pages
        that the range covers only in part), then invalidate every vCPU's TLB."""
        cdef vm_t* v = self._vm(vm)
        perms = _int(perms, "perms")
        if not 0 <= perms <= 7:
            raise ConfigError(f"perms {perms}: must be an R/W/X mask 0..7")
        try:
            for slot in self._each_leaf(vm, gpa, length):
                self.ept[slot] = (self.ept[slot] & ~(<uint64_t>E_RWX)) | <uint64_t>perms
        finally:
            self._flush_tlbs(v)

    def unmap(self, vm, gpa, length):
        """Remove the mappings of ``[gpa, gpa+length)``; tables stay until the VM is removed."""
        cdef vm_t* v = self._vm(vm)
        try:
            for slot in self._each_leaf(vm, gpa, length):
                self.ept[slot] = 0
        finally:
            self._flush_tlbs(v)

    def walk(self, vm, gpa):
        """Every level a hardware walk of ``gpa`` visits: a list of (level, table, index, entry),
        level 4 (PML4) first, ending at the leaf or the first non-present or misconfigured
        entry. Inspection only: sets no accessed bits and counts nothing."""
        cdef vm_t* v = self._vm(vm)
        cdef uint64_t t = v.root, e, idx
        cdef int level
        gpa = _int(gpa, "gpa")
        if gpa >= GPA_LIMIT:
            raise ConfigError(f"GPA {gpa:#x} is outside the 48-bit guest-physical space")
        path = []
        for level in range(4, 0, -1):
            idx = (gpa >> (12 + 9 * (level - 1))) & 511
            e = self.ept[t * ENTRIES + idx]
            path.append((level, t, idx, e))
            if not (e & E_RWX) or (e & 3) == E_W or level == 1 or (e & E_LARGE):
                break
            t = (e & ADDR_MASK) >> 12
        return path

    def tables(self):
        """Non-zero entries of every allocated table: {table: {index: entry}} (for comparisons)."""
        _live(self)
        free = set(self._free_tables)
        out = {}
        for t in range(self.next_table):
            if t in free:
                continue
            row = self.pool[t * ENTRIES:(t + 1) * ENTRIES]
            nz = np.flatnonzero(row)
            out[t] = {int(i): int(row[i]) for i in nz}
        return out

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
            st[ST_CYCLES_WALK] += self.cost.walk_level
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
                             uint64_t* hpa, uint64_t* entry) noexcept nogil:
        """TLB, then walk; permission check; D bit on writes. Returns 0 with the HPA, or the
        exit reason with the entry whose permissions the qualification reports."""
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
        entry[0] = e
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

    def translate(self, vm, vcpu, gpa, bint write=False):
        """HPA of ``gpa`` as ``vcpu`` of ``vm`` sees it (TLB, walk, A/D bits, counters);
        raises GuestFault when the access would exit."""
        cdef vm_t* v = self._vm(vm)
        cdef uint64_t hpa = 0, entry = 0
        cdef int rc
        vcpu, gpa = _int(vcpu, "vcpu"), _int(gpa, "gpa")
        if not 0 <= vcpu < v.nvcpus:
            raise ConfigError(f"vcpu {vcpu} does not exist in vm {vm}")
        if gpa >= GPA_LIMIT:
            raise ConfigError(f"GPA {gpa:#x} is outside the 48-bit guest-physical space")
        rc = self.translate_nogil(v, vcpu, gpa, write, &v.stats[vcpu * ST_COUNT], &hpa, &entry)
        if rc:
            raise GuestFault(rc, _qualification(rc, write, entry), gpa, 0, vm, vcpu, 1 if write else 0)
        return hpa

    cdef void drain_one(self, uint32_t c) noexcept nogil:
        cdef uint64_t slot = <uint64_t>c * self.wpq_depth + self.whead[c]
        cdef uint64_t line = self.wline[slot]
        memcpy(self.med + line * 64, self.wdata + slot * 64, 64)
        self.nqueued[line] -= 1
        if self.nqueued[line] == 0 and self.lstate[line] == LINE_QUEUED:
            self.lstate[line] = LINE_CLEAN
        self.whead[c] = (self.whead[c] + 1) % self.wpq_depth
        self.wlen[c] -= 1
        self.cstats[c * CT_COUNT + CT_DRAINED] += 1

    cdef uint64_t drain_controller(self, uint32_t c) noexcept nogil:
        cdef uint64_t n = 0
        while self.wlen[c]:
            self.drain_one(c)
            n += 1
        return n

    cdef void enqueue(self, uint64_t line) noexcept nogil:
        """Write back pmem line ``line``: its 64 bytes as of now join its controller's WPQ."""
        cdef uint32_t c = self.gctrl[(line << 6) >> self.granule_shift]
        cdef uint64_t slot
        if self.wlen[c] == self.wpq_depth:
            self.drain_one(c)
            self.cstats[c * CT_COUNT + CT_DRAINED_FULL] += 1
        slot = <uint64_t>c * self.wpq_depth + (self.whead[c] + self.wlen[c]) % self.wpq_depth
        self.wline[slot] = line
        memcpy(self.wdata + slot * 64, self.mem + self.dram_bytes + line * 64, 64)
        self.wlen[c] += 1
        self.nqueued[line] += 1
        self.lstate[line] = LINE_QUEUED
        self.cstats[c * CT_COUNT + CT_ENQUEUED] += 1

    cdef uint64_t fan_out(self, vm_t* vm, uint64_t* st) noexcept nogil:
        """One physical FHA write per fan-out controller, each draining its WPQ fully, FIFO."""
        cdef uint32_t c
        cdef uint64_t n, total = 0
        for c in range(self.n_controllers):
            if vm.fanout[c]:
                st[ST_FHA_WRITES] += 1
                st[ST_CYCLES_FHA] += self.cost.fha_write
                self.cstats[c * CT_COUNT + CT_FHA_WRITES] += 1
                n = self.drain_controller(c)
                vm.drained[c] += n
                total += n
        st[ST_LINES_DRAINED] += total
        st[ST_CYCLES_DRAIN] += total * self.cost.drain_line
        return total

    cdef bint handle_fha_exit(self, vm_t* vm, uint64_t* st, int reason, bint write, uint8_t op) noexcept nogil:
        """Finish an exit on the vFHA page inside the core when the VM's mode says how."""
        cdef int mode = vm.fha_mode
        if reason == EXIT_EPT_MISCONFIG and mode == FHA_MMIO:
            st[ST_EXITS_EPT_MISCONFIG] += 1
            st[ST_CYCLES_EXIT] += self.cost.exit
            st[ST_CYCLES_MMIO] += self.cost.mmio
            if write:
                st[ST_VFHA_WRITES] += 1
                self.fan_out(vm, st)
            elif op == OP_LOAD:
                st[ST_VFHA_READS] += 1
                self.last_value = 0
            return True
        if reason != EXIT_EPT_VIOLATION or not write:
            return False
        if mode == FHA_WRITE_PROTECT or mode == FHA_DROP:
            st[ST_EXITS_EPT_VIOLATION] += 1
            st[ST_CYCLES_EXIT] += self.cost.exit
            st[ST_CYCLES_WRITE_PROTECT] += self.cost.write_protect
            st[ST_VFHA_WRITES] += 1
            if mode == FHA_WRITE_PROTECT:
                self.fan_out(vm, st)
            return True
        if mode == FHA_HYPERCALL:
            st[ST_EXITS_VMCALL] += 1
            st[ST_CYCLES_EXIT] += self.cost.exit
            st[ST_CYCLES_HYPERCALL] += self.cost.hypercall
            st[ST_VFHA_WRITES] += 1
            self.fan_out(vm, st)
            return True
        return False

    cdef int run_nogil(self, const trace_rec_t* ops, uint64_t start, uint64_t n,
                       uint64_t* stopped) noexcept nogil:
        """Replay ``ops[start:n]``. Returns RUN_DONE, or RUN_EXIT / RUN_BAD_RECORD with
        ``stopped[0]`` the index of the record (the exit in ``self.exit``, the reason a record
        was refused in ``self.bad_record``)."""
        cdef uint64_t i, hpa, entry, idx, line, value
        cdef const trace_rec_t* r
        cdef vm_t* vm
        cdef uint64_t* st
        cdef uint32_t size
        cdef uint8_t op
        cdef bint write
        cdef int rc
        cdef uint8_t* mem = self.mem
        cdef uint64_t pmem_base = self.pmem_base
        cdef uint64_t pmem_delta = self.pmem_delta
        cdef uint64_t cost_op = self.cost.op
        cdef uint32_t max_vms = self.max_vms
        for i in range(start, n):
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
            if op >= OP_SFENCE:
                if op > OP_MFENCE:
                    self.bad_record = BAD_OP
                    stopped[0] = i
                    return RUN_BAD_RECORD
                st[op] += 1
                st[ST_OPS] += 1
                st[ST_CYCLES_OPS] += cost_op
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
            st[ST_CYCLES_OPS] += cost_op
            rc = self.translate_nogil(vm, r.vcpu, r.gpa, write, st, &hpa, &entry)
            if rc:
                if (r.gpa >> 12) == vm.fha_vpn and self.handle_fha_exit(vm, st, rc, write, op):
                    continue
                if rc == EXIT_EPT_MISCONFIG:
                    st[ST_EXITS_EPT_MISCONFIG] += 1
                else:
                    st[ST_EXITS_EPT_VIOLATION] += 1
                st[ST_CYCLES_EXIT] += self.cost.exit
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
                        self.fan_out(vm, st)
                        continue
                elif op == OP_LOAD:
                    st[ST_VFHA_READS] += 1
            idx = hpa - pmem_delta if hpa >= pmem_base else hpa
            if op == OP_LOAD:
                value = load_le(mem + idx, size)
                st[ST_LOAD_SUM] += value
                self.last_value = value
            elif op <= OP_NT_STORE:
                store_le(mem + idx, r.value, size)
                if hpa >= pmem_base:
                    line = (hpa - pmem_base) >> 6
                    if op == OP_STORE:
                        self.lstate[line] = LINE_DIRTY
                    else:
                        self.enqueue(line)
            elif hpa >= pmem_base:
                line = (hpa - pmem_base) >> 6
                if self.lstate[line] == LINE_DIRTY:
                    self.enqueue(line)
                    st[ST_LINES_FLUSHED] += 1
        stopped[0] = n
        return RUN_DONE

    def run(self, ops, Py_ssize_t start=0):
        """Replay ``ops[start:]`` (a TRACE_DTYPE array). Returns ``(index, status)``: status 0 when
        the end was reached (index = len(ops)), 1 on an exit the core does not handle
        (see ``last_exit``), 2 on a refused record (see ``bad_record``); index is that record."""
        cdef const uint8_t[::1] raw = _trace_bytes(ops)
        cdef uint64_t n = raw.shape[0] // sizeof(trace_rec_t)
        cdef uint64_t stopped = n
        cdef int status = RUN_DONE
        if self.vms == NULL:
            self.bad_record = BAD_VM
            return 0, RUN_BAD_RECORD
        if start < 0 or <uint64_t>start > n:
            raise TraceError(f"start index {start} is outside the trace of {n} records")
        self.bad_record = BAD_NONE
        if <uint64_t>start == n:
            return n, RUN_DONE
        cdef const trace_rec_t* recs = <const trace_rec_t*>&raw[0]
        with nogil:
            status = self.run_nogil(recs, start, n, &stopped)
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
        _live(self)
        chosen = [_int(c, "controller") for c in controllers]
        for c in chosen:
            if not 0 <= c < self.n_controllers:
                raise ConfigError(f"controller {c} does not exist")
        for c in chosen:
            self.cstats[c * CT_COUNT + CT_FHA_WRITES] += 1
            total += self.drain_controller(c)
        return total

    # ---- state, for the Python layer and for comparisons ---------------------------------

    cdef uint64_t _index(self, object hpa, object n) except? 0xFFFFFFFFFFFFFFFF:
        """Index into ``memory`` of host range ``[hpa, hpa+n)``, which must be DRAM or NVDIMM space."""
        _live(self)
        self._check_hpa(hpa, n)
        return hpa - self.pmem_delta if hpa >= self.pmem_base else hpa

    def _pmem_offset(self, hpa, n):
        """Offset into NVDIMM space of ``[hpa, hpa+n)``, which must lie inside it."""
        _live(self)
        hpa, n = _int(hpa, "hpa"), _int(n, "n")
        if not (hpa >= self.pmem_base and hpa + n <= self.pmem_base + self.pmem_bytes):
            raise ConfigError(f"HPA range at {hpa:#x} is not NVDIMM space")
        return hpa - self.pmem_base

    def prefault(self, hpa, n):
        """Touch every page of the arrays behind ``[hpa, hpa+n)`` (memory, and for NVDIMM space
        media, line states and queue counts) without changing them."""
        cdef uint64_t i = self._index(hpa, n)
        arrays = [(self.memory, i, n)]
        if hpa >= self.pmem_base:
            off = hpa - self.pmem_base
            arrays += [(self.media, off, n), (self.line_state, off // 64, n // 64),
                       (self.queued, off // 64, n // 64)]
        for arr, start, count in arrays:
            touch = arr[start:start + count][::max(1, 4096 // arr.itemsize)]
            touch |= 0        # a real write per page (numpy skips a self-assignment)

    def read_memory(self, hpa, n):
        """``n`` bytes of host memory (what CPUs see) at ``hpa``."""
        cdef uint64_t i = self._index(hpa, n)
        return self.memory[i:i + n].tobytes()

    def read_media(self, hpa, n):
        """``n`` bytes of NVDIMM media at ``hpa`` (NVDIMM space only)."""
        i = self._pmem_offset(hpa, n)
        return self.media[i:i + n].tobytes()

    def write_memory(self, hpa, data):
        """Host write (no guest, no line state): how the hypervisor fills a page."""
        data = memoryview(data).tobytes()          # a bytes-like object, not bytes(int)
        cdef uint64_t i = self._index(hpa, len(data))
        self.memory[i:i + len(data)] = np.frombuffer(data, np.uint8)

    def line_states(self):
        """{line HPA: state} for every NVDIMM line that is not CLEAN."""
        if self.line_state is None:
            return {}
        nz = np.flatnonzero(self.line_state)
        return {int(self.pmem_base + 64 * k): int(self.line_state[k]) for k in nz}

    def wpq_entries(self, c):
        """The WPQ of controller ``c``, oldest first: [(line HPA, 64 bytes)]."""
        _live(self)
        c = _int(c, "controller")
        if not 0 <= c < self.n_controllers:
            raise ConfigError(f"controller {c} does not exist")
        out = []
        for k in range(self.wpq_len[c]):
            slot = c * self.wpq_depth + (self.wpq_head[c] + k) % self.wpq_depth
            out.append((int(self.pmem_base + 64 * self.wpq_line[slot]),
                        self.wpq_data[slot * 64:(slot + 1) * 64].tobytes()))
        return out

    def controller_of(self, hpa):
        """Controller index of the NVDIMM line at ``hpa`` (the interleave rule)."""
        off = self._pmem_offset(hpa, 1)
        return int(self.granule_ctrl[off >> self.granule_shift])

    def controller_stats(self):
        _live(self)
        return self.ctrl_stats.copy()

    def memory_pages(self):
        """{page HPA: 4096 bytes} for every non-zero page of host memory."""
        _live(self)
        out = _nonzero_pages(self.memory[:self.dram_bytes], 0)
        out.update(_nonzero_pages(self.memory[self.dram_bytes:], self.pmem_base))
        return out

    def media_pages(self):
        """{page HPA: 4096 bytes} for every non-zero page of NVDIMM media."""
        _live(self)
        return _nonzero_pages(self.media, self.pmem_base)

    def durable_read(self, hpa, n):
        """``n`` bytes at ``hpa`` as they would survive a power failure now (SPEC 7.3), without
        failing: media, then under adr/eadr the queued copies oldest first, then under eadr the
        dirty lines. Lets a checker probe crash points without stopping the run."""
        cdef uint32_t c
        cdef uint64_t k, slot, line, first, last, lo, hi
        off = self._pmem_offset(hpa, n)
        out = bytearray(self.media[off:off + n].tobytes())
        first, last = off // 64, (off + n + 63) // 64
        if self.domain >= DOMAIN_ADR:
            for c in range(self.n_controllers):
                for k in range(self.wlen[c]):
                    slot = c * self.wpq_depth + (self.whead[c] + k) % self.wpq_depth
                    line = self.wline[slot]
                    if first <= line < last:
                        lo, hi = max(line * 64, off), min(line * 64 + 64, off + n)
                        out[lo - off:hi - off] = self.wpq_data[slot * 64 + lo - line * 64:
                                                               slot * 64 + hi - line * 64].tobytes()
        if self.domain == DOMAIN_EADR:
            for line in range(first, last):
                if self.line_state[line] == LINE_DIRTY:
                    lo, hi = max(line * 64, off), min(line * 64 + 64, off + n)
                    out[lo - off:hi - off] = self.memory[self.dram_bytes + lo:self.dram_bytes + hi].tobytes()
        return bytes(out)

    def get_state(self):
        """Everything that evolves, as a dict of numpy arrays in the engines' shared canonical
        form (non-zero pages only; WPQs oldest first; TLBs as (vpn, entry, hpa, leaf slot))."""
        cdef vm_t* v
        _live(self)
        mem = self.memory_pages()
        med = self.media_pages()
        lines = self.line_states()
        wpq = [(c, line, data) for c in range(self.n_controllers) for line, data in self.wpq_entries(c)]
        tables = self.tables()
        out = {
            "memory_hpa": np.array(list(mem), np.uint64),
            "memory_data": np.frombuffer(b"".join(mem.values()), np.uint8).reshape(-1, 4096),
            "media_hpa": np.array(list(med), np.uint64),
            "media_data": np.frombuffer(b"".join(med.values()), np.uint8).reshape(-1, 4096),
            "line_hpa": np.array(list(lines), np.uint64),
            "line_state": np.array(list(lines.values()), np.uint8),
            "wpq_ctrl": np.array([w[0] for w in wpq], np.uint32),
            "wpq_line": np.array([w[1] for w in wpq], np.uint64),
            "wpq_data": np.frombuffer(b"".join(w[2] for w in wpq), np.uint8).reshape(-1, 64),
            "ctrl_stats": self.ctrl_stats.copy(),
            "table_ids": np.array(list(tables), np.uint32),
            "table_data": np.stack([self.pool[t * ENTRIES:(t + 1) * ENTRIES] for t in tables])
                          if tables else np.zeros((0, ENTRIES), np.uint64),
            "free_tables": np.array(self._free_tables, np.uint32),
            "scalars": np.array([self.next_table, self.last_value], np.uint64),
            "vm_ids": np.array(sorted(self.vm_arrays), np.uint32),
        }
        for vm in sorted(self.vm_arrays):
            v = &self.vms[vm]
            a = self.vm_arrays[vm]
            out[f"vm{vm}_meta"] = np.array([v.root, v.nvcpus, v.tlb_entries, v.running, v.fha_vpn, v.fha_mode],
                                           np.uint64)
            out[f"vm{vm}_fanout"] = a[5].copy()
            out[f"vm{vm}_stats"] = a[4].copy()
            out[f"vm{vm}_drained"] = a[6].copy()
            out[f"vm{vm}_tlb"] = np.stack([a[0], a[1], a[2], a[3]], axis=1)
        return out

    def _checked_state(self, state):
        """``state`` as arrays of the right kinds and shapes, every address and index in range,
        or ConfigError naming what is not. Nothing is changed."""
        _live(self)
        if not isinstance(state, dict):
            raise ConfigError(f"engine state must be a dict of arrays, not {type(state).__name__}")
        def get(name, dtype, tail=None):
            try:
                a = np.asarray(state[name])
            except (KeyError, TypeError) as e:
                raise ConfigError(f"engine state lacks {name!r}") from None
            if a.dtype.kind not in "ui" or (tail is not None and a.shape[1:] != tail) or \
                    (tail is None and a.ndim != 1):
                raise ConfigError(f"engine state {name!r}: {a.dtype} array of shape {a.shape} is not what it needs")
            if a.size and (int(a.min()) < 0 or int(a.max()) > np.iinfo(dtype).max):
                raise ConfigError(f"engine state {name!r}: values outside {np.dtype(dtype).name}")
            return a.astype(dtype)
        s = {k: get(k, t, tail) for k, t, tail in (
            ("memory_hpa", np.uint64, None), ("memory_data", np.uint8, (4096,)),
            ("media_hpa", np.uint64, None), ("media_data", np.uint8, (4096,)),
            ("line_hpa", np.uint64, None), ("line_state", np.uint8, None),
            ("wpq_ctrl", np.uint32, None), ("wpq_line", np.uint64, None), ("wpq_data", np.uint8, (64,)),
            ("ctrl_stats", np.uint64, (CT_COUNT,)), ("table_ids", np.uint32, None),
            ("table_data", np.uint64, (ENTRIES,)), ("free_tables", np.uint32, None),
            ("scalars", np.uint64, None), ("vm_ids", np.uint32, None))}
        pmem_end = self.pmem_base + self.pmem_bytes
        for a, b in (("memory_hpa", "memory_data"), ("media_hpa", "media_data"), ("line_hpa", "line_state"),
                     ("wpq_line", "wpq_data"), ("wpq_line", "wpq_ctrl"), ("table_ids", "table_data")):
            if len(s[a]) != len(s[b]):
                raise ConfigError(f"engine state: {a} and {b} differ in length")
        for hpa in s["memory_hpa"].tolist():
            if hpa % 4096:
                raise ConfigError(f"engine state: page {hpa:#x} is not aligned")
            self._check_hpa(hpa, 4096)
        for name, align in (("media_hpa", 4096), ("line_hpa", 64), ("wpq_line", 64)):
            bad = (s[name] < self.pmem_base) | (s[name] >= pmem_end) | (s[name] % align != 0)
            if bad.any():
                raise ConfigError(f"engine state: {name} {int(s[name][bad][0]):#x} is not an aligned NVDIMM address")
        if (s["line_state"] > LINE_QUEUED).any():
            raise ConfigError("engine state: a line state is not CLEAN, DIRTY or QUEUED")
        if (s["wpq_ctrl"] >= self.n_controllers).any() or \
                (np.bincount(s["wpq_ctrl"], minlength=self.n_controllers) > self.wpq_depth).any():
            raise ConfigError("engine state: WPQ entries name a missing controller or overfill a queue")
        if s["ctrl_stats"].shape[0] != self.n_controllers:
            raise ConfigError("engine state: ctrl_stats has the wrong number of controllers")
        if len(s["scalars"]) != 2 or s["scalars"][0] > self.pool_tables:
            raise ConfigError("engine state: scalars are not (next_table, last_value)")
        tables = np.concatenate([s["table_ids"], s["free_tables"]])
        if (tables >= s["scalars"][0]).any() or len(np.unique(tables)) != len(tables):
            raise ConfigError("engine state: table ids are out of range or repeated")
        vms = []
        for vm in s["vm_ids"].tolist():
            if vm >= self.max_vms:
                raise ConfigError(f"engine state: vm id {vm} is out of range")
            meta = get(f"vm{vm}_meta", np.uint64)
            if len(meta) != 6:
                raise ConfigError(f"engine state: vm{vm}_meta needs 6 numbers")
            root, nvcpus, tlb_entries, running, fha_vpn, fha_mode = meta.tolist()
            if root not in set(s["table_ids"].tolist()):
                raise ConfigError(f"engine state: vm {vm}'s root table {root} is not among the tables")
            tlb = get(f"vm{vm}_tlb", np.uint64, (4,))
            arrays = tuple(np.ascontiguousarray(tlb[:, k]) for k in range(4)) + (
                get(f"vm{vm}_stats", np.uint64, (ST_COUNT,)), get(f"vm{vm}_fanout", np.uint8),
                get(f"vm{vm}_drained", np.uint64))
            _check_vm_slot(self.n_controllers, self.pool_tables, vm, root, nvcpus, tlb_entries, fha_mode, arrays)
            valid = arrays[0] != NO_VPN
            if (arrays[3][valid] >= s["scalars"][0] * ENTRIES).any():
                raise ConfigError(f"engine state: vm {vm}'s TLB names a table that does not exist")
            for hpa in arrays[2][valid].tolist():
                self._check_hpa(hpa, 4096)
            self._check_tree(dict(zip(s["table_ids"].tolist(), s["table_data"])), root)
            vms.append((vm, root, nvcpus, tlb_entries, running, fha_vpn, fha_mode, arrays))
        return s, vms

    def _check_tree(self, rows, root):
        """Every entry reachable from ``root`` points at a table in ``rows`` or maps host memory
        that exists: what the unchecked walk relies on."""
        if not isinstance(rows, dict) or root not in rows:
            raise ConfigError(f"engine state: root table {root!r} is not among the tables")
        todo, seen = [(root, 4)], set()
        while todo:
            t, level = todo.pop()
            if (t, level) in seen:
                continue
            seen.add((t, level))
            row = rows[t]
            present = (row & E_RWX) != 0
            usable = present & ((row & 3) != E_W)
            large = usable & ((row & E_LARGE) != 0) if level in (2, 3) else np.zeros(ENTRIES, bool)
            if level == 4 and (usable & ((row & E_LARGE) != 0)).any():
                raise ConfigError(f"engine state: table {t} has a large page at level 4")
            leaves = usable & (large | (level == 1))
            size = 1 << (12 + 9 * (level - 1))
            for e in row[leaves].tolist():
                self._check_hpa(e & ADDR_MASK & ~(size - 1), size)
            for e in row[usable & ~leaves].tolist():
                child = (e & ADDR_MASK) >> 12
                if child not in rows:
                    raise ConfigError(f"engine state: table {t} points at table {child}, which is not in the state")
                todo.append((child, level - 1))

    def set_state(self, state):
        """Replace everything with ``state`` (from ``get_state`` of either engine, same layout).
        The whole state is checked first: a bad one raises ConfigError and changes nothing."""
        s, vms = self._checked_state(state)
        for vm in list(self.vm_arrays):
            memset(&self.vms[vm], 0, sizeof(vm_t))
        self.vm_arrays = {}
        memory = np.zeros_like(self.memory)
        media = np.zeros_like(self.media)
        for hpa, page in zip(s["memory_hpa"].tolist(), s["memory_data"]):
            i = self._index(hpa, 4096)
            memory[i:i + 4096] = page
        for hpa, page in zip(s["media_hpa"].tolist(), s["media_data"]):
            off = hpa - self.pmem_base
            media[off:off + 4096] = page
        self.memory, self.media = memory, media
        self.line_state[:] = 0
        self.queued[:] = 0
        for hpa, st in zip(s["line_hpa"].tolist(), s["line_state"].tolist()):
            self.line_state[(hpa - self.pmem_base) // 64] = st
        self.wpq_head[:] = 0
        self.wpq_len[:] = 0
        for c, line, data in zip(s["wpq_ctrl"].tolist(), s["wpq_line"].tolist(), s["wpq_data"]):
            slot = c * self.wpq_depth + self.wpq_len[c]
            k = (line - self.pmem_base) // 64
            self.wpq_line[slot] = k
            self.wpq_data[slot * 64:(slot + 1) * 64] = data
            self.wpq_len[c] += 1
            self.queued[k] += 1
        self.ctrl_stats[:] = s["ctrl_stats"]
        self.pool[:] = 0
        for t, row in zip(s["table_ids"].tolist(), s["table_data"]):
            self.pool[t * ENTRIES:(t + 1) * ENTRIES] = row
        self._free_tables = s["free_tables"].tolist()
        self.next_table, self.last_value = (int(x) for x in s["scalars"])
        self._bind()
        for vm, root, nvcpus, tlb_entries, running, fha_vpn, fha_mode, arrays in vms:
            self._install_vm(vm, root, nvcpus, tlb_entries, running, fha_vpn, fha_mode, arrays)

    def power_fail(self):
        """Lose power, then reboot. Returns the durable image (uint8[pmem_bytes]): media, then
        under adr/eadr the queued copies in FIFO order, then under eadr the dirty lines.
        Afterwards media holds that image, memory shows it, DRAM is zero, caches, WPQs and TLBs
        are empty. Page tables (hypervisor state) are kept."""
        cdef uint32_t c
        cdef uint64_t k, slot, line
        _live(self)
        media = self.media
        if self.domain >= DOMAIN_ADR:
            for c in range(self.n_controllers):
                for k in range(self.wlen[c]):
                    slot = c * self.wpq_depth + (self.whead[c] + k) % self.wpq_depth
                    line = self.wline[slot]
                    media[line * 64:(line + 1) * 64] = self.wpq_data[slot * 64:(slot + 1) * 64]
        if self.domain == DOMAIN_EADR:
            dirty = np.flatnonzero(self.line_state == LINE_DIRTY)
            lines = self.memory[self.dram_bytes:].reshape(-1, 64)
            media.reshape(-1, 64)[dirty] = lines[dirty]
        memory = np.zeros_like(self.memory)
        pages = media.reshape(-1, 4096)
        nz = np.flatnonzero(pages.any(axis=1))
        memory[self.dram_bytes:].reshape(-1, 4096)[nz] = pages[nz]
        self.memory = memory
        self.line_state[:] = 0
        self.queued[:] = 0
        self.wpq_head[:] = 0
        self.wpq_len[:] = 0
        self._bind()
        for vm, arrays in self.vm_arrays.items():
            self._flush_tlbs(&self.vms[vm])
        return media.copy()
