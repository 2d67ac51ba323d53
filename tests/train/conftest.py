"""A tiny synthetic corpus and tiny teacher/student checkpoints, built once per test session (offline)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    from evl_ecg.data.corpus import build_corpus

    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, n_train=24, n_bench=2, seed=3, workers=1, progress=False, augment=False)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    """``{"teacher": dir, "student": dir}``: tiny models with tokenizers trained on the corpus text, saved."""
    from evl_ecg.data.records import load_records
    from evl_ecg.models.tiny import build_tiny_student, build_tiny_teacher
    from evl_ecg.models.tokenizers import corpus_from_records

    texts = corpus_from_records(load_records(tiny_corpus / "train.json"))
    root = tmp_path_factory.mktemp("models")
    teacher, student = build_tiny_teacher(texts, seed=0), build_tiny_student(texts, seed=0)
    teacher.save_pretrained(root / "teacher")
    student.save_pretrained(root / "student")
    return {"teacher": root / "teacher", "student": root / "student"}
