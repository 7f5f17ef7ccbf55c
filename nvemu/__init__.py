"""nvemu: emulates how a hypervisor virtualizes NVDIMM write-pending-queue flushing.

Physical memory controllers with WPQs and flush hint addresses, NVDIMM capability discovery
from ACPI NFIT tables, VMs with second-level page tables, write-protection faults on the
virtual flush hint address and the WPQ drain fan-out they cause.

Layers, each importing only the ones before it: the engine (``_core`` and its plain-Python
twin ``_reference``), ``machine`` (platform, VMs, hypervisor), ``formats`` (NFIT, traces) and
``guest`` (driver models, workloads), ``tools`` (replay, check, bench), ``cli``.
"""

from typing import TYPE_CHECKING, Any

from ._backend import BACKEND, COMPILED
from ._constants import TRACE_DTYPE, Domain, ExitReason, FhaMode, LineState, Op
from ._version import __version__
from .errors import (ConfigError, GuestFault, LifecycleError, NfitError, NvemuError, ResourceError,
                     SnapshotError, TraceError)
from .machine.config import PlatformConfig, TimingModel, preset
from .machine.hypervisor import Hypervisor, RunResult
from .machine.platform import Platform
from .machine.stats import Stats
from .machine.vm import VM, Vcpu, VmState

if TYPE_CHECKING:
    from .machine.snapshot import restore_snapshot, save_snapshot
    from .tools.replayer import Replayer, ReplayReport, replay

# Loaded on first use (PEP 562), so that ``import nvemu`` for a machine and a few guest operations
# (the README's quick start) does not also load the trace formats, workloads and replay tools.
_LAZY = {"replay": ".tools.replayer", "Replayer": ".tools.replayer", "ReplayReport": ".tools.replayer",
         "save_snapshot": ".machine.snapshot", "restore_snapshot": ".machine.snapshot"}

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


def __getattr__(name: str) -> Any:
    """The public names of ``_LAZY``, imported when first asked for."""
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nvemu' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
