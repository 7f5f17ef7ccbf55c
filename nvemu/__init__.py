"""nvemu: emulates how a hypervisor virtualizes NVDIMM write-pending-queue flushing.

Physical memory controllers with WPQs and flush hint addresses, NVDIMM capability discovery
from ACPI NFIT tables, VMs with second-level page tables, write-protection faults on the
virtual flush hint address and the WPQ drain fan-out they cause.

Layers, each importing only the ones before it: the engine (``_core`` and its plain-Python
twin ``_reference``), ``machine`` (platform, VMs, hypervisor), ``formats`` (NFIT, traces) and
``guest`` (driver models, workloads), ``tools`` (replay, check, bench), ``cli``.
"""

from ._backend import BACKEND, COMPILED
from ._constants import TRACE_DTYPE, Domain, ExitReason, FhaMode, LineState, Op
from ._version import __version__
from .errors import (ConfigError, GuestFault, LifecycleError, NfitError, NvemuError, ResourceError,
                     SnapshotError, TraceError)
from .machine.config import PlatformConfig, TimingModel, preset
from .machine.hypervisor import Hypervisor, RunResult
from .machine.platform import Platform
from .machine.snapshot import restore_snapshot, save_snapshot
from .machine.stats import Stats
from .machine.vm import VM, Vcpu, VmState
from .tools.replayer import Replayer, ReplayReport, replay

__all__ = [
    "BACKEND", "COMPILED", "TRACE_DTYPE", "Op", "LineState", "Domain", "ExitReason", "FhaMode",
    "__version__", "TimingModel", "PlatformConfig", "preset", "NvemuError", "ConfigError", "GuestFault",
    "LifecycleError", "NfitError", "ResourceError", "SnapshotError", "TraceError", "Hypervisor", "RunResult",
    "Platform", "Stats", "VM", "Vcpu", "VmState", "replay", "Replayer", "ReplayReport",
    "save_snapshot", "restore_snapshot", "get_include",
]


def get_include() -> str:
    """The directory to put on Cython's include path so that ``cimport nvemu._core`` finds
    ``nvemu/_core.pxd`` (as ``numpy.get_include()`` does for numpy's headers)."""
    import os
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
