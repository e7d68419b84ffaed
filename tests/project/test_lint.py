"""The code passes the linter's rule set (pyproject.toml, [tool.ruff]): real mistakes, the worst style errors
and import order."""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_passes():
    ruff = pytest.importorskip("ruff.__main__", reason="ruff is in the test extra: pip install -e '.[test]'")
    proc = subprocess.run([ruff.find_ruff_bin(), "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
