"""Inputs written in their published formats by independent writers, and two tiny models, once per session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

TEACHER = Path(__file__).resolve().parents[2] / "src" / "evl_ecg" / "assets" / "tiny-teacher"
#: The tiny student's corpus is drawn at a size other than the renderer's default, so that a test can tell that
#: `predict` renders signals as the card says.
STUDENT_SIZE = (448, 336)


@pytest.fixture(scope="session")
def teacher_dir() -> Path:
    return TEACHER


@pytest.fixture(scope="session")
def teacher_without_render_dir(tmp_path_factory) -> Path:
    """A copy of the shipped teacher whose card records no render settings (as cards written before they were)."""
    out = Path(shutil.copytree(TEACHER, tmp_path_factory.mktemp("no-render") / "teacher"))
    card = json.loads((out / "card.json").read_text())
    card.get("facts", {}).pop("render", None)
    (out / "card.json").write_text(json.dumps(card))
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    from evl_ecg.data.corpus import build_corpus

    out = tmp_path_factory.mktemp("infer-corpus")
    build_corpus(out, n_train=16, n_bench=4, seed=5, workers=1, progress=False, augment=False, size=STUDENT_SIZE)
    return out


@pytest.fixture(scope="session")
def student_dir(corpus, tmp_path_factory) -> Path:
    """An (untrained) tiny student saved with a model card written by the training code's card writer."""
    from evl_ecg.data.records import load_records
    from evl_ecg.models.card import write_model_card
    from evl_ecg.models.tiny import build_tiny_student
    from evl_ecg.models.tokenizers import corpus_from_records

    texts = corpus_from_records(load_records(corpus / "train.json"))
    root = tmp_path_factory.mktemp("infer-models") / "student"
    build_tiny_student(texts, seed=0).save_pretrained(root)
    provenance = {"phase": "sft", "records": 16, "config": {"phase": "sft", "train_file": str(corpus / "train.json")}}
    write_model_card(root, provenance=provenance, name="tiny test student")
    return root


@pytest.fixture(scope="session")
def ecg():
    """A synthetic 10 s ECG with right bundle branch block (a known finding)."""
    from evl_ecg.ecg.synth import SynthSpec, generate

    return generate(SynthSpec(findings=frozenset({"SR", "RBBB"})), seed=3, fs=500, duration=10.0)


@pytest.fixture(scope="session")
def records(ecg, tmp_path_factory) -> dict[str, Path]:
    """``wfdb`` (header path, written by wfdb's own writer), ``dicom`` (pydicom's ECG test file), ``png`` (a rendered
    page), ``hdf5`` (a CODE-15%-layout file written with h5py; exam ids 1001 and 1002)."""
    import h5py
    import wfdb
    from pydicom.data import get_testdata_file

    from evl_ecg.ecg.leads import LEADS
    from evl_ecg.ecg.render import RenderSpec, render

    root = tmp_path_factory.mktemp("infer-records")
    wfdb.wrsamp(
        "rbbb",
        fs=500,
        units=["mV"] * 12,
        sig_name=list(LEADS),
        p_signal=ecg.signal.T.astype(np.float64),
        fmt=["16"] * 12,
        adc_gain=[1000.0] * 12,
        baseline=[0] * 12,
        write_dir=str(root),
    )
    dicom = root / "waveform_ecg.dcm"
    shutil.copy(get_testdata_file("waveform_ecg.dcm"), dicom)
    png = root / "page.png"
    render(ecg, RenderSpec()).save(png)
    h5 = root / "exams.hdf5"
    tracing = np.zeros((2, 4096, 12), dtype=np.float32)
    n = min(4000, ecg.signal.shape[1])
    tracing[0, 48 : 48 + n] = ecg.signal[:, :n].T  # 500 Hz samples stored as if 400 Hz: a valid file all the same
    tracing[1, 48 : 48 + n] = 0.5 * ecg.signal[:, :n].T
    with h5py.File(h5, "w") as f:
        f["tracings"] = tracing
        f["exam_id"] = np.array([1001, 1002])
    return {"wfdb": root / "rbbb.hea", "dicom": dicom, "png": png, "hdf5": h5}


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
