"""Hostile input to the ECG stage: render sizes are bounded up front, WFDB headers without usable signal lines are
one-line errors naming the file (through the reader and through ``evl-ecg data inspect`` / ``render``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from evl_ecg.data.commands import app
from evl_ecg.ecg.readers import read_wfdb
from evl_ecg.ecg.render import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, RenderSpec, check_image_size
from evl_ecg.ecg.signal import EcgError

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()


# --------------------------------------------------------------------------------------------------
# Render sizes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        dict(size=(60000, 60000)),
        dict(size=(MAX_IMAGE_SIDE + 1, 16)),
        dict(size=(8193, 8192)),  # 67,117,056 pixels, one row over 2**26
        dict(size=None, dpi=100000),
        dict(size=None, dpi=float("inf")),
        dict(size=(4096, 4096), supersample=8),  # a 32768 x 32768 canvas
    ],
    ids=["60000x60000", "one-side", "area", "dpi-100000", "dpi-inf", "supersample"],
)
def test_a_huge_render_is_refused_when_the_spec_is_made(spec):
    with pytest.raises(ValueError) as exc:
        RenderSpec(**spec)
    assert "\n" not in str(exc.value)
    assert "too large" in str(exc.value) or "canvas" in str(exc.value) or "positive number" in str(exc.value)


def test_the_bounds_admit_the_pages_in_use():
    assert MAX_IMAGE_PIXELS == 2**26 and MAX_IMAGE_SIDE == 32768
    RenderSpec(size=(8192, 8192))  # exactly 2**26 pixels
    RenderSpec(size=(MAX_IMAGE_SIDE, 16))
    RenderSpec.at_dpi(600)  # the letter page at 600 DPI: 6600 x 5100
    RenderSpec(size=(2200, 1700))
    with pytest.raises(ValueError, match="at least 16x16"):
        check_image_size(15, 100)


def test_render_command_refuses_a_huge_size_in_one_line(tmp_path):
    result = runner.invoke(app, ["render", str(FIXTURES / "A0001.hea"), "--out", str(tmp_path / "x.png"),
                                 "--size", "60000x60000"])  # fmt: skip
    assert result.exit_code != 0 and "60000x60000 px is too large" in result.output
    assert "MemoryError" not in result.output and not (tmp_path / "x.png").exists()
    result = runner.invoke(app, ["render", str(FIXTURES / "A0001.hea"), "--out", str(tmp_path / "x.png"),
                                 "--dpi", "100000"])  # fmt: skip
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 1 and len(lines) == 1
    assert lines[0].startswith(f"error: {FIXTURES / 'A0001.hea'}: the page at 100000 DPI") and "too large" in lines[0]


# --------------------------------------------------------------------------------------------------
# WFDB headers: too few signal lines, no signal descriptions, zero length
# --------------------------------------------------------------------------------------------------


def _header(tmp_path: Path, lines: list[str]) -> Path:
    """``A0001.hea`` made of ``lines`` beside a copy of the fixture's data file."""
    (tmp_path / "A0001.mat").write_bytes((FIXTURES / "A0001.mat").read_bytes())
    hea = tmp_path / "A0001.hea"
    hea.write_text("\n".join(lines) + "\n")
    return hea


SIGNALS = (FIXTURES / "A0001.hea").read_text().splitlines()[1:13]


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (["A0001 0 500 6000"], "number of signals '0': zero: an ECG header has one signal line per lead"),
        (["A0001 0 500"], "number of signals '0': zero: an ECG header has one signal line per lead"),
        (["A0001 12 500 6000"], "number of signals '12': the header has 0 signal lines"),
        (["A0001 12 500 6000", *SIGNALS[:3]], "number of signals '12': the header has 3 signal lines"),
        (["A0001/2 12 500 6000"], "number of segments '2': the header has 0 segment lines"),
        (["A0001/0 12 500 6000"], "number of segments '0': not a whole number above 0"),
        (["A0001 12 500 6000", *(" ".join(ln.split()[:8]) for ln in SIGNALS)], "signal 1: description missing"),
        (["A0001 12 500 0", *SIGNALS], "number of samples '0': zero: the record holds no samples"),
    ],
    ids=[
        "no-signals",
        "no-signals-no-length",
        "no-lines",
        "3-lines",
        "no-segments",
        "zero-segments",
        "no-descriptions",
        "zero-length",
    ],  # fmt: skip
)
def test_a_header_without_usable_signal_lines_is_one_line_naming_the_file(tmp_path, lines, needle):
    hea = _header(tmp_path, lines)
    with pytest.raises(EcgError) as exc:
        read_wfdb(hea)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{hea}: ") and needle in message
    for command in (["inspect", str(hea)], ["render", str(hea), "--out", str(tmp_path / "x.png")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
        assert errors == [f"error: {message}"] and "Traceback" not in result.output
