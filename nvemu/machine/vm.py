"""A virtual machine: its guest-physical layout, second-level page table, vCPUs, vFHA, lifecycle."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._constants import EPT_ADDR_MASK, EPT_RWX, PAGE_BYTES, TRACE_DTYPE, Op
from ..errors import ConfigError, LifecycleError
from .flush_hints import VirtualFlushHint
from .stats import Stats

if TYPE_CHECKING:
    from .hypervisor import Hypervisor


class VmState(str, enum.Enum):
    """A VM's lifecycle state: created -> running <-> paused -> destroyed."""
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    DESTROYED = "destroyed"


# allowed transitions: created -> running <-> paused; any live state -> destroyed
_TRANSITIONS = {
    "start": ({VmState.CREATED}, VmState.RUNNING),
    "pause": ({VmState.RUNNING}, VmState.PAUSED),
    "resume": ({VmState.PAUSED}, VmState.RUNNING),
    "destroy": ({VmState.CREATED, VmState.RUNNING, VmState.PAUSED}, VmState.DESTROYED),
}


@dataclass(frozen=True)
class MemoryRange:
    """A guest-physical range and the host-physical range behind it."""

    gpa: int
    size: int
    hpa: int
    kind: str          # "dram" | "nvdimm"

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "gpa": self.gpa, "size": self.size, "hpa": self.hpa}


class PageTable:
    """The VM's second-level (EPT) page table, in the engine's table pool."""

    def __init__(self, vm: "VM") -> None:
        self._vm = vm

    @property
    def _engine(self):
        return self._vm._live().hypervisor.platform.engine

    def map(self, gpa: int, hpa: int, size: int, perms: int = EPT_RWX, page_size: int = PAGE_BYTES) -> None:
        self._engine.map(self._vm.id, gpa, hpa, size, perms, page_size)

    def unmap(self, gpa: int, size: int) -> None:
        self._engine.unmap(self._vm.id, gpa, size)

    def protect(self, gpa: int, size: int, perms: int) -> None:
        """Change R/W/X of ``[gpa, gpa+size)``; every vCPU's TLB is invalidated (INVEPT)."""
        self._engine.protect(self._vm.id, gpa, size, perms)

    def walk(self, gpa: int) -> list[tuple[int, int, int, int]]:
        """(level, table, index, entry) for each level a walk of ``gpa`` visits, PML4 first."""
        return self._engine.walk(self._vm.id, gpa)

    def translate(self, gpa: int) -> int | None:
        """HPA of ``gpa`` by a fresh walk (no TLB, no counters), or None if not mapped."""
        level, _, _, entry = self.walk(gpa)[-1]
        if not entry & EPT_RWX or entry & 3 == 2:
            return None
        size = 1 << (12 + 9 * (level - 1))
        return (entry & EPT_ADDR_MASK & ~(size - 1)) | (gpa & (size - 1))


class Vcpu:
    """One virtual CPU: executes guest operations one at a time (for tests and examples; traces
    go through :meth:`Hypervisor.replay` in batches)."""

    def __init__(self, vm: "VM", index: int) -> None:
        self.vm = vm
        self.index = index

    def execute(self, op: int, gpa: int = 0, size: int = 8, value: int = 0) -> int:
        """Run one record (``op`` of :class:`nvemu.Op`) on this vCPU through the engine; returns what a load
        read (0 otherwise).
        """
        rec = np.zeros(1, TRACE_DTYPE)
        rec[0] = (op, self.index, self.vm.id, size, gpa, value)
        return self.vm._live().hypervisor.execute(rec)

    def load(self, gpa: int, size: int = 8) -> int:
        """Read ``size`` (1, 2, 4 or 8) bytes at ``gpa``; returns the value (little-endian)."""
        return self.execute(Op.LOAD, gpa, size)

    def store(self, gpa: int, value: int, size: int = 8) -> None:
        """Write ``value`` as ``size`` bytes at ``gpa`` (through the cache: durable only once written back and
        drained).
        """
        self.execute(Op.STORE, gpa, size, value)

    def nt_store(self, gpa: int, value: int, size: int = 8) -> None:
        """Non-temporal store: bypasses the cache, reaches the WPQ at the next fence."""
        self.execute(Op.NT_STORE, gpa, size, value)

    def clwb(self, gpa: int) -> None:
        """Write back the cache line holding ``gpa`` (it stays cached)."""
        self.execute(Op.CLWB, gpa, 0)

    def clflushopt(self, gpa: int) -> None:
        """Write back and invalidate the line holding ``gpa`` (ordered by fences)."""
        self.execute(Op.CLFLUSHOPT, gpa, 0)

    def clflush(self, gpa: int) -> None:
        """Write back and invalidate the line holding ``gpa`` (ordered with other stores)."""
        self.execute(Op.CLFLUSH, gpa, 0)

    def sfence(self) -> None:
        """Store fence: earlier write-backs of this vCPU reach their WPQs."""
        self.execute(Op.SFENCE, 0, 0)

    def mfence(self) -> None:
        """Memory fence: as :meth:`sfence`, also ordering loads."""
        self.execute(Op.MFENCE, 0, 0)


class VM:
    """A guest: DRAM and vNVDIMM ranges, vCPUs, its vFHA and virtual FHA table, a lifecycle
    ``created -> running <-> paused -> destroyed``. Made by :meth:`Hypervisor.create_vm`."""

    def __init__(self, hypervisor: "Hypervisor", vm_id: int, *, dram: list[MemoryRange],
                 nvdimms: list[MemoryRange], vcpus: int, strategy: str, fanout: str,
                 fanout_controllers: tuple[int, ...], reserved: list[tuple[int, int]],
                 vfha_gpa: int, vfha_hpa: int, vfha_table: list[VirtualFlushHint], tlb_entries: int,
                 page_size: int) -> None:
        self.hypervisor: "Hypervisor | None" = hypervisor
        self.id = vm_id
        self.dram = dram
        self.nvdimms = nvdimms
        self.reserved = reserved
        self.strategy = strategy
        self.fanout = fanout
        self.fanout_controllers = fanout_controllers
        self.vfha_gpa = vfha_gpa
        self.vfha_hpa = vfha_hpa
        self.vfha_table = vfha_table
        self.tlb_entries = tlb_entries
        self.page_size = page_size
        self.state = VmState.CREATED
        self.page_table = PageTable(self)
        self.vcpus = [Vcpu(self, i) for i in range(vcpus)]
        self._final_stats: Stats | None = None

    def __repr__(self) -> str:
        return f"<VM {self.id} {self.state.value} strategy={self.strategy} fanout={self.fanout}>"

    def _live(self) -> "VM":
        if self.state is VmState.DESTROYED or self.hypervisor is None:
            raise LifecycleError(f"vm {self.id} is destroyed")
        return self

    def _transition(self, action: str) -> None:
        allowed, target = _TRANSITIONS[action]
        if self.state not in allowed:
            if self.state is VmState.DESTROYED:
                raise LifecycleError(f"vm {self.id} is destroyed: cannot {action} it")
            raise LifecycleError(f"vm {self.id} is {self.state.value}: cannot {action} it "
                                 f"(allowed from {', '.join(sorted(s.value for s in allowed))})")
        self.state = target

    def start(self) -> "VM":
        """``created`` or ``paused`` -> ``running``: the VM's vCPUs may run; returns the VM."""
        self._transition("start")
        self.hypervisor.platform.engine.set_running(self.id, True)
        return self

    def pause(self) -> "VM":
        """``running`` -> ``paused``: records for this VM are refused until :meth:`resume`; returns the VM."""
        self._transition("pause")
        self.hypervisor.platform.engine.set_running(self.id, False)
        return self

    def resume(self) -> "VM":
        """``paused`` -> ``running``; returns the VM."""
        self._transition("resume")
        self.hypervisor.platform.engine.set_running(self.id, True)
        return self

    def destroy(self) -> None:
        """Tear down: every host page and page-table page goes back to the host."""
        if self.state is not VmState.DESTROYED:
            self._final_stats = self.stats()
        self._transition("destroy")
        self.hypervisor._release(self)
        self.hypervisor = None

    def __enter__(self) -> "VM":
        if self.state is VmState.CREATED:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.state is not VmState.DESTROYED:
            self.destroy()

    def vcpu(self, index: int = 0) -> Vcpu:
        """vCPU ``index`` (0-based) of this VM.

        Raises
        ------
        ConfigError
            ``index`` is not an integer in ``0 .. len(vm.vcpus) - 1`` (negative indices are refused,
            not counted from the end: ``vcpu(-1)`` is a mistake, not "the last vCPU").
        """
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self.vcpus):
            raise ConfigError(f"vcpu({index!r}): this VM has vCPUs 0..{len(self.vcpus) - 1}")
        return self.vcpus[int(index)]

    def stats(self) -> Stats:
        """A snapshot of the VM's counters (after :meth:`destroy`, the last one taken)."""
        if self.state is VmState.DESTROYED and self._final_stats is not None:
            return self._final_stats
        engine = self._live().hypervisor.platform.engine
        return Stats(engine.stats(self.id), tuple(int(n) for n in engine.drained_by_controller(self.id)))

    def reset_stats(self) -> None:
        """Zero the VM's counters (e.g. after a warm-up)."""
        self._live().hypervisor.platform.engine.reset_stats(self.id)

    def ranges(self) -> list[MemoryRange]:
        """The VM's DRAM and vNVDIMM ranges, by guest-physical address."""
        return sorted(self.dram + self.nvdimms, key=lambda r: r.gpa)

    def gpa_to_hpa(self, gpa: int) -> int | None:
        """The host-physical address ``gpa`` maps to through the VM's EPT, or None if unmapped."""
        return self.page_table.translate(gpa)

    def read(self, gpa: int, n: int) -> bytes:
        """Guest memory as the guest would load it (host-side read: no exits, no counters)."""
        out = b""
        while n:
            chunk = min(n, PAGE_BYTES - gpa % PAGE_BYTES)
            hpa = self.gpa_to_hpa(gpa)
            if hpa is None:
                raise ConfigError(f"GPA {gpa:#x} is not mapped in vm {self.id}")
            out += self.hypervisor.platform.read_memory(hpa, chunk)
            gpa, n = gpa + chunk, n - chunk
        return out

    def layout(self) -> dict[str, Any]:
        """Where everything sits in guest-physical space (``nvemu layout --json``)."""
        return {"vm": self.id, "strategy": self.strategy, "fanout": self.fanout,
                "dram": [r.to_dict() for r in self.dram], "nvdimms": [r.to_dict() for r in self.nvdimms],
                "reserved": [{"gpa": a, "size": n} for a, n in self.reserved],
                "vfha": self.vfha_gpa, "vfha_hpa": self.vfha_hpa,
                "vfha_table": [{"nvdimm": h.nvdimm, "gpa": h.gpa, "physical": list(h.physical)}
                               for h in self.vfha_table],
                "fanout_controllers": list(self.fanout_controllers), "vcpus": len(self.vcpus)}

