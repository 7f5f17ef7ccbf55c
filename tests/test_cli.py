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
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["schema_version"] == 2 and doc["kind"] == "demo" and doc["parameters"]["ops"] == 6500
    assert doc["exit_reasons"] == {"ept_violation": 48, "ept_misconfig": 49, "vmcall": 18}
    rows = {r["label"]: r for r in doc["rows"]}
    wp, mmio, hc = rows["write-protect"], rows["mmio"], rows["hypercall"]
    assert (wp["exits_ept_violation"], mmio["exits_ept_misconfig"], hc["exits_vmcall"]) == (10, 10, 10)
    assert wp["lines_drained"] == mmio["lines_drained"] == hc["lines_drained"] > 0
    native = rows["native (no VM)"]
    assert native["exits"] == 0 and native["overhead_vs_native"] == 1
    assert all(r["ns_per_op"] > native["ns_per_op"] for r in (wp, mmio, hc))
    assert wp["overhead_vs_native"] == wp["ns_per_op"] / native["ns_per_op"]
    assert rows["auto -> writable (no-wpq-flush host)"]["exits_ept_violation"] == 0
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
    with pytest.raises(SystemExit) as info:
        main(["demo", "--ops", "100", "--strategies", "bogus"])
    assert info.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_layout_takes_the_platform_and_reports_every_vm(tmp_path, capsys):
    aml = tmp_path / "small.aml"
    assert main(["nfit", "build", "--preset", "small", "-o", str(aml)]) == 0
    capsys.readouterr()
    assert main(["layout", "--nfit", str(aml), "--vms", "2", "--nvdimm", "2M", "--dram", "4M", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["vms"]) == 2 and [v["id"] for v in doc["vms"]] == [0, 1]
    assert all(v["nvdimm_size"] == 2 << 20 and v["dram_size"] == 4 << 20 for v in doc["vms"])
    assert doc["nvdimm_gpa"] == doc["vms"][0]["nvdimm_gpa"] and doc["fha_gpa"] == doc["vms"][0]["fha_gpa"]
    hpas = [v["nvdimms"][0]["hpa"] for v in doc["vms"]]
    assert hpas[0] != hpas[1]                                    # each VM on its own host range
    assert doc["platform"]["name"] == "nfit"


@pytest.mark.parametrize("command", [["layout"], ["demo", "--ops", "2000"]])
def test_small_preset_shrinks_the_vm(capsys, command):
    assert main([*command, "--preset", "small"]) == 0
    out = capsys.readouterr().out
    assert "8 MiB" in out and "out of host DRAM" not in out


def test_demo_streams_its_trace_in_chunks(monkeypatch, capsys):
    """Issue 12: ``demo --ops N`` hands the core the persist loop a chunk at a time (memory does not
    grow with N), and the table counts every op."""
    import nvemu.cli.demo as demo

    sizes = []

    class Recording(demo.Hypervisor):
        def run(self, ops, *args, **kw):
            sizes.append(len(ops))
            return super().run(ops, *args, **kw)

    monkeypatch.setattr(demo, "Hypervisor", Recording)
    assert main(["demo", "--ops", "3M", "--strategies", "writable"]) == 0
    assert sum(sizes) == 3 * 3_000_000 and max(sizes) <= 1 << 21        # writable, the no-wpq-flush host, native
    assert "3,000,000" in capsys.readouterr().out


@pytest.mark.parametrize("ops", ["1001G", "99999999999999999999G"])
def test_demo_refuses_counts_past_its_limit_in_one_line(capsys, ops):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--ops", ops])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "at most 1,000,000,000,000 ops" in err[-1]
