"""``evl-ecg data`` commands through typer's CliRunner: outputs, one-line errors, non-zero exits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from evl_ecg.data.commands import app, parse_size

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    text = result.output.strip()  # click >= 8.2 mixes stderr into output
    lines = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, text
    return lines[0]


def test_parse_size_accepts_width_x_height():
    assert parse_size("512x384") == (512, 384)
    assert parse_size("2200X1700") == (2200, 1700)


def test_synth_bad_size_exits_non_zero(tmp_path):
    result = run("synth", "--out", tmp_path / "x", "--train", 1, "--bench", 0, "--size", "big")
    assert result.exit_code != 0
    assert "WIDTHxHEIGHT" in result.output


@pytest.fixture()
def wfdb_record(tmp_path) -> Path:
    """A 12-lead WFDB record with a PhysioNet Challenge 2020 header (# Dx: AF, RBBB)."""
    wfdb = pytest.importorskip("wfdb")
    from evl_ecg.ecg.leads import LEADS

    t = np.arange(5000) / 500.0
    sig = np.stack([0.5 * np.sin(2 * np.pi * 1.2 * t + k) for k in range(12)], axis=1)
    wfdb.wrsamp(
        "A0001",
        fs=500,
        units=["mV"] * 12,
        sig_name=list(LEADS),
        p_signal=sig,
        fmt=["16"] * 12,
        adc_gain=[1000.0] * 12,
        baseline=[0] * 12,
        comments=["Age: 60", "Sex: Male", "Dx: 164889003,59118001", "Rx: Unknown", "Hx: Unknown", "Sx: Unknown"],
        write_dir=str(tmp_path),
    )
    return tmp_path / "A0001.hea"


def test_inspect_prints_leads_fs_duration_and_labels(wfdb_record):
    pytest.importorskip("evl_ecg.ecg.readers")
    result = run("inspect", wfdb_record)
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["leads"][:3] == ["I", "II", "III"] and len(info["leads"]) == 12
    assert info["fs"] == 500.0 and info["duration_s"] == 10.0 and info["n_samples"] == 5000
    assert info["labels"]["cpsc"] == ["AF", "RBBB"]
    assert set(info["findings"]) >= {"AF", "RBBB"}


def test_render_writes_a_png_of_the_requested_size(wfdb_record, tmp_path):
    pytest.importorskip("evl_ecg.ecg.readers")
    pytest.importorskip("evl_ecg.ecg.render")
    out = tmp_path / "a.png"
    result = run("render", wfdb_record, "--out", out, "--size", "300x200", "--layout", "6x2")
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        assert img.size == (300, 200)


def test_inspect_missing_and_corrupt_files_fail_with_one_line(tmp_path):
    line = one_line_error(run("inspect", tmp_path / "nope.hea"))
    assert "nope.hea" in line and "not found" in line
    pytest.importorskip("evl_ecg.ecg.readers")
    bad = tmp_path / "bad.hea"
    bad.write_text("this is not a header\n")
    assert "bad.hea" in one_line_error(run("inspect", bad))


def test_render_rejects_an_unknown_layout(tmp_path):
    line = one_line_error(run("render", tmp_path / "a.hea", "--out", tmp_path / "a.png", "--layout", "5x5"))
    assert "a.hea" in line and "layout" in line


def test_synth_writes_a_corpus_and_refuses_other_settings(tmp_path):
    pytest.importorskip("evl_ecg.ecg.render")
    out = tmp_path / "corpus"
    args = ("synth", "--out", out, "--train", 2, "--bench", 1, "--size", "128x96", "--workers", 1, "--no-progress")
    result = run(*args, "--seed", 1)
    assert result.exit_code == 0, result.output
    assert "train 2" in result.output and "ecgqa-test 1" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["train"] == 2 and manifest["settings"]["size"] == [128, 96]
    line = one_line_error(run(*args, "--seed", 2))
    assert str(out) in line and "seed" in line
