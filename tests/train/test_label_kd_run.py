"""A live distillation run with the label-space loss (``label-kd``) on the tiny corpus."""

from __future__ import annotations

import json
import math


def test_a_live_distillation_run_trains_the_label_space_loss(tmp_path, tiny_corpus, tiny_checkpoints, tiny_config):
    from evl_ecg.train.pipeline import run

    cfg = tiny_config(
        tmp_path / "run",
        tiny_corpus,
        phase="kd",
        method="label-kd",
        student=str(tiny_checkpoints["student"]),
        teacher=str(tiny_checkpoints["teacher"]),
        per_device_train_batch_size=4,
        max_steps=3,
    )
    result = run(cfg)
    history = json.loads((tmp_path / "run" / "log_history.json").read_text())
    values = [h["loss/label_kd"] for h in history if "loss/label_kd" in h]
    assert values and all(math.isfinite(v) and v >= 0 for v in values)
    samples = [h["label_kd/samples"] for h in history if "label_kd/samples" in h]
    assert sum(samples) > 0  # the corpus's label-set questions reached the loss
    assert (result.student_dir / "config.json").exists()


def test_consistent_teaching_runs_label_space_kd_on_fresh_views_with_the_live_teacher(
    tmp_path, tiny_corpus, tiny_checkpoints, tiny_config
):
    """The label study's consistent-teaching row: label-space KD under the view policy (image and signal views), the
    teacher live on each view; the candidates are scored on the viewed page (one image per sample for both models)."""
    from evl_ecg.experiments.label_study import CONSISTENT_VIEWS
    from evl_ecg.train.pipeline import run

    cfg = tiny_config(
        tmp_path / "run",
        tiny_corpus,
        [CONSISTENT_VIEWS],
        phase="kd",
        method="label-kd",
        student=str(tiny_checkpoints["student"]),
        teacher=str(tiny_checkpoints["teacher"]),
        per_device_train_batch_size=4,
    )
    assert cfg.views and not cfg.teacher_cache
    run(cfg)
    history = json.loads((tmp_path / "run" / "log_history.json").read_text())
    values = [h["loss/label_kd"] for h in history if "loss/label_kd" in h]
    assert values and all(math.isfinite(v) for v in values)
