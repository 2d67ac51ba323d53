"""The evaluation's cost per record: the label likelihood with each record's prompt shared by its candidates, against
every candidate run whole, beside the greedy generation that both evaluations also run.

    OMP_NUM_THREADS=2 python benchmarks/eval_cost.py --model MODEL_DIR --bench BENCH_DIR [--records 100] [--repeat 2]

For each multi-label subset of ``--bench`` (``ptb-test``, ``code15-test``, ``cpsc-test``; the first ``--records``
records of each) it times, side by side in one process on the same decoded images:

* generation: :func:`evl_ecg.eval.generate.generate_predictions` (greedy, ``--max-new-tokens``, batch 8);
* likelihood, whole: :func:`evl_ecg.eval.likelihood.label_scores` with ``share_prompt=False`` (each candidate's
  ``prompt + answer`` teacher-forced, 8 per forward: the path before this change);
* likelihood, shared: ``share_prompt=True`` (the default: the prompt and its image once, every candidate from its
  key/value cache);

and prints seconds per record of each, the likelihood's ratio, the evaluation's ratio (generation + likelihood,
whole over shared) and the largest difference between the two paths' probabilities, with the strict-AUC-free check
that the label-likelihood AUC is the same. Timings are the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from evl_ecg.auc import roc_auc_macro
from evl_ecg.data.records import load_records, open_image
from evl_ecg.eval.generate import generate_predictions
from evl_ecg.eval.likelihood import label_scores, vocabulary_of
from evl_ecg.models import load_adapter

SUBSETS = ("ptb-test", "code15-test", "cpsc-test")


def best_of(repeat: int, fn):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def measure(adapter, args: argparse.Namespace, subset: str, root: Path) -> dict:
    """One subset's timings (module docstring), printed as a JSON line."""
    records = load_records(args.bench / f"{subset}.json")[: args.records]
    images = {r.id: open_image(r, root) for r in records}

    def loader(record):
        return images[record.id]

    vocab = vocabulary_of(subset)
    with tempfile.TemporaryDirectory() as tmp:

        def generate() -> None:
            out = Path(tmp) / f"{time.perf_counter_ns()}.jsonl"
            generate_predictions(
                adapter, records, loader, out, model_id="bench", max_new_tokens=args.max_new_tokens, progress=False
            )

        t_gen, _ = best_of(args.repeat, generate)
    t_whole, (_, p_whole, gold) = best_of(
        args.repeat, lambda: label_scores(adapter, records, loader, vocab, share_prompt=False)
    )
    t_shared, (_, p_shared, _) = best_of(args.repeat, lambda: label_scores(adapter, records, loader, vocab))
    n = len(records)
    row = {
        "subset": subset,
        "records": n,
        "generation_s_per_record": round(t_gen / n, 4),
        "likelihood_whole_s_per_record": round(t_whole / n, 4),
        "likelihood_shared_s_per_record": round(t_shared / n, 4),
        "likelihood_ratio": round(t_whole / t_shared, 2),
        "evaluation_ratio": round((t_gen + t_whole) / (t_gen + t_shared), 2),
        "max_abs_prob_diff": float(np.abs(p_whole - p_shared).max()),
        "likelihood_auc_whole": roc_auc_macro(gold, p_whole),
        "likelihood_auc_shared": roc_auc_macro(gold, p_shared),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--bench", type=Path, required=True, help="a folder of <subset>.json (e.g. a corpus' bench/)")
    ap.add_argument("--image-root", type=Path, default=None, help="default: images/ beside the bench folder")
    ap.add_argument("--records", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    adapter = load_adapter(args.model)
    root = args.image_root or args.bench.parent / "images"
    rows = [measure(adapter, args, subset, root) for subset in SUBSETS if (args.bench / f"{subset}.json").is_file()]
    total = {k: sum(r[k] * r["records"] for r in rows) for k in ("generation_s_per_record",
             "likelihood_whole_s_per_record", "likelihood_shared_s_per_record")}  # fmt: skip
    gen, whole, shared = (total[k] for k in total)
    print(
        f"all subsets: evaluation {gen + whole:.1f} s -> {gen + shared:.1f} s "
        f"({(gen + whole) / (gen + shared):.2f}x); likelihood {whole / shared:.2f}x"
    )


if __name__ == "__main__":
    main()
