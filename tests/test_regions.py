"""Hosts laid out as real ones, and WPQ-flush support decided per region and per VM (issue 16,
items 1 and 6).

Sources:
- Linux ``nvdimm_has_flush()`` (drivers/nvdimm/region_devs.c): a region needs (and gets) WPQ
  flushing when any NVDIMM of the region lists a flush hint; a region whose DIMMs list none
  "assume[s] platform persistence mechanism like ADR".
- The technique (US 10,592,425 B2): whether the NVDIMMs *backing the VM* support WPQ flushing
  picks write-protect or a writable vFHA page.
- App Direct interleave sets do not span sockets (ipmctl's goal makes one region per socket);
  device handles as ipmctl/ndctl list them on a two-socket Optane host: 0x0001, 0x0101, 0x1001,
  ... (node controller 0, socket in bits 15:12, slot 1) -- docs.pmem.io, ipmctl "Module
  Discovery" and ndctl "Managing NVDIMMs".
"""

from __future__ import annotations

import pytest

from nvemu import Hypervisor
from nvemu.guest.drivers import TraceWriter, pmem_persist
from nvemu.machine.config import FHA_BASE, make_platform, preset

from conftest import BACKENDS

MiB = 1 << 20


def small_host(**kw):
    """Two sockets x two iMCs, 4 MiB NVDIMMs: the default's shape at test size."""
    return make_platform(dimm_bytes=4 * MiB, dram_bytes=64 * MiB, **kw)


def persist_and_flush(hv, vm, n_lines: int = 8):
    """Store, clwb and fence ``n_lines`` lines one granule apart on each vNVDIMM, then write the vFHA."""
    t = TraceWriter(vm=vm.id)
    for r in vm.nvdimms:
        for k in range(n_lines):
            t.store(r.gpa + k * 4096, k + 1)
            pmem_persist(t, r.gpa + k * 4096, 8)
    t.store(vm.vfha_gpa, 1)
    t.sfence()
    hv.run(t.to_array())


def test_default_preset_has_one_set_per_socket_and_hardware_handles():
    cfg = preset("default")
    assert [[cfg.controllers[cfg.nvdimms[d].controller].socket for d in s.dimms]
            for s in cfg.interleave_sets] == [[0, 0], [1, 1]]
    assert [cfg.handle(i) for i in range(len(cfg.nvdimms))] == [0x0001, 0x0101, 0x1001, 0x1101]
    assert all(c.node == 0 for c in cfg.controllers)
    cross = preset("cross-socket")
    assert len(cross.interleave_sets) == 1 and len(cross.interleave_sets[0].dimms) == 4


def test_one_flush_hint_per_controller_shared_by_its_dimms():
    cfg = preset("wide")                                    # 2 sockets x 3 iMCs x 2 DIMMs
    for c in range(len(cfg.controllers)):
        lists = {d.flush_hints for d in cfg.nvdimms if d.controller == c}
        assert lists == {(FHA_BASE + c * 4096,)}           # one hint, the same for both DIMMs
    assert cfg.controller_flush_hints(0) == (FHA_BASE,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_targeted_fanout_reaches_only_the_vms_socket_on_the_default_layout(backend):
    hv = Hypervisor(small_host(), backend=backend)
    wide = hv.create_vm(dram=MiB, nvdimms=[2 * MiB], fanout="broadcast").start()
    narrow = hv.create_vm(dram=MiB, nvdimms=[2 * MiB], fanout="targeted").start()
    assert hv.platform.set_index_of(wide.nvdimms[0].hpa) == 0     # VMs spread over the sockets' sets
    assert hv.platform.set_index_of(narrow.nvdimms[0].hpa) == 1
    assert wide.fanout_controllers == (0, 1, 2, 3) and narrow.fanout_controllers == (2, 3)
    persist_and_flush(hv, narrow)
    assert narrow.stats()["fha_writes"] == 2 and [c["fha_writes"] for c in hv.platform.controller_stats()] \
        == [0, 0, 1, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_auto_follows_the_region_backing_each_vm(backend):
    """Hints on socket 0's iMCs only: a VM on socket 0's set is write-protected and its flush
    drains; a VM on socket 1's set gets a writable vFHA (no exits); a VM spanning both gets the
    hints that exist."""
    hv = Hypervisor(small_host(hint_sockets=(0,)), backend=backend)
    assert [hv.platform.set_wpq_flush(k) for k in range(2)] == [True, False]
    on0 = hv.create_vm(dram=MiB, nvdimms=[2 * MiB]).start()
    on1 = hv.create_vm(dram=MiB, nvdimms=[2 * MiB]).start()
    both = hv.create_vm(dram=MiB, nvdimms=[MiB, MiB], fanout="targeted").start()
    assert [hv.platform.set_index_of(r.hpa) for r in on0.nvdimms + on1.nvdimms + both.nvdimms] == [0, 1, 0, 1]
    assert (on0.strategy, on1.strategy, both.strategy) == ("write-protect", "writable", "write-protect")
    assert on0.fanout_controllers == (0, 1) and both.fanout_controllers == (0, 1)
    assert [h.physical for h in both.vfha_table] == [(FHA_BASE, FHA_BASE + 4096)] * 2

    persist_and_flush(hv, on0)
    s = on0.stats()
    assert (s.exits[48], s["fha_writes"], s["lines_drained"]) == (1, 2, 8)
    persist_and_flush(hv, on1)
    s = on1.stats()
    assert (s.exit_count, s["fha_writes"], s["lines_drained"]) == (0, 0, 0)
    persist_and_flush(hv, both, n_lines=4)
    s = both.stats()
    assert (s.exits[48], s["fha_writes"], s["lines_drained"]) == (1, 2, 4)   # socket 0's lines drained
    queued = {hv.platform.controller_of(line) for line in hv.platform.line_states()}
    assert queued == {2, 3}                        # socket 1's lines wait in WPQs (ADR guards them)
