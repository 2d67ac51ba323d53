"""Time of a KD step against an SFT step, side by side in one run, on the same data, student and batch size.

Builds a small synthetic corpus, a tiny student and a tiny teacher (or takes checkpoints you give), then trains the
same student for ``--steps`` optimiser steps as SFT (CE only) and as KD with each ``--method`` (EVL-ECG by default)
through :func:`evl_ecg.train.pipeline.run`, i.e. the Trainer, collator and objective the real runs use. A
``TrainerCallback`` records the wall time of every step; the first ``--warmup`` steps of each run are dropped and the
median of the rest is reported. A KD step includes the frozen teacher's forward pass (no grad), the objective's own
modules and their optimiser group.

    python benchmarks/step_time.py                         # tiny default on CPU, about 3 minutes on 2 cores
    python benchmarks/step_time.py --method evl-ecg --method vanilla-kl --method dskd
    python benchmarks/step_time.py --student DIR --teacher DIR --train-file FILE --gpu   # your checkpoints

Printed: per phase the median step time (ms) and steps/s, and the ratio KD / SFT for each method.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """Wall time of each optimiser step (``on_step_begin`` -> ``on_step_end``; includes gradient accumulation)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.times.append(time.perf_counter() - self._t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--method", action="append", help="KD method(s) (registered presets); default evl-ecg")
    ap.add_argument("--train-file", help="ECGInstruct-format training file (default: a synthetic corpus)")
    ap.add_argument("--student", help="student checkpoint (default: a tiny student built on the corpus)")
    ap.add_argument("--teacher", help="teacher checkpoint (default: a tiny teacher built on the corpus)")
    ap.add_argument("--gpu", action="store_true", help="run on the GPU (bf16); default CPU fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    methods = args.method or ["evl-ecg"]

    import torch

    from evl_ecg.data.corpus import build_corpus
    from evl_ecg.data.records import load_records
    from evl_ecg.models.tiny import build_tiny_student, build_tiny_teacher
    from evl_ecg.models.tokenizers import corpus_from_records
    from evl_ecg.train.config import load_config
    from evl_ecg.train.pipeline import run

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="evl-step-"))
    train_file = args.train_file
    if train_file is None:
        n = max(64, args.batch_size * (args.steps + 1))
        build_corpus(tmp / "data", n_train=n, n_bench=1, seed=args.seed, workers=2, progress=False)
        train_file = str(tmp / "data" / "train.json")
    student, teacher = args.student, args.teacher
    if student is None or teacher is None:
        texts = corpus_from_records(load_records(train_file))
        if student is None:
            student = str(tmp / "student")
            build_tiny_student(texts, seed=args.seed).save_pretrained(student)
        if teacher is None:
            teacher = str(tmp / "teacher")
            build_tiny_teacher(texts, seed=args.seed).save_pretrained(teacher)

    common = dict(
        train_file=train_file,
        student=student,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=1e-4,
        save_strategy="no",
        logging_steps=args.steps,
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
        use_cpu=not args.gpu,
        bf16=args.gpu,
        dataloader_num_workers=0,
    )

    def timed(phase: str, **extra) -> float:
        timer = StepTimer()
        cfg = load_config(
            None, output_dir=str(tmp / f"run-{phase}-{extra.get('method', '')}"), phase=phase, **common, **extra
        )
        run(cfg, resume=False, callbacks=[timer])
        kept = timer.times[args.warmup :] or timer.times
        return statistics.median(kept)

    device = torch.cuda.get_device_name(0) if args.gpu else f"CPU, {args.threads} threads"
    print(
        f"device: {device}; batch {args.batch_size}; {args.steps} steps per run, median of the last "
        f"{args.steps - args.warmup}"
    )
    sft = timed("sft")
    print(f"sft        : {sft * 1e3:8.1f} ms/step  ({1 / sft:.2f} steps/s)")
    for method in methods:
        kd = timed("kd", method=method, teacher=teacher)
        print(f"kd {method:<8}: {kd * 1e3:8.1f} ms/step  ({1 / kd:.2f} steps/s)  KD/SFT = {kd / sft:.2f}x")


if __name__ == "__main__":
    main()
