"""Shared fixtures: every behavioural test runs on both engines (the core and the reference)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from nvemu import TRACE_DTYPE, Hypervisor
from nvemu.machine.config import make_platform

BACKENDS = ["core", "reference"]
if os.environ.get("NVEMU_PUREPYTHON") == "1":
    BACKENDS = ["reference"]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def tiny_platform(domain: str = "adr", wpq_depth: int = 8, hints: int = 1, controllers: int = 2,
                  sockets: int = 1, **kw):
    """Two controllers (one socket), 1 MiB NVDIMMs, 16 MiB DRAM: small enough for the reference."""
    return make_platform(sockets=sockets, imcs_per_socket=controllers, dimm_bytes=1 << 20, dram_bytes=16 << 20,
                         wpq_depth=wpq_depth, domain=domain, hints_per_dimm=hints, name="tiny", **kw)


@pytest.fixture
def make_hv(backend):
    """make_hv(**platform options) -> Hypervisor on a tiny platform with the current backend."""
    def make(**kw) -> Hypervisor:
        return Hypervisor(tiny_platform(**kw), backend=backend)
    return make


def small_vm(hv: Hypervisor, **kw):
    """A started VM with 1 MiB DRAM and one 512 KiB vNVDIMM."""
    kw.setdefault("dram", 1 << 20)
    kw.setdefault("nvdimms", [512 << 10])
    return hv.create_vm(**kw).start()


def trace(*records) -> np.ndarray:
    """TRACE_DTYPE array from (op, vcpu, vm, size, gpa, value) tuples."""
    return np.array(list(records), dtype=TRACE_DTYPE)
