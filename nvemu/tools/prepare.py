"""What ``replay`` and ``check`` both start from: the VMs a trace runs in, and the trace, opened.

Unless told how many, as many VMs and vCPUs as the trace's ``vm`` and ``vcpu`` fields name (a
pmemcheck log: one of each), all alike: the default VM (256 MiB DRAM, one 256 MiB vNVDIMM), shrunk
to fit smaller platforms. Errors found while running the trace are named the same way by both:
:func:`relocated` re-tells a chunk's record error for the whole trace (through the error's
``index``/``field``/``detail``, never its text), :func:`unmapped_error` turns an access outside
every mapping into a TraceError naming the record.
"""

from __future__ import annotations

import os

import numpy as np

from .._constants import PAGE_2M, PAGE_BYTES
from ..errors import ConfigError, GuestFault, LifecycleError, NvemuError, TraceError
from ..formats.trace import TraceSource, detect_format, id_extent, open_trace
from ..guest.workloads import VmLayout
from ..machine.config import MiB, PlatformConfig
from ..machine.hypervisor import Hypervisor
from ..machine.platform import Platform
from ..machine.vm import VM

DEFAULT_VM_BYTES = 256 * MiB
LARGE_PAGES_FROM = 1 << 30
"""VMs whose vNVDIMM is this large or larger are mapped with 2 MiB pages, as a hypervisor backs large
guests with huge pages: 4 KiB tables for 64 VMs of 32 GiB would take 512 Mi entries (4 GiB)."""
PREFAULT_LIMIT = 1 << 30
"""``prefault`` touches the VMs' vNVDIMMs only when they add up to at most this many bytes: with
sparse memory a first touch costs one chunk allocation, and prefaulting terabytes would not fit."""


def vm_sizes(platform: Platform, vms: int) -> tuple[int, int]:
    """``(dram, nvdimm)`` bytes of each of ``vms`` identical VMs: the default VM's 256 MiB each,
    shrunk when they do not fit (DRAM to whole MiB, the vNVDIMM to whole stripes of the largest
    interleave set) until ``vms`` of them fit the platform."""
    dram = min(DEFAULT_VM_BYTES, (platform.config.dram_bytes // vms - PAGE_BYTES) // MiB * MiB)
    best = 0
    for k, (_, _, length) in enumerate(platform.set_ranges):
        stripe = platform.stripe_bytes(k)
        if -(-DEFAULT_VM_BYTES // stripe) * stripe <= length // vms:
            best = DEFAULT_VM_BYTES         # fits as it is (the allocation rounds up to stripes), so a trace
        else:                               # made on one platform replays on another with the same VM
            best = max(best, length // vms // stripe * stripe)
    if dram < 0 or best < PAGE_BYTES:
        raise ConfigError(f"platform {platform.name!r} has no room for {vms} VMs "
                          f"({platform.config.dram_bytes:#x} bytes of DRAM, {platform.pmem_bytes:#x} of NVDIMM)")
    return max(dram, 0), best - best % PAGE_BYTES


def create_vms(hv: Hypervisor, vms: int, vcpus: int, strategy: str = "auto", fanout: str = "broadcast",
               dram: int | None = None, nvdimm: int | None = None, prefault: bool = False,
               start: bool = True) -> list[VM]:
    """``vms`` identical VMs of ``vcpus`` vCPUs on ``hv`` (sizes from :func:`vm_sizes` unless
    given), started unless ``start`` is False; mapped with 2 MiB pages from ``LARGE_PAGES_FROM``,
    prefaulted (when asked) up to ``PREFAULT_LIMIT`` in all."""
    if not isinstance(vms, int) or vms < 1:
        raise ConfigError(f"vms={vms!r}: must be at least 1")
    auto_dram, auto_nvdimm = vm_sizes(hv.platform, vms)
    dram = auto_dram if dram is None else dram
    nvdimm = auto_nvdimm if nvdimm is None else nvdimm
    page = PAGE_2M if nvdimm >= LARGE_PAGES_FROM and dram % PAGE_2M == 0 else PAGE_BYTES
    prefault = prefault and vms * nvdimm <= PREFAULT_LIMIT
    made = []
    for _ in range(vms):
        vm = hv.create_vm(dram=dram, nvdimms=[nvdimm], vcpus=vcpus, strategy=strategy, fanout=fanout,
                          prefault=prefault, page_size=page)
        made.append(vm.start() if start else vm)
    return made


def vm_layouts(platform: str | PlatformConfig | Platform = "default", vms: int = 1, *,
               dram: int | None = None, nvdimm: int | None = None) -> list[VmLayout]:
    """Where the VMs :func:`replay` would create sit in guest-physical space (for generators and
    importers that must write valid GPAs)."""
    hv = Hypervisor(platform)
    return [VmLayout.of(vm) for vm in create_vms(hv, vms, 1, dram=dram, nvdimm=nvdimm, start=False)]


def prepare(hv: Hypervisor, trace: str | os.PathLike[str] | np.ndarray, *, create: bool = True,
            vms: int | None = None, vcpus: int | None = None, strategy: str = "auto", fanout: str = "broadcast",
            dram: int | None = None, nvdimm: int | None = None, prefault: bool = False, format: str | None = None,
            unregistered: str = "error", deep_flush: bool = False) -> tuple[list[VM], TraceSource]:
    """The VMs a trace runs in and the trace, opened: with ``create``, ``vms`` new VMs of ``vcpus``
    vCPUs on ``hv`` (default: as many as the trace's fields name, read in chunks; a pmemcheck log,
    which names no threads: one), as :func:`create_vms` makes them; else ``hv``'s running VMs. A
    pmemcheck log lands on the first VM's vNVDIMM (``unregistered``, and ``deep_flush`` for a vFHA
    write after each persist, as :func:`nvemu.formats.trace.import_pmemcheck`); either option on
    any other trace is a ConfigError, never silently ignored."""
    fmt = "array" if isinstance(trace, np.ndarray) else format or detect_format(trace)
    given = None if fmt == "array" else fmt
    if fmt != "pmemcheck" and (deep_flush or unregistered != "error"):
        flags = [f for f, on in (("--deep-flush", deep_flush), ("--skip-unregistered", unregistered != "error")) if on]
        raise ConfigError(f"{' and '.join(flags)} appl{'ies' if len(flags) == 1 else 'y'} only to a pmemcheck log, "
                          f"not to {'an array' if fmt == 'array' else f'this {fmt} trace'}")
    source: TraceSource | None = None
    if not create:
        made = sorted(hv.running(), key=lambda v: v.id)
        if not made:
            raise LifecycleError("the hypervisor runs no VM to replay the trace in")
    else:
        if fmt == "pmemcheck":
            vms, vcpus = vms or 1, vcpus or 1
        else:
            source = open_trace(trace, given)
            if vms is None or vcpus is None:
                top_vm, top_vcpu = id_extent(c for _, c in source.chunks())
                vms = vms or top_vm + 1 or 1
                vcpus = vcpus or top_vcpu + 1 or 1
        made = create_vms(hv, vms, vcpus or 1, strategy, fanout, dram, nvdimm, prefault)
    if source is None:
        nv = made[0].nvdimms[0]
        source = open_trace(trace, given, nvdimm_gpa=nv.gpa, nvdimm_size=nv.size, unregistered=unregistered,
                            deep_flush=made[0].vfha_gpa if deep_flush else None)
    return made, source


def relocated(error: NvemuError, offset: int, source: TraceSource) -> NvemuError:
    """``error`` about record ``index`` of a chunk starting at record ``offset``, re-told for the
    whole trace and named as ``source`` names it (``"record 5 (line 12), field size: ..."``)."""
    return error.shifted(offset, source.where)


def unmapped_error(fault: GuestFault) -> TraceError:
    """The TraceError for an access to a GPA outside every mapping of its VM (``fault.unmapped``),
    naming the record as ``fault.op_index`` counts it (:func:`relocated` names it for a trace)."""
    access = "write" if fault.write else "read"
    return TraceError.at_record(fault.op_index, f"GPA {fault.gpa:#x} is outside every mapping of vm {fault.vm} "
                                f"({access} by cpu{fault.vcpu})", "gpa")


__all__ = ["DEFAULT_VM_BYTES", "LARGE_PAGES_FROM", "PREFAULT_LIMIT", "create_vms", "prepare", "relocated",
           "unmapped_error", "vm_layouts", "vm_sizes"]
