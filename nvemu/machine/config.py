"""Plain descriptions of a host platform and of the cost model (frozen dataclasses).

A :class:`PlatformConfig` is what capability discovery produces from a physical NFIT and what
the built-in presets are; :class:`nvemu.machine.platform.Platform` builds the emulated machine from one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .._constants import COST_FIELDS, LINE_BYTES, PAGE_BYTES
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
    channel and slot, its size in bytes and its flush hint addresses (SPA of each hint)."""

    controller: int
    size: int
    channel: int = 0
    dimm: int = 0
    flush_hints: tuple[int, ...] = ()


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
                                           tuple(n["flush_hints"])) for n in d["nvdimms"]),
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
                         "controller": d.controller, "flush_hints": list(d.flush_hints)}
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


@dataclass(frozen=True)
class CostModel:
    """Cycle cost of each emulated event (SPEC 6). No public figure exists for several of these,
    so they are parameters; each default's basis is given beside it."""

    op: int = 1                 # one retired guest memory op, the native baseline
    walk_level: int = 30        # one page-walk memory reference (an L2/L3 hit; paging-structure caches ignored)
    exit: int = 1200            # VM exit + entry round trip (estimate; a KVM_RUN round trip on AMD is ~2,500, LKML)
    write_protect: int = 800    # EPT-violation handling on top: check the GPA, skip the instruction, no decode
    mmio: int = 2500            # in-kernel MMIO emulation on top: fetch + decode + emulate the instruction
    hypercall: int = 300        # VMCALL dispatch on top
    fha_write: int = 200        # one uncached write to a physical flush hint
    drain_line: int = 600       # one WPQ line written to media: ~200 ns (100-300 ns) at 3 GHz

    FIELDS = COST_FIELDS

    def __post_init__(self) -> None:
        for name in self.FIELDS:
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"cost {name}={v!r} must be a non-negative integer (cycles)")

    def as_tuple(self) -> tuple[int, ...]:
        """The costs in :attr:`FIELDS` order, as the engines take them."""
        return tuple(getattr(self, n) for n in self.FIELDS)

    def to_dict(self) -> dict[str, int]:
        """The costs by name (emulated cycles), e.g. ``{"op": 1, "walk_level": 30, ...}``."""
        return {n: getattr(self, n) for n in self.FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> "CostModel":
        """A cost model from ``{name: cycles}``; names not in :attr:`FIELDS` raise ConfigError, missing ones
        keep their defaults.
        """
        unknown = set(d) - set(cls.FIELDS)
        if unknown:
            raise ConfigError(f"unknown cost parameters: {', '.join(sorted(unknown))}")
        return cls(**d)


DEFAULT_COSTS = CostModel()
