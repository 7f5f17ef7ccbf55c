"""Sweeps and fleets on the local process pool and on Dask (an in-process LocalCluster and a
real scheduler + worker pair on loopback): the same rows whatever runs them."""

import csv
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nvemu.tools.cells import run_cell, run_host
from nvemu.cli.main import main
from nvemu.errors import NvemuError
from nvemu.tools.spec import check_cells
from nvemu.tools.sweep import fleet_hosts, sweep_cells
from nvemu.tools.tasks import execute

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

SPEC = {"ops": 8000, "seed": 2, "workloads": ["kv-put", "seq-log"], "platforms": ["per-socket"], "vms": 2,
        "strategy": ["write-protect", "mmio"], "fanout": ["broadcast", "targeted"],
        "timing": {"exit_cycles": [2000, 3000]}}


def comparable(rows):
    return [{k: v for k, v in r.items() if "wall" not in k} for r in rows]


@pytest.fixture(scope="module")
def cells():
    return sweep_cells(SPEC)


@pytest.fixture(scope="module")
def local_rows(cells):
    return execute(run_cell, cells, workers=2, progress=False)


def test_grid_expansion(cells):
    assert len(cells) == 2 * 2 * 2 * 2
    assert {c["workload"] for c in cells} == {"kv-put", "seq-log"}
    assert {c["timing"]["exit_cycles"] for c in cells} == {2000, 3000}
    assert all(c["ops"] == 8000 and c["vms"] == 2 and c["platform"] == "per-socket" for c in cells)


def test_pool_sizes_agree(cells, local_rows):
    assert comparable(execute(run_cell, cells, workers=1, progress=False)) == comparable(local_rows)
    assert all(not r["error"] for r in local_rows)
    dear = [r for r, c in zip(local_rows, cells) if c["timing"]["exit_cycles"] == 3000]
    cheap = [r for r, c in zip(local_rows, cells) if c["timing"]["exit_cycles"] == 2000]
    assert all(d["time_ps"] > c["time_ps"] and d["exits"] == c["exits"] for d, c in zip(dear, cheap))


def test_dask_local_cluster_gives_the_same_rows(cells, local_rows):
    from dask.distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        rows = execute(run_cell, cells, scheduler=client, progress=False)
    assert comparable(rows) == comparable(local_rows)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster():
    """A real `dask scheduler` and `dask worker` pair as subprocesses on loopback."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    scheduler = subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "2",
                               "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from dask.distributed import Client
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in (worker, scheduler):
            p.terminate()
        for p in (worker, scheduler):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_real_scheduler_and_workers_on_loopback(dask_cluster, tmp_path, local_rows):
    spec = tmp_path / "s.toml"
    spec.write_text(_toml(SPEC))
    assert main(["sweep", str(spec), "--scheduler", dask_cluster, "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    doc = json.loads((tmp_path / "d" / "results.json").read_text())
    assert doc["kind"] == "sweep" and doc["schema_version"] == 2
    assert comparable(doc["rows"]) == comparable(local_rows)


def _toml(spec) -> str:
    lines, tables = [], []
    for k, v in spec.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    for name, table in tables:
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def test_failed_task_is_reported_and_resume_skips_done_ones(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(_toml({"ops": 5000, "workloads": ["kv-put"], "traces": ["broken.txt"],
                           "strategy": ["write-protect", "mmio"]}))
    (tmp_path / "broken.txt").write_text("vm0 cpu0 STORE 0x100000000 8 0x1\nvm0 cpu0 BOGUS\n")
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("task failed") == 2 and "broken.txt" in err and '"strategy": "mmio"' in err
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [bool(r["error"]) for r in rows] == [False, False, True, True]
    journal = (out / "rows.jsonl").read_text().splitlines()
    assert len(journal) == 4
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1", "--no-progress", "--resume"]) == 1
    again = (out / "rows.jsonl").read_text().splitlines()
    assert len(again) == 6                        # only the two failed tasks ran again
    assert comparable(json.loads(x) for x in again[:2]) == comparable(json.loads(x) for x in journal[:2])


def test_fleet_rolls_up_per_host_and_fleet_wide(tmp_path):
    hosts = fleet_hosts(_load(EXAMPLES / "fleet-small.toml"), EXAMPLES)
    rows = execute(run_host, hosts, workers=2, progress=False)
    assert [r["host"] for r in rows] == ["rack1-a", "rack1-b", "rack2-legacy"]
    assert [r["vms"] for r in rows] == [2, 1, 1]
    assert rows[2]["exits"] == 0 and rows[2]["lines_drained"] == 0      # no WPQ flush: writable
    assert rows[1]["exits_ept_misconfig"] > 0 and rows[0]["exits_ept_violation"] > 0
    assert sum(v["ops"] for v in rows[0]["per_vm"]) == rows[0]["ops"] == 120_000
    assert main(["fleet", str(EXAMPLES / "fleet-small.toml"), "--out", str(tmp_path), "--workers", "2",
                 "--no-progress"]) == 0
    table = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert table[-1]["host"] == "fleet" and int(table[-1]["ops"]) == sum(r["ops"] for r in rows)


def test_a_bad_sweep_file_fails_before_any_work_and_writes_nothing(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    for text, message in (('wpq_depth = "sixteen"\n', "wpq_depth[0]: Input should be a valid integer"),
                          ('traces = ["missing.npy"]\n', "missing.npy: cannot read"),
                          ('workloads = ["nosuch"]\n', "workloads[0]: Input should be"),
                          ('platforms = ["nfit:none.aml"]\n', "no such NFIT file")):
        spec.write_text(text)
        assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not (tmp_path / "o").exists()


def test_strategies_key_as_on_the_command_line():
    assert [c["strategy"] for c in sweep_cells({"strategies": ["mmio", "hypercall"]})] == ["mmio", "hypercall"]
    assert sweep_cells({"strategies": ["mmio"]}) == sweep_cells({"strategy": ["mmio"]})


def test_example_sweep_file_expands():
    cells = sweep_cells(_load(EXAMPLES / "sweep-small.toml"))
    assert len(cells) == 48


def _load(path):
    from nvemu.tools.sweep import load_toml as _load_toml
    return _load_toml(path)


@pytest.mark.parametrize("spec, message", [
    ({"colour": ["red"]}, "unknown key 'colour'"),
    ({"strategy": []}, "'strategy' is empty"),
    ({"timing": {"warp": [1]}}, r"timing.warp: Input should be 'cpu_ghz', .* \(given 'warp'\)"),
    ({"timing": {"mmio_cycles": [-1]}}, r"timing.mmio_cycles\[0\]: Input should be greater than or equal to 0"),
    ({"wpq_depth": "sixteen"}, r"wpq_depth\[0\]: Input should be a valid integer \(given 'sixteen'\)"),
    ({"wpq_depth": [16, 0]}, r"wpq_depth\[1\]: Input should be greater than or equal to 1"),
    ({"workloads": ["nosuch"]}, r"workloads\[0\]: Input should be 'persist-loop'"),
    ({"strategies": ["write-protect"], "platforms": ["nosuch"]}, "platform 'nosuch': not a preset"),
    ({"traces": ["nosuch.npy"]}, "nosuch.npy: cannot read"),
])
def test_bad_sweep_files(spec, message):
    with pytest.raises(NvemuError, match=message):
        check_cells(sweep_cells(spec))
