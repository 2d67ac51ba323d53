"""A model's answers to the pool questions of a training corpus: the targets of sequence-level distillation.

Under a label budget (:mod:`evl_ecg.data.budget`) the pool records carry an image and a label-set question only.
:func:`answer_pool` asks a model (the teacher, or for self-training a student) that question for **every** record of
the training file, once: the question depends on the record's id alone, so one file serves every budget and every
seed (each pool is a subset of the file's records). Decoding is greedy, in the model's own template, through the
evaluation's generation (:func:`~evl_ecg.eval.generate.generate_predictions`: PULSE's row format, resumable).

The file is ``answers-<model digest>.jsonl`` in the output folder, keyed (:class:`~evl_ecg.resume.ResumeKey`) on the
model's fingerprint, the training file's digest and the generation settings: a rerun resumes, other settings are
refused unless ``fresh``. :func:`~evl_ecg.data.budget.load_answers` reads it back as ``{record id: answer}``;
:func:`~evl_ecg.data.budget.compose` joins it with a budget's labelled records and pool.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from evl_ecg.data.budget import PoolItem, pool_question
from evl_ecg.data.records import default_image_root, load_records, open_image
from evl_ecg.eval.generate import generate_predictions
from evl_ecg.resume import ResumeKey, file_digest

ANSWERS_COMMAND = "pool answers"
#: long enough for any label set's answer in the corpus' wording (the longest, five PTB-XL superclasses, is ~40
#: tokens in either tokenizer)
DEFAULT_MAX_NEW_TOKENS = 64


def answers_file(out_dir: str | os.PathLike[str], digest: str) -> Path:
    """Where the answers of the model with fingerprint ``digest`` go in ``out_dir``."""
    return Path(out_dir) / f"answers-{digest[:16]}.jsonl"


def answer_pool(
    model_dir: str | os.PathLike[str],
    train_file: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    fresh: bool = False,
    progress: bool = True,
    adapter: Any = None,
) -> Path:
    """Greedy answers of the model in ``model_dir`` to the pool question of every record of ``train_file``.

    Args:
        model_dir: the model's checkpoint folder (its fingerprint keys the file).
        train_file: the training records (ECGInstruct JSON); their answers and labels are never read.
        out_dir: the folder of the answers file (:func:`answers_file`); created.
        image_root: the images (default: :func:`~evl_ecg.data.records.default_image_root`, as training reads them).
        batch_size, max_new_tokens: generation settings (keyed: another value is refused unless ``fresh``).
        fresh: remove this model's earlier answers file first.
        progress: a tqdm bar.
        adapter: the model already loaded from ``model_dir`` (default: loaded here).

    Returns:
        The answers file. Records whose image cannot be read are reported by the generation (a warning) and have
        no row, so that :func:`~evl_ecg.data.budget.compose` names them.
    """
    from evl_ecg.models import load_adapter
    from evl_ecg.models.fingerprint import model_fingerprint

    train_file = Path(train_file)
    records = load_records(train_file)
    fingerprint = model_fingerprint(model_dir)
    out = answers_file(out_dir, fingerprint["digest"])
    out.parent.mkdir(parents=True, exist_ok=True)
    key = ResumeKey(
        out,
        ANSWERS_COMMAND,
        {
            "model": fingerprint["digest"],
            "data": file_digest(train_file),
            "decoding": "greedy",
            "max_new_tokens": int(max_new_tokens),
            "batch_size": int(batch_size),
        },
        info={"model_dir": str(model_dir), "train_file": str(train_file), "records": len(records)},
        folder=False,
    )
    key.ensure(has_output=out.exists(), fresh=fresh, clear=lambda: out.unlink(missing_ok=True))
    questions = [PoolItem(r.id, r.image, pool_question(r)).with_answer("-") for r in records]
    root = Path(image_root) if image_root is not None else default_image_root(train_file)
    adapter = adapter if adapter is not None else load_adapter(model_dir)
    generate_predictions(
        adapter,
        questions,
        lambda record: open_image(record, root),
        out,
        model_id=fingerprint["digest"],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    return out


__all__ = ["ANSWERS_COMMAND", "answer_pool", "answers_file"]
