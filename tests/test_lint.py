"""The lint CI runs passes here too, so a change that breaks it fails the suite before it lands:
``ruff check`` with the rules in pyproject.toml, and import-linter's layer contract."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check_passes():
    done = run(sys.executable, "-m", "ruff", "check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_import_linter_contract_is_kept():
    exe = shutil.which("lint-imports")
    assert exe is not None, "import-linter is in the test extra: pip install -e '.[test]'"
    done = run(exe, "--no-cache")
    assert done.returncode == 0 and "broken" not in done.stdout.split("Contracts:")[-1].replace("0 broken", ""), \
        done.stdout[-4000:] + done.stderr[-2000:]
