"""The stages flow one way, checked by import-linter's contracts in pyproject.toml (``lint-imports`` in CI): here the
contracts are shown to fail on a copy of the package with a planted upward import and a planted circle, so that a
contract that silently checks nothing would be caught."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "evl_ecg"


def _lint(tmp_path: Path, plant: dict[str, str]) -> subprocess.CompletedProcess:
    """``lint-imports`` with the project's contracts on a copy of the package carrying ``plant`` (path: code)."""
    pytest.importorskip("importlinter")
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "evl_ecg", ignore=shutil.ignore_patterns("assets", "__pycache__", "configs"))
    for rel, code in plant.items():
        (src / "evl_ecg" / rel).write_text(code)
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(src)}
    lint = Path(sys.executable).with_name("lint-imports")
    cmd = [str(lint)] if lint.exists() else [sys.executable, "-m", "importlinter.cli"]
    return subprocess.run(
        [*cmd, "--config", str(tmp_path / "pyproject.toml"), "--no-cache"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_contracts_hold_on_the_package_as_it_is(tmp_path):
    result = _lint(tmp_path, {})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_and_a_circle_break_the_contracts(tmp_path):
    plant = {
        "data/planted.py": "from evl_ecg.eval import stats  # a record stage reading evaluation\n",
        "ecg/planted_a.py": "from evl_ecg.ecg import planted_b\n",
        "ecg/planted_b.py": "from evl_ecg.ecg import planted_a\n",
    }
    result = _lint(tmp_path, plant)
    assert result.returncode != 0
    assert "evl_ecg.data is not allowed to import evl_ecg.eval" in result.stdout
    assert "evl_ecg.data.planted -> evl_ecg.eval.stats" in result.stdout
    assert "No cycles are allowed in evl_ecg.ecg" in result.stdout and "planted_" in result.stdout
