# nvemu._core C-level contract: what another Cython simulator may `cimport`.
#
#     from nvemu._core cimport Engine, trace_rec_t, OP_STORE
#
# Changing a struct, the field order of Engine or the order of its cdef methods changes the binary
# layout and vtable: every embedder must rebuild. Raise NVEMU_CAPI_VERSION on any such change.
# The enums repeat nvemu/_constants.py; tests/test_core_contract.py checks that they agree.
# Engine methods below run without the GIL: hold ``engine.lock`` while calling them (numpy.random's
# ``with bitgen.lock, nogil:`` pattern), as every Python entry point of the Engine does.
#
# Host memory is sparse (issue 17): ``chunk_t`` records behind a two-level directory, allocated on first
# write; a TLB entry caches its chunk's record, so a TLB hit reaches host memory without a directory walk.

cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    NVEMU_CAPI_VERSION = 5

ctypedef uint64_t ept_entry_t        # one EPT entry (SPEC 2 layout)

cdef packed struct trace_rec_t:      # one record of nvemu.TRACE_DTYPE, 24 bytes
    uint8_t op                       # op code (op_t)
    uint8_t vcpu                     # vCPU index within the VM
    uint16_t vm                      # VM id
    uint32_t size                    # access size in bytes
    uint64_t gpa                     # guest-physical address
    uint64_t value                   # stored value (little-endian, low `size` bytes)

cdef enum op_t:
    OP_LOAD = 0
    OP_STORE = 1
    OP_NT_STORE = 2
    OP_CLWB = 3
    OP_CLFLUSHOPT = 4
    OP_CLFLUSH = 5
    OP_SFENCE = 6
    OP_MFENCE = 7

cdef enum line_state_t:
    LINE_CLEAN = 0
    LINE_DIRTY = 1
    LINE_QUEUED = 2

cdef enum domain_t:
    DOMAIN_NONE = 0
    DOMAIN_ADR = 1
    DOMAIN_EADR = 2

cdef enum fha_mode_t:
    FHA_NONE = 0
    FHA_WRITE_PROTECT = 1
    FHA_MMIO = 2
    FHA_WRITABLE = 3
    FHA_HYPERCALL = 4
    FHA_DROP = 5
    FHA_NATIVE = 6

cdef enum exit_reason_t:
    EXIT_VMCALL = 18
    EXIT_EPT_VIOLATION = 48
    EXIT_EPT_MISCONFIG = 49

cdef enum run_status_t:
    RUN_DONE = 0
    RUN_EXIT = 1
    RUN_BAD_RECORD = 2
    RUN_NO_MEMORY = 3                # a write needed a chunk beyond the memory budget (or the OS refused it)

cdef enum bad_record_t:
    BAD_NONE = 0
    BAD_OP = 1
    BAD_VM = 2
    BAD_VCPU = 3
    BAD_SIZE = 4
    BAD_CROSSES_LINE = 5
    BAD_VALUE = 6
    BAD_GPA = 7

cdef enum:                           # stat_t: per-vCPU counters; the first eight are indexed by op code
    ST_LOADS = 0
    ST_STORES
    ST_NT_STORES
    ST_CLWB
    ST_CLFLUSHOPT
    ST_CLFLUSH
    ST_SFENCE
    ST_MFENCE
    ST_OPS
    ST_TLB_HITS
    ST_TLB_MISSES
    ST_WALK_REFS
    ST_TLB_FLUSHES
    ST_LINES_FLUSHED
    ST_EXITS_EPT_VIOLATION
    ST_EXITS_EPT_MISCONFIG
    ST_EXITS_VMCALL
    ST_VFHA_READS
    ST_VFHA_WRITES
    ST_FHA_WRITES
    ST_LINES_DRAINED
    ST_LOAD_SUM
    ST_OPS_PS                        # the *_PS counters: emulated time (ps) by category
    ST_LOAD_PS
    ST_WALK_PS
    ST_FLUSH_PS
    ST_WPQ_STALL_PS
    ST_FENCE_PS
    ST_EXIT_PS
    ST_WRITE_PROTECT_PS
    ST_MMIO_PS
    ST_HYPERCALL_PS
    ST_FHA_PS
    ST_DRAIN_WAIT_PS
    ST_COUNT

cdef enum:                           # ctrl_stat_t: per-controller counters
    CT_ENQUEUED = 0
    CT_DRAINED
    CT_DRAINED_FULL
    CT_FHA_WRITES
    CT_COUNT

cdef enum:
    MAX_FILL_BUFFERS = 16            # line buffers a vCPU may have (timing_t.fill_buffers <= this)

cdef enum:                           # clock_t: per-vCPU clock words (nvemu._constants.CLOCK_FIELDS)
    CK_NOW = 0                       # the vCPU's time, ps
    CK_PENDING                       # when its outstanding write-backs are all accepted, ps
    CK_LOAD_LINE                     # line (HPA >> 6) of its last load, ~0 = none
    CK_WB_LINE                       # line of its last write-back (clwb or nt-store), ~0 = none
    CK_NT_LINE                       # line of its open write-combining buffer, ~0 = none
    CK_LOAD_DONE                     # when the data of its last load arrives, ps
    CK_LOADS_DONE                    # when the data of all its loads has arrived, ps
    CK_FILL                          # first of MAX_FILL_BUFFERS words: when each line buffer is free, ps
    CK_COUNT = CK_FILL + MAX_FILL_BUFFERS

cdef struct timing_t:                # picoseconds per event (nvemu.machine.config.TimingModel)
    uint64_t op                      # every retired guest op
    uint64_t walk_ref                # one page-walk memory reference
    uint64_t load_seq                # NVDIMM load, same or next line as the vCPU's last load
    uint64_t load_rand               # NVDIMM load, any other line
    uint64_t dram_load_seq           # DRAM load, same or next line
    uint64_t dram_load_rand          # DRAM load, any other line
    uint64_t flush_issue             # issuing a clwb/clflushopt/clflush
    uint64_t wb_seq                  # write-back travel to the WPQ, line after the vCPU's last write-back
    uint64_t wb_rand                 # write-back travel to the WPQ, any other line
    uint64_t nt_seq                  # nt-store travel to the WPQ, line after the last write-back
    uint64_t nt_rand                 # nt-store travel to the WPQ, any other line
    uint64_t dram_wb                 # write-back travel to a DRAM controller
    uint64_t dram_nt                 # nt-store travel to a DRAM controller
    uint64_t fence                   # an SFENCE/MFENCE once the write-backs are accepted
    uint64_t drain_line              # an NVDIMM writes one line of its WPQ to media
    uint64_t fha_write               # one physical flush-hint write
    uint64_t exit                    # VM exit + entry round trip
    uint64_t write_protect           # EPT-violation handling: decode and emulate the write
    uint64_t mmio                    # EPT-misconfiguration handling on the fast MMIO path
    uint64_t hypercall               # VMCALL handling
    uint64_t read_line               # an NVDIMM reads one line from media (its read bandwidth)
    uint64_t fill_buffers            # line buffers per vCPU, 1..MAX_FILL_BUFFERS (a count, not ps)

cdef struct chunk_t:                 # one chunk of host memory (chunk_bytes, a power of two >= 4 KiB)
    uint8_t* mem                     # what CPUs observe; NULL until the chunk is first written
    uint8_t* med                     # NVDIMM chunks: what the media durably holds (allocated with mem)
    uint16_t* lines                  # NVDIMM chunks, per 64-byte line: queued copies << 2 | line_state_t

cdef struct iset_t:                  # one interleave set
    uint64_t offset                  # from pmem_base
    uint64_t length                  # bytes
    uint32_t gshift                  # log2 of the granularity
    uint32_t ways                    # member NVDIMMs
    uint32_t ways_mask               # ways - 1 when ways is a power of two, else 0
    uint32_t first                   # index into Engine.set_ctl of member 0's controller

cdef struct vm_t:                    # one VM as the replay loop sees it
    bint active                      # slot in use
    bint running                     # records for this VM may execute
    uint32_t root                    # pool index of the PML4 table
    uint32_t nvcpus                  # number of vCPUs
    uint32_t tlb_entries             # TLB entries per vCPU (a power of two)
    uint64_t* tlb_vpn                # [nvcpus * tlb_entries] cached 4 KiB GPA page number, ~0 = invalid
    uint64_t* tlb_entry              # leaf entry as cached (permissions, A/D)
    uint64_t* tlb_hpa                # host-physical address of the 4 KiB page
    uint64_t* tlb_slot               # pool word index of the leaf entry (for the D bit)
    chunk_t** tlb_chunk              # directory record of the page's chunk (never NULL for a valid entry)
    uint64_t* stats                  # [nvcpus * ST_COUNT]
    uint64_t fha_vpn                 # vFHA GPA >> 12, ~0 when none
    int fha_mode                     # fha_mode_t
    uint8_t* fanout                  # [n_controllers] 1 = written on a vFHA flush
    uint64_t* drained                # [n_controllers] lines this VM's flushes drained, per controller
    uint64_t* clock                  # [nvcpus * CK_COUNT] per-vCPU clock words

cdef struct exit_t:                  # the last exit the core did not handle itself
    uint32_t reason                  # exit_reason_t
    uint64_t qualification           # bit 0 read, 1 write, 2 fetch, 3-5 entry R/W/X
    uint64_t gpa                     # faulting guest-physical address
    uint64_t op_index                # index of the record in the batch
    uint16_t vm                      # VM id
    uint8_t vcpu                     # vCPU index
    uint8_t op                       # op code

@cython.final
cdef class Engine:
    # host memory: sparse chunks behind a two-level directory (index space: DRAM at [0, dram_bytes),
    # NVDIMM byte k at pmem_index + k)
    cdef chunk_t** dir               # [dir_len] leaf tables of 2**(30 - chunk_shift) chunk_t, NULL until needed
    cdef uint8_t** meta              # [dir_len] per leaf: line states and queue counts of its NVDIMM chunks
    cdef uint64_t dir_len
    cdef readonly uint32_t chunk_shift  # log2 of the chunk size
    cdef uint64_t chunk_mask
    cdef uint64_t pmem_index         # memory index of the first NVDIMM byte (1 GiB aligned)
    cdef readonly uint64_t touched_bytes  # bytes of chunks allocated (memory, media, line state)
    cdef readonly uint64_t memory_budget  # touched_bytes may not exceed this
    cdef bint huge_pages             # chunks of 2 MiB and more are advised MADV_HUGEPAGE
    cdef int alloc_error             # 1 over budget, 2 the OS refused memory (after RUN_NO_MEMORY)
    cdef iset_t* sets
    cdef uint32_t nsets
    cdef uint8_t* set_ctl            # controllers of every set's members, set after set
    # WPQs, counters, page tables (numpy arrays owned here; Python sees read-only views)
    cdef object _wpq_line            # uint64[n_controllers * wpq_depth]: pmem line index per slot
    cdef object _wpq_data            # uint8[n_controllers * wpq_depth * 64]: line bytes per slot
    cdef object _wpq_head            # uint32[n_controllers]: oldest slot
    cdef object _wpq_len             # uint32[n_controllers]: entries queued
    cdef object _ctrl_stats          # uint64[n_controllers, CT_COUNT]
    # Timing queues are per NVDIMM (the iMC's pending queues are per channel: config.IMC_QUEUES cites it)
    cdef object _dimm_busy           # uint64[n_dimms]: ps when each NVDIMM's WPQ has drained what it accepted
    cdef object _dimm_read_busy      # uint64[n_dimms]: ps when each NVDIMM can start another read
    cdef object _pool                # uint64[pool_tables * 512]: every VM's EPT tables
    cdef object _free_tables         # list of freed table indices (reused LIFO)
    cdef object _vms                 # dict vm id -> VmArrays (the VM's numpy arrays, by name)
    cdef readonly object lock        # held by every entry point that reads or changes the machine
    cdef uint64_t* wline
    cdef uint8_t* wdata
    cdef uint32_t* whead
    cdef uint32_t* wlen
    cdef uint64_t* cstats
    cdef uint64_t* dbusy
    cdef uint64_t* drbusy
    cdef ept_entry_t* ept
    cdef vm_t* vms
    cdef readonly uint64_t dram_bytes   # host DRAM at HPA [0, dram_bytes)
    cdef readonly uint64_t pmem_base    # HPA of the first NVDIMM byte
    cdef readonly uint64_t pmem_bytes   # bytes of NVDIMM space
    cdef readonly uint32_t n_controllers
    cdef readonly uint32_t n_dimms      # set members (NVDIMMs), set after set: the timing queues
    cdef readonly uint32_t wpq_depth
    cdef readonly int domain
    cdef readonly uint32_t pool_tables
    cdef readonly uint32_t next_table   # high-water mark of the pool
    cdef readonly uint32_t max_vms
    cdef timing_t tm
    cdef exit_t exit
    cdef readonly int bad_record        # bad_record_t of the last refused record
    cdef readonly uint64_t last_value   # value of the last emulated load

    # kernels (the embedding API)
    cdef chunk_t* chunk_at(self, uint64_t idx, bint create) noexcept nogil
    cdef int fill_chunk(self, chunk_t* ck, uint64_t idx) noexcept nogil
    cdef uint32_t controller_of_line(self, uint64_t line) noexcept nogil
    cdef uint32_t dimm_of_line(self, uint64_t line) noexcept nogil
    cdef void drain_one(self, uint32_t c) noexcept nogil
    cdef uint64_t drain_controller(self, uint32_t c) noexcept nogil
    cdef void enqueue(self, chunk_t* ck, uint64_t line) noexcept nogil
    cdef uint64_t wpq_accept(self, uint32_t d, uint64_t arrival) noexcept nogil
    cdef uint64_t* line_buffer(self, uint64_t* st, uint64_t* clk, uint32_t stat) noexcept nogil
    cdef void load_timing(self, uint64_t hpa, uint64_t* st, uint64_t* clk) noexcept nogil
    cdef void write_back(self, uint64_t hpa, bint nt, uint64_t* st, uint64_t* clk) noexcept nogil
    cdef uint64_t fan_out(self, vm_t* vm, uint64_t* st, uint64_t* clk) noexcept nogil
    cdef int walk_leaf(self, vm_t* vm, uint64_t gpa, uint64_t* st, uint64_t* entry,
                       uint64_t* hpa_page, uint64_t* slot) noexcept nogil
    cdef int translate_nogil(self, vm_t* vm, uint32_t vcpu, uint64_t gpa, bint write, uint64_t* st,
                             uint64_t* hpa, uint64_t* entry, uint64_t* tlb_index) noexcept nogil
    cdef bint handle_fha_exit(self, vm_t* vm, uint64_t* st, uint64_t* clk, int reason, bint write,
                              uint8_t op) noexcept nogil
    cdef int run_nogil(self, const trace_rec_t* ops, uint64_t start, uint64_t n,
                       uint64_t* stopped) noexcept nogil
