"""The emulation core: EPT walks, the software TLB, write-protection faults, WPQ enqueue/drain
fan-out and the trace replay loop, over sparse host memory and without the GIL.

Host memory, NVDIMM media and per-line state live in chunks allocated on first write behind a
two-level directory (``chunk_t``, see ``_core.pxd``); reading what was never written gives zeros and
allocates nothing. A TLB entry caches its chunk's directory record, so a TLB hit reaches memory
without walking the directory. Chunks of 2 MiB and more are mapped on 2 MiB boundaries and advised
``MADV_HUGEPAGE``: the kernel can back them with huge pages, which spares the CPU's own TLB the
misses that random accesses over hundreds of MiB cause (bench/chunk_size.py measures the choice).

The module is split by what the code is about, one include file each: ``_core_kernels.pxi`` the
``nogil`` kernels (the replay loop and all it calls), ``_core_state.pxi`` the machine as a whole
(building it, replacing its state, power failure), ``_core_memory.pxi`` host memory chunks,
``_core_tables.pxi`` page tables and VM slots. The ``Engine`` here holds the fields, the ``def``
entry points (which check their arguments and take the lock) and the published ``cdef`` doors.

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


include "_core_kernels.pxi"
include "_core_state.pxi"
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
        _init(self, layout)

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
            return _set_fha(self, vm, fha_gpa, mode, fanout)

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
        """Per controller, the time (ps) at which the WPQs of its NVDIMMs will have drained every
        line they accepted (0 for a controller without NVDIMMs in a set)."""
        cdef uint32_t d
        with self.lock:
            _live(self)
            out = np.zeros(self.n_controllers, np.uint64)
            for d in range(self.n_dimms):
                out[self.set_ctl[d]] = max(out[self.set_ctl[d]], self._dimm_busy[d])
            return out

    def dimm_busy(self):
        """Per NVDIMM (interleave-set member, set after set), the time (ps) at which its WPQ will
        have drained every line it accepted: a copy, ``uint64[n_dimms]``."""
        with self.lock:
            _live(self)
            return self._dimm_busy[:self.n_dimms].copy()

    def dimm_read_busy(self):
        """Per NVDIMM (as :meth:`dimm_busy`), the time (ps) from which it can start another read."""
        with self.lock:
            _live(self)
            return self._dimm_read_busy[:self.n_dimms].copy()

    def reset_stats(self, vm):
        with self.lock:
            _vm(self, vm)
            self._vms[operator.index(vm)].stats[:] = 0
            self._vms[operator.index(vm)].drained[:] = 0

    # ---- page tables -----------------------------------------------------------------------

    def map(self, vm, gpa, hpa, length, perms, page_size=4096):
        """Map ``[gpa, gpa+length)`` to ``[hpa, ...)`` with R/W/X ``perms`` (bits 0-2) in pages of
        ``page_size`` (4 KiB or 2 MiB). Existing leaves of the same size are replaced."""
        with self.lock:
            return _map(self, vm, gpa, hpa, length, perms, page_size)

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
        with self.lock:
            return _walk(self, vm, gpa)

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

    # ---- translation and the replay loop ---------------------------------------------------

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
            rc = _translate_nogil(self, v, vcpu, gpa, bool(write), &v.stats[vcpu * ST_COUNT], &hpa, &entry, &ts)
            if rc:
                raise GuestFault(rc, _qualification(rc, bool(write), entry), gpa, 0, vm, vcpu, 1 if write else 0)
            return hpa

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
                status = _run_nogil(self, recs, start, n, &stopped)
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
                total += _drain_controller(self, c)
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
        data = memoryview(data).tobytes()          # a bytes-like object, not bytes(int)
        with self.lock:
            return _write_memory(self, hpa, data)

    def prefault(self, hpa, n):
        """Allocate the chunks behind ``[hpa, hpa+n)`` (memory, and for NVDIMM space media and
        line state) and have the kernel back their pages now, without changing them."""
        with self.lock:
            return _prefault(self, hpa, n)

    def discard(self, hpa, n):
        """Scrub ``[hpa, hpa+n)`` (whole 4 KiB pages): its queued WPQ copies are removed, its
        memory, media and line states become zero, and the chunks it covers wholly are freed."""
        with self.lock:
            return _discard(self, hpa, n)

    def line_states(self):
        """{line HPA: state} for every NVDIMM line that is not CLEAN."""
        cdef uint64_t idx, c = 1ULL << self.chunk_shift
        cdef chunk_t* ck
        if self.vms == NULL:
            return {}
        out = {}
        with self.lock:
            for idx in _chunk_indices(self, self.pmem_index, self.dir_len << LEAF_SHIFT):
                ck = _chunk_at(self, idx, False)
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
            return int(_controller_of_line(self, off >> 6))

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
        with self.lock:
            return _touched_ranges(self)

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

    def power_fail(self, lost=None):
        """Lose power, then reboot. Returns the durable image (a sparse :class:`DurableImage`):
        media, then under adr/eadr the queued copies in FIFO order, then under eadr the dirty lines.
        Afterwards media holds that image, memory shows it, DRAM is zero, caches, WPQs and TLBs
        are empty. Page tables (hypervisor state) are kept. ``lost``: HPAs of lines ADR does not
        protect this time (an ADR failure, an NVDIMM not armed), whose queued copies and dirty
        data are lost: only their media survives."""
        gone = set() if lost is None else {(int(a) - self.pmem_base) >> 6 for a in lost}
        with self.lock:
            return _power_fail(self, gone)

    # ---- the kernels: the embedding API (_core.pxd), one-line doors to _core_kernels.pxi ----------

    cdef chunk_t* chunk_at(self, uint64_t idx, bint create) noexcept nogil:
        return _chunk_at(self, idx, create)

    cdef int fill_chunk(self, chunk_t* ck, uint64_t idx) noexcept nogil:
        return _fill_chunk(self, ck, idx)

    cdef int walk_leaf(self, vm_t* vm, uint64_t gpa, uint64_t* st, uint64_t* entry,
                       uint64_t* hpa_page, uint64_t* slot) noexcept nogil:
        return _walk_leaf(self, vm, gpa, st, entry, hpa_page, slot)

    cdef int translate_nogil(self, vm_t* vm, uint32_t vcpu, uint64_t gpa, bint write, uint64_t* st,
                             uint64_t* hpa, uint64_t* entry, uint64_t* tlb_index) noexcept nogil:
        return _translate_nogil(self, vm, vcpu, gpa, write, st, hpa, entry, tlb_index)

    cdef uint32_t controller_of_line(self, uint64_t line) noexcept nogil:
        return _controller_of_line(self, line)

    cdef void drain_one(self, uint32_t c) noexcept nogil:
        _drain_one(self, c)

    cdef uint64_t drain_controller(self, uint32_t c) noexcept nogil:
        return _drain_controller(self, c)

    cdef void enqueue(self, chunk_t* ck, uint64_t line) noexcept nogil:
        _enqueue(self, ck, line)

    cdef uint32_t dimm_of_line(self, uint64_t line) noexcept nogil:
        return _dimm_of_line(self, line)

    cdef uint64_t wpq_accept(self, uint32_t d, uint64_t arrival) noexcept nogil:
        return _wpq_accept(self, d, arrival)

    cdef uint64_t* line_buffer(self, uint64_t* st, uint64_t* clk, uint32_t stat) noexcept nogil:
        return _line_buffer(self, st, clk, stat)

    cdef void load_timing(self, uint64_t hpa, uint64_t* st, uint64_t* clk) noexcept nogil:
        _load_timing(self, hpa, st, clk)

    cdef void write_back(self, uint64_t hpa, bint nt, uint64_t* st, uint64_t* clk) noexcept nogil:
        _write_back(self, hpa, nt, st, clk)

    cdef uint64_t fan_out(self, vm_t* vm, uint64_t* st, uint64_t* clk) noexcept nogil:
        return _fan_out(self, vm, st, clk)

    cdef bint handle_fha_exit(self, vm_t* vm, uint64_t* st, uint64_t* clk, int reason, bint write,
                              uint8_t op) noexcept nogil:
        return _handle_fha_exit(self, vm, st, clk, reason, write, op)

    cdef int run_nogil(self, const trace_rec_t* ops, uint64_t start, uint64_t n,
                       uint64_t* stopped) noexcept nogil:
        return _run_nogil(self, ops, start, n, stopped)
