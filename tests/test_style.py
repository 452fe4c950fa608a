"""`ruff check` under the project's own configuration (pyproject.toml) finds nothing: run by the
README's test command, so a finding fails CI like any other test."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    checked = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-2000:]
