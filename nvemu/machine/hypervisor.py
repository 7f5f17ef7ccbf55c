"""The hypervisor: owns one platform, creates and destroys VMs, allocates host memory, keeps each
VM's second-level page table and handles the exits the core hands back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from .._constants import EPT_RWX, PAGE_BYTES, PAGE_SIZES, BadRecord, ExitReason, Op, RunStatus
from .._records import record_message
from .config import DEFAULT_TIMING, GiB, MiB, PlatformConfig, TimingModel
from ..errors import ConfigError, GuestFault, LifecycleError, ResourceError, TraceError
from .flush_hints import FANOUTS, STRATEGIES, VirtualFlushHint, allocate_vfha, resolve_strategy
from .platform import Platform
from .vm import VM, MemoryRange, VmState

MMIO_HOLE = (3 * GiB, 1 * GiB)      # [3 GiB, 4 GiB): where PCI MMIO lives in a PC guest
NVDIMM_ALIGN = 1 * GiB              # vNVDIMMs start on 1 GiB boundaries, above 4 GiB
MAX_NVDIMMS = 64                    # virtual NVDIMMs per VM (ESXi's limit: "Configuration Maximums", vSphere 7)

ExitHandler = Callable[[GuestFault], str]
"""Called with an exit the core did not handle; returns ``"skip"`` (resume at the next op) or
``"retry"`` (run the op again, e.g. after fixing a mapping), or raises."""


def raise_fault(fault: GuestFault) -> str:
    """The default exit handler: deliver the fault to the caller as an exception."""
    raise fault


@dataclass(frozen=True)
class RunResult:
    ops: int             # records executed
    python_exits: int    # exits handed to the Python handler


class Hypervisor:
    """One host and its VMs.

    Examples
    --------
    >>> hv = Hypervisor("small")
    >>> vm = hv.create_vm(dram=4 << 20, nvdimms=[2 << 20]).start()
    >>> cpu = vm.vcpu(0)
    >>> cpu.store(vm.nvdimms[0].gpa, 0xdead); cpu.clwb(vm.nvdimms[0].gpa); cpu.sfence()
    >>> cpu.store(vm.vfha_gpa, 1)                   # write-protected: exits, WPQs drain
    >>> vm.stats().exits[ExitReason.EPT_VIOLATION], vm.stats()["lines_drained"]
    (1, 1)
    """

    def __init__(self, platform: Platform | PlatformConfig | str = "default",
                 timing: TimingModel = DEFAULT_TIMING, **platform_kwargs: object) -> None:
        if not isinstance(platform, Platform):
            platform = Platform(platform, timing, **platform_kwargs)
        self.platform = platform
        self.vms: dict[int, VM] = {}

    # ---- VM lifecycle -----------------------------------------------------------------------

    def create_vm(self, dram: int = 256 * MiB, nvdimms: Sequence[int | tuple[int, int]] = (256 * MiB,),
                  vcpus: int = 1, strategy: str = "auto", fanout: str = "broadcast", *,
                  tlb_entries: int = 256, page_size: int = PAGE_BYTES, vfha_placement: str | int = "above-nvdimms",
                  reserved: Iterable[tuple[int, int]] = (), prefault: bool = False) -> VM:
        """Create a VM (state ``created``; call ``start()``). ``nvdimms`` lists vNVDIMM sizes, or
        ``(gpa, size)`` pairs to place one explicitly. Raises ConfigError for a malformed request
        and ResourceError for one the host cannot satisfy (memory, overlap). ``prefault`` touches
        the host memory behind the vNVDIMMs now, so timed runs skip first-touch page faults."""
        resolve_strategy(strategy, False)           # refuses an unknown name before anything is allocated
        if fanout not in FANOUTS:
            raise ConfigError(f"unknown fan-out {fanout!r}; known: {', '.join(FANOUTS)}")
        if page_size not in PAGE_SIZES:
            raise ConfigError(f"page_size {page_size:#x}: must be 4 KiB or 2 MiB")
        if not isinstance(vcpus, int) or not 1 <= vcpus <= 256:
            raise ConfigError(f"vcpus={vcpus!r}: must be 1..256")
        if not isinstance(dram, int) or dram < 0 or dram % page_size:
            raise ConfigError(f"dram={dram!r}: must be a non-negative multiple of the {page_size:#x}-byte page")
        vm_id = next(i for i in range(self.platform.layout.max_vms + 1) if i not in self.vms)
        if vm_id == self.platform.layout.max_vms:
            raise ResourceError(f"the hypervisor already runs {vm_id} VMs, its maximum")

        if len(nvdimms) > MAX_NVDIMMS:
            raise ConfigError(f"{len(nvdimms)} vNVDIMMs: a VM has at most {MAX_NVDIMMS}")
        reserved = [MMIO_HOLE, *[(int(a), int(n)) for a, n in reserved]]
        dram_gpas = self._dram_layout(dram)
        nv_gpas = self._nvdimm_layout(nvdimms, page_size, max((a + n for a, n in dram_gpas), default=0))
        occupied: list[tuple[int, int]] = []
        for kind, ranges in (("DRAM", dram_gpas), ("vNVDIMM", nv_gpas), ("reserved", reserved)):
            for a, n in ranges:
                clash = next(((b, m) for b, m in occupied if a < b + m and b < a + n), None)
                if clash:
                    raise ResourceError(f"{kind} range [{a:#x}, {a + n:#x}) overlaps [{clash[0]:#x}, "
                                        f"{clash[0] + clash[1]:#x})")
                occupied.append((a, n))
        vfha_gpa = allocate_vfha(occupied, vfha_placement, nv_gpas, dram_gpas)

        platform, engine = self.platform, self.platform.engine
        dram_ranges: list[MemoryRange] = []
        nv_ranges: list[MemoryRange] = []
        vfha_hpa = None
        added = False
        try:
            for a, n in dram_gpas:
                dram_ranges.append(MemoryRange(a, n, platform.alloc_dram(n, page_size), "dram"))
            for a, n in nv_gpas:
                nv_ranges.append(MemoryRange(a, n, platform.alloc_pmem(n, page_size), "nvdimm"))
            strategy = resolve_strategy(strategy, self._backed_by_flushable_region(nv_ranges))
            vfha_hpa = platform.alloc_dram(PAGE_BYTES)
            engine.add_vm(vm_id, vcpus, tlb_entries)
            added = True
            engine.set_running(vm_id, False)
            for r in dram_ranges + nv_ranges:
                step = page_size if r.gpa % page_size == 0 and r.size % page_size == 0 \
                    and r.hpa % page_size == 0 else PAGE_BYTES
                engine.map(vm_id, r.gpa, r.hpa, r.size, EPT_RWX, step)
            chosen = STRATEGIES[strategy]
            engine.map(vm_id, vfha_gpa, vfha_hpa, PAGE_BYTES, chosen.perms, PAGE_BYTES)
            controllers = self._fanout_controllers(fanout, nv_ranges)
            engine.set_fha(vm_id, vfha_gpa, int(chosen.mode), controllers)
            if prefault:
                for r in nv_ranges:
                    platform.prefault(r.hpa, r.size)
        except Exception:
            if added:
                engine.remove_vm(vm_id)
            for r in dram_ranges:
                platform.dram.free(r.hpa, r.size)
            for r in nv_ranges:
                platform.free_pmem(r.hpa, r.size)
            if vfha_hpa is not None:
                platform.dram.free(vfha_hpa, PAGE_BYTES)
            raise
        physical = tuple(h for c in controllers for h in platform.config.controller_flush_hints(c)[:1])
        table = [VirtualFlushHint(i, vfha_gpa, physical) for i in range(len(nv_ranges))]
        vm = VM(self, vm_id, dram=dram_ranges, nvdimms=nv_ranges, vcpus=vcpus, strategy=strategy,
                fanout=fanout, fanout_controllers=tuple(controllers), reserved=reserved[1:],
                vfha_gpa=vfha_gpa, vfha_hpa=vfha_hpa, vfha_table=table, tlb_entries=tlb_entries,
                page_size=page_size)
        self.vms[vm_id] = vm
        return vm

    @staticmethod
    def _dram_layout(dram: int) -> list[tuple[int, int]]:
        low = min(dram, MMIO_HOLE[0])
        ranges = [(0, low)] if low else []
        if dram > low:
            ranges.append((MMIO_HOLE[0] + MMIO_HOLE[1], dram - low))
        return ranges

    @staticmethod
    def _nvdimm_layout(nvdimms: Sequence[int | tuple[int, int]], page_size: int,
                       dram_end: int) -> list[tuple[int, int]]:
        out, cursor = [], max(dram_end, MMIO_HOLE[0] + MMIO_HOLE[1])
        for k, spec in enumerate(nvdimms):
            gpa, size = spec if isinstance(spec, tuple) else (None, spec)
            if not isinstance(size, (int, np.integer)) or size <= 0 or size % PAGE_BYTES:
                raise ConfigError(f"vNVDIMM {k}: size {size!r} must be a positive multiple of 4 KiB")
            if gpa is None:
                gpa = -(-cursor // NVDIMM_ALIGN) * NVDIMM_ALIGN
            elif gpa % PAGE_BYTES:
                raise ConfigError(f"vNVDIMM {k}: GPA {gpa:#x} is not page aligned")
            out.append((int(gpa), int(size)))
            cursor = max(cursor, gpa + size)
        return out

    def _backed_by_flushable_region(self, nv_ranges: list[MemoryRange]) -> bool:
        """The technique's capability check, per VM: do the NVDIMMs backing this VM support WPQ
        flushing? Yes when one of the regions its vNVDIMMs sit in does (Linux ``nvdimm_has_flush``:
        a region with a flush hint on any DIMM), so on a host with hints on one socket only a VM
        on that socket is write-protected and a VM on the other gets a writable vFHA; a VM
        spanning both gets the hints that exist."""
        p = self.platform
        return any(p.set_wpq_flush(p.set_index_of(r.hpa)) for r in nv_ranges)

    def _fanout_controllers(self, fanout: str, nv_ranges: list[MemoryRange]) -> list[int]:
        """Controllers a vFHA write reaches: every controller with a flush hint (broadcast), or only
        those behind this VM's vNVDIMM ranges (targeted)."""
        p = self.platform
        with_hints = [c for c in range(p.n_controllers) if p.config.controller_flush_hints(c)]
        if fanout == "broadcast":
            return with_hints
        backing = set()
        for r in nv_ranges:
            for k, (s, base, length) in enumerate(p.set_ranges):
                if base <= r.hpa < base + length:
                    stripe = p.stripe_bytes(k)
                    for off in range(0, min(r.size, stripe), s.granularity):
                        backing.add(p.controller_of(r.hpa + off))
        return [c for c in with_hints if c in backing]

    def _release(self, vm: VM) -> None:
        """Forget ``vm`` and scrub its host ranges before they can be handed out again (SPEC 7.8)."""
        freed = self.platform.engine.remove_vm(vm.id)
        for r in [*vm.dram, *vm.nvdimms, MemoryRange(0, PAGE_BYTES, vm.vfha_hpa, "dram")]:
            self.platform.discard(r.hpa, r.size)
        for r in vm.dram:
            self.platform.dram.free(r.hpa, r.size)
        for r in vm.nvdimms:
            self.platform.free_pmem(r.hpa, r.size)
        self.platform.dram.free(vm.vfha_hpa, PAGE_BYTES)
        del self.vms[vm.id]
        vm.freed_tables = freed

    def vm(self, vm_id: int) -> VM:
        """The VM with id ``vm_id``; LifecycleError if it was never created or was destroyed."""
        if vm_id not in self.vms:
            raise LifecycleError(f"vm {vm_id} does not exist (never created, or destroyed)")
        return self.vms[vm_id]

    # ---- running guests ------------------------------------------------------------------------

    def run(self, ops: np.ndarray, handler: ExitHandler = raise_fault, start: int = 0) -> RunResult:
        """Run a TRACE_DTYPE array through the core. Exits the core finishes itself (vFHA
        flushes) never come back here; others go to ``handler``; a malformed record raises
        TraceError (or LifecycleError for a VM that is not running) naming its index. The engine's
        lock is held throughout, so concurrent callers run one after the other, each whole."""
        with self.platform.engine.lock:
            return self._run(ops, handler, start)

    def _run(self, ops: np.ndarray, handler: ExitHandler, start: int) -> RunResult:
        i, python_exits = start, 0
        while True:
            i, status = self.platform.engine.run(ops, i)
            if status == RunStatus.DONE:
                return RunResult(i - start, python_exits)
            if status == RunStatus.BAD_RECORD:
                raise self._bad_record(ops, i)
            fault = GuestFault(*self.platform.engine.last_exit)
            python_exits += 1
            action = handler(fault)
            if action == "skip":
                i += 1
            elif action != "retry":
                raise ConfigError(f"exit handler returned {action!r}: expected 'skip' or 'retry'")

    def execute(self, rec: np.ndarray) -> int:
        """Run one record (see :class:`Vcpu`); returns the loaded value for a LOAD."""
        self.run(rec)
        return int(self.platform.engine.last_value) if rec[0]["op"] == Op.LOAD else 0

    def _bad_record(self, ops: np.ndarray, i: int) -> Exception:
        rec = ops[i]
        code = BadRecord(self.platform.engine.bad_record)
        vm_id = int(rec["vm"])
        if code == BadRecord.VM and vm_id in self.vms:
            state = self.vms[vm_id].state
            return LifecycleError.at_record(i, f"vm {vm_id} is {state.value}, not running", "vm")
        field, text = record_message(code, int(rec["op"]), vm_id, int(rec["vcpu"]), int(rec["size"]),
                                     int(rec["gpa"]), int(rec["value"]))
        return TraceError.at_record(i, text, field)

    def running(self) -> list[VM]:
        """The VMs in state ``running``, in creation order."""
        return [vm for vm in self.vms.values() if vm.state is VmState.RUNNING]


__all__ = ["Hypervisor", "RunResult", "raise_fault", "ExitReason", "ExitHandler"]
