"""The C-level contract works: an embedder's .pyx cimports nvemu._core through ``nvemu.get_include()``
and runs it nogil; the README's Cython snippet compiles and runs as written."""

import importlib.util
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nvemu
from nvemu import ExitReason, Hypervisor
from nvemu._constants import CLOCK, RunStatus

from conftest import needs_compiled

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "embed_cython"

pytestmark = [pytest.mark.slow, needs_compiled("builds Cython code that cimports nvemu._core")]


def build(directory: Path, module: str):
    """Run ``setup.py build_ext --inplace`` in ``directory`` and import ``module`` from it."""
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=directory,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    so = next(directory.glob(f"{module}*.so"))
    spec = importlib.util.spec_from_file_location(module, so)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def test_get_include_holds_the_pxd():
    assert (Path(nvemu.get_include()) / "nvemu" / "_core.pxd").is_file()


def test_embedder_builds_and_runs(tmp_path):
    for name in ("sim_loop.pyx", "setup.py"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    assert "nvemu.get_include()" in (EXAMPLE / "setup.py").read_text()
    sim = build(tmp_path, "sim_loop")

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
    assert sim.translate(engine, vm.id, 0x9_0000_0000)[0] == ExitReason.EPT_VIOLATION
    assert sim.store_loop(engine, vm.id, vm.vfha_gpa, 1) == 0     # handled in the core: no exit back
    assert vm.stats().exits[ExitReason.EPT_VIOLATION] == 1


def test_the_readme_snippet_compiles_and_runs_as_written(tmp_path):
    blocks = re.findall(r"```cython\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 1
    docs = (ROOT / "docs" / "embedding.rst").read_text()
    assert textwrap.indent(blocks[0], "   ") in docs, "docs/embedding.rst shows another snippet than the README"
    (tmp_path / "readme_snippet.pyx").write_text(blocks[0])
    (tmp_path / "setup.py").write_text(textwrap.dedent("""
        import nvemu
        from Cython.Build import cythonize
        from setuptools import setup
        setup(ext_modules=cythonize("readme_snippet.pyx", include_path=[nvemu.get_include()]))
    """))
    snippet = build(tmp_path, "readme_snippet")

    hv = Hypervisor("small")
    vm = hv.create_vm(dram=1 << 20, nvdimms=[1 << 20]).start()
    g = vm.nvdimms[0].gpa
    status, rc, hpa, now = snippet.store(hv.platform.engine, vm.id, g + 8, 42)
    assert (status, rc, hpa) == (RunStatus.DONE, 0, vm.nvdimms[0].hpa + 8)
    assert now == hv.platform.engine.clock(vm.id)[0, CLOCK["now"]] > 0     # the store's time, read nogil
    assert vm.read(g + 8, 8) == (42).to_bytes(8, "little")
