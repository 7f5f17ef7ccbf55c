"""nvemu bench: the comparison the technique exists for (issue: microbenchmarks of strategies)."""

import csv

import pytest

from nvemu.tools.cells import cell, run_cell
from nvemu.cli.main import main
from nvemu.tools.microbench import grid, run_bench, sensitivity

OPS = 20_000


def rows_of(cells):
    return run_bench(cells, workers=1, progress=False)


def by(rows, **match):
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def test_write_protect_beats_mmio_where_the_vfha_is_written():
    workloads = ["persist-loop", "linux-fsync", "pmdk-tx", "kv-put", "seq-log", "fha-readback"]
    rows = rows_of(grid(workloads, ["write-protect", "mmio"], ops=OPS))
    for w in workloads:
        (wp,), (mmio,), (native,) = (by(rows, workload=w, strategy=s) for s in ("write-protect", "mmio", "native"))
        assert wp["vfha_writes"] > 0
        assert wp["cycles_per_op"] < mmio["cycles_per_op"], w
        assert wp["overhead_vs_native"] < mmio["overhead_vs_native"]
        assert native["exits"] == 0 and native["overhead_vs_native"] == 1.0
        assert wp["lines_drained"] == mmio["lines_drained"] == native["lines_drained"]
        if w == "fha-readback":                        # it reads its hint: mmio exits on the reads too
            assert wp["exits"] < mmio["exits"] and wp["vfha_reads"] > 0
            assert mmio["exits"] == wp["exits"] + wp["vfha_reads"]
        else:                                          # it only writes the hint: as many exits
            assert wp["exits"] == mmio["exits"] == wp["vfha_writes"]


def test_no_wpq_flush_platform_auto_costs_zero_exits():
    rows = rows_of(grid(["kv-put", "fha-readback"], ["auto"], hints=[0], ops=OPS))
    for r in by(rows, strategy="auto"):
        assert r["resolved"] == "writable" and r["exits"] == 0 and r["lines_drained"] == 0


def test_targeted_writes_fewer_hints_when_vms_sit_on_different_controllers():
    """Both VMs deep-flush every put, each on its own socket's interleave set: every queued line is
    drained either way (by its own VM's flush or, under broadcast, by the other's first), but
    targeted writes half the hints."""
    rows = rows_of(grid(["kv-put"], ["write-protect"], fanouts=["broadcast", "targeted"], vms=2,
                        interleave="socket", ops=OPS))
    (b,), (t,) = (by(rows, fanout=f, strategy="write-protect") for f in ("broadcast", "targeted"))
    assert t["lines_drained_by_controller"] == b["lines_drained_by_controller"]
    assert t["fha_writes"] == b["fha_writes"] // 2 and t["exits"] == b["exits"]
    assert t["lines_drained"] == b["lines_drained"]
    assert t["cycles_per_op"] < b["cycles_per_op"]


def test_targeted_drains_fewer_lines_when_vms_sit_on_different_controllers():
    """VM A deep-flushes; VM B persists to the WPQ only (ADR). Broadcast makes A's flushes drain
    B's lines too; targeted drains only A's controllers."""
    from nvemu.tools.cells import run_host
    out = {}
    for fanout in ("broadcast", "targeted"):
        host = run_host({"controllers": 4, "interleave": "socket", "fanout": fanout, "ops": OPS, "vms": [
            {"workload": "kv-put", "strategy": "write-protect"},
            {"workload": "random-rw", "strategy": "write-protect", "params": {"read_fraction": 0.2}}]})
        out[fanout] = host
    a_b, a_t = out["broadcast"]["per_vm"][0], out["targeted"]["per_vm"][0]
    assert a_t["lines_drained"] < a_b["lines_drained"]
    assert out["targeted"]["lines_drained"] < out["broadcast"]["lines_drained"]
    assert a_t["fha_writes"] == a_b["fha_writes"] // 2


def test_same_command_twice_writes_identical_csv(tmp_path):
    def once(out):
        assert main(["bench", "--workloads", "kv-put", "seq-log", "--ops", str(OPS), "--out", str(out),
                     "--workers", "2", "--no-progress"]) == 0
        with open(out / "results.csv") as f:
            table = list(csv.DictReader(f))
        return [{k: v for k, v in row.items() if "wall" not in k} for row in table]
    first, second = once(tmp_path / "a"), once(tmp_path / "b")
    assert first == second and len(first) == 2 * 5
    assert {"workload", "strategy", "fanout", "domain", "ops", "exits", "exits_per_1k_ops", "lines_drained",
            "cycles_per_op", "overhead_vs_native"} <= set(first[0])
    assert any("wall" in k for k in csv.DictReader(open(tmp_path / "a" / "results.csv")).fieldnames)
    pngs = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert pngs == ["overhead_by_strategy.png", "overhead_vs_vfha_rate.png"]


def test_cost_sensitivity_finds_where_the_ranking_changes(tmp_path, capsys):
    assert main(["bench", "--workloads", "kv-put", "--strategies", "write-protect", "hypercall", "--ops", str(OPS),
                 "--sweep-cost", "hypercall=300:1300:250", "--out", str(tmp_path), "--workers", "1",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    # hypercall handling is cheaper than write-protect handling (800) up to 800 cycles, dearer after
    assert "kv-put at hypercall=1050: write-protect < hypercall" in out
    with open(tmp_path / "sensitivity" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["value"], r["changed"]) for r in table] == [("300", "False"), ("550", "False"), ("800", "False"),
                                                            ("1050", "True"), ("1300", "False")]


def test_sensitivity_ranking_helper():
    rows = {1: [{"workload": "w", "strategy": "a", "cycles_per_op": 1.0},
                {"workload": "w", "strategy": "b", "cycles_per_op": 2.0}],
            2: [{"workload": "w", "strategy": "a", "cycles_per_op": 3.0},
                {"workload": "w", "strategy": "b", "cycles_per_op": 2.0}]}
    assert [(r["ranking"], r["changed"]) for r in sensitivity(rows)] == [("a < b", False), ("b < a", True)]


def test_a_failed_cell_is_reported_and_the_rest_complete(capsys):
    cells = [cell(workload="kv-put", ops=1000), cell(workload="no-such-workload", ops=1000)]
    rows = run_bench(cells, workers=1, progress=False)
    assert not rows[0]["error"] and "no-such-workload" in rows[1]["error"]
    assert rows[1]["workload"] == "no-such-workload"          # the failed task's parameters come back


def test_cells_are_deterministic_per_seed():
    c = cell(workload="pmdk-tx", strategy="mmio", ops=5000, seed=3)
    a, b = run_cell(c), run_cell(c)
    assert {k: v for k, v in a.items() if "wall" not in k} == {k: v for k, v in b.items() if "wall" not in k}


@pytest.mark.parametrize("bad", ["exit=1:2", "nope=1:5:1", "exit"])
def test_bad_sweep_cost(bad, tmp_path, capsys):
    assert main(["bench", "--sweep-cost", bad, "--out", str(tmp_path), "--no-progress"]) == 2
    assert "--sweep-cost" in capsys.readouterr().err
