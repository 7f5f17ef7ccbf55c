"""Numbers shared by the Cython core, the reference model and the Python layer.

The Cython side repeats these as C enums in ``_core.pxd``; ``tests/test_core_contract.py``
checks that both agree.
"""

from __future__ import annotations

import enum

import numpy as np

TRACE_DTYPE = np.dtype([("op", "u1"), ("vcpu", "u1"), ("vm", "<u2"), ("size", "<u4"),
                        ("gpa", "<u8"), ("value", "<u8")])
"""The native trace record: 24 bytes, stored as plain ``.npy`` files."""


class Op(enum.IntEnum):
    """Guest memory operations (trace ``op`` codes; 8 and above are reserved)."""

    LOAD = 0
    STORE = 1
    NT_STORE = 2
    CLWB = 3
    CLFLUSHOPT = 4
    CLFLUSH = 5
    SFENCE = 6
    MFENCE = 7


DATA_OPS = (Op.LOAD, Op.STORE, Op.NT_STORE)
FLUSH_OPS = (Op.CLWB, Op.CLFLUSHOPT, Op.CLFLUSH)
FENCE_OPS = (Op.SFENCE, Op.MFENCE)


class LineState(enum.IntEnum):
    """Persistence state of one 64-byte line of NVDIMM space."""

    CLEAN = 0
    DIRTY = 1    # newer data in a CPU cache (or an nt-store on its way)
    QUEUED = 2   # written back: a copy sits in its controller's WPQ


class Domain(enum.IntEnum):
    """Persistence domain a platform advertises (ACPI NFIT platform capabilities): NONE, ADR (memory
    controllers' WPQs are power-fail safe) or EADR (CPU caches too).
    """
    NONE = 0
    ADR = 1
    EADR = 2


DOMAIN_NAMES = {"none": Domain.NONE, "adr": Domain.ADR, "eadr": Domain.EADR}


class FhaMode(enum.IntEnum):
    """How the core treats guest accesses to a VM's vFHA page (SPEC 4)."""

    NONE = 0            # no vFHA registered: every exit goes back to Python
    WRITE_PROTECT = 1   # read-only host page; a write is an EPT violation -> fan-out, skip, resume
    MMIO = 2            # misconfigured entry; every access exits (49), reads emulated as 0, writes fan out
    WRITABLE = 3        # read-write host page: no exit, no flush
    HYPERCALL = 4       # read-only host page; a write stands for the flush hypercall (VMCALL exit, fan-out)
    DROP = 5            # traps writes like WRITE_PROTECT but drains nothing (a broken hypervisor, for tests)
    NATIVE = 6          # no virtualization: the write goes straight to the physical FHAs (no exit)


class ExitReason(enum.IntEnum):
    """Intel basic exit reasons used here (Intel SDM vol. 3C, appendix C), in report order.

    Every exit key in Python is one of these; reports name them by number (``exits_48``).
    """

    EPT_VIOLATION = 48
    EPT_MISCONFIG = 49
    VMCALL = 18

    @property
    def label(self) -> str:
        """How messages name the exit: "EPT violation", "EPT misconfiguration", "VMCALL"."""
        return _EXIT_LABELS[self]

    @property
    def stat(self) -> str:
        """The per-vCPU counter of this exit (``STAT_NAMES``)."""
        return f"exits_{self.name.lower()}"


_EXIT_LABELS = {ExitReason.EPT_VIOLATION: "EPT violation", ExitReason.EPT_MISCONFIG: "EPT misconfiguration",
                ExitReason.VMCALL: "VMCALL"}



class RunStatus(enum.IntEnum):
    DONE = 0
    EXIT = 1
    BAD_RECORD = 2
    NO_MEMORY = 3    # the core only: a write needed memory beyond the budget (run() raises ResourceError)


class BadRecord(enum.IntEnum):
    """Why a trace record was refused (``Engine.bad_record``; messages in ``_records``)."""

    NONE = 0
    OP = 1
    VM = 2
    VCPU = 3
    SIZE = 4
    CROSSES_LINE = 5
    VALUE = 6
    GPA = 7


# Per-vCPU counters, in the order of the core's stats rows. The first eight are indexed by op code.
# Event counters count; the ``*_ps`` counters are emulated time in picoseconds by category (SPEC 6):
# every advance of a vCPU's clock is charged to exactly one of them, so their sum is the time the
# vCPU spent since the last reset. ``nvemu.machine.stats`` documents each one.
STAT_NAMES = (
    "loads", "stores", "nt_stores", "clwb", "clflushopt", "clflush", "sfence", "mfence",
    "ops", "tlb_hits", "tlb_misses", "walk_refs", "tlb_flushes", "lines_flushed",
    "exits_ept_violation", "exits_ept_misconfig", "exits_vmcall",
    "vfha_reads", "vfha_writes", "fha_writes", "lines_drained", "load_sum",
    "ops_ps", "load_ps", "walk_ps", "flush_ps", "wpq_stall_ps", "fence_ps", "exit_ps",
    "write_protect_ps", "mmio_ps", "hypercall_ps", "fha_ps", "drain_wait_ps",
)
STAT = {name: i for i, name in enumerate(STAT_NAMES)}
TIME_STATS = tuple(n for n in STAT_NAMES if n.endswith("_ps"))

# Timing-model fields as the engines take them (integer picoseconds), in the order of
# ``EngineLayout.timing`` and the core's ``timing_t``. ``nvemu.machine.config.TimingModel`` derives
# them from published figures and free parameters; each field's meaning is documented there.
TIMING_FIELDS = ("op", "walk_ref", "load_seq", "load_rand", "dram_load_seq", "dram_load_rand", "flush_issue",
                 "wb_seq", "wb_rand", "nt_seq", "nt_rand", "dram_wb", "dram_nt", "fence", "drain_line",
                 "fha_write", "exit", "write_protect", "mmio", "hypercall", "read_line", "fill_buffers")

# The parameters of ``nvemu.machine.config.TimingModel`` (published figures and free parameters), the
# names that bench sweeps, sweep files and results use.
TIMING_PARAMETERS = ("cpu_ghz", "op_ns", "walk_ref_cycles", "read_seq_ns", "read_rand_ns", "dram_read_seq_ns",
                     "dram_read_rand_ns", "write_clwb_ns", "write_ntstore_ns", "dram_write_clwb_ns",
                     "dram_write_ntstore_ns", "persist_clwb_ns", "persist_ntstore_ns", "media_write_gbps",
                     "media_read_gbps", "fill_buffers", "flush_issue_ns", "fence_ns", "fha_write_ns", "exit_cycles",
                     "write_protect_cycles",
                     "mmio_cycles", "hypercall_cycles")

# Per-vCPU clock words, in the order of the core's clock rows: the vCPU's time (ps), when its
# outstanding write-backs are all accepted (ps), and the last line (HPA / 64) it loaded, wrote back
# and nt-stored (all ones = none), which decide sequential vs random latency and nt-store merging;
# when its last load's data arrives and when all its loads' data has arrived (ps); then one word per
# line buffer (the core's line-fill / write-combining buffers): the time it is free again (ps).
# A vCPU uses the first ``fill_buffers`` of the MAX_FILL_BUFFERS buffer words.
MAX_FILL_BUFFERS = 16
CLOCK_FIELDS = ("now", "pending", "load_line", "wb_line", "nt_line", "load_done", "loads_done",
                *(f"fill{k}" for k in range(MAX_FILL_BUFFERS)))
CLOCK = {name: i for i, name in enumerate(CLOCK_FIELDS)}
NO_LINE = (1 << 64) - 1

# Per-controller counters.
CTRL_STAT_NAMES = ("enqueued", "drained", "drained_full", "fha_writes")
CTRL_STAT = {name: i for i, name in enumerate(CTRL_STAT_NAMES)}

# EPT entry bits (SPEC 2).
EPT_R = 1 << 0
EPT_W = 1 << 1
EPT_X = 1 << 2
EPT_RWX = 7
EPT_MEMTYPE_WB = 6 << 3
EPT_LARGE = 1 << 7
EPT_ACCESSED = 1 << 8
EPT_DIRTY = 1 << 9
EPT_ADDR_MASK = 0x000F_FFFF_FFFF_F000
EPT_LEVELS = 4           # PML4, PDPT, PD, PT
EPT_INDEX_BITS = 9       # 512 entries per table
EPT_ENTRIES = 1 << EPT_INDEX_BITS
NO_VPN = (1 << 64) - 1   # the engines' state for "no vFHA page"

# EPT-violation exit qualification bits (Intel SDM Vol. 3C, 27.2.1, table "Exit Qualification for EPT
# Violations"). A guest data access through its page tables sets bit 7 (the guest linear-address field
# is valid) and bit 8 (the access was to the final translation, not to a guest paging-structure entry):
# a store to a read-only leaf is 0x18a. An EPT misconfiguration saves no qualification (it reads 0;
# KVM's handle_ept_misconfig uses only the GPA).
QUAL_READ = 1 << 0
QUAL_WRITE = 1 << 1
QUAL_FETCH = 1 << 2
QUAL_ENTRY_SHIFT = 3                     # bits 3-5: the entry's R/W/X
QUAL_ENTRY_RWX = 7 << QUAL_ENTRY_SHIFT   # all clear: the GPA is not mapped at all
QUAL_LINEAR_VALID = 1 << 7
QUAL_FINAL_TRANSLATION = 1 << 8

LINE_BYTES = 64          # a cache line, the unit of write-back and of a WPQ entry
PAGE_SHIFT = 12
PAGE_BYTES = 1 << PAGE_SHIFT     # a 4 KiB page
PAGE_MASK = PAGE_BYTES - 1
PAGE_4K = PAGE_BYTES
PAGE_2M = 1 << 21        # a 2 MiB large page (an EPT leaf at level 2)
PAGE_SIZES = (PAGE_4K, PAGE_2M)
GPA_BITS = 48            # guest-physical addresses a 4-level EPT maps
GPA_LIMIT = 1 << GPA_BITS
HPA_LIMIT = 1 << 52      # host-physical addresses an EPT entry can hold (bits 12..51)

DEFAULT_CHUNK = 1 << 20
"""Records per chunk when streaming a trace (24 MiB of trace at a time)."""
