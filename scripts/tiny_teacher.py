"""A tiny teacher from nothing in one command: corpus -> training with a validation curve -> the step the
curve chooses -> the test set scored once -> a compact checkpoint with its model card.

    python scripts/tiny_teacher.py --out runs/teacher-v2      # the shipped v2 teacher (generator 2, 20,000 records)
    python scripts/tiny_teacher.py --out runs/teacher-v1 --config src/evl_ecg/configs/tiny/teacher-v1.yaml \
        --generator 1 --records 4000 --no-curve               # the v1 teacher's settings

Stages, each kept when it is finished (a rerun into the same ``--out`` resumes; the training resumes from its last
checkpoint):

1. ``OUT/data``: ``evl-ecg data synth --train RECORDS --bench 0 --val 200 --seed SEED --generator G``;
2. ``OUT/run``: ``evl-ecg train teacher`` with the config (default: the bundled ``configs/tiny/teacher.yaml``) and a
   learning curve (strict PTB-XL macro AUC on ``OUT/data/val/ptb-test.json`` every ``--curve-every`` steps, at each
   checkpoint);
3. the checkpoint with the best validation AUC (the later one on a tie) is copied to ``OUT/chosen``; the reported test
   set is never looked at before this;
4. ``OUT/test``: a test set of its own seed (``--test-seed``: not 1000 nor a study or demo seed), ``--test-ptb``
   PTB-XL records and the other subsets in ECGBench's proportions, scored once by ``evl-ecg eval run`` into
   ``OUT/test-eval`` (both scorers, label-likelihood AUC), the scores written into the chosen model's card;
5. ``OUT/teacher``: the chosen model with its weights stored in float16 (loaded as float32) and its card, in the
   form the package ships its teacher (``src/evl_ecg/assets/tiny-teacher``).

Prints a JSON summary (the chosen step, the curve, the test scores, the wall time of each stage).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def best_step(curve: list[dict], steps_with_model: set[int]) -> int:
    """The step of the highest validation AUC among those with a saved model (the later one on a tie)."""
    points = [p for p in curve if p["step"] in steps_with_model]
    if not points:
        raise SystemExit("error: the learning curve has no point at a saved checkpoint; set --curve-every to divide "
                         "save_steps")  # fmt: skip
    return max(points, key=lambda p: (p["auc"], p["step"]))["step"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=None, help="teacher config (default: configs/tiny/teacher.yaml)")
    ap.add_argument("--records", type=int, default=20000, help="training conversations")
    ap.add_argument("--seed", type=int, default=7, help="corpus seed")
    ap.add_argument("--generator", type=int, choices=(1, 2), default=2)
    ap.add_argument("--val", type=int, default=200, help="validation records per subset (the curve reads PTB-XL's)")
    ap.add_argument("--curve-every", type=int, default=500)
    ap.add_argument("--no-curve", action="store_true", help="no validation curve: the last step is the model")
    ap.add_argument("--test-seed", type=int, default=4242)
    ap.add_argument("--test-ptb", type=int, default=500, help="PTB-XL test records (others in ECGBench's proportions)")
    ap.add_argument("--no-test", action="store_true", help="skip the test set")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override KEY=VALUE")
    ap.add_argument("--note", action="append", default=[], help="a line added to the model card's notes (repeat)")
    args = ap.parse_args()

    from evl_ecg.data.corpus import build_corpus
    from evl_ecg.eval.curves import curve_callbacks
    from evl_ecg.eval.run import evaluate_model
    from evl_ecg.models import load_adapter
    from evl_ecg.models.card import write_model_card
    from evl_ecg.models.tiny import save_compact
    from evl_ecg.train.config import load_config, tiny_config_path
    from evl_ecg.train.pipeline import run

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    data = out / "data"
    t0 = time.perf_counter()
    build_corpus(
        data, n_train=args.records, n_bench=0, n_val=args.val, seed=args.seed, generator=args.generator,
        workers=args.workers, progress=True,
    )  # fmt: skip
    timings["corpus_s"] = time.perf_counter() - t0

    curve_kw = (
        {} if args.no_curve else {"curve_every": args.curve_every, "curve_bench": str(data / "val/ptb-test.json")}
    )
    try:
        cfg = load_config(
            args.config or tiny_config_path("teacher"), args.overrides, phase="teacher", output_dir=str(out / "run"),
            train_file=str(data / "train.json"), **curve_kw,
        )  # fmt: skip
    except (ValueError, OSError) as exc:
        sys.exit(f"error: {exc}")
    t0 = time.perf_counter()
    result = run(cfg, callbacks=curve_callbacks(cfg))
    timings["train_s"] = time.perf_counter() - t0

    run_dir = Path(cfg.output_dir)
    curve: list[dict] = []
    chosen_dir, step = result.student_dir, cfg.max_steps
    if not args.no_curve:
        curve = json.loads((run_dir / "curve.json").read_text())
        saved = {
            int(p.name.split("-")[1]): p / "student" for p in run_dir.glob("checkpoint-*") if (p / "student").is_dir()
        }
        saved[cfg.max_steps] = result.student_dir
        step = best_step(curve, set(saved))
        chosen_dir = saved[step]
    chosen = out / "chosen"
    if chosen.exists():
        shutil.rmtree(chosen)
    shutil.copytree(chosen_dir, chosen)
    provenance = json.loads((run_dir / "provenance.json").read_text())
    auc = {p["step"]: p["auc"] for p in curve}
    notes = [
        f"Checkpoint: step {step} of {cfg.max_steps}"
        + (
            f", chosen on the validation curve (strict PTB-XL AUC {auc[step]:.1f} on {curve[0]['n']} validation "
            "records; the test set was scored after the choice)"
            if curve
            else ""
        )  # fmt: skip
        + ".",
        f"Made by `python scripts/tiny_teacher.py --out OUT --records {args.records} --seed {args.seed} --generator "
        f"{args.generator}` (corpus {timings['corpus_s'] / 60:.0f} min, training {timings['train_s'] / 60:.0f} min "
        "on the machine that ran it).",
        *args.note,
    ]
    write_model_card(chosen, provenance=provenance, notes=notes, name=f"evl-ecg tiny teacher ({cfg.tiny_teacher})")

    scores = None
    if not args.no_test:
        test = out / "test"
        t0 = time.perf_counter()
        build_corpus(
            test, n_train=0, n_bench=args.test_ptb, seed=args.test_seed, generator=args.generator,
            bench_proportions="ecgbench", workers=args.workers, progress=True,
        )  # fmt: skip
        scores = evaluate_model(chosen, test / "bench", out / "test-eval", max_new_tokens=32, update_card=True)
        timings["test_s"] = time.perf_counter() - t0
    teacher = out / "teacher"
    if teacher.exists():
        shutil.rmtree(teacher)
    save_compact(load_adapter(chosen), teacher)
    for name in ("README.md", "card.json"):
        shutil.copy2(chosen / name, teacher / name)
    summary = {
        "step": step,
        "curve": curve,
        "teacher": str(teacher),
        "test": None
        if scores is None
        else {f"{r['subset']}/{r['scorer']}": r.get("metrics") for r in scores.get("results", [])},
        **{k: round(v, 1) for k, v in timings.items()},
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
