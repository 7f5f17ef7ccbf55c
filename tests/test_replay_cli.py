"""Streaming replay (nvemu.tools.replayer) and the gen / import / replay commands: the same machine state as a
direct replay, global record indices in errors, bounded memory while streaming, CLI outputs."""

from __future__ import annotations

import csv
import gc
import json
import weakref
from pathlib import Path

import numpy as np
import pytest

from nvemu import COMPILED, TRACE_DTYPE, GuestFault, Hypervisor, Op, TraceError
from nvemu.cli.main import main
from nvemu.tools.prepare import vm_layouts, vm_sizes
from nvemu.tools.replayer import Replayer, replay
from nvemu.formats.trace import load_trace, save_npy, save_text
from nvemu.guest.workloads import VmLayout, generate

DATA = Path(__file__).parent / "data" / "trace"
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "pmemcheck"
G = 1 << 32
SMALL = {"platform": "small", "dram": 4 << 20, "nvdimm": 2 << 20}
LAYOUT = VmLayout(G, 2 << 20, G + (2 << 20), 4 << 20)


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def nvdimm_state(result) -> list[tuple[bytes, bytes]]:
    """Every VM's vNVDIMM as CPUs see it and as its media holds it."""
    hv = result.hypervisor
    out = []
    for vm in sorted(hv.vms.values(), key=lambda v: v.id):
        nv = vm.nvdimms[0]
        out.append((vm.read(nv.gpa, nv.size), hv.platform.read_media(nv.hpa, nv.size)))
    return out


# ---- the Python API -------------------------------------------------------------------------------

def test_replay_matches_a_direct_replay_exactly():
    trace = generate("pmdk-tx", 20_000, [LAYOUT], seed=1, vms=2, vcpus=2)
    result = replay(trace, strategy="write-protect", chunk_ops=3000, **SMALL)
    hv = Hypervisor("small")
    vms = [hv.create_vm(dram=4 << 20, nvdimms=[2 << 20], vcpus=2, strategy="write-protect").start()
           for _ in range(2)]
    hv.run(trace)
    assert (result.ops, result.vms, result.vcpus, result.chunks) == (20_000, 2, 2, 7)
    for row, vm in zip(result.per_vm, vms):
        s = vm.stats()
        assert row["ops"] == s["ops"] and row["exits"][48] == s.exits[48] and row["time_ps"] == s.time_ps
        assert row["lines_drained"] == s["lines_drained"]
        assert result.hypervisor.vms[vm.id].read(G, 2 << 20) == vm.read(G, 2 << 20)
    assert result.exits[48] == result.vfha_writes == int((trace["gpa"] == LAYOUT.fha_gpa).sum())
    assert result.flushes == int(np.isin(trace["op"], (Op.CLWB, Op.CLFLUSHOPT, Op.CLFLUSH)).sum())
    assert result.time_ps == sum(vm.stats().time_ps for vm in vms)
    clocks = [hv.platform.engine.clock(vm.id)[:, 0] for vm in vms]      # each vCPU's time, summed
    assert result.time_ps == sum(int(c.sum()) for c in clocks) and result.ns_per_op == result.time_ps / 1000 / 20_000
    assert result.mops > 0 and 0 < result.tlb_hit_rate <= 1


def test_streamed_npy_leaves_the_same_state_as_an_in_memory_replay(tmp_path):
    trace = generate("kv-put", 30_000, [LAYOUT], seed=3)
    save_npy(tmp_path / "t.npy", trace)
    streamed = replay(tmp_path / "t.npy", chunk_ops=1000, **SMALL)
    whole = replay(trace, chunk_ops=1 << 20, **SMALL)
    assert streamed.format == "npy" and streamed.chunks == 30 and whole.chunks == 1
    assert nvdimm_state(streamed) == nvdimm_state(whole)
    assert streamed.as_dict() | {"seconds": 0, "mops": 0, "chunks": 0, "trace": 0, "format": 0} == \
        whole.as_dict() | {"seconds": 0, "mops": 0, "chunks": 0, "trace": 0, "format": 0}


def test_chunk_iterator_reports_each_chunk():
    run = Replayer(generate("linux-fsync", 12_000, [LAYOUT], seed=2), chunk_ops=5000, **SMALL)
    chunks = list(run.chunks())
    result = run.result()
    assert [(c.index, c.start, c.ops) for c in chunks] == [(0, 0, 5000), (1, 5000, 5000), (2, 10000, 2000)]
    assert sum(c.exits[48] for c in chunks) == result.exits[48] > 0
    assert sum(c.lines_drained for c in chunks) == result.lines_drained
    assert sum(c.time_ps for c in chunks) == result.time_ps
    with pytest.raises(Exception, match="already run"):
        list(run.chunks())


def test_strategies_leave_identical_memory_and_media():
    """SPEC 7.6 through the replay driver: write-protect, mmio and hypercall differ only in exits."""
    trace = generate("seq-log", 20_000, [LAYOUT], seed=4, vms=2)
    results = {s: replay(trace, strategy=s, **SMALL) for s in ("write-protect", "mmio", "hypercall")}
    states = [nvdimm_state(r) for r in results.values()]
    assert states[0] == states[1] == states[2]
    fha = int((trace["gpa"] == LAYOUT.fha_gpa).sum())
    assert results["write-protect"].exits == {48: fha, 49: 0, 18: 0}
    assert results["mmio"].exits == {48: 0, 49: fha, 18: 0}
    assert results["hypercall"].exits == {48: 0, 49: 0, 18: fha}


def test_vms_and_vcpus_come_from_the_trace():
    r = replay(DATA / "basic.txt", **SMALL)
    assert (r.format, r.vms, r.vcpus, r.ops) == ("text", 2, 2, 13)
    vm0 = r.hypervisor.vms[0]
    assert vm0.read(G, 8) == (0x1122334455667788).to_bytes(8, "little")
    assert vm0.read(G + 0x40, 10) == bytes.fromhex("efbeadde00000000efbe")
    assert r.hypervisor.vms[1].read(G + 0x1000, 1) == b"\xff"
    assert r.exits[48] == 1 and r.per_vm[0]["exits"][48] == 1 and r.per_vm[1]["fences"] == 1
    # vm0 flushed two lines and then wrote the vFHA: they are on media now, and so is the line vm1
    # flushed, as the WPQs are physical (SPEC 7.5: it only makes vm1's data more durable)
    platform, nv0, nv1 = r.hypervisor.platform, vm0.nvdimms[0], r.hypervisor.vms[1].nvdimms[0]
    assert platform.read_media(nv0.hpa, 8) == (0x1122334455667788).to_bytes(8, "little")
    assert platform.read_media(nv1.hpa + 0x1000, 1) == b"\xff"
    assert r.lines_drained == 3 and r.per_vm[0]["lines_drained"] == 3


def test_replay_into_an_existing_hypervisor():
    hv = Hypervisor("small")
    vm = hv.create_vm(dram=4 << 20, nvdimms=[2 << 20]).start()
    r = replay(DATA / "two_files.log", hypervisor=hv)
    assert r.format == "pmemcheck" and r.ops == 9 and r.hypervisor is hv
    assert vm.read(G + 0x103C, 10) == bytes.fromhex("1122334455667788cdab")


def test_errors_name_the_global_record_and_nothing_after_it_runs(tmp_path):
    trace = generate("random-rw", 5000, [LAYOUT], seed=1)
    trace[2500]["vm"] = 7
    save_npy(tmp_path / "t.npy", trace)
    run = Replayer(tmp_path / "t.npy", chunk_ops=1000, vms=1, vcpus=1, **SMALL)
    with pytest.raises(TraceError, match=r"^record 2500, field vm: vm 7 does not exist"):
        run.run()
    assert run.vms[0].stats()["ops"] == 2500

    trace = generate("random-rw", 5000, [LAYOUT], seed=1)
    trace[3333]["gpa"] = 0x9_0000_0000
    run = Replayer(trace, chunk_ops=1000, **SMALL)
    with pytest.raises(TraceError, match=r"^record 3333, field gpa: GPA 0x900000000 is outside every mapping of vm 0"):
        run.run()
    assert run.vms[0].stats()["ops"] == 3334 and run.vms[0].stats().exits[48] == 1   # the access that exited

    save_text(tmp_path / "t.txt", trace[3330:3340])
    with pytest.raises(TraceError, match=r"^record 3 \(line 5\), field gpa: GPA 0x900000000"):
        replay(tmp_path / "t.txt", chunk_ops=2, **SMALL)

    trace[3333]["gpa"] = G + 0x13C                          # a record the core refuses, in the 4th chunk
    trace[3333]["op"], trace[3333]["size"] = Op.STORE, 8
    with pytest.raises(TraceError, match=r"^record 3333, field gpa: 8-byte access at GPA 0x10000013c crosses"):
        replay(trace, chunk_ops=1000, **SMALL)


def test_user_handler_sees_faults_indexed_in_the_whole_trace():
    trace = generate("random-rw", 3000, [LAYOUT], seed=1, read_fraction=1.0)
    trace[2100]["gpa"] = 0x9_0000_0000
    seen: list[int] = []

    def skip(fault: GuestFault) -> str:
        seen.append(fault.op_index)
        return "skip"
    r = replay(trace, chunk_ops=1000, handler=skip, **SMALL)
    assert seen == [2100] and r.python_exits == 1 and r.ops == 3000


@pytest.mark.skipif(not COMPILED, reason="replays 4 M ops: a minute on the reference model")
def test_streaming_keeps_resident_memory_flat(tmp_path):
    """A 96 MB trace streamed in 1.5 MB chunks (scanned for its VMs first, then replayed): resident
    memory grows by the small platform and a chunk or two, not by the trace (a memory map of the
    whole file would add its 96 MB)."""
    path = tmp_path / "big.npy"
    save_npy(path, (generate("random-rw", 1 << 20, [LAYOUT], seed=s) for s in range(4)))
    gc.collect()
    before = rss_kib()
    run = Replayer(path, chunk_ops=1 << 16, **SMALL)
    samples = [rss_kib()] + [rss_kib() for _ in run.chunks()]
    assert len(samples) == 65 and run.result().ops == 4 << 20
    assert max(samples) - before < 32 * 1024, (before, samples)


def test_vm_sizes_shrink_to_fit_small_platforms():
    hv = Hypervisor("small")
    assert vm_sizes(hv.platform, 1) == (15 << 20, 8 << 20)
    assert vm_sizes(hv.platform, 2) == (7 << 20, 4 << 20)
    assert vm_sizes(Hypervisor("default").platform, 1) == (256 << 20, 256 << 20)
    assert vm_layouts("default")[0] == VmLayout(G, 256 << 20, G + (256 << 20), 256 << 20)


# ---- the command line ------------------------------------------------------------------------------

def test_gen_then_replay_prints_the_summary_and_writes_json_and_csv(tmp_path, capsys):
    npy = tmp_path / "tx.npy"
    assert main(["gen", "pmdk-tx", "-n", "20k", "-o", str(npy), "--preset", "small", "--vms", "2", "--seed", "3"]) == 0
    assert "wrote 20,000 ops of pmdk-tx (2 VM x 1 vCPU" in capsys.readouterr().out
    assert np.array_equal(load_trace(npy), generate("pmdk-tx", 20_000, vm_layouts("small", 2), seed=3, vms=2))

    rc = main(["replay", str(npy), "--preset", "small", "--strategy", "mmio", "--json", str(tmp_path / "r.json"),
               "--csv", str(tmp_path / "r.csv"), "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0 and out.err == ""
    assert "platform  small: 2 VMs x 1 vCPU, strategy mmio, fan-out broadcast" in out.out
    for label in ("ops", "Mops/s", "ept_misconfig (49)", "flushes", "lines drained", "ns/op",
                  "TLB hit rate"):
        assert label in out.out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert {"ops", "seconds", "mops", "exits", "lines_drained", "time_ps", "ns_per_op"} <= set(doc)
    assert doc["ops"] == 20_000 and doc["exits"]["ept_misconfig"]["count"] == \
        sum(v["exits"]["ept_misconfig"]["count"] for v in doc["per_vm"]) > 0
    rows = list(csv.DictReader((tmp_path / "r.csv").read_text().splitlines()))
    assert [r["vm"] for r in rows] == ["0", "1", "total"] and int(rows[2]["ops"]) == 20_000
    assert int(rows[0]["exits_ept_misconfig"]) + int(rows[1]["exits_ept_misconfig"]) == \
        int(rows[2]["exits_ept_misconfig"])
    assert doc["exits"]["ept_misconfig"]["reason"] == 49
    assert "native ns/op" in out.out and "vs native" in out.out
    assert doc["overhead_vs_native"] == pytest.approx(doc["ns_per_op"] / doc["native_ns_per_op"])
    assert doc["overhead_vs_native"] > 1                     # every vFHA write exits under mmio
    for vm in doc["per_vm"]:
        assert vm["overhead_vs_native"] == pytest.approx(vm["ns_per_op"] / vm["native_ns_per_op"])
    assert float(rows[2]["overhead_vs_native"]) == pytest.approx(doc["overhead_vs_native"])

    assert main(["replay", str(npy), "--preset", "small", "--no-native", "--json", str(tmp_path / "n.json"),
                 "--no-progress"]) == 0
    assert "vs native" not in capsys.readouterr().out
    doc = json.loads((tmp_path / "n.json").read_text())
    assert doc["native_ns_per_op"] is None and doc["overhead_vs_native"] is None


def test_the_native_baseline_is_the_trace_run_natively_without_second_level_walks(backend):
    from nvemu import TimingModel
    from nvemu.machine.platform import Platform
    trace = generate("kv-put", 4000, LAYOUT, seed=2)
    r = replay(trace, native=True, platform=Platform("small", backend=backend), strategy="write-protect",
               dram=4 << 20, nvdimm=2 << 20)
    assert r.hypervisor.platform.backend == backend
    bare = replay(trace, platform=Platform("small", TimingModel(walk_ref_cycles=0), backend=backend),
                  strategy="native", dram=4 << 20, nvdimm=2 << 20)
    assert r.native_ns_per_op == bare.ns_per_op and bare.exits == {k: 0 for k in bare.exits}
    assert r.overhead_vs_native == r.ns_per_op / bare.ns_per_op > 1


def test_a_released_native_baseline_frees_the_emulated_host_and_reports_the_same(backend):
    """``with_native(release=True)`` (what ``nvemu replay`` uses) lets go of the emulated hypervisor
    before building the native host, and reports what a kept one does."""
    from nvemu.machine.platform import Platform
    from nvemu.tools.replayer import with_native
    trace = generate("kv-put", 4000, LAYOUT, seed=2)
    options = dict(strategy="mmio", dram=4 << 20, nvdimm=2 << 20)
    kept = replay(trace, native=True, platform=Platform("small", backend=backend), **options)
    result = Replayer(trace, platform=Platform("small", backend=backend), **options).run()
    gone = weakref.ref(result.hypervisor)
    released = with_native(result, trace, release=True, dram=4 << 20, nvdimm=2 << 20)
    assert released.hypervisor is None and gone() is None
    wall = ("seconds", "mops")                  # measured, not emulated
    assert {k: v for k, v in released.as_dict().items() if k not in wall} == \
        {k: v for k, v in kept.as_dict().items() if k not in wall}


def test_json_to_stdout_replaces_the_table(capsys):
    assert main(["replay", str(DATA / "basic.txt"), "--preset", "small", "--nvdimm", "2M", "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ops"] == 13 and doc["vms"] == 2 and doc["format"] == "text"


def test_auto_strategy_is_reported_per_vm_on_a_host_with_hints_on_one_socket(tmp_path, capsys):
    """Issue 16 item 1: on hints-socket0 the VM backed by socket 0's set is write-protected, the one
    on socket 1's set (no hints: Linux nvdimm_has_flush) keeps a writable vFHA; the report says which."""
    trace = tmp_path / "two.npy"
    assert main(["gen", "persist-loop", "-n", "4000", "--vms", "2", "-o", str(trace), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["replay", str(trace), "--preset", "hints-socket0", "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["vm"], r["strategy"]) for r in doc["per_vm"]] == [(0, "write-protect"), (1, "writable")]
    assert doc["per_vm"][0]["fha_writes"] > 0 and doc["per_vm"][1]["fha_writes"] == 0
    assert main(["replay", str(trace), "--preset", "hints-socket0"]) == 0
    out = capsys.readouterr().out
    assert "2 VMs x 1 vCPU, strategy per VM (below), fan-out broadcast" in out
    row = next(line for line in out.splitlines() if line.startswith("strategy"))
    assert row.split() == ["strategy", "write-protect", "writable"]


def test_import_converts_every_format_both_ways(tmp_path, capsys):
    out = tmp_path / "two.npy"
    assert main(["import", "pmemcheck", str(DATA / "two_files.log"), "-o", str(out), "--preset", "small"]) == 0
    assert "9 ops from 13 pmemcheck records (/mnt/pmem/a at GPA 0x100000000 (8 KiB); /mnt/pmem/b at GPA " \
           "0x100002000 (4 KiB); 2 markers)" in capsys.readouterr().out
    assert main(["import", "auto", str(out), "-o", str(tmp_path / "two.txt")]) == 0
    assert main(["import", "text", str(tmp_path / "two.txt"), "-o", str(tmp_path / "again.npy")]) == 0
    assert np.array_equal(load_trace(tmp_path / "again.npy"), load_trace(out))
    assert (tmp_path / "two.txt").read_text().splitlines()[1:3] == ["vm0 cpu0 SFENCE",
                                                                    "vm0 cpu0 STORE 0x10000103c 4 0x44332211"]


def test_replay_takes_an_nfit_and_a_pmemcheck_log(tmp_path, capsys):
    aml = tmp_path / "small.aml"
    assert main(["nfit", "build", "--preset", "small", "-o", str(aml)]) == 0
    assert main(["replay", str(DATA / "two_files.log"), "--nfit", str(aml), "--deep-flush", "--strategy",
                 "write-protect", "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "pmemcheck" and doc["ops"] == 11 and doc["lines_drained"] == 3
    assert doc["exits"]["ept_violation"] == {"reason": 48, "count": 1}


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared/samples/pmemcheck not present")
def test_real_pmemcheck_logs_replay_from_the_command_line(capsys):
    for log in sorted(SAMPLES.glob("*.log")):
        assert main(["replay", str(log), "--preset", "small", "--json", "-"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["format"] == "pmemcheck" and doc["ops"] > 500 and doc["fences"] > 80


@pytest.mark.parametrize("content, message", [
    (b"vm0 cpu0 STORE 0x100000000 3 0x1\n", "t line 1, field size: size 3 is not valid for STORE"),
    (b"\x93NUMPY\x01\x00\x36\x00{'descr': 'x', 'fortran_order': False, 'shape': (1,)}\n", "bad dtype description"),
    (b"START|STORE;0x1000;0x1;0x8|STOP\n", "pmemcheck record 1 (line 1), field addr: [0x1000, 0x1008) is not inside"),
    (b"LOAD 0x900000000\n", "record 0 (line 1), field gpa: GPA 0x900000000 is outside every mapping of vm 0"),
])
def test_bad_traces_fail_with_one_line_and_exit_code_2(tmp_path, capsys, content, message):
    (tmp_path / "t").write_bytes(content)
    assert main(["replay", str(tmp_path / "t"), "--preset", "small"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nvemu: error: ") and err.count("\n") == 1 and message in err


@pytest.mark.parametrize("records, chunk, message, index", [
    ([(Op.STORE, 0, 0, 8, G, 1)] * 5 + [(Op.STORE, 0, 0, 3, G, 1)], 2,
     "record 5, field size: size 3 is not valid for STORE (1, 2, 4 or 8)", 5),
    ([(Op.STORE, 0, 0, 8, G, 1)] * 3 + [(Op.LOAD, 0, 0, 8, 0x9_0000_0000, 0)], 2,
     "record 3, field gpa: GPA 0x900000000 is outside every mapping of vm 0 (read by cpu0)", 3),
])
def test_replay_and_check_name_a_bad_record_alike(tmp_path, records, chunk, message, index):
    """One preparation, one way of naming errors: a chunked replay and the checker report the same
    record index, field and message (shifted through the error's fields, not its text)."""
    from nvemu.tools.checker import check_trace
    ops = np.array(records, dtype=TRACE_DTYPE)
    path = tmp_path / "t.npy"
    save_npy(path, ops)
    for run in (lambda: replay(path, chunk_ops=chunk, platform="small"),
                lambda: check_trace(path, platform="small")):
        with pytest.raises(TraceError) as info:
            run()
        assert str(info.value) == message and info.value.index == index


def test_unwritable_outputs_and_bad_arguments(tmp_path, capsys):
    assert main(["gen", "seq-log", "-n", "10", "-o", str(tmp_path / "no" / "x.npy")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["gen", "kv-put", "-n", "10", "-o", str(tmp_path / "x.npy"), "--footprint", "8K"]) == 2
    assert "needs at least" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["gen", "kv-put", "-n", "ten", "-o", "x.npy"])


def test_progress_bar_only_when_asked_or_on_a_terminal(capsys):
    trace = generate("random-rw", 1000, [LAYOUT])
    assert Replayer(trace, progress=None, **SMALL)._bar() is None          # stderr is not a terminal here
    bar = Replayer(trace, progress=True, **SMALL)._bar()
    assert bar is not None and bar.total == 1000 and bar.delay == 1.0     # shown only after a second
    bar.close()
    replay(trace, progress=None, **SMALL)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv", [["gen", "persist-loop", "-n", "3000", "-o", "{d}/g.npy"],
                                  ["import", "npy", "{d}/t.npy", "-o", "{d}/i.npy"],
                                  ["import", "pmemcheck", "{d}/p.log", "-o", "{d}/p.npy"],
                                  ["demo", "--ops", "2000", "--strategies", "writable", "-q"]])
def test_long_commands_show_a_switchable_progress_bar(tmp_path, capsys, argv):
    """gen, import and demo advance a tqdm bar on stderr by records done (demo: every strategy's
    ops) with --progress, and print none with --no-progress (or when stderr is not a terminal)."""
    save_npy(tmp_path / "t.npy", generate("random-rw", 2500, [LAYOUT]))
    (tmp_path / "p.log").write_text("START|REGISTER_FILE;/f;0x1000;0x1000;0x0|STORE;0x1000;0x5;0x8|"
                                    "FLUSH;0x1000;0x1000|FENCE|STOP\n")
    argv = [a.format(d=tmp_path) for a in argv] + ["--preset", "small"]
    total = {"gen": "3.00k/3.00k", "import": "2.50k/2.50k", "demo": "6.00k/6.00k"}[argv[0]]
    if argv[1] == "pmemcheck":
        total = "66.0op"           # a store, 64 write-backs, a fence; no total: known only at the end
    for switch in ("--no-progress", None):
        assert main(argv + ([switch] if switch else [])) == 0
        assert capsys.readouterr().err == ""
    assert main(argv + ["--progress"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"{argv[0]}:") and total in err, err


def test_gen_and_import_are_silent_with_quiet(tmp_path, capsys):
    """-q on gen and import as on the other commands: the file is written, nothing is printed."""
    out, again = tmp_path / "q.npy", tmp_path / "q.txt"
    assert main(["gen", "kv-put", "-n", "500", "-o", str(out), "--preset", "small", "-q"]) == 0
    assert main(["import", "npy", str(out), "-o", str(again), "-q"]) == 0
    assert capsys.readouterr() == ("", "")
    assert np.array_equal(load_trace(again), np.load(out))
    assert main(["gen", "kv-put", "-n", "500", "-o", str(out), "--preset", "small"]) == 0
    assert capsys.readouterr().out.startswith("nvemu gen: wrote 500 ops of kv-put")


@pytest.mark.parametrize("flag", ["--deep-flush", "--skip-unregistered"])
def test_pmemcheck_options_on_another_trace_are_refused_alike(tmp_path, capsys, flag):
    """import, like replay, refuses a pmemcheck-only option on another trace in one line, before writing."""
    trace = tmp_path / "t.npy"
    save_npy(trace, generate("random-rw", 100, [LAYOUT]))
    for argv in (["import", "npy", str(trace), "-o", str(tmp_path / "o.npy")], ["replay", str(trace), "-q"]):
        assert main(argv + [flag, "--preset", "small"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"nvemu: error: {flag} applies only to a pmemcheck log, not to this npy trace", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.npy"]
