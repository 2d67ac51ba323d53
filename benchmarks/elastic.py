"""Elastic embeddings on the tiny pair: no embedding loss, ``matryoshka``, ``mic`` and one ablation each of its parts.

    OMP_NUM_THREADS=2 python benchmarks/elastic.py --out runs/elastic [--seeds 0,1,2] [--steps 300] [--quick]
    # or reuse a study's corpus, test corpus and phase-1 student (same settings as the defaults here):
    python benchmarks/elastic.py --out runs/elastic --data STUDY/data --test STUDY/test --phase1 STUDY/phase1/seed-0

One synthetic training corpus (``--train`` records, seed 0), one held-out test corpus (``--test-records`` PTB-XL-style
records and the rest of ECGBench's subsets in its ratios, seed 1000, as ``evl-ecg study`` makes it) and one phase-1
student (SFT, ``--sft-steps``) are made once (or reused: ``--data``, ``--test``, ``--phase1``); from that student every
variant trains ``--steps`` phase-2 steps with the same CE share (``alpha`` 0.3, method ``sft``: no teacher term) and
its embedding term, per seed. The losses' weights are the documented defaults, fixed before any run: nothing here is
chosen on the records the table reports.

* ``none``: no embedding loss; its embedding is an untrained head (the seeded random projection of the same pooled
  states), the baseline every trained head must beat;
* ``matryoshka``: the task loss (supervised contrastive over the 13 findings) on every prefix;
* ``mic``: matryoshka + SCR + SIR + self-distillation (docs/distill.md, "Elastic embeddings");
* ``mic-no-scr``, ``mic-no-sir``, ``mic-no-sd``: ``mic`` with one part's weight set to 0.

Each finished student embeds the test corpus's PTB-XL-style records (``evl_ecg.infer.embed.embed_records``, the
image positions' pooled states through the head); at each prefix length the script prints, mean +- std over seeds:

* the linear-probe macro ROC-AUC over the findings present in both halves (scikit-learn ``LogisticRegression`` per
  finding, fitted on the first half of the records, scored on the second);
* retrieval precision@10: the share of each record's 10 nearest neighbours (cosine, the record itself excluded)
  whose finding set equals its own;
* the effective rank ``exp(H(sigma / sum sigma))`` of the centred embeddings' singular values (Roy and Vetterli,
  2007), the spectral-collapse measure;

and, for the first two, each variant's paired difference to ``matryoshka`` of the same seed.

Runs are resumable (a finished variant/seed keeps ``done.json``). ``--quick`` is a smoke test (tiny corpus, few
steps, one seed), not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "src" / "evl_ecg" / "assets" / "tiny-teacher"
ALPHA = 0.3
VARIANTS: dict[str, dict | None] = {
    "none": None,
    "matryoshka": {"matryoshka": {"weight": 1.0}},
    "mic": {"mic": {"weight": 1.0}},
    "mic-no-scr": {"mic": {"weight": 1.0, "scr_weight": 0.0}},
    "mic-no-sir": {"mic": {"weight": 1.0, "sir_weight": 0.0}},
    "mic-no-sd": {"mic": {"weight": 1.0, "sd_weight": 0.0}},
}


def effective_rank(z: np.ndarray) -> float:
    """``exp`` of the entropy of the normalised singular values of the centred rows of ``z``."""
    s = np.linalg.svd(z - z.mean(0, keepdims=True), compute_uv=False)
    p = s / max(s.sum(), 1e-12)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def precision_at_k(z: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Mean share of each row's ``k`` nearest rows (cosine; itself excluded) with exactly its label set."""
    u = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(z) - 1)
    nearest = np.argsort(-sim, axis=1)[:, :k]
    same = (labels[nearest] == labels[:, None, :]).all(-1)
    return float(same.mean())


def probe_auc(z: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Macro ROC-AUC of one logistic regression per finding, fitted on the first half, scored on the second."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    half = len(z) // 2
    aucs = []
    for c in range(labels.shape[1]):
        y_fit, y_test = labels[:half, c], labels[half:, c]
        if len(set(y_fit)) < 2 or len(set(y_test)) < 2:
            continue
        model = LogisticRegression(max_iter=2000, random_state=seed).fit(z[:half], y_fit)
        aucs.append(roc_auc_score(y_test, model.decision_function(z[half:])))
    return float(np.mean(aucs)) if aucs else math.nan


def _run(cmd: list[str], log: Path) -> None:
    import subprocess

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"error: {' '.join(cmd[:4])} ... failed (exit {done.returncode}); see {log}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/elastic"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test-records", type=int, default=500, help="PTB-XL-style test records (the ones scored)")
    ap.add_argument("--data", type=Path, help="reuse this training corpus (a folder with train.json) instead")
    ap.add_argument("--test", type=Path, help="reuse this test corpus (a folder with bench/ptb-test.json) instead")
    ap.add_argument("--phase1", type=Path, help="reuse this phase-1 run (a folder with student/) instead")
    ap.add_argument("--sft-steps", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--quick", action="store_true", help="a smoke test: tiny corpus, few steps, one seed")
    ap.add_argument(
        "--generator", type=int, choices=(1, 2), default=1, help="generator of both corpora (1: the documented run's)"
    )
    args = ap.parse_args()
    if args.quick:
        args.train, args.test_records, args.sft_steps, args.steps, args.seeds = 48, 24, 20, 8, "0"
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"error: --variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    t0 = time.perf_counter()
    from evl_ecg.data.corpus import build_corpus
    from evl_ecg.data.records import load_records, open_image
    from evl_ecg.ecg.labels import findings_multi_hot

    out = args.out
    data = args.data or out / "data"
    test = args.test or out / "test"
    sft = args.phase1 or out / "sft"
    for name, path, need in (("--data", args.data, "train.json"), ("--test", args.test, "bench/ptb-test.json"),
                             ("--phase1", args.phase1, "student/config.json")):  # fmt: skip
        if path is not None and not (path / need).is_file():
            sys.exit(f"error: {name} {path}: no {need} there")
    if not (data / "manifest.json").exists():
        build_corpus(data, n_train=args.train, n_bench=0, seed=0, workers=2, progress=False, generator=args.generator)
    if not (test / "manifest.json").exists():
        build_corpus(test, n_train=0, n_bench=args.test_records, bench_proportions="ecgbench", seed=1000, workers=2,
                     progress=False, generator=args.generator)  # fmt: skip
    cli = [sys.executable, "-m", "evl_ecg.cli"]
    if not (sft / "student" / "config.json").exists():
        sets = [f"max_steps={args.sft_steps}", "seed=0", "save_strategy=no"]
        _run([*cli, "train", "sft", "--data", str(data / "train.json"), "--out", str(sft)]
             + [x for s in sets for x in ("--set", s)], out / "sft.log")  # fmt: skip
    records = load_records(test / "bench" / "ptb-test.json")
    labels = findings_multi_hot([r.labels["findings"] for r in records]).numpy().astype(int)
    rows: dict[tuple[str, int], list[dict]] = {}
    for variant in variants:
        for seed in seeds:
            run_dir = out / "runs" / variant / f"seed-{seed}"
            done = run_dir / "done.json"
            if not done.exists():
                terms = VARIANTS[variant] or {}
                objective = json.dumps({"alpha": ALPHA, "terms": terms})
                sets = [f"seed={seed}", f"max_steps={args.steps}", f"per_device_train_batch_size={args.batch_size}",
                        "save_strategy=no", f"objective={objective}"]  # fmt: skip
                cmd = [*cli, "distill", "--method", "sft", "--data", str(data / "train.json"), "--student",
                       str(sft / "student"), "--teacher", str(TEACHER), "--out", str(run_dir / "train")]  # fmt: skip
                _run(cmd + [x for s in sets for x in ("--set", s)], run_dir.with_suffix(".log"))
                student = run_dir / "train" / "student"
                if variant == "none":  # the untrained head over the same pooled states, seeded
                    import torch

                    from evl_ecg.models import load_adapter
                    from evl_ecg.models.embedding_head import EmbeddingHead

                    torch.manual_seed(seed)
                    hidden = load_adapter(student).model.config.text_config.hidden_size
                    EmbeddingHead(hidden).save(student)
                from evl_ecg.infer.embed import embed_records
                from evl_ecg.models.embedding_head import EmbeddingHead

                dims = list(EmbeddingHead.load(student).prefixes)
                emb = embed_records(student, records, lambda r: open_image(r, test / "images"), dims, progress=False)
                if emb.failed:
                    sys.exit(f"error: {variant} seed {seed}: {len(emb.failed)} test records not embedded")
                metrics = []
                for d, z in emb.by_dim.items():
                    z = z.numpy().astype(np.float64)
                    metrics.append({"dim": d, "probe_auc": probe_auc(z, labels, seed),
                                    "p_at_10": precision_at_k(z, labels), "eff_rank": effective_rank(z)})  # fmt: skip
                done.write_text(json.dumps(metrics, indent=1))
            rows[(variant, seed)] = json.loads(done.read_text())
    dims = sorted({m["dim"] for ms in rows.values() for m in ms})
    print(f"# elastic embeddings: {len(records)} held-out PTB-XL-style test records, seeds {seeds}, {args.steps} steps"
          f"{' (QUICK: a smoke test, not a measurement)' if args.quick else ''}")  # fmt: skip

    def value(variant: str, seed: int, key: str, d: int) -> float:
        return next(m[key] for m in rows[(variant, seed)] if m["dim"] == d)

    def cell(vals: list[float], sign: str = "") -> str:
        mean, sd = float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        return f"{mean:{sign}.3f} +- {sd:.3f}"

    measures = (("probe_auc", "linear-probe macro AUC"), ("p_at_10", "precision@10"), ("eff_rank", "eff. rank"))
    header = "| variant | " + " | ".join(f"d={d}" for d in dims) + " |\n|---|" + "---:|" * len(dims)
    for key, name in measures:
        print(f"\n{name} (mean +- std over seeds)\n\n{header}")
        for variant in variants:
            print(f"| {variant} | " + " | ".join(cell([value(variant, s, key, d) for s in seeds]) for d in dims) + " |")
    if "matryoshka" in variants:  # each variant minus matryoshka, seed by seed (same seed: same data order)
        for key, name in measures[:2]:
            print(f"\n{name}, minus matryoshka's of the same seed (mean +- std of the paired differences)\n\n{header}")
            for variant in (v for v in variants if v != "matryoshka"):
                diffs = [[value(variant, s, key, d) - value("matryoshka", s, key, d) for s in seeds] for d in dims]
                print(f"| {variant} | " + " | ".join(cell(x, "+") for x in diffs) + " |")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
