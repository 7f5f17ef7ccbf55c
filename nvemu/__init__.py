"""nvemu: emulates how a hypervisor virtualizes NVDIMM write-pending-queue flushing.

Physical memory controllers with WPQs and flush hint addresses, NVDIMM capability discovery
from ACPI NFIT tables, VMs with second-level page tables, write-protection faults on the
virtual flush hint address and the WPQ drain fan-out they cause. See SPEC.md for the model.
"""

from ._backend import BACKEND, COMPILED
from ._constants import TRACE_DTYPE, Domain, ExitReason, FhaMode, LineState, Op
from ._version import __version__
from .config import CostModel, PlatformConfig, preset
from .errors import (ConfigError, GuestFault, LifecycleError, NfitError, NvemuError, ResourceError,
                     SnapshotError, TraceError)
from .hypervisor import Hypervisor, ReplayResult
from .platform import Platform
from .replay import Replayer, Result, replay
from .stats import Stats
from .vm import VM, Vcpu, VmState

__all__ = [
    "BACKEND", "COMPILED", "TRACE_DTYPE", "Op", "LineState", "Domain", "ExitReason", "FhaMode",
    "__version__", "CostModel", "PlatformConfig", "preset", "NvemuError", "ConfigError", "GuestFault",
    "LifecycleError", "NfitError", "ResourceError", "SnapshotError", "TraceError", "Hypervisor", "ReplayResult",
    "Platform", "Stats", "VM", "Vcpu", "VmState", "replay", "Replayer", "Result",
]
