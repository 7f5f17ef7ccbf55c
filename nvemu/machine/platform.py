"""The host platform: memory controllers with WPQs and flush hints, NVDIMMs, interleave sets,
the persistence domain, and host memory, built from a :class:`PlatformConfig` or a physical NFIT."""

from __future__ import annotations

import math
from typing import Iterable

from .. import _backend, _state
from .._constants import CTRL_STAT_NAMES, DOMAIN_NAMES, PAGE_BYTES
from .._image import DurableImage
from .._layout import CHUNK_SHIFT, EngineLayout, InterleaveLayout
from .config import DEFAULT_TIMING, TimingModel, PlatformConfig, preset
from ..errors import ConfigError, ResourceError


class RangeAllocator:
    """First-fit allocator of aligned address ranges (host DRAM, NVDIMM space)."""

    def __init__(self, base: int, length: int) -> None:
        self.base = base
        self.length = length
        self._free: list[tuple[int, int]] = [(base, length)] if length else []

    @property
    def free_bytes(self) -> int:
        return sum(n for _, n in self._free)

    def alloc(self, size: int, align: int, what: str) -> int:
        for start, n in self._free:
            addr = -(-start // align) * align
            if addr + size <= start + n:
                self.claim(addr, size)
                return addr
        raise ResourceError(f"out of host {what}: no free {size:#x}-byte range aligned to {align:#x} "
                            f"({self.free_bytes:#x} bytes free in all)")

    def claim(self, addr: int, size: int) -> None:
        """Take exactly ``[addr, addr+size)``, which must be free (restoring a snapshot)."""
        for k, (start, n) in enumerate(self._free):
            if start <= addr and addr + size <= start + n:
                pieces = [(start, addr - start), (addr + size, start + n - addr - size)]
                self._free[k:k + 1] = [(a, m) for a, m in pieces if m]
                return
        raise ResourceError(f"host range [{addr:#x}, {addr + size:#x}) is not free")

    def free(self, addr: int, size: int) -> None:
        self._free.append((addr, size))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for a, n in self._free:
            if merged and merged[-1][0] + merged[-1][1] == a:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((a, n))
        self._free = merged


class Platform:
    """A host machine. ``Platform()`` is the ``default`` preset (SPEC 5).

    Host-physical layout: DRAM at ``[0, dram_bytes)``, NVDIMM space from the first interleave set's
    SPA base, the sets back to back (a set's HPA equals its SPA when the NFIT's sets are contiguous).
    Host memory is sparse: chunks of ``2**chunk_shift`` bytes are allocated on first write (advised
    for transparent huge pages when ``huge_pages``), up to ``memory_budget`` bytes (default: the
    ``NVEMU_MEMORY_BUDGET`` environment variable, else half the machine's memory), beyond which a
    write raises ResourceError.

    Examples
    --------
    >>> p = Platform("small")
    >>> p.n_controllers, p.domain, p.wpq_flush
    (2, 'adr', True)
    """

    def __init__(self, config: PlatformConfig | str = "default", timing: TimingModel = DEFAULT_TIMING,
                 *, pool_tables: int = 1 << 16, max_vms: int = 256, backend: str | None = None,
                 memory_budget: int | None = None, chunk_shift: int = CHUNK_SHIFT,
                 huge_pages: bool = True) -> None:
        if isinstance(config, str):
            config = preset(config)
        self.config = config
        if not isinstance(timing, TimingModel):
            raise ConfigError(f"timing must be a TimingModel, not {type(timing).__name__}")
        self.timing = timing
        sets = sorted(config.interleave_sets, key=lambda s: s.spa_base)
        pmem_base = sets[0].spa_base if sets else config.dram_bytes
        layouts, hpa = [], pmem_base
        for s in sets:
            length = config.set_bytes(s)
            layouts.append(InterleaveLayout(hpa, length, s.granularity,
                                            tuple(config.nvdimms[d].controller for d in s.dimms)))
            hpa += length
        self.set_ranges = [(s, lay.hpa_base, lay.length) for s, lay in zip(sets, layouts)]
        self.layout = EngineLayout(dram_bytes=config.dram_bytes, pmem_base=pmem_base, sets=tuple(layouts),
                                   n_controllers=len(config.controllers), wpq_depth=config.wpq_depth,
                                   domain=int(DOMAIN_NAMES[config.domain]),
                                   timing=timing.engine_timing(),
                                   pool_tables=pool_tables, max_vms=max_vms, chunk_shift=chunk_shift,
                                   memory_budget=memory_budget, huge_pages=huge_pages)
        self.engine = _backend.engine_class(backend)(self.layout)
        self.backend = backend or _backend.BACKEND
        self.dram = RangeAllocator(0, config.dram_bytes)
        self.pmem_sets = [RangeAllocator(lay.hpa_base, lay.length) for lay in layouts]


    # ---- description ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The platform's name (preset name, or ``nfit`` for one built from a table)."""
        return self.config.name

    @property
    def domain(self) -> str:
        """The persistence domain: ``none``, ``adr`` or ``eadr``."""
        return self.config.domain

    @property
    def wpq_flush(self) -> bool:
        """Does the host have WPQ flushing anywhere (some NVDIMM lists a flush hint)? A VM's
        strategy follows the sets backing it (:meth:`set_wpq_flush`)."""
        return self.config.wpq_flush

    def set_index_of(self, hpa: int) -> int:
        """Index into ``set_ranges`` of the interleave set holding ``hpa``."""
        for k, (_, base, length) in enumerate(self.set_ranges):
            if base <= hpa < base + length:
                return k
        raise ConfigError(f"HPA {hpa:#x} is not NVDIMM space")

    def set_wpq_flush(self, set_index: int) -> bool:
        """Does interleave set ``set_index`` (of ``set_ranges``) support WPQ flushing (Linux
        ``nvdimm_has_flush``: one of its NVDIMMs lists a flush hint)?"""
        return self.config.set_wpq_flush(self.set_ranges[set_index][0])

    @property
    def n_controllers(self) -> int:
        """Memory controllers (each with one WPQ)."""
        return len(self.config.controllers)

    @property
    def pmem_base(self) -> int:
        """Host-physical address where persistent memory starts."""
        return self.layout.pmem_base

    @property
    def pmem_bytes(self) -> int:
        """Bytes of persistent memory (every interleave set)."""
        return self.layout.pmem_bytes

    def stripe_bytes(self, set_index: int) -> int:
        """Bytes of one full stripe (every member's granule once) of an interleave set."""
        s = self.set_ranges[set_index][0]
        return s.granularity * len(s.dimms)

    def controller_of(self, hpa: int) -> int:
        """Controller whose WPQ takes the NVDIMM line at ``hpa``."""
        return int(self.engine.controller_of(hpa))

    def nvdimm_of(self, hpa: int) -> int:
        """NVDIMM (index into ``config.nvdimms``) holding the line at ``hpa``."""
        for s, base, length in self.set_ranges:
            if base <= hpa < base + length:
                return s.dimms[(hpa - base) // s.granularity % len(s.dimms)]
        raise ConfigError(f"HPA {hpa:#x} is not NVDIMM space")

    def is_pmem(self, hpa: int) -> bool:
        """Whether host-physical address ``hpa`` lies in persistent memory."""
        return self.pmem_base <= hpa < self.pmem_base + self.pmem_bytes

    # ---- host memory -------------------------------------------------------------------------

    def alloc_dram(self, size: int, align: int = PAGE_BYTES) -> int:
        """Reserve ``size`` bytes of host DRAM aligned to ``align``; returns the HPA (ResourceError when
        full).
        """
        return self.dram.alloc(size, align, "DRAM")

    def alloc_pmem(self, size: int, align: int = PAGE_BYTES) -> int:
        """NVDIMM space in whole stripes of an interleave set, so the range spreads over the
        controllers as the host's does, starting on a multiple of ``align`` too (2 MiB for a VM
        mapped with 2 MiB pages); the set with the most free space first, which spreads VMs over
        sockets where each socket has its own set."""
        order = sorted(range(len(self.pmem_sets)), key=lambda k: (-self.pmem_sets[k].free_bytes, k))
        for k in order:
            stripe = self.stripe_bytes(k)
            need = -(-size // stripe) * stripe
            try:
                return self.pmem_sets[k].alloc(need, math.lcm(stripe, align), "NVDIMM space")
            except ResourceError:
                continue
        raise ResourceError(f"out of host NVDIMM space: no interleave set has {size:#x} free bytes "
                            f"({sum(a.free_bytes for a in self.pmem_sets):#x} bytes free in all)")

    def _pmem_allocator(self, hpa: int) -> tuple[RangeAllocator, int]:
        for k, allocator in enumerate(self.pmem_sets):
            if allocator.base <= hpa < allocator.base + allocator.length:
                return allocator, self.stripe_bytes(k)
        raise ConfigError(f"HPA {hpa:#x} is not NVDIMM space")

    def claim_pmem(self, hpa: int, size: int) -> None:
        """Reserve the persistent-memory range at ``hpa`` (rounded up to whole interleave stripes)."""
        allocator, stripe = self._pmem_allocator(hpa)
        allocator.claim(hpa, -(-size // stripe) * stripe)

    def free_pmem(self, hpa: int, size: int) -> None:
        """Release a range :meth:`claim_pmem` reserved."""
        allocator, stripe = self._pmem_allocator(hpa)
        allocator.free(hpa, -(-size // stripe) * stripe)

    def prefault(self, hpa: int, n: int) -> None:
        """Touch the host arrays behind ``[hpa, hpa+n)`` now (as QEMU's -mem-prealloc does), so
        a timed run does not pay the kernel's first-touch page faults. Contents are unchanged."""
        self.engine.prefault(hpa, n)

    def read_memory(self, hpa: int, n: int) -> bytes:
        """What CPUs see at ``hpa``."""
        return self.engine.read_memory(hpa, n)

    def read_media(self, hpa: int, n: int) -> bytes:
        """What the NVDIMM media durably holds at ``hpa``."""
        return self.engine.read_media(hpa, n)

    def adr_holds(self, hpa: int, adr_failure: bool = False) -> bool:
        """Does ADR protect the NVDIMM line at ``hpa`` at a power failure? Not when ADR fails
        (``adr_failure``), and not for an NVDIMM whose NFIT flags say the platform flush failed or
        it is not armed (``NvdimmConfig.armed``)."""
        return not adr_failure and self.config.nvdimms[self.nvdimm_of(hpa)].armed

    def _adr_at_risk(self, adr_failure: bool) -> bool:
        return self.domain != "none" and (adr_failure or not all(d.armed for d in self.config.nvdimms))

    def durable_read(self, hpa: int, n: int, adr_failure: bool = False) -> bytes:
        """What ``[hpa, hpa+n)`` would hold after a power failure now; nothing is failed.

        With ``adr_failure`` the failure also defeats ADR (SPEC 7.3): what sits in the WPQs is lost
        and, on an ``eadr`` host, the dirty cache lines too, so only media survives; the same holds
        at any power failure for the lines of an NVDIMM that is not ``armed``. Sources: Linux
        commit ab630891ce0e (libnvdimm, region: sysfs trigger for nvdimm_flush()) documents the
        deep flush (a flush-hint write) as what limits the damage of an ADR failure; eADR rides on
        ADR: Linux ``acpi_nfit_register_region`` (drivers/acpi/nfit/core.c) says the NFIT
        persistence-domain bits are hierarchical (CPU cache flush on power loss implies memory
        controller flush: the caches are written back into the memory controller, whose queues
        ADR then drains), and PMDK's ``pmem_deep_flush`` writes back the caches "regardless of
        eADR support" (libpmem/pmem.c; pmem2_deep_flush(3): "not to rely on automatic cache or
        WPQ flush on power failure (ADR/eADR)")."""
        if not self._adr_at_risk(adr_failure):
            return self.engine.durable_read(hpa, n)
        if adr_failure:
            return self.read_media(hpa, n)
        return _state.durable_read(self.engine, hpa, n, held=self.adr_holds)

    def line_states(self) -> dict[int, int]:
        """{line HPA: LineState} of every NVDIMM line that is not CLEAN."""
        return self.engine.line_states()

    def wpq(self, controller: int) -> list[tuple[int, bytes]]:
        """The WPQ of ``controller``, oldest first: (line HPA, its 64 bytes as written back)."""
        return self.engine.wpq_entries(controller)

    def controller_stats(self) -> list[dict[str, int]]:
        """Per-controller counters, one dict per controller: lines ``enqueued`` in its WPQ, ``drained`` to media,
        ``drained_full`` (drained because the WPQ was full) and ``fha_writes`` to its flush hints."""
        rows = self.engine.controller_stats()
        return [{name: int(v) for name, v in zip(CTRL_STAT_NAMES, row)} for row in rows]

    def drain(self, controllers: Iterable[int] | None = None) -> int:
        """Write every listed (default: all) controller's flush hint: their WPQs drain to media."""
        return int(self.engine.drain(range(self.n_controllers) if controllers is None else controllers))

    def power_fail(self, adr_failure: bool = False) -> DurableImage:
        """Cut the power and reboot; returns the durable image of NVDIMM space (SPEC 7.3), sparse:
        ``image.read(hpa, n)``, ``image.ranges()``, ``image[off:off + n]``, ``image.to_array()``.
        With ``adr_failure`` (or for an NVDIMM that is not ``armed``) the WPQ contents and, under
        eADR, the dirty cache lines of the unprotected lines are lost (see :meth:`durable_read`)."""
        if not self._adr_at_risk(adr_failure):
            return self.engine.power_fail()
        # Only the lines whose fate differs are named (queued ones; under eADR the dirty ones too):
        # the machine is failed in place, never copied (the image is its one copy of NVDIMM space).
        at_risk = {hpa for c in range(self.engine.n_controllers) for hpa, _ in self.engine.wpq_entries(c)}
        if self.domain == "eadr":
            at_risk.update(self.engine.line_states())
        return self.engine.power_fail([hpa for hpa in sorted(at_risk) if not self.adr_holds(hpa, adr_failure)])

    def discard(self, hpa: int, n: int) -> None:
        """Scrub host range ``[hpa, hpa+n)``: its queued WPQ copies, memory, media and line states
        are gone (its chunks freed) before anyone is handed the range again."""
        self.engine.discard(hpa, n)

    @property
    def memory_budget(self) -> int:
        """Bytes of host memory the emulator may touch (ResourceError beyond)."""
        return int(self.engine.memory_budget)

    @memory_budget.setter
    def memory_budget(self, budget: int) -> None:
        self.engine.set_memory_budget(budget)

    @property
    def touched_bytes(self) -> int:
        """Bytes of host memory chunks allocated so far (memory, media, line state)."""
        return int(self.engine.touched_bytes)

    def summary(self) -> dict:
        """A JSON-ready description: the configuration plus the persistent-memory range and the engine."""
        return {**self.config.to_dict(), "pmem_base": self.pmem_base, "pmem_bytes": self.pmem_bytes,
                "backend": self.backend}
