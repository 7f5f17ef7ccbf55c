"""ADR can fail, and that is what a deep flush is for (issue 16, item 4; SPEC 7.3).

Sources: Linux, Documentation/driver-api/nvdimm and the ``deep_flush`` region attribute
(drivers/nvdimm/region_devs.c ``deep_flush_store`` -> ``nvdimm_flush``) document the deep flush as
protection against a (rare) ADR failure; the NFIT Memory Device to SPA Range Map flags (ACPI 6.x
table 5-135, ACPICA actbl2.h ``ACPI_NFIT_MEM_FLUSH_FAILED`` bit 2 and ``ACPI_NFIT_MEM_NOT_ARMED``
bit 3; Linux sets ``NDD_UNARMED`` for the latter) say when a device's last platform flush failed or
it is not armed: no ADR guarantee for it.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from nvemu import Hypervisor
from nvemu.cli.main import main as run_cli
from nvemu.formats import nfit
from nvemu.formats.nfit import MemoryMap
from nvemu.formats.nfit.tables import MEM_FLUSH_FAILED, MEM_NOT_ARMED
from nvemu.guest.drivers import TraceWriter, write_persist
from nvemu.machine.config import make_platform

from conftest import BACKENDS

MiB = 1 << 20
DATA = (0x1122334455667788).to_bytes(8, "little")


def host(domain="adr", **kw):
    return make_platform(sockets=1, imcs_per_socket=2, dimm_bytes=2 * MiB, dram_bytes=16 * MiB,
                         domain=domain, **kw)


def written_back(hv, vm, deep: bool, at: int = 0):
    """The guest stores 8 bytes, clwb, sfence (pmem_persist); with ``deep`` also writes the vFHA
    and fences (pmem_deep_persist reaching nvdimm_flush)."""
    t = TraceWriter(vm=vm.id)
    write_persist(t, vm.nvdimms[0].gpa + at, DATA, vm.vfha_gpa if deep else None)
    hv.run(t.to_array())
    return vm.gpa_to_hpa(vm.nvdimms[0].gpa + at)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy, deep, survives", [
    ("write-protect", False, False),      # written back, fenced, no deep flush: sits in a WPQ
    ("write-protect", True, True),        # the vFHA write drained it to media
    ("drop", True, False),                # a hypervisor that traps and drains nothing
])
def test_adr_failure_loses_what_sits_in_the_wpqs(backend, strategy, deep, survives):
    hv = Hypervisor(host(), backend=backend)
    vm = hv.create_vm(dram=MiB, nvdimms=[MiB], strategy=strategy).start()
    hpa = written_back(hv, vm, deep)
    p = hv.platform
    assert p.durable_read(hpa, 8) == DATA                       # ADR holds: the WPQ copy survives
    assert p.durable_read(hpa, 8, adr_failure=True) == (DATA if survives else bytes(8))
    image = p.power_fail(adr_failure=True)
    assert image.read(hpa, 8) == (DATA if survives else bytes(8))
    assert p.read_media(hpa, 8) == image.read(hpa, 8) and p.wpq(0) == p.wpq(1) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_eadr_caches_are_lost_with_adr(backend):
    """eADR rides on ADR: at power loss the caches are written back into the memory controllers,
    whose queues ADR then drains, so an ADR failure loses the dirty lines too and only what a deep
    flush put on media survives. Sources: Linux drivers/acpi/nfit/core.c acpi_nfit_register_region
    ("Persistence domain bits are hierarchical": the NFIT CPU-cache-flush capability implies the
    memory-controller one); PMDK libpmem pmem_deep_flush writes back the caches "regardless of eADR
    support", and pmem2_deep_flush(3) is there "not to rely on automatic cache or WPQ flush on power
    failure (ADR/eADR)". (SPEC 7.3's wording keeps the dirty lines; the sources above say otherwise.)"""
    hv = Hypervisor(host("eadr"), backend=backend)
    vm = hv.create_vm(dram=MiB, nvdimms=[MiB]).start()
    g = vm.nvdimms[0].gpa
    vm.vcpu(0).store(g, 7)                                      # dirty in the cache only
    hpa = vm.gpa_to_hpa(g)
    deep = written_back(hv, vm, deep=True, at=64)               # written back and drained to media
    assert hv.platform.durable_read(hpa, 8) == (7).to_bytes(8, "little")
    assert hv.platform.durable_read(hpa, 8, adr_failure=True) == bytes(8)
    assert hv.platform.durable_read(deep, 8, adr_failure=True) == DATA
    image = hv.platform.power_fail(adr_failure=True)
    assert image.read(hpa, 8) == bytes(8) and image.read(deep, 8) == DATA
    assert hv.platform.read_memory(hpa, 8) == bytes(8)          # after the reboot memory shows media


@pytest.mark.parametrize("backend", BACKENDS)
def test_eadr_host_with_an_unarmed_nvdimm_loses_its_dirty_lines_only(backend):
    """Not armed (NFIT memory-device flags bit 3) on an eADR host: that NVDIMM's dirty lines and
    queued copies are lost at any power failure; the armed NVDIMM keeps its own."""
    cfg = host("eadr", interleave="all")
    cfg = cfg.with_(nvdimms=(cfg.nvdimms[0], dataclasses.replace(cfg.nvdimms[1], armed=False)))
    hv = Hypervisor(cfg, backend=backend)
    vm = hv.create_vm(dram=MiB, nvdimms=[MiB]).start()
    g = vm.nvdimms[0].gpa
    vm.vcpu(0).store(g, 5)                                      # granule 0: NVDIMM 0, armed
    vm.vcpu(0).store(g + 4096, 6)                               # granule 1: NVDIMM 1, not armed
    on0, on1 = vm.gpa_to_hpa(g), vm.gpa_to_hpa(g + 4096)
    p = hv.platform
    assert (p.nvdimm_of(on0), p.nvdimm_of(on1)) == (0, 1)
    assert p.durable_read(on0, 8) == (5).to_bytes(8, "little") and p.durable_read(on1, 8) == bytes(8)
    image = p.power_fail()
    assert image.read(on0, 8) == (5).to_bytes(8, "little") and image.read(on1, 8) == bytes(8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flag", [MEM_FLUSH_FAILED, MEM_NOT_ARMED])
def test_nfit_flags_take_the_adr_guarantee_from_one_dimm(backend, flag):
    table = nfit.nfit_from_platform_config(host(interleave="all"))
    maps = [s for s in table.subtables if isinstance(s, MemoryMap)]
    flagged = maps[1].device_handle                                 # the second NVDIMM (controller 1)
    subtables = [s.__class__(**{**s.__dict__, "flags": flag}) if s is maps[1] else s for s in table.subtables]
    data = nfit.Nfit(subtables=subtables).to_bytes()
    assert [d["armed"] for d in nfit.discover(data)["nvdimms"]] == [True, False]
    cfg = nfit.platform_config_from_nfit(data, dram_bytes=16 * MiB)
    assert [d.armed for d in cfg.nvdimms] == [True, False] and cfg.handle(1) == flagged
    again = nfit.platform_config_from_nfit(nfit.nfit_from_platform_config(cfg).to_bytes(), dram_bytes=16 * MiB)
    assert [d.armed for d in again.nvdimms] == [True, False]       # the builder writes "not armed"

    hv = Hypervisor(cfg, backend=backend)
    vm = hv.create_vm(dram=MiB, nvdimms=[MiB]).start()
    on0 = written_back(hv, vm, deep=False, at=0)                  # granule 0: NVDIMM 0 (armed)
    on1 = written_back(hv, vm, deep=False, at=4096)               # granule 1: NVDIMM 1 (not armed)
    p = hv.platform
    assert (p.nvdimm_of(on0), p.nvdimm_of(on1)) == (0, 1)
    assert p.durable_read(on0, 8) == DATA and p.durable_read(on1, 8) == bytes(8)
    image = p.power_fail()
    assert image.read(on0, 8) == DATA and image.read(on1, 8) == bytes(8)


@pytest.mark.parametrize("strategy, code", [("write-protect", 0), ("drop", 1)])
def test_cli_check_adr_failure(tmp_path, capsys, strategy, code):
    """A guest that deep-flushes keeps its data through an ADR failure under write-protect;
    ``drop`` loses it. Without --adr-failure, ADR keeps the WPQs and drop loses nothing."""
    t = TraceWriter()
    for k in range(4):
        write_persist(t, 0x1_0000_0000 + k * 4096, DATA, deep_flush=0x1_1000_0000)   # default VM's vFHA
    path = tmp_path / "deep.npy"
    np.save(path, t.to_array())
    out = tmp_path / "r.json"
    args = ["check", str(path), "--strategy", strategy, "--json", str(out)]
    assert run_cli([*args, "--adr-failure", "--verify", "3"]) == code     # probes == real power failures
    text = capsys.readouterr().out
    assert "(domain adr, ADR fails)" in text and "protocol  deep" in text
    result = json.loads(out.read_text())
    assert result["adr_failure"] is True and len(result["lost_stores"]) == (0 if code == 0 else 4)
    assert len(result["verified"]) == 3 and result["verify_mismatches"] == []
    assert run_cli(args) == 0                                   # ADR holds: the WPQs survive
