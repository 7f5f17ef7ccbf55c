"""Capability discovery drives the emulator: a platform built from a real NFIT (compiled by
ACPICA's iasl) runs VMs whose strategy and fan-out follow what the table says."""

import shutil
import subprocess
from pathlib import Path

import pytest

from nvemu import Hypervisor, preset
from nvemu.formats import nfit
from nvemu.formats.nfit import platform_from_nfit
from nvemu.guest.drivers import TraceWriter, pmem_persist

from conftest import iasl_path

DATA = Path(__file__).parent / "data" / "nfit"
IASL = iasl_path()
pytestmark = pytest.mark.skipif(IASL is None, reason="no current iasl (shared/tools/acpica/build-iasl.sh failed)")


def compiled(name: str, tmp_path: Path) -> bytes:
    shutil.copy(DATA / f"{name}.asl", tmp_path / f"{name}.asl")
    r = subprocess.run([IASL, "-vs", f"{name}.asl"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return (tmp_path / f"{name}.aml").read_bytes()


def flush_once(hv):
    vm = hv.create_vm(dram=1 << 20, nvdimms=[1 << 20]).start()
    t = TraceWriter(vm=vm.id)
    for k in range(8):                       # one line in each of the first 8 granules
        t.store(vm.nvdimms[0].gpa + k * 4096, k + 1)
        pmem_persist(t, vm.nvdimms[0].gpa + k * 4096, 8)
    t.store(vm.vfha_gpa, 1)
    hv.run(t.to_array())
    return vm


def test_two_socket_adr_table(tmp_path):
    platform = platform_from_nfit(compiled("two_socket_adr", tmp_path), dram_bytes=64 << 20)
    assert (platform.n_controllers, platform.domain, platform.wpq_flush) == (4, "adr", True)
    base = platform.pmem_base
    # the maps give region offsets 2,0,3,1 granules to handles 0x11000, 0x0, 0x11100, 0x100:
    # granule k belongs to the NVDIMM whose offset is k
    order = [platform.config.handle(platform.nvdimm_of(base + k * 4096)) for k in range(4)]
    assert order == [0x0000, 0x0100, 0x11000, 0x11100]
    hv = Hypervisor(platform)
    vm = flush_once(hv)
    assert vm.strategy == "write-protect"
    s = vm.stats()
    assert (s.exits[48], s["fha_writes"], s["lines_drained"]) == (1, 4, 8)
    assert [c["fha_writes"] for c in platform.controller_stats()] == [1, 1, 1, 1]


def test_table_without_flush_hints_gives_writable_and_no_exits(tmp_path):
    platform = platform_from_nfit(compiled("no_hints", tmp_path), dram_bytes=64 << 20)
    assert not platform.wpq_flush
    vm = flush_once(Hypervisor(platform))
    assert vm.strategy == "writable"
    assert vm.stats().exit_count == 0 and vm.stats()["lines_drained"] == 0


@pytest.mark.parametrize("name", ["default", "per-socket", "eadr", "no-wpq-flush"])
def test_preset_survives_its_own_nfit(name):
    cfg = preset(name)
    again = platform_from_nfit(nfit.nfit_from_platform_config(cfg).to_bytes())
    assert again.config.with_(name=cfg.name) == cfg


def test_table_with_hints_on_one_socket_decides_per_vm(tmp_path):
    """Issue 16, item 1: the table's socket-0 range lists flush hints, its socket-1 range none.
    Linux's nvdimm_has_flush decides per region; the technique asks about the NVDIMMs backing
    the VM: the first VM (socket 0's range) is write-protected, the second (socket 1's) writable."""
    platform = platform_from_nfit(compiled("hints_one_socket", tmp_path), dram_bytes=64 << 20)
    assert platform.wpq_flush and [platform.set_wpq_flush(k) for k in range(2)] == [True, False]
    hv = Hypervisor(platform)
    first, second = flush_once(hv), flush_once(hv)
    assert (first.strategy, second.strategy) == ("write-protect", "writable")
    assert first.fanout_controllers == (0, 1) == second.fanout_controllers     # controllers with hints
    assert (first.stats().exits[48], first.stats()["lines_drained"]) == (1, 8)
    assert (second.stats().exit_count, second.stats()["lines_drained"]) == (0, 0)
