"""nvemu bench: the comparison the technique exists for (issue: microbenchmarks of strategies)."""

import csv
import json

import pytest

from nvemu.tools.cells import cell, run_cell
from nvemu.cli.main import main
from nvemu.tools.microbench import grid, run_bench, sensitivity

from conftest import scaled

OPS = scaled(20_000, 5_000)       # records per cell; fewer on the reference model


def rows_of(cells):
    return run_bench(cells, workers=1, progress=False)


def by(rows, **match):
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def test_write_protect_beats_mmio_only_where_the_vfha_is_read_when_handling_costs_match():
    """With the same handling cost on both paths (and free walks: a misconfigured entry is never
    cached, so mmio walks again on each access), the strategies differ only in the read exits:
    the same time where the guest only writes its hint, write-protect ahead where it reads it."""
    workloads = ["persist-loop", "linux-fsync", "pmdk-tx", "kv-put", "seq-log", "fha-readback"]
    rows = rows_of(grid(workloads, ["write-protect", "mmio"], ops=OPS, timing={"mmio_cycles": 1500,
                                                                               "write_protect_cycles": 1500,
                                                                               "walk_ref_cycles": 0}))
    for w in workloads:
        (wp,), (mmio,), (native,) = (by(rows, workload=w, strategy=s) for s in ("write-protect", "mmio", "native"))
        assert wp["vfha_writes"] > 0
        if w == "fha-readback":
            assert wp["ns_per_op"] < mmio["ns_per_op"], w
            assert wp["overhead_vs_native"] < mmio["overhead_vs_native"]
        else:
            assert wp["ns_per_op"] == mmio["ns_per_op"], w
        assert wp["overhead_vs_native"] > 1.0
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
    assert t["ns_per_op"] <= b["ns_per_op"]     # the hint writes go out together: the slowest WPQ sets the time


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
            "ns_per_op", "overhead_vs_native"} <= set(first[0])
    assert any("wall" in k for k in csv.DictReader(open(tmp_path / "a" / "results.csv")).fieldnames)
    pngs = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert pngs == ["overhead_by_strategy.png", "overhead_vs_vfha_rate.png"]


def test_timing_sensitivity_finds_where_the_ranking_changes(tmp_path, capsys):
    assert main(["bench", "--workloads", "kv-put", "--strategies", "write-protect", "hypercall", "--ops", str(OPS),
                 "--sweep", "hypercall_cycles=1000:2000:250", "--out", str(tmp_path), "--workers", "1",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    # hypercall handling is cheaper than write-protect handling (1,500 cycles) below it, dearer above;
    # at 1,500 the two tie, and the tie is reported as one
    assert "kv-put between hypercall_cycles=1250 and 1500: hypercall = write-protect" in out
    assert "kv-put between hypercall_cycles=1500 and 1750: write-protect < hypercall" in out
    with open(tmp_path / "sensitivity" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["value"], r["ranking"], r["changed"]) for r in table] == [
        ("1000", "hypercall < write-protect", "False"), ("1250", "hypercall < write-protect", "False"),
        ("1500", "hypercall = write-protect", "True"), ("1750", "write-protect < hypercall", "True"),
        ("2000", "write-protect < hypercall", "False")]


def test_free_sweeps_every_free_parameter_each_with_its_table_and_figure(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    seen = _panels(monkeypatch)
    assert main(["bench", "--workloads", "kv-put", "--strategies", "write-protect", "mmio", "--ops", "2000",
                 "--sweep", "wpq_depth=8,64", "--sweep", "mmio_cycles=0,3000", "--out", str(tmp_path),
                 "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "sensitivity to wpq_depth from 8 to 64 (default 64" in out and "sensitivity to mmio_cycles" in out
    assert "kv-put between mmio_cycles=0 and 3000: write-protect < mmio" in out
    for name in ("wpq_depth", "mmio_cycles"):
        assert (tmp_path / "sensitivity" / name / "results.csv").exists()
        assert (tmp_path / f"sensitivity-{name}.png").exists()
    assert [f["name"] for f in seen] == ["sensitivity-wpq_depth", "sensitivity-mmio_cycles"]
    assert [len(f["panels"]) for f in seen] == [1, 1]          # the swept WPQ depth is the x axis, not a panel
    assert "ranking flips in 1 place" in seen[1]["title"]
    assert main(["bench", "--sweep", "free", "--sweep", "mmio_cycles=1,2", "--out", str(tmp_path / "x"),
                 "--no-progress"]) == 2
    assert "mmio_cycles is swept twice" in capsys.readouterr().err


def test_the_free_sweeps_cover_each_exit_path_the_flush_hint_and_the_wpq():
    from nvemu import TimingModel
    from nvemu.tools.microbench import FREE_SWEEPS, parse_sweeps
    names = [n for n, _ in parse_sweeps(["free"])]
    assert names == list(FREE_SWEEPS)
    assert set(names) - {"wpq_depth"} <= set(TimingModel.FREE_PARAMETERS)
    assert {"write_protect_cycles", "mmio_cycles", "hypercall_cycles", "fha_write_ns", "wpq_depth"} <= set(names)
    for name, values in parse_sweeps(["free"]):          # each range brackets the default
        default = 64 if name == "wpq_depth" else TimingModel().to_dict()[name]
        assert values[0] < default < values[-1] and default in values


def test_sensitivity_ranking_helper():
    rows = {1: [{"workload": "w", "strategy": "a", "ns_per_op": 1.0},
                {"workload": "w", "strategy": "b", "ns_per_op": 2.0}],
            2: [{"workload": "w", "strategy": "a", "ns_per_op": 3.0},
                {"workload": "w", "strategy": "b", "ns_per_op": 2.0}]}
    assert [(r["ranking"], r["changed"]) for r in sensitivity(rows)] == [("a < b", False), ("b < a", True)]
    rows[3] = [{"workload": "w", "strategy": "b", "ns_per_op": 2.0},
               {"workload": "w", "strategy": "a", "ns_per_op": 2.0}]
    assert [(r["ranking"], r["previous"]) for r in sensitivity(rows)][-1] == ("a = b", 2)


def test_a_failed_cell_is_reported_and_the_rest_complete(capsys):
    cells = [cell(workload="kv-put", ops=1000), cell(workload="no-such-workload", ops=1000)]
    rows = run_bench(cells, workers=1, progress=False)
    assert not rows[0]["error"] and "no-such-workload" in rows[1]["error"]
    assert rows[1]["workload"] == "no-such-workload"          # the failed task's parameters come back


def test_cells_are_deterministic_per_seed():
    c = cell(workload="pmdk-tx", strategy="mmio", ops=5000, seed=3)
    a, b = run_cell(c), run_cell(c)
    assert {k: v for k, v in a.items() if "wall" not in k} == {k: v for k, v in b.items() if "wall" not in k}


@pytest.mark.parametrize("bad", ["exit_cycles=1:2", "nope=1:5:1", "exit_cycles", "wpq_depth=0,4",
                                 "exit_cycles=5:1:0"])
def test_bad_sweep(bad, tmp_path, capsys):
    assert main(["bench", "--sweep", bad, "--out", str(tmp_path), "--no-progress"]) == 2
    assert "--sweep" in capsys.readouterr().err


def test_results_json_describes_itself(tmp_path):
    assert main(["bench", "--workloads", "kv-put", "--strategies", "write-protect", "--ops", "5000", "--out",
                 str(tmp_path), "--workers", "1", "--no-progress", "--no-rate", "--no-plot", "-q"]) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    assert {"schema_version", "kind", "nvemu_version", "created", "host", "command", "parameters", "rows",
            "exit_reasons", "columns"} <= set(doc)
    assert doc["schema_version"] == 2 and doc["kind"] == "bench" and doc["created"].endswith("Z")
    assert {"platform", "cpu", "python", "numpy"} <= set(doc["host"])
    assert doc["command"].startswith("nvemu bench --workloads kv-put")
    assert doc["parameters"]["timing_model"]["exit_cycles"] == 2000 and doc["parameters"]["seeds"] == [0]
    assert doc["exit_reasons"] == {"ept_violation": 48, "ept_misconfig": 49, "vmcall": 18}
    wp = [r for r in doc["rows"] if r["strategy"] == "write-protect"][0]
    assert wp["exits_ept_violation"] == wp["exits"] == wp["vfha_writes"] > 0
    assert doc["columns"]["ns_per_op"]["unit"] == "emulated ns per record"
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    for row in table:                                  # every cell a scalar: no embedded JSON
        assert not any(v.startswith(("[", "{")) for v in row.values())
    assert "lines_drained_by_controller_0" in table[0] and "timing_exit_cycles" in table[0]


def test_bad_grid_values_fail_before_any_work(tmp_path, capsys):
    for argv, message in ((["--workloads", "nosuch"], "invalid choice: 'nosuch'"),
                          (["--controllers", "0"], "must be at least 1"),
                          (["--wpq-depth", "5000"], "wpq_depth=5000")):
        try:
            rc = main(["bench", *argv, "--ops", "1000", "--out", str(tmp_path / "o"), "--no-progress"])
        except SystemExit as e:
            rc = e.code
        assert rc == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not (tmp_path / "o").exists()


def _panels(monkeypatch):
    """Capture each figure bench draws: its title and, per visible panel, title and bar heights."""
    from nvemu.tools import plots
    seen = []
    real = plots._save

    def save(plt, fig, out, name, title, footer, fmt, dpi, legend=None):
        panels = [(ax.get_title(), [p.get_height() + p.get_y() for p in ax.patches])
                  for ax in fig.axes if ax.get_visible()]
        seen.append({"name": name, "title": title, "footer": footer, "panels": panels,
                     "yscale": fig.axes[0].get_yscale(), "legend": legend[1] if legend else None})
        return real(plt, fig, out, name, title, footer, fmt, dpi, legend)
    monkeypatch.setattr(plots, "_save", save)
    return seen


def test_every_grid_cell_is_drawn_on_a_readable_scale(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    seen = _panels(monkeypatch)
    assert main(["bench", "--workloads", "kv-put", "random-rw", "--strategies", "write-protect", "writable",
                 "--controllers", "2", "4", "--wpq-depth", "16", "64", "--ops", "5000", "--out", str(tmp_path),
                 "--workers", "2", "--no-progress", "--no-rate", "-q"]) == 0
    (fig,) = seen
    assert fig["name"] == "overhead_by_strategy" and fig["yscale"] == "log"
    assert [t for t, _ in fig["panels"]] == ["iMCs 2, WPQ depth 16", "iMCs 2, WPQ depth 64",
                                              "iMCs 4, WPQ depth 16", "iMCs 4, WPQ depth 64"]
    doc = json.loads((tmp_path / "results.json").read_text())
    for title, heights in fig["panels"]:
        c, q = (int(x) for x in title.replace("iMCs ", "").replace("WPQ depth ", "").split(", "))
        want = sorted(r["overhead_vs_native"] for r in doc["rows"] if r["strategy"] != "native"
                      and r["controllers"] == c and r["wpq_depth"] == q)
        assert sorted(heights) == pytest.approx(want)            # 4 bars per panel: 16 cells, every one drawn
    assert "20,000" not in fig["footer"] and "5,000 guest ops per cell" in fig["footer"]
    assert "exit_cycles=2000" in fig["footer"] and "walk_ref_cycles=30" in fig["footer"]
    assert (tmp_path / "overhead_by_strategy.png").stat().st_size > 10_000


def test_figure_format_dpi_and_sensitivity_plot(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from PIL import Image
    seen = _panels(monkeypatch)
    assert main(["bench", "--workloads", "kv-put", "--strategies", "write-protect", "hypercall", "--ops", "5000",
                 "--sweep", "hypercall_cycles=1000:2000:500", "--out", str(tmp_path / "s"), "--workers", "1",
                 "--no-progress", "--format", "svg", "-q"]) == 0
    assert seen[-1]["name"] == "sensitivity" and len(seen[-1]["panels"]) == 1
    assert seen[-1]["legend"] == ["write-protect (WP)", "hypercall (HC)"]      # one row under the title
    assert (tmp_path / "s" / "sensitivity.svg").read_text().lstrip().startswith("<?xml")
    assert main(["bench", "--workloads", "kv-put", "--strategies", "mmio", "--ops", "5000", "--out",
                 str(tmp_path / "p"), "--workers", "1", "--no-progress", "--dpi", "50", "-q"]) == 0
    with Image.open(tmp_path / "p" / "overhead_by_strategy.png") as im:
        assert round(im.info["dpi"][0]) == 50
    assert sorted(p.name for p in (tmp_path / "p").glob("*.png")) == ["overhead_by_strategy.png",
                                                                      "overhead_vs_vfha_rate.png"]


def test_figure_title_legend_and_panels_do_not_overlap(tmp_path):
    pytest.importorskip("matplotlib")
    from types import SimpleNamespace

    from nvemu.tools import plots
    plt = plots._pyplot()
    fig, axes = plots._grid(plt, 7, 6.5, 4.4)
    for ax in axes:
        ax.plot([0, 4000], [38, 41], label="write-protect (WP)")
        ax.plot([0, 4000], [39, 39], label="mmio (MMIO)")
        ax.set_title("workload persist-loop")
    title = ("Sensitivity to write_protect_cycles: 0..4000 (ranking flips in 9 place(s), shaded; y axes do not "
             "start at 0)")
    plots._save(SimpleNamespace(close=lambda f: None), fig, tmp_path, "f", title, "footer", "png", 50,
                legend=axes[0].get_legend_handles_labels())
    r = fig.canvas.get_renderer()
    title_box = fig._suptitle.get_window_extent(r)
    legend_box = fig.legends[0].get_window_extent(r)
    panels_top = max(ax.get_tightbbox(r).y1 for ax in axes)
    assert title_box.y0 >= legend_box.y1 and legend_box.y0 >= panels_top
    assert plots._unit("write_protect_cycles") == "CPU cycles" and plots._unit("fha_write_ns") == "ns"
    assert plots._unit("fill_buffers") == "line buffers per vCPU" and plots._unit("wpq_depth") == "WPQ lines"
    plt.close(fig)
