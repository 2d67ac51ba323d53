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


# ------------------------------------------------------------------ Challenge records (hand-written layout)

CHALLENGE = Path(__file__).parents[1] / "ecg" / "fixtures" / "A0001.hea"  # 12 s, negative checksums


def _challenge_record(directory: Path, seconds: float) -> Path:
    """A Challenge-layout record (``.hea`` text + MATLAB v4 ``.mat``) written byte by byte, not by wfdb."""
    import struct

    from evl_ecg.ecg.leads import LEADS

    t = np.arange(round(seconds * 500)) / 500.0
    val = np.stack([np.round(700 * np.sin(2 * np.pi * 1.1 * t + k)) - 30 * k for k in range(12)]).astype("<i2")
    name = b"val\x00"
    (directory / "L0001.mat").write_bytes(struct.pack("<5i", 30, 12, val.shape[1], 0, 4) + name + val.tobytes("F"))
    lines = [f"L0001 12 500 {val.shape[1]} 05-Feb-2020 11:39:16"]
    for i, lead in enumerate(LEADS):
        check = (int(val[i].astype(np.int64).sum()) + 32768) % 65536 - 32768
        lines.append(f"L0001.mat 16+24 1000/mV 16 0 {int(val[i, 0])} {check} 0 {lead}")
    lines += ["#Age: 61", "#Sex: Female", "#Dx: 426783006", "#Rx: Unknown", "#Hx: Unknown", "#Sx: Unknown"]
    hea = directory / "L0001.hea"
    hea.write_text("\n".join(lines) + "\n")
    return hea


def test_inspect_and_render_read_a_challenge_record_with_negative_checksums(tmp_path):
    assert any(int(line.split()[6]) < 0 for line in CHALLENGE.read_text().splitlines()[1:13])
    result = run("inspect", CHALLENGE)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["fs"] == 500.0 and info["duration_s"] == 12.0 and info["window_s"] == [0.0, 10.0]
    assert info["labels"]["snomed"] == ["59118001", "164884008"] and info["meta"]["checksums_verified"] is True
    result = run("render", CHALLENGE, "--out", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    assert "window: [0, 10] s of 12 s" in result.stderr and "--start" in result.stderr


def test_render_start_chooses_the_window_of_a_25_s_record(tmp_path):
    hea = _challenge_record(tmp_path, 25.0)
    info = json.loads(run("inspect", hea, "--start", 20).stdout)
    assert info["duration_s"] == 25.0 and info["window_s"] == [20.0, 25.0]
    result = run("render", hea, "--out", tmp_path / "a.png")
    assert result.exit_code == 0, result.output
    assert "window: [0, 10] s of 25 s" in result.stderr
    result = run("render", hea, "--out", tmp_path / "b.png", "--start", 12.5)
    assert result.exit_code == 0, result.output
    assert "window: [12.5, 22.5] s of 25 s" in result.stderr
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "b.png") as b:
        assert np.asarray(a).tobytes() != np.asarray(b).tobytes()
    line = one_line_error(run("render", hea, "--out", tmp_path / "c.png", "--start", 30))
    assert "L0001.hea" in line and "beyond the end" in line and "25 s" in line
    line = one_line_error(run("inspect", hea, "--start", 25))
    assert "L0001.hea" in line and "beyond the end" in line


def test_render_takes_dpi_alone_size_alone_or_neither_but_not_both(wfdb_record, tmp_path):
    result = run("render", wfdb_record, "--out", tmp_path / "d.png", "--dpi", 30)
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "d.png") as img:
        assert img.size == (330, 255)  # letter landscape, 11 x 8.5 in, at 30 DPI
    result = run("render", wfdb_record, "--out", tmp_path / "s.png", "--size", "200x150")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "s.png") as img:
        assert img.size == (200, 150)
    assert run("render", wfdb_record, "--out", tmp_path / "n.png").exit_code == 0
    with Image.open(tmp_path / "n.png") as img:
        assert img.size == (512, 384)
    line = one_line_error(run("render", wfdb_record, "--out", tmp_path / "b.png", "--size", "200x150", "--dpi", 30))
    assert "--size" in line and "--dpi" in line and "not both" in line


def test_render_half_gain(wfdb_record, tmp_path):
    full, half = tmp_path / "full.png", tmp_path / "half.png"
    assert run("render", wfdb_record, "--out", full, "--layout", "12x1").exit_code == 0
    result = run("render", wfdb_record, "--out", half, "--layout", "12x1", "--gain", 5)
    assert result.exit_code == 0, result.output
    with Image.open(full) as a, Image.open(half) as b:
        ink_full = (np.asarray(a).max(axis=2) < 192).sum()
        ink_half = (np.asarray(b).max(axis=2) < 192).sum()
    assert ink_half < ink_full  # the 0.5 mV sines and the pulses drawn half as tall


def test_synth_takes_dpi_alone_and_refuses_size_with_dpi(tmp_path):
    pytest.importorskip("evl_ecg.ecg.render")
    out = tmp_path / "corpus"
    args = ("synth", "--out", out, "--train", 1, "--bench", 0, "--workers", 1, "--no-progress", "--no-augment")
    result = run(*args, "--dpi", 20)
    assert result.exit_code == 0, result.output
    images = sorted((out / "images").rglob("*.png"))
    assert images
    with Image.open(images[0]) as img:
        assert img.size == (220, 170)  # the letter page at 20 DPI
    line = one_line_error(run(*args, "--dpi", 20, "--size", "128x96"))
    assert "--size" in line and "--dpi" in line
