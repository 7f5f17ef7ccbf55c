"""Shared fixtures: every behavioural test runs on every engine this install has (the compiled
core and the reference model; a pure install, ``NVEMU_PUREPYTHON=1``, only the reference).

Tests never name an engine: ``backend`` is a fixture over :data:`BACKENDS`, and the differential
tests that compare the two engines use :data:`ENGINES` and mark themselves :func:`needs_compiled`.
Inputs too big for the reference model in a pure run are sized with :func:`scaled`.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import nvemu
from nvemu import TRACE_DTYPE, Hypervisor
from nvemu.machine.config import make_platform

ENGINES = ("core", "reference")
"""Both engines, for differential tests (which need the compiled one)."""
BACKENDS = list(ENGINES) if nvemu.COMPILED else ["reference"]
"""The engines behavioural tests run on."""
DEFAULT_BACKEND = nvemu.BACKEND
"""The engine ``Hypervisor(...)`` uses when none is named: the compiled core unless pure."""


def needs_compiled(reason: str) -> pytest.MarkDecorator:
    """Mark a test that needs the compiled extension itself (cimport, nogil threads, the two
    engines compared); a pure install skips it, saying why."""
    return pytest.mark.skipif(not nvemu.COMPILED, reason=f"needs the compiled core: {reason}")


def scaled(n: int, pure: int) -> int:
    """``n`` on the compiled core, ``pure`` when the default engine is the reference model
    (about 100x slower), so that the pure run of the suite stays short."""
    return n if nvemu.COMPILED else pure


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def tiny_platform(domain: str = "adr", wpq_depth: int = 8, hints: int = 1, controllers: int = 2,
                  sockets: int = 1, **kw):
    """Two controllers (one socket), 1 MiB NVDIMMs, 16 MiB DRAM: small enough for the reference."""
    return make_platform(sockets=sockets, imcs_per_socket=controllers, dimm_bytes=1 << 20, dram_bytes=16 << 20,
                         wpq_depth=wpq_depth, domain=domain, hints_per_imc=hints, name="tiny", **kw)


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


@functools.lru_cache(maxsize=None)
def iasl_path() -> str | None:
    """A current ACPICA iasl: ``$NVEMU_IASL``, else the one ``shared/tools/acpica/build-iasl.sh``
    (beside the checkout or beside any directory above it, so a git worktree finds it too) builds
    (20260408: knows the ACPI 6.4 SPA location cookie), else a system iasl new enough to know it
    (ACPICA 20210331 or later; Debian 12's 20200925 silently drops the cookie), else None."""
    if os.environ.get("NVEMU_IASL"):
        return os.environ["NVEMU_IASL"]
    checkout = Path(__file__).resolve().parents[1]
    for above in checkout.parents:
        script = above / "shared" / "tools" / "acpica" / "build-iasl.sh"
        if script.exists():
            r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1800)
            if r.returncode == 0 and r.stdout.strip():
                return r.stdout.strip().splitlines()[-1]
            break
    system = shutil.which("iasl")
    if system:
        r = subprocess.run([system, "-v"], capture_output=True, text=True)
        m = re.search(r"version (\d{8})", r.stdout + r.stderr)
        if m and int(m.group(1)) >= 20210331:
            return system
    return None


def tracked_lines(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that gets the compiled checker kernel's tracked lines after every chunk it follows."""
    from nvemu.tools import check_fast
    tracked: list[int] = []
    run_chunk = check_fast.FastModel.run

    def spy(self, *args):
        run_chunk(self, *args)
        tracked.append(self.kernel.tracked)
    monkeypatch.setattr(check_fast.FastModel, "run", spy)
    return tracked
