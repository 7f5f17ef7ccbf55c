"""Plain descriptions of a host platform and of the timing model (frozen dataclasses).

A :class:`PlatformConfig` is what capability discovery produces from a physical NFIT and what
the built-in presets are; :class:`nvemu.machine.platform.Platform` builds the emulated machine from one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .._constants import LINE_BYTES, MAX_FILL_BUFFERS, PAGE_BYTES, TIMING_FIELDS
from ..errors import ConfigError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

DOMAINS = ("none", "adr", "eadr")


def device_handle(node: int, socket: int, imc: int, channel: int, dimm: int) -> int:
    """ACPI NFIT device handle: DIMM 3:0, channel 7:4, iMC 11:8, socket 15:12, node 27:16."""
    for name, value, bits in (("node", node, 12), ("socket", socket, 4), ("imc", imc, 4),
                              ("channel", channel, 4), ("dimm", dimm, 4)):
        if not 0 <= value < (1 << bits):
            raise ConfigError(f"{name}={value} does not fit the {bits}-bit field of an NFIT device handle")
    return (node << 16) | (socket << 12) | (imc << 8) | (channel << 4) | dimm


def decode_handle(handle: int) -> dict[str, int]:
    """Split an NFIT device handle into node, socket, imc, channel and dimm numbers."""
    return {"node": (handle >> 16) & 0xFFF, "socket": (handle >> 12) & 0xF, "imc": (handle >> 8) & 0xF,
            "channel": (handle >> 4) & 0xF, "dimm": handle & 0xF}


@dataclass(frozen=True)
class ControllerConfig:
    """One memory controller (iMC), named as the NFIT device handle names it."""

    node: int = 0
    socket: int = 0
    imc: int = 0

    @property
    def key(self) -> tuple[int, int, int]:
        """``(node, socket, imc)``: what identifies a controller (unique on a platform)."""
        return (self.node, self.socket, self.imc)


@dataclass(frozen=True)
class NvdimmConfig:
    """One NVDIMM: the controller it hangs off (index into ``PlatformConfig.controllers``), its
    channel and slot, its size in bytes and its flush hint addresses (SPA of each hint).
    ``armed`` is False when the NFIT's memory device flags say the platform flush failed (bit 2)
    or the device is not armed (bit 3): ADR gives no guarantee for it, so what sits in the WPQs
    for its lines is lost at a power failure (SPEC 7.3)."""

    controller: int
    size: int
    channel: int = 0
    dimm: int = 0
    flush_hints: tuple[int, ...] = ()
    armed: bool = True


@dataclass(frozen=True)
class InterleaveSetConfig:
    """A system-physical-address range interleaved across NVDIMMs (indices into ``nvdimms``),
    ``granularity`` bytes from each in turn. Every member contributes its whole size."""

    spa_base: int
    dimms: tuple[int, ...]
    granularity: int = 4 * KiB


@dataclass(frozen=True)
class PlatformConfig:
    """A whole host: controllers, NVDIMMs, interleave sets, WPQ depth, persistence domain, DRAM."""

    controllers: tuple[ControllerConfig, ...]
    nvdimms: tuple[NvdimmConfig, ...]
    interleave_sets: tuple[InterleaveSetConfig, ...]
    wpq_depth: int = 64
    domain: str = "adr"
    dram_bytes: int = 2 * GiB
    name: str = "custom"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError if the description is not a platform nvemu can build (controllers, NVDIMMs,
        interleave sets, WPQ depth, domain).
        """
        if not self.controllers:
            raise ConfigError("a platform needs at least one memory controller")
        if len(self.controllers) > 256:
            raise ConfigError(f"{len(self.controllers)} controllers: at most 256 are supported")
        if len({c.key for c in self.controllers}) != len(self.controllers):
            raise ConfigError("two controllers share the same (node, socket, imc)")
        if self.domain not in DOMAINS:
            raise ConfigError(f"persistence domain {self.domain!r} is not one of {DOMAINS}")
        if not 1 <= self.wpq_depth <= 4096:
            raise ConfigError(f"wpq_depth={self.wpq_depth}: must be 1..4096 lines")
        if self.dram_bytes <= 0 or self.dram_bytes % PAGE_BYTES:
            raise ConfigError(f"dram_bytes={self.dram_bytes:#x} must be a positive multiple of 4 KiB")
        handles = set()
        for i, d in enumerate(self.nvdimms):
            if not 0 <= d.controller < len(self.controllers):
                raise ConfigError(f"nvdimm {i}: controller index {d.controller} does not exist")
            if d.size <= 0 or d.size % PAGE_BYTES:
                raise ConfigError(f"nvdimm {i}: size {d.size:#x} must be a positive multiple of 4 KiB")
            handle = self.handle(i)
            if handle in handles:
                raise ConfigError(f"nvdimm {i}: device handle {handle:#x} is used twice")
            handles.add(handle)
        used: set[int] = set()
        end = None
        for k, s in enumerate(sorted(self.interleave_sets, key=lambda s: s.spa_base)):
            if not s.dimms:
                raise ConfigError(f"interleave set {k} has no NVDIMMs")
            g = s.granularity
            if g < LINE_BYTES or g & (g - 1):
                raise ConfigError(f"interleave set {k}: granularity {g} must be a power of two >= 64")
            for d in s.dimms:
                if not 0 <= d < len(self.nvdimms):
                    raise ConfigError(f"interleave set {k}: nvdimm index {d} does not exist")
                if d in used:
                    raise ConfigError(f"nvdimm {d} belongs to two interleave sets")
                used.add(d)
            sizes = {self.nvdimms[d].size for d in s.dimms}
            if len(sizes) != 1 or next(iter(sizes)) % g:
                raise ConfigError(f"interleave set {k}: members must have equal sizes that are "
                                  f"multiples of the granularity")
            if s.spa_base % PAGE_BYTES:
                raise ConfigError(f"interleave set {k}: SPA base {s.spa_base:#x} is not 4 KiB aligned")
            if end is not None and s.spa_base < end:
                raise ConfigError(f"interleave set {k}: SPA range overlaps the previous one")
            end = s.spa_base + self.set_bytes(s)
        if self.interleave_sets and self.dram_bytes > min(s.spa_base for s in self.interleave_sets):
            raise ConfigError("host DRAM would overlap the first NVDIMM SPA range")

    def handle(self, nvdimm: int) -> int:
        """The ACPI NFIT device handle of NVDIMM ``nvdimm`` (node, socket, iMC, channel, DIMM packed as ACPI
        6.x defines it).
        """
        d = self.nvdimms[nvdimm]
        c = self.controllers[d.controller]
        return device_handle(c.node, c.socket, c.imc, d.channel, d.dimm)

    def set_bytes(self, s: InterleaveSetConfig) -> int:
        """Bytes of persistent memory in interleave set ``s`` (the sum of its NVDIMMs)."""
        return sum(self.nvdimms[d].size for d in s.dimms)

    @property
    def pmem_bytes(self) -> int:
        """Bytes of persistent memory on the platform (every interleave set)."""
        return sum(self.set_bytes(s) for s in self.interleave_sets)

    def set_wpq_flush(self, s: InterleaveSetConfig) -> bool:
        """Does the region (interleave set) ``s`` support WPQ flushing? Yes when at least one of its
        NVDIMMs lists a flush hint, as Linux's ``nvdimm_has_flush()`` (drivers/nvdimm/region_devs.c)
        decides; a region whose DIMMs list none relies on ADR alone."""
        return any(self.nvdimms[d].flush_hints for d in s.dimms)

    @property
    def wpq_flush(self) -> bool:
        """Does the host have WPQ flushing anywhere (some NVDIMM lists a flush hint)? Whether a VM
        gets a write-protected vFHA depends on the regions backing it (:meth:`set_wpq_flush`)."""
        return any(d.flush_hints for d in self.nvdimms)

    def controller_flush_hints(self, controller: int) -> tuple[int, ...]:
        """The distinct flush hint addresses of the NVDIMMs behind controller ``controller``, in order."""
        hints: list[int] = []
        for d in self.nvdimms:
            if d.controller == controller:
                hints.extend(h for h in d.flush_hints if h not in hints)
        return tuple(hints)

    def with_(self, **changes: Any) -> "PlatformConfig":
        """A copy with some fields changed (``wpq_depth``, ``domain``, ...)."""
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PlatformConfig":
        """The inverse of :meth:`to_dict` (derived fields such as handles are ignored)."""
        try:
            return cls(
                controllers=tuple(ControllerConfig(c["node"], c["socket"], c["imc"]) for c in d["controllers"]),
                nvdimms=tuple(NvdimmConfig(n["controller"], n["size"], n["channel"], n["dimm"],
                                           tuple(n["flush_hints"]), bool(n.get("armed", True)))
                              for n in d["nvdimms"]),
                interleave_sets=tuple(InterleaveSetConfig(s["spa_base"], tuple(s["dimms"]), s["granularity"])
                                      for s in d["interleave_sets"]),
                wpq_depth=d["wpq_depth"], domain=d["domain"], dram_bytes=d["dram_bytes"], name=d["name"])
        except (KeyError, TypeError) as e:
            raise ConfigError(f"not a platform description: missing or malformed {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: name, domain, WPQ depth, DRAM, controllers with their flush hints, NVDIMMs."""
        return {
            "name": self.name, "domain": self.domain, "wpq_depth": self.wpq_depth,
            "dram_bytes": self.dram_bytes, "wpq_flush": self.wpq_flush,
            "controllers": [{"node": c.node, "socket": c.socket, "imc": c.imc,
                             "flush_hints": list(self.controller_flush_hints(i))}
                            for i, c in enumerate(self.controllers)],
            "nvdimms": [{"handle": self.handle(i), **decode_handle(self.handle(i)), "size": d.size,
                         "controller": d.controller, "flush_hints": list(d.flush_hints), "armed": d.armed}
                        for i, d in enumerate(self.nvdimms)],
            "interleave_sets": [{"spa_base": s.spa_base, "length": self.set_bytes(s),
                                 "dimms": list(s.dimms), "granularity": s.granularity,
                                 "wpq_flush": self.set_wpq_flush(s)}
                                for s in self.interleave_sets],
        }


FHA_BASE = 0xC000_0000  # where the built-in presets put the iMCs' flush hint MMIO pages


def make_platform(sockets: int = 2, imcs_per_socket: int = 2, dimms_per_imc: int = 1,
                  dimm_bytes: int = 256 * MiB, granularity: int = 4 * KiB, hints_per_imc: int = 1,
                  wpq_depth: int = 64, domain: str = "adr", dram_bytes: int = 2 * GiB,
                  spa_base: int = 4 * GiB, interleave: str = "socket", hint_sockets: tuple[int, ...] | None = None,
                  name: str = "custom", fha_base: int = FHA_BASE) -> PlatformConfig:
    """A regular platform laid out as real two-socket servers are (issue 16, item 6).

    ``sockets`` x ``imcs_per_socket`` controllers. Interleave sets: one per socket
    (``interleave="socket"``, the default: App Direct interleave sets do not span sockets, ipmctl's
    goals make one region per socket) or, for experiments only, one across every NVDIMM
    (``"all"``, the ``cross-socket`` preset). Flush hints: ``hints_per_imc`` per memory controller
    (the flush hint drains that iMC's WPQ), in its own 4 KiB MMIO page at ``fha_base``, listed by every NVDIMM
    on it; ``hint_sockets`` limits them to the controllers of those sockets (None: every socket).
    Device handles as the hardware reports them: node controller 0 (a glueless two-socket Xeon
    has no node controller), socket, iMC, channel, slot 1 (the persistent-memory slot of a 2-2-2
    population): 0x0001, 0x0011, 0x1001, ... as in ipmctl's and ndctl's documented listings
    (docs.pmem.io, ipmctl "Module Discovery"; ndctl "Managing NVDIMMs").
    """
    if hints_per_imc < 0:
        raise ConfigError(f"hints_per_imc={hints_per_imc}: must be >= 0")
    controllers = []
    nvdimms = []
    for s in range(sockets):
        for m in range(imcs_per_socket):
            ci = len(controllers)
            controllers.append(ControllerConfig(node=0, socket=s, imc=m))
            flushable = hint_sockets is None or s in hint_sockets
            hints = tuple(fha_base + ci * PAGE_BYTES + h * LINE_BYTES
                          for h in range(hints_per_imc if flushable else 0))
            for d in range(dimms_per_imc):
                nvdimms.append(NvdimmConfig(controller=ci, size=dimm_bytes, channel=d, dimm=1,
                                            flush_hints=hints))
    if interleave == "all":
        groups = [list(range(len(nvdimms)))]
    elif interleave == "socket":
        groups = [[i for i, d in enumerate(nvdimms) if controllers[d.controller].socket == s]
                  for s in range(sockets)]
    else:
        raise ConfigError(f"interleave={interleave!r}: 'all' or 'socket'")
    sets, base = [], spa_base
    for group in groups:
        sets.append(InterleaveSetConfig(spa_base=base, dimms=tuple(group), granularity=granularity))
        base += dimm_bytes * len(group)
    return PlatformConfig(controllers=tuple(controllers), nvdimms=tuple(nvdimms), interleave_sets=tuple(sets),
                          wpq_depth=wpq_depth, domain=domain, dram_bytes=dram_bytes, name=name)


PRESETS: dict[str, dict[str, Any]] = {
    # SPEC 5: 2 sockets x 2 iMCs, one NVDIMM each, one 4 KiB interleave set per socket, WPQ 64,
    # one flush hint per iMC, ADR.
    "default": {},
    "eadr": {"domain": "eadr"},
    "no-domain": {"domain": "none"},
    "no-wpq-flush": {"hints_per_imc": 0},
    "hints-socket0": {"hint_sockets": (0,)},          # flush hints on socket 0's iMCs only (issue 16 item 1)
    "per-socket": {"interleave": "socket"},           # the default's layout, kept for sweeps naming it
    "cross-socket": {"interleave": "all"},            # one set over both sockets: not what hardware builds
    "single": {"sockets": 1, "imcs_per_socket": 1, "dimm_bytes": 512 * MiB},
    "wide": {"sockets": 2, "imcs_per_socket": 3, "dimms_per_imc": 2, "dimm_bytes": 128 * MiB},
    "small": {"sockets": 1, "imcs_per_socket": 2, "dimm_bytes": 4 * MiB, "dram_bytes": 16 * MiB,
              "wpq_depth": 8},
    # SPEC 5: the machine of the published Optane DC studies (Izraelevitz et al., "Basic Performance
    # Measurements of the Intel Optane DC Persistent Memory Module", arXiv:1903.05714, section 2; Yang et
    # al., FAST '20): 2 sockets x 2 iMCs x 3 channels, one 256 GiB Optane DIMM per channel (1.5 TiB per
    # socket, 3 TiB in all), an App Direct interleave set per socket (6-way, 4 KiB), 6 x 32 GiB DRAM per
    # socket, ADR. One flush hint per iMC (its WPQ); the hints sit in an MMIO page above NVDIMM space
    # (the layout of hint pages is a free parameter: only which iMC a hint drains matters).
    "optane-3t": {"sockets": 2, "imcs_per_socket": 2, "dimms_per_imc": 3, "dimm_bytes": 256 * GiB,
                  "interleave": "socket", "granularity": 4 * KiB, "hints_per_imc": 1, "domain": "adr",
                  "dram_bytes": 2 * 192 * GiB,
                  "spa_base": 384 * GiB, "fha_base": 384 * GiB + 3 * (1 << 40)},
}


def preset(name: str = "default", **overrides: Any) -> PlatformConfig:
    """A built-in platform by name (see ``PRESETS``); keyword overrides go to :func:`make_platform`."""
    if name not in PRESETS:
        raise ConfigError(f"unknown platform preset {name!r}; known: {', '.join(PRESETS)}")
    return make_platform(**{**PRESETS[name], **overrides, "name": name})


# Sources of the timing model's figures (SPEC 6). Each TimingModel field names one of these or FREE.
YANG_2020 = ("Yang, Kim, Hoseinzadeh, Izraelevitz, Swanson: An Empirical Guide to the Behavior and Use of "
             "Scalable Persistent Memory, FAST 2020")
IZRAELEVITZ_2019 = "Izraelevitz et al.: Basic Performance Measurements of the Intel Optane DC PMM, arXiv 1903.05714"
SPLITX = "Landau, Ben-Yehuda, Gordon: SplitX: Split Guest/Hypervisor Execution on Multi-Core, WIOV 2011 (KVM)"
FREE = "free: nothing published; the bench's sensitivity mode shows how results move with it"
# Why the timing queues (drain and reads) are per NVDIMM, not per controller: the iMC keeps its pending
# queues per memory channel, one Optane DIMM per channel on the studies' machine.
IMC_QUEUES = (YANG_2020 + ", section 2.1 and Fig. 1: the iMC keeps read and write pending queues for each "
              "Optane DIMM. Intel's Cascade Lake-SP uncore events (Linux perf, pmu-events/arch/x86/cascadelakex/"
              "uncore-memory.json) count them per iMC channel: UNC_M_PMM_WPQ_OCCUPANCY.ALL (write pending queue "
              "occupancy for Intel Optane DC persistent memory), UNC_M_PMM_WPQ_CYCLES_FULL, "
              "UNC_M_PMM_RPQ_CYCLES_FULL")

TIMING_SOURCES: dict[str, str] = {
    "cpu_ghz": FREE + " (converts the cycle figures; a Cascade Lake-class base clock)",
    "op_ns": FREE + " (a retired op that hits the cache, about one cycle)",
    "walk_ref_cycles": FREE + " (one paging-structure reference served by L2)",
    "read_seq_ns": YANG_2020 + ", Fig. 2: Optane read, sequential",
    "read_rand_ns": YANG_2020 + ", Fig. 2: Optane read, random",
    "dram_read_seq_ns": YANG_2020 + ", Fig. 2: DRAM read, sequential",
    "dram_read_rand_ns": YANG_2020 + ", Fig. 2: DRAM read, random",
    "write_clwb_ns": YANG_2020 + ", Fig. 2: Optane write, store+clwb (best case: sequential)",
    "write_ntstore_ns": YANG_2020 + ", Fig. 2: Optane write, ntstore (best case: sequential)",
    "dram_write_clwb_ns": YANG_2020 + ", Fig. 2: DRAM write, store+clwb",
    "dram_write_ntstore_ns": YANG_2020 + ", Fig. 2: DRAM write, ntstore",
    "persist_clwb_ns": YANG_2020 + ": persisting 64 B with store+clwb and one fence (random address)",
    "persist_ntstore_ns": YANG_2020 + ": persisting 64 B with ntstore and one fence (random address)",
    "media_write_gbps": IZRAELEVITZ_2019 + ": write bandwidth of one DIMM",
    "media_read_gbps": IZRAELEVITZ_2019 + ": read bandwidth of one DIMM",
    "fill_buffers": FREE + " (line-fill / write-combining buffers per core: the misses and write-backs one "
                           "vCPU keeps in flight. Intel 64 and IA-32 Architectures Optimization Reference Manual, "
                           "Sandy Bridge microarchitecture chapter: 10 L1D line fill buffers (LFB); no count is "
                           "given there for "
                           "Skylake-SP or Cascade Lake (the studies' Xeon Platinum 8260, NVSL/OptaneStudy README), "
                           "so 10 is the default. "
                           "One thread of Yang et al. 2020, Fig. 4 reads 2.88 GB/s, about 7 lines in flight at "
                           "the 165 ns load latency: a count above 10 would move the model further from it)",
    "flush_issue_ns": FREE + " (issuing a clwb/clflushopt/clflush)",
    "fence_ns": FREE + " (an sfence/mfence with nothing outstanding)",
    "fha_write_ns": FREE + " (an uncached write to a physical flush hint, before its WPQ is empty)",
    "exit_cycles": SPLITX + ": direct cost of a VM exit round trip (2,000 cycles; a KVM_RUN round trip is 2,528)",
    "write_protect_cycles": FREE + " (EPT violation: find the vFHA, fetch, decode and emulate the store)",
    "mmio_cycles": FREE + " (EPT misconfiguration on KVM's fast MMIO bus: no decode, skip the instruction)",
    "hypercall_cycles": FREE + " (VMCALL dispatch to the flush handler)",
}


@dataclass(frozen=True)
class TimingModel:
    """Emulated time (SPEC 6): every parameter is a published figure or marked free
    (``TIMING_SOURCES`` names each one's source). :meth:`engine_timing` turns it into the
    engines' picosecond table (``nvemu._constants.TIMING_FIELDS``).

    How the published figures become engine latencies (calibration by construction): the
    engines charge every op ``op_ns``; a load adds its latency, sequential when it is the same or
    the next line as the vCPU's previous load; a store+clwb write-back travels ``wb`` to its
    controller's WPQ and a fence waits for it; an nt-store travels ``nt``, and the following
    nt-stores to the same line merge into it (the write-combining buffer). The travel times are
    solved from the figures for exactly the traces ``nvemu timing`` runs (64 B = eight 8-byte
    stores, one clwb, one sfence): ``write_*`` for sequential lines, ``persist_*`` for random
    ones. The iMC keeps a WPQ per NVDIMM (see ``IMC_QUEUES``), each of ``wpq_depth`` lines for time
    and drained at ``media_write_gbps``, all in parallel.

    Loads in flight: a trace does not say which op consumes a load's data, so the engines let
    independent loads overlap. A load that misses takes one of the vCPU's ``fill_buffers`` line
    buffers until its data arrives (a load to the line still being filled shares it); with none
    free the vCPU waits. Each NVDIMM serves one line per ``64 B / media_read_gbps`` to all vCPUs,
    so sequential read bandwidth is ``min(vCPUs x fill_buffers x 64 B / latency, NVDIMMs x
    media_read_gbps)``. What waits for a load's data: an MFENCE (all of the vCPU's
    loads), a VM exit (serialising) and a store or flush to the line of the vCPU's last load (a
    read-modify-write); an SFENCE does not (it orders stores only). The load latencies are solved
    for the trace ``nvemu timing`` runs (one 64 B load, one MFENCE). Write-backs use the same
    buffers: a clwb of a dirty line or a line of nt-stores holds a buffer until its WPQ accepts
    the line, so a full WPQ stalls the writer once every buffer waits on it.

    Time is not durability: a line leaves a WPQ for the durable image only when a flush or an
    overflow drains it, whatever the clock says (no platform promises drain timing).

    Examples
    --------
    >>> t = TimingModel()
    >>> round(t.exit_ns, 1)                 # SplitX's 2,000 cycles at 2.2 GHz
    909.1
    >>> TimingModel(mmio_cycles=200).mmio_cycles
    200
    """

    cpu_ghz: float = 2.2
    op_ns: float = 0.5
    walk_ref_cycles: float = 30
    read_seq_ns: float = 169.4
    read_rand_ns: float = 305.0
    dram_read_seq_ns: float = 81.4
    dram_read_rand_ns: float = 101.5
    write_clwb_ns: float = 62.3
    write_ntstore_ns: float = 90.4
    dram_write_clwb_ns: float = 57.3
    dram_write_ntstore_ns: float = 86.9
    persist_clwb_ns: float = 116.4
    persist_ntstore_ns: float = 124.7
    media_write_gbps: float = 2.3
    media_read_gbps: float = 6.6
    fill_buffers: int = 10
    flush_issue_ns: float = 1.0
    fence_ns: float = 5.0
    fha_write_ns: float = 150.0
    exit_cycles: float = 2000
    write_protect_cycles: float = 1500
    mmio_cycles: float = 400
    hypercall_cycles: float = 600

    FREE_PARAMETERS = tuple(k for k, v in TIMING_SOURCES.items() if v.startswith("free"))

    def __post_init__(self) -> None:
        for name in TIMING_SOURCES:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v != v or v == float("inf"):
                raise ConfigError(f"timing {name}={v!r} must be a finite non-negative number")
        if self.cpu_ghz <= 0 or self.media_write_gbps <= 0 or self.media_read_gbps <= 0:
            raise ConfigError("timing cpu_ghz, media_write_gbps and media_read_gbps must be positive")
        if self.fill_buffers != int(self.fill_buffers) or not 1 <= self.fill_buffers <= MAX_FILL_BUFFERS:
            raise ConfigError(f"timing fill_buffers={self.fill_buffers!r} must be a whole number "
                              f"from 1 to {MAX_FILL_BUFFERS}")
        self.engine_timing()                      # refuses figures that leave a negative latency

    @property
    def exit_ns(self) -> float:
        """The VM exit round trip in ns (``exit_cycles`` at ``cpu_ghz``)."""
        return self.exit_cycles / self.cpu_ghz

    def engine_timing(self) -> tuple[int, ...]:
        """The engines' table (``TIMING_FIELDS``) in integer picoseconds (``drain_line`` and
        ``read_line`` per NVDIMM; ``fill_buffers`` a count)."""
        op, fence, issue = self.op_ns, self.fence_ns, self.flush_issue_ns
        clwb_rest = 9 * op + issue + fence        # 8 stores, the clwb, the fence's own op
        nt_rest = op + fence                      # the first nt-store; the other seven merge
        load_rest = op + fence                    # the load's op; the MFENCE's op overlaps the load
        ns = {
            "op": op, "walk_ref": self.walk_ref_cycles / self.cpu_ghz,
            "load_seq": self.read_seq_ns - load_rest, "load_rand": self.read_rand_ns - load_rest,
            "dram_load_seq": self.dram_read_seq_ns - load_rest,
            "dram_load_rand": self.dram_read_rand_ns - load_rest,
            "flush_issue": issue,
            "wb_seq": self.write_clwb_ns - clwb_rest, "wb_rand": self.persist_clwb_ns - clwb_rest,
            "nt_seq": self.write_ntstore_ns - nt_rest, "nt_rand": self.persist_ntstore_ns - nt_rest,
            "dram_wb": self.dram_write_clwb_ns - clwb_rest, "dram_nt": self.dram_write_ntstore_ns - nt_rest,
            "fence": fence, "drain_line": LINE_BYTES / self.media_write_gbps,
            "fha_write": self.fha_write_ns, "exit": self.exit_ns,
            "write_protect": self.write_protect_cycles / self.cpu_ghz, "mmio": self.mmio_cycles / self.cpu_ghz,
            "hypercall": self.hypercall_cycles / self.cpu_ghz,
            "read_line": LINE_BYTES / self.media_read_gbps,
        }
        for name, v in ns.items():
            if v < 0:
                raise ConfigError(f"timing: the figures leave {name} = {v:.1f} ns, below zero; lower op_ns, "
                                  f"flush_issue_ns or fence_ns")
            if v > 1e6:
                raise ConfigError(f"timing: {name} = {v:.1f} ns is above a millisecond")
        ps = {name: round(v * 1000) for name, v in ns.items()}
        ps["fill_buffers"] = int(self.fill_buffers)          # a count, not a time
        return tuple(ps[name] for name in TIMING_FIELDS)

    def to_dict(self) -> dict[str, float]:
        """The parameters by name, e.g. ``{"cpu_ghz": 2.2, "op_ns": 0.5, ...}``."""
        return {n: getattr(self, n) for n in TIMING_SOURCES}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TimingModel":
        """The inverse of :meth:`to_dict`; a dict of the old ``CostModel`` (cycle counts, keys
        ``op, walk_level, exit, ...``) is converted by :meth:`from_costs`."""
        if not isinstance(d, dict):
            raise ConfigError(f"a timing model is a table of parameters, not {type(d).__name__}")
        if d and set(d) <= set(LEGACY_COST_FIELDS):
            return cls.from_costs(d)
        unknown = set(d) - set(TIMING_SOURCES)
        if unknown:
            raise ConfigError(f"unknown timing parameters: {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(TIMING_SOURCES)}")
        return cls(**d)

    @classmethod
    def from_costs(cls, costs: dict[str, int], cpu_ghz: float = 2.2) -> "TimingModel":
        """Migration from the cycle ``CostModel`` of nvemu <= 0.x (snapshots, sweep files): cycle
        counts become times at ``cpu_ghz``; ``drain_line`` becomes the media bandwidth that drains
        a line in that time. Published figures keep their defaults."""
        unknown = set(costs) - set(LEGACY_COST_FIELDS)
        if unknown:
            raise ConfigError(f"unknown cost parameters: {', '.join(sorted(unknown))}")
        out: dict[str, float] = {"cpu_ghz": cpu_ghz}
        for old, new in (("walk_level", "walk_ref_cycles"), ("exit", "exit_cycles"),
                         ("write_protect", "write_protect_cycles"), ("mmio", "mmio_cycles"),
                         ("hypercall", "hypercall_cycles")):
            if old in costs:
                out[new] = costs[old]
        if "op" in costs:
            out["op_ns"] = costs["op"] / cpu_ghz
        if "fha_write" in costs:
            out["fha_write_ns"] = costs["fha_write"] / cpu_ghz
        if costs.get("drain_line"):
            out["media_write_gbps"] = LINE_BYTES * cpu_ghz / costs["drain_line"]
        return cls(**out)


LEGACY_COST_FIELDS = ("op", "walk_level", "exit", "write_protect", "mmio", "hypercall", "fha_write", "drain_line")
DEFAULT_TIMING = TimingModel()
