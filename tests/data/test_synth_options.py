"""``evl-ecg data synth``: a bad --seed or --size is refused in a message that names the option (issue 30)."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from evl_ecg.cli import app
from evl_ecg.data.commands import parse_size

runner = CliRunner()


def _synth(tmp_path, *extra: str):
    args = ["data", "synth", "--out", str(tmp_path / "out"), "--train", "1", "--bench", "0", "--workers", "1"]
    return runner.invoke(app, [*args, "--no-progress", *extra], env={"COLUMNS": "200"})  # the panel on one line


def test_a_negative_seed_is_refused_naming_seed(tmp_path):
    result = _synth(tmp_path, "--seed", "-1")
    assert result.exit_code == 2, result.output  # a usage error, before any work
    assert "Invalid value for '--seed'" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_huge_size_is_refused_naming_size_and_the_value(tmp_path):
    result = _synth(tmp_path, "--size", "60000x60000")
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--size'" in result.output and "60000x60000" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["big", "8x8", "60000x60000"])
def test_every_size_error_carries_the_option_name(text):
    with pytest.raises(typer.BadParameter) as err:
        parse_size(text)
    assert err.value.param_hint == "'--size'"
    assert "Invalid value for '--size'" in err.value.format_message()
