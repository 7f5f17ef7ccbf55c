"""The command line never destroys or half-writes a user's file, and every error is one line with a
non-zero status, whatever raised it (issue 12: "User files are destroyed", "Tracebacks instead of
one line"; issue 15: pipes)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nvemu import TRACE_DTYPE, Hypervisor
from nvemu.cli.main import main
from nvemu.errors import ConfigError
from nvemu.formats.trace import save_trace
from nvemu.tools.tasks import execute

ROOT = Path(__file__).resolve().parent.parent


def one_line(err: str) -> str:
    """The single error line of a command's stderr (fails when there is more than one line)."""
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "t.npy"
    assert main(["gen", "persist-loop", "-n", "2000", "-o", str(path), "--preset", "small"]) == 0
    return path


# ---- never destroy a user's file ------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--json", "--csv"])
def test_replay_refuses_to_write_over_its_trace(trace, capsys, flag):
    before = trace.read_bytes()
    capsys.readouterr()
    assert main(["replay", str(trace), "--preset", "small", flag, str(trace)]) == 2
    assert "it is an input" in one_line(capsys.readouterr().err)
    assert trace.read_bytes() == before


def test_replay_refuses_another_spelling_of_its_trace(trace, capsys):
    before = trace.read_bytes()
    other = trace.parent / ".." / trace.parent.name / trace.name
    assert main(["replay", str(trace), "--preset", "small", "--json", str(other)]) == 2
    assert trace.read_bytes() == before


def test_import_refuses_to_overwrite_its_input(trace, capsys):
    before = trace.read_bytes()
    assert main(["import", "npy", str(trace), "-o", str(trace)]) == 2
    assert "it is an input" in one_line(capsys.readouterr().err)
    assert trace.read_bytes() == before


def test_check_refuses_json_onto_the_trace(trace, capsys):
    before = trace.read_bytes()
    assert main(["check", str(trace), "--preset", "small", "--json", str(trace)]) == 2
    assert "it is an input" in one_line(capsys.readouterr().err)
    assert trace.read_bytes() == before


def test_gen_refuses_to_overwrite_the_nfit_it_reads(tmp_path, capsys):
    aml = tmp_path / "host.aml"
    assert main(["nfit", "build", "--preset", "small", "-o", str(aml)]) == 0
    before = aml.read_bytes()
    assert main(["gen", "seq-log", "-n", "100", "--nfit", str(aml), "-o", str(aml)]) == 2
    assert aml.read_bytes() == before


def _interrupting(chunks, after):
    for k, chunk in enumerate(chunks):
        if k == after:
            raise KeyboardInterrupt
        yield chunk


def test_interrupted_gen_leaves_nothing_or_the_old_file(tmp_path, capsys, monkeypatch):
    from nvemu.cli import trace as trace_cli
    real = trace_cli.iter_generate
    monkeypatch.setattr(trace_cli, "iter_generate",
                        lambda *a, **k: _interrupting(real(*a, chunk_ops=1000, **k), after=2))
    out = tmp_path / "g.npy"
    assert main(["gen", "persist-loop", "-n", "10k", "-o", str(out), "--preset", "small"]) == 130
    assert not out.exists() and os.listdir(tmp_path) == []          # no truncated trace, no temporary file
    assert "interrupted" in one_line(capsys.readouterr().err)
    save_trace(out, np.zeros(3, TRACE_DTYPE))
    before = out.read_bytes()
    assert main(["gen", "persist-loop", "-n", "10k", "-o", str(out), "--preset", "small"]) == 130
    assert out.read_bytes() == before and os.listdir(tmp_path) == ["g.npy"]
    assert "interrupted" in one_line(capsys.readouterr().err)



def _unnamed_output(pid: int, directory: Path) -> int:
    """Bytes written so far to the unnamed (O_TMPFILE) output file process ``pid`` has open in
    ``directory``; 0 while it has none."""
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir() if fds.exists() else ():
        try:
            target = os.readlink(fd)
            if target.startswith(f"{directory}/") and target.endswith("(deleted)"):
                return os.stat(fd).st_size
        except OSError:                       # the descriptor closed meanwhile
            continue
    return 0


@pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="unnamed files are a Linux feature (O_TMPFILE)")
@pytest.mark.parametrize("old", [None, b"the old file"])
def test_a_gen_killed_outright_leaves_nothing_or_the_old_file(tmp_path, old):
    """SIGKILL cannot be caught: the trace is written to a file without a name, which the kernel
    removes with the process; it gets its name only once complete."""
    out = tmp_path / "k.npy"
    if old:
        out.write_bytes(old)
    p = subprocess.Popen([sys.executable, "-m", "nvemu", "gen", "persist-loop", "-n", "1G", "-o", str(out),
                          "--no-progress"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        written = 0
        for _ in range(6000):                       # until 10 MB of the 24 GB are written
            written = _unnamed_output(p.pid, tmp_path)
            if written > 10 << 20 or p.poll() is not None:
                break
            time.sleep(0.05)
        assert written > 10 << 20 and os.listdir(tmp_path) == (["k.npy"] if old else [])
    finally:
        p.kill()
        p.wait()
    assert p.returncode == -signal.SIGKILL
    assert os.listdir(tmp_path) == (["k.npy"] if old else [])
    if old:
        assert out.read_bytes() == old


@pytest.mark.parametrize("how", ["named", "copied"])
def test_outputs_are_whole_where_a_file_cannot_be_unnamed_or_linked(tmp_path, monkeypatch, how):
    """Without O_TMPFILE the output is a hidden temporary file beside the target until renamed;
    an unnamed file that cannot be linked (a restricted /proc) is copied out under such a name."""
    from nvemu import _files
    if how == "named":
        monkeypatch.setattr(_files, "_unnamed", lambda directory: None)
    else:
        def refuse(*a, **k):
            raise PermissionError(1, "Operation not permitted")
        monkeypatch.setattr(_files.os, "link", refuse)
    out = tmp_path / "t.npy"
    records = np.zeros(1000, TRACE_DTYPE)
    records["op"] = 6
    with _files.AtomicFile(out, "wb") as f:
        f.write(b"x" * 100)
        hidden = [n for n in os.listdir(tmp_path) if n.startswith(".t.npy.") and n.endswith(".tmp")]
        assert len(hidden) == (0 if how == "copied" else 1) and len(os.listdir(tmp_path)) == len(hidden)
    assert out.read_bytes() == b"x" * 100 and os.listdir(tmp_path) == ["t.npy"]
    assert save_trace(out, records) == 1000
    assert os.listdir(tmp_path) == ["t.npy"] and np.array_equal(np.load(out), records)

def test_a_failing_writer_leaves_the_old_text_trace(tmp_path):
    out = tmp_path / "t.txt"
    out.write_text("old\n")

    def chunks():
        good = np.zeros(2, TRACE_DTYPE)
        good["op"] = 6                                   # SFENCE
        yield good
        raise RuntimeError("generator failed")
    with pytest.raises(RuntimeError):
        save_trace(out, chunks())
    assert out.read_text() == "old\n" and os.listdir(tmp_path) == ["t.txt"]


def test_outputs_keep_the_usual_permissions(trace, tmp_path):
    out = tmp_path / "r.json"
    assert main(["replay", str(trace), "--preset", "small", "--json", str(out), "-q"]) == 0
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


# ---- one line and a non-zero status, whatever raised -----------------------------------------------

def test_demo_json_into_a_missing_directory_fails_before_the_run(tmp_path, capsys, monkeypatch):
    from nvemu.cli import demo
    monkeypatch.setattr(demo, "run_strategy", lambda *a: pytest.fail("ran before checking the output"))
    assert main(["demo", "--ops", "1000", "--json", str(tmp_path / "no" / "d.json")]) == 2
    assert "does not exist" in one_line(capsys.readouterr().err)


def test_gen_linux_fsync_max_blocks_zero(tmp_path, capsys):
    assert main(["gen", "linux-fsync", "--max-blocks", "0", "-n", "1000", "-o", str(tmp_path / "a.npy")]) == 2
    assert "max_blocks=0" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "a.npy").exists()


def test_overflowing_nvdimm_gpa(tmp_path, capsys):
    log = tmp_path / "log.txt"
    log.write_text("START|REGISTER_FILE;/f;0x1000;0x1000;0x0|STORE;0x1000;0x5;0x8|FENCE|STOP\n")
    for gpa in ("0xffffffffffffffffff", "0xfffffffffffff000"):
        assert main(["import", "pmemcheck", str(log), "--nvdimm-gpa", gpa, "-o", str(tmp_path / "q.npy")]) == 2
        assert "48-bit guest-physical space" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "q.npy").exists()


def test_check_verify_negative(trace, capsys):
    with pytest.raises(SystemExit) as info:
        main(["check", str(trace), "--verify", "-1"])
    assert info.value.code == 2
    assert "--verify" in one_line(capsys.readouterr().err)


def test_sweep_out_unwritable(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["sweep", str(ROOT / "examples" / "sweep-small.toml"), "--out", str(tmp_path / "afile" / "o"),
                 "--no-progress"]) == 2
    assert "is a file" in one_line(capsys.readouterr().err)


def test_bench_out_naming_an_existing_file(tmp_path, capsys):
    f = tmp_path / "results"
    f.write_text("mine\n")
    assert main(["bench", "--out", str(f), "--ops", "1000", "--workloads", "kv-put", "--no-rate"]) == 2
    assert "existing file" in one_line(capsys.readouterr().err)
    assert f.read_text() == "mine\n"


def test_corrupt_resume_journal(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('ops = 3000\nworkloads = ["kv-put"]\nstrategy = ["write-protect", "mmio"]\n')
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    first = json.loads((out / "rows.jsonl").read_text().splitlines()[0])
    (out / "rows.jsonl").write_bytes(b"\xff\xfe garbage\n[1, 2]\n{\"task\": 5}\n" + json.dumps(first).encode()
                                     + b"\n{\"task\": \"abc\", \"cycl")
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1", "--no-progress", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "skipped 4 unreadable line(s)" in err and "Traceback" not in err
    doc = json.loads((out / "results.json").read_text())
    rows = doc["rows"] if isinstance(doc, dict) else doc
    assert [r["strategy"] for r in rows] == ["write-protect", "mmio"] and not any(r["error"] for r in rows)


def test_unreachable_or_malformed_scheduler(tmp_path, capsys):
    spec = str(ROOT / "examples" / "sweep-small.toml")
    assert main(["sweep", spec, "--scheduler", "tcp://127.0.0.1:1", "--out", str(tmp_path / "o")]) == 2
    assert "cannot reach the Dask scheduler" in one_line(capsys.readouterr().err)
    assert main(["sweep", spec, "--scheduler", "not an address", "--out", str(tmp_path / "o")]) == 2
    assert "not a Dask scheduler address" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_missing_dask_names_the_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    assert main(["sweep", str(ROOT / "examples" / "sweep-small.toml"), "--scheduler", "tcp://h:8786",
                 "--out", str(tmp_path / "o")]) == 2
    assert "pip install 'nvemu[dask]'" in one_line(capsys.readouterr().err)


def _kill_on(task):
    if task["n"] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"n": task["n"], "square": task["n"] ** 2}


def test_a_lost_pool_worker_is_that_tasks_failure_and_the_rest_go_on():
    rows = execute(_kill_on, [{"n": n} for n in range(8)], workers=2, progress=False)
    assert [r["n"] for r in rows] == list(range(8))
    assert [bool(r["error"]) for r in rows] == [n == 3 for n in range(8)]
    assert "BrokenProcessPool" in rows[3]["error"]
    assert [r["square"] for r in rows if not r["error"]] == [n * n for n in range(8) if n != 3]


def test_unexpected_exceptions_are_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    from nvemu.cli import demo

    def boom(args):
        raise TypeError("something internal")
    monkeypatch.setattr(demo, "cmd_layout", boom)
    assert main(["layout"]) == 1
    line = one_line(capsys.readouterr().err)
    assert "unexpected TypeError: something internal" in line and "--debug" in line
    assert main(["--debug", "layout"]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert main(["layout", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_argument_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["gen", "kv-put", "-n", "ten", "-o", "x.npy"])
    assert info.value.code == 2
    assert "is not a count" in one_line(capsys.readouterr().err)


def test_vcpu_index_out_of_range_raises():
    vm = Hypervisor("small").create_vm(vcpus=2, dram=1 << 20, nvdimms=[1 << 20])
    assert vm.vcpu(1) is vm.vcpus[1]
    for bad in (-1, 2, 1.0, True):
        with pytest.raises(ConfigError):
            vm.vcpu(bad)


# ---- pipes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["demo", "--ops", "20000"], ["layout", "--json"]])
def test_a_closed_pipe_ends_quietly(argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(f"{sys.executable} -m nvemu {' '.join(argv)} | head -c 10",
                       shell=True, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert p.stderr == "" and len(p.stdout) == 10


def test_python_dash_m_nvemu_runs():
    p = subprocess.run([sys.executable, "-m", "nvemu", "--version"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert p.returncode == 0 and p.stdout.startswith("nvemu ")


def _stdout_is_only_json(argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "nvemu", *argv], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=600)
    assert p.returncode in (0, 1), p.stderr
    return json.loads(p.stdout), p.stderr


def test_json_dash_gives_stdout_only_json_for_every_command(tmp_path, trace):
    doc, err = _stdout_is_only_json(["check", str(trace), "--preset", "small", "--json", "-"])
    assert "ok" in doc and "nvemu check:" in err                  # the report went to stderr
    doc, err = _stdout_is_only_json(["demo", "--ops", "2000", "--preset", "small", "--json", "-"])
    assert doc["kind"] == "demo" and "write-protect" in err
    doc, err = _stdout_is_only_json(["replay", str(trace), "--preset", "small", "--json", "-"])
    assert doc["ops"] == 2000 and "platform  small" in err
    doc, err = _stdout_is_only_json(["layout", "--preset", "small", "--json"])
    assert len(doc["vms"]) == 1
    doc, err = _stdout_is_only_json(["bench", "--workloads", "kv-put", "--strategies", "mmio", "--ops", "3000",
                                     "--no-rate", "--no-plot", "--workers", "1", "-o", str(tmp_path / "b"),
                                     "--json", "-"])
    assert doc["kind"] == "bench" and "cells" in err
    spec = tmp_path / "s.toml"
    spec.write_text('ops = 3000\nworkloads = ["kv-put"]\n')
    doc, err = _stdout_is_only_json(["sweep", str(spec), "--workers", "1", "-o", str(tmp_path / "s"), "--json", "-"])
    assert doc["kind"] == "sweep" and len(doc["rows"]) == 1
