"""ruff, as `[tool.ruff]` in pyproject.toml configures it, finds nothing in maskinit/, tests/ and benchmarks/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("maskinit", "tests", "benchmarks")


def checked_files() -> list[str]:
    """Every Python file of the project's folders: none is left out."""
    return sorted(str(path.relative_to(ROOT)) for folder in FOLDERS for path in (ROOT / folder).rglob("*.py"))


def test_ruff_finds_nothing():
    files = checked_files()
    assert "maskinit/config/checks.py" in files and "tests/test_lint.py" in files and len(files) > 100
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *files], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_reads_the_projects_settings():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--show-settings", "maskinit/errors.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "line_length = 120" in done.stdout and str(ROOT / "pyproject.toml") in done.stdout
