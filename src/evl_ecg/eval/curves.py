"""The learning curve of a run: strict PTB-XL macro AUC on the validation split every N steps.

:class:`ValidationCurve` is a transformers ``TrainerCallback``: at step 0 (before the first update), every
``every`` optimiser steps and at the last step it generates greedy answers of the student for the validation
records (``val/ptb-test.json`` of a corpus built with ``--val``), scores them with the strict scorer's parser and
appends ``{"step", "auc", "n", "seconds"}`` to ``output_dir/curve.json``. ``seconds`` is the evaluation's own
time: the Trainer's ``train_runtime`` includes it, so a step-time measurement subtracts it. It never reads the
reported benchmark: settings are chosen on these numbers. A resumed run keeps the points it has and computes only
the missing ones. Only the main process evaluates.

``keep_best``: validation checkpoint selection. Whenever a point beats every earlier one (step 0 included), the
student is written to ``output_dir/best-student`` (:data:`BEST_DIR`); :func:`best_point` names the point a caller
keeps (the earliest on a tie; step 0 means the run's starting weights).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from evl_ecg.data.records import load_records, open_image
from evl_ecg.files import atomic_write_bytes

CURVE_FILE = "curve.json"
#: the student at the curve's best point after step 0 (``keep_best``)
BEST_DIR = "best-student"


def best_point(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The point of highest validation AUC, the earliest on a tie (step 0 included: the starting weights)."""
    if not points:
        raise ValueError("an empty learning curve has no best point")
    return max(points, key=lambda p: (p["auc"], -p["step"]))


class ValidationCurve(TrainerCallback):
    """Strict macro AUC of the student on a validation bench file every ``every`` steps (``curve.json``)."""

    #: what :func:`evl_ecg.train.pipeline.run` looks for when a config asks for a learning curve
    learning_curve = True

    def __init__(
        self,
        bench_file: str | Path,
        output_dir: str | Path,
        *,
        every: int,
        image_root: str | Path | None = None,
        max_new_tokens: int = 32,
        batch_size: int = 16,
        limit: int | None = None,
        keep_best: bool = False,
    ) -> None:
        if every < 1:
            raise ValueError(f"curve_every must be >= 1, got {every}")
        self.bench_file = Path(bench_file)
        if not self.bench_file.is_file():
            raise FileNotFoundError(f"{self.bench_file}: no validation bench file (build the corpus with --val N)")
        self.records = load_records(self.bench_file)[:limit] if limit else load_records(self.bench_file)
        if not self.records:
            raise ValueError(f"{self.bench_file}: no validation records")
        # val/<subset>.json sits beside images/ in our corpus layout
        self.image_root = Path(image_root) if image_root else self.bench_file.parent.parent / "images"
        self.out = Path(output_dir)
        self.every = every
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.keep_best = keep_best
        path = self.out / CURVE_FILE
        self.points: list[dict[str, Any]] = json.loads(path.read_text()) if path.exists() else []

    def _evaluate(self, model: Any, step: int) -> None:
        if any(p["step"] == step for p in self.points):
            return
        from evl_ecg.eval.generate import generate_predictions
        from evl_ecg.eval.stats import label_matrices, macro_auc

        adapter = model.adapter if hasattr(model, "adapter") else model
        t0 = time.perf_counter()
        was_training = adapter.model.training
        pred = self.out / "curve" / f"step-{step:06d}.jsonl"
        pred.unlink(missing_ok=True)  # a file a killed run left half written
        try:
            with torch.no_grad():
                generate_predictions(
                    adapter,
                    self.records,
                    lambda r: open_image(r, self.image_root),
                    pred,
                    model_id=f"step-{step}",
                    max_new_tokens=self.max_new_tokens,
                    batch_size=self.batch_size,
                    progress=False,
                )
        finally:
            adapter.model.train(was_training)
            if hasattr(model, "train"):
                model.train(was_training)
        _, Y, P = label_matrices(self.bench_file, pred, self.records)
        seconds = round(time.perf_counter() - t0, 2)
        point = {"step": int(step), "auc": round(macro_auc(Y, P), 3), "n": len(self.records), "seconds": seconds}
        if self.keep_best and step > 0 and all(point["auc"] > p["auc"] for p in self.points if p["step"] < step):
            from evl_ecg.train.trainer import export_student

            export_student(model, None, self.out / BEST_DIR)
        self.points.append(point)
        self.points.sort(key=lambda p: p["step"])
        atomic_write_bytes(self.out / CURVE_FILE, (json.dumps(self.points, indent=1) + "\n").encode("utf-8"))

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and model is not None and state.global_step == 0:
            self._evaluate(model, 0)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        last = state.global_step >= state.max_steps
        if state.is_world_process_zero and model is not None and (state.global_step % self.every == 0 or last):
            self._evaluate(model, state.global_step)


def curve_callbacks(config: Any) -> list[TrainerCallback]:
    """The learning curve a training config asks for (``curve_every``, ``curve_bench``, ``curve_records``,
    ``curve_keep_best``; written to its ``output_dir``), as callbacks for :func:`evl_ecg.train.pipeline.run`;
    none when ``curve_every`` is 0."""
    if config.curve_every <= 0:
        return []
    curve = ValidationCurve(
        config.curve_bench,
        config.output_dir,
        every=config.curve_every,
        limit=config.curve_records,
        keep_best=config.curve_keep_best,
    )
    return [curve]


__all__ = ["BEST_DIR", "CURVE_FILE", "ValidationCurve", "best_point", "curve_callbacks"]
