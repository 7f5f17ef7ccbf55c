"""The C-level contract works: an embedder's .pyx cimports nvemu._core and runs it nogil."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nvemu import Hypervisor

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "embed_cython"

pytestmark = pytest.mark.slow


def test_embedder_builds_and_runs(tmp_path):
    for name in ("sim_loop.pyx", "setup.py"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    so = next(tmp_path.glob("sim_loop*.so"))
    spec = importlib.util.spec_from_file_location("sim_loop", so)
    sim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sim)

    from nvemu import _core
    assert sim.CAPI == _core.CAPI_VERSION and sim.STATS_PER_VCPU == _core.STAT_COUNT
    hv = Hypervisor("small")
    vm = hv.create_vm(dram=1 << 20, nvdimms=[1 << 20]).start()
    engine = hv.platform.engine
    g = vm.nvdimms[0].gpa
    assert sim.store_loop(engine, vm.id, g, 100) == 0
    assert vm.read(g, 16) == (1).to_bytes(8, "little") + (2).to_bytes(8, "little")
    assert sim.stores_counted(engine, vm.id) == 100 == vm.stats()["stores"]
    assert sim.translate(engine, vm.id, g + 0x10) == (0, vm.nvdimms[0].hpa + 0x10)
    assert sim.translate(engine, vm.id, 0x9_0000_0000)[0] == 48
    assert sim.store_loop(engine, vm.id, vm.vfha_gpa, 1) == 0     # handled in the core: no exit back
    assert vm.stats().exits[48] == 1
