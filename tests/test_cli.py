"""The command line: --version, demo, layout."""

import json
import shutil
import subprocess

import pytest

from nvemu import __version__
from nvemu.cli.main import main


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_console_script_exists():
    exe = shutil.which("nvemu")
    if exe is None:
        pytest.skip("nvemu is not installed as a console script here")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"nvemu {__version__}")


def test_demo_table(capsys, tmp_path):
    assert main(["demo", "--ops", "6500", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    for label in ("write-protect", "mmio", "hypercall", "writable", "auto -> write-protect",
                  "auto -> writable (no-wpq-flush host)"):
        assert label in out
    rows = {r["label"]: r for r in json.loads((tmp_path / "d.json").read_text())}
    wp, mmio, hc = rows["write-protect"], rows["mmio"], rows["hypercall"]
    assert (wp["exits_48"], mmio["exits_49"], hc["exits_18"]) == (10, 10, 10)   # 6500 ops: 10 vFHA writes
    assert wp["lines_drained"] == mmio["lines_drained"] == hc["lines_drained"] > 0
    assert mmio["cycles_per_1k_ops"] > wp["cycles_per_1k_ops"]
    assert rows["auto -> writable (no-wpq-flush host)"]["exits_48"] == 0
    assert rows["writable"]["lines_drained"] == 0


def test_layout_json(capsys):
    assert main(["layout", "--json"]) == 0
    layout = json.loads(capsys.readouterr().out)
    assert (layout["nvdimm_gpa"], layout["nvdimm_size"], layout["fha_gpa"], layout["dram_size"]) == \
        (0x1_0000_0000, 256 << 20, 0x1_1000_0000, 256 << 20)
    vm = layout["vm"]
    assert vm["nvdimms"][0]["gpa"] == 0x1_0000_0000 and vm["nvdimms"][0]["size"] == 256 << 20
    assert vm["vfha"] == 0x1_1000_0000
    assert layout["platform"]["wpq_depth"] == 64 and len(layout["platform"]["controllers"]) == 4


def test_errors_are_messages_not_tracebacks(capsys):
    assert main(["demo", "--ops", "100", "--strategies", "bogus"]) == 2
    assert "unknown strategy 'bogus'" in capsys.readouterr().err
