"""The view policy measured: students distilled with the policy against the same students without it, over seeds,
clean and under each view family (issue 28, section 3; docs/train.md section 8).

    python scripts/view_policy.py --out runs/view-policy                 # 3 seeds x 2 arms, then the robustness run
    python scripts/view_policy.py --out runs/view-policy --sft runs/demo/sft/student   # reuse a phase-1 student

Stages, each kept when it is finished (a rerun into the same ``--out`` resumes):

1. ``OUT/data``: the training corpus (``data synth --train TRAIN --bench 0 --seed 0``, half its pages augmented as
   usual); ``OUT/bench``: the test bench (``--train 0 --bench RECORDS --no-augment --seed 1000``; ptb-test is read);
2. ``OUT/sft``: phase 1 with ``configs/tiny/sft.yaml`` (unless ``--sft DIR``), the one start of every phase-2 run;
3. ``OUT/plain/seed-S`` and ``OUT/views/seed-S``: phase 2 with ``configs/tiny/kd.yaml`` (``--method`` with the tiny
   settings the studies use, ``TINY_METHOD_SETS``; the shipped teacher, live), the same in both arms but for
   ``views: {names: POLICY, severity: [0.2, 1.0], p: 0.5}``;
4. ``OUT/robust``: ``evl-ecg eval robustness`` of every student, every family at severities 0.5 and 1.

Prints, per family and severity, each arm's strict macro AUC (mean +- std over seeds) and views - plain with its
95 % paired bootstrap interval over seeds and records (``eval.stats.paired_bootstrap``), the families in the policy
apart from those held out of it; and the wall time of each stage. ``--quick`` is a smoke test (a few steps and
records), not a measurement.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--policy", default="image,signal", help="views or families of the policy (the rest held out)")
    ap.add_argument("--method", default="evl-ecg", help="phase-2 method (the live teacher reads the same view)")
    ap.add_argument("--steps", type=int, default=300, help="phase-2 steps")
    ap.add_argument("--train", type=int, default=2000, help="training records")
    ap.add_argument("--records", type=int, default=500, help="ptb-test records per condition")
    ap.add_argument("--sft", type=Path, default=None, help="a phase-1 student to start from (default: trained here)")
    ap.add_argument("--likelihood", action="store_true", help="also the label-likelihood AUC (about doubles eval)")
    ap.add_argument("--quick", action="store_true", help="a smoke test of every stage")
    args = ap.parse_args()

    from evl_ecg.data.corpus import build_corpus
    from evl_ecg.eval.robustness import evaluate_robustness
    from evl_ecg.eval.stats import label_matrices, macro_auc, mean_std, paired_bootstrap
    from evl_ecg.experiments.study import TINY_METHOD_SETS, method_settings
    from evl_ecg.models.tiny import shipped_teacher
    from evl_ecg.train.config import load_config, tiny_config_path
    from evl_ecg.train.pipeline import run

    out: Path = args.out
    if args.quick:
        args.train, args.records, args.steps = 40, 8, 2
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    quick = {"max_steps": 2, "save_steps": 2, "logging_steps": 1, "pretrain_vision_steps": 0} if args.quick else {}
    timings: dict[str, float] = {}

    def stage(name: str, fn, *a, **kw):
        t0 = time.perf_counter()
        print(f"[view-policy] {name} ...", flush=True)
        result = fn(*a, **kw)
        timings[name] = round(time.perf_counter() - t0, 1)
        return result

    data, bench = out / "data", out / "bench"
    if not (data / "manifest.json").is_file():
        stage("data", build_corpus, data, n_train=args.train, n_bench=0, seed=0, workers=2, progress=False)
    if not (bench / "manifest.json").is_file():
        stage("bench", build_corpus, bench, n_train=0, n_bench=args.records, seed=1000, augment=False, workers=2,
              progress=False)  # fmt: skip

    def train(phase: str, run_dir: Path, sets: list[str] | None = None, **settings) -> Path:
        if (run_dir / "student" / "config.json").is_file():
            return run_dir / "student"
        cfg = load_config(tiny_config_path(phase), sets, output_dir=str(run_dir), train_file=str(data / "train.json"),
                          **{**settings, **quick})  # fmt: skip
        return run(cfg).student_dir

    sft = args.sft or stage("sft", train, "sft", out / "sft")
    policy = {"names": [n.strip() for n in args.policy.split(",") if n.strip()], "severity": [0.2, 1.0], "p": 0.5}
    students: dict[tuple[str, int], Path] = {}
    for seed in seeds:
        for arm in ("plain", "views"):
            extra = {"views": policy} if arm == "views" else {}
            students[(arm, seed)] = stage(f"{arm} seed {seed}", train, "kd", out / arm / f"seed-{seed}",
                                          sets=method_settings(TINY_METHOD_SETS, args.method), student=str(sft),
                                          teacher=str(shipped_teacher()), method=args.method, seed=seed,
                                          max_steps=args.steps, **extra)  # fmt: skip
    models = [students[(arm, s)] for arm in ("plain", "views") for s in seeds]
    doc = stage("robustness", evaluate_robustness, models, bench / "bench", out / "robust",
                records=args.records, likelihood=args.likelihood, n_boot=200 if args.quick else 2000,
                progress=False)  # fmt: skip

    from evl_ecg.ecg.views import FAMILIES, VIEWS

    in_policy = {VIEWS[n].family if n in VIEWS else n for n in policy["names"]}
    names = dict(zip(models, doc["models"], strict=True))  # folder -> the name robustness gave it
    bench_file = Path(doc["subsets"]["ptb-test"]["bench"])
    from evl_ecg.data.records import load_records

    records = load_records(bench_file, normalize_image_token=True)[: doc["subsets"]["ptb-test"]["records"]]

    def matrices(arm: str, condition: str) -> dict[int, tuple]:
        found = {}
        for s in seeds:
            pred = out / "robust" / "models" / names[students[(arm, s)]] / condition / "ptb-test" / "predictions.jsonl"
            _, Y, P = label_matrices(bench_file, pred, records)
            found[s] = (Y, P)
        return found

    for arm in ("plain", "views"):  # a student that says one thing for every page measures nothing
        for s, (_, P) in matrices(arm, "clean").items():
            if len({tuple(row) for row in P.tolist()}) == 1:
                print(f"warning: {arm} seed {s}: one answer for every clean page (AUC 50): a collapsed student")
    rows = []
    conditions = [("clean", "0", "clean")] + [
        (family, f"{s:g}", f"{family}/{s:g}") for family in FAMILIES for s in doc["severities"] if s > 0
    ]
    for family, sev, condition in conditions:
        plain, views = matrices("plain", condition), matrices("views", condition)
        p_m, p_s = mean_std([macro_auc(*plain[s]) for s in seeds])
        v_m, v_s = mean_std([macro_auc(*views[s]) for s in seeds])
        boot = paired_bootstrap(views, plain, n_boot=200 if args.quick else 2000)
        where = "" if sev == "0" else ("in the policy" if family in in_policy else "held out")
        rows.append((family, sev, where, p_m, p_s, v_m, v_s, boot))
    print(f"\nstrict macro AUC on {len(records)} ptb-test records, {len(seeds)} seeds, policy {policy}, "
          f"phase 2: {args.method}, {args.steps} steps\n")  # fmt: skip
    print("| family | severity | | plain | views | views - plain [95 %] |")
    print("|---|---:|---|---:|---:|---:|")
    for family, sev, where, p_m, p_s, v_m, v_s, b in rows:
        print(f"| {family} | {sev} | {where} | {p_m:.1f} +- {p_s:.1f} | {v_m:.1f} +- {v_s:.1f} | "
              f"{b['diff']:+.1f} [{b['lo']:+.1f}, {b['hi']:+.1f}] |")  # fmt: skip
    print(json.dumps({"seconds": timings, "robustness": str(out / "robust" / "robustness.md")}, indent=1))


if __name__ == "__main__":
    main()
