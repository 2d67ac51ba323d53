"""Statistics over runs: per-record label matrices, mean and spread over seeds, paired bootstrap against a control.

A study scores every method on the same test records with several seeds. What a reader needs is not one seed's
number but (a) the mean and standard deviation over seeds and (b) whether a method's gain over the control is
larger than the noise of the records and of the seeds. :func:`paired_bootstrap` answers (b) the way the records
and seeds were drawn: each replicate resamples the seeds (with replacement) and the records (with replacement,
the *same* records for the method and the control, hence "paired"), recomputes the strict macro AUC of both on
that resample for each drawn seed, averages over the drawn seeds and takes the difference; the 95 % interval is
the 2.5 and 97.5 percentiles of those differences (percentile bootstrap; Efron & Tibshirani 1993, ch. 13).

The strict macro AUC here is the strict scorer's (:func:`evl_ecg.eval.metrics.strict_multilabel`): per class the
ROC-AUC of the binary predictions, NaN for a class whose gold is constant in the resample, NaN-safe mean.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evl_ecg.data.records import load_records
from evl_ecg.eval.likelihood import gold_labels, vocabulary_of
from evl_ecg.eval.parsing import strict_classes, strict_labels


def label_matrices(
    bench_file: str | Path, predictions_file: str | Path, records: Sequence[Any] | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(record ids, gold Y, predicted P)`` of a multi-label subset, both ``n x C`` 0/1 over the strict classes.

    ``records``: the bench file's records to use (default: all of them, in file order); the subset is the file's.

    Predictions are parsed by the strict scorer's :func:`~evl_ecg.eval.parsing.strict_labels`; a record without a
    prediction row is an error (a study compares complete runs only).
    """
    bench_file, predictions_file = Path(bench_file), Path(predictions_file)
    subset = bench_file.stem
    vocabulary = vocabulary_of(subset)
    if vocabulary is None:
        raise ValueError(f"{bench_file}: {subset!r} is not a multi-label subset")
    classes = list(strict_classes(subset))
    texts: dict[str, str] = {}
    for line in predictions_file.read_text(encoding="utf-8").split("\n"):
        if line.strip():
            row = json.loads(line)
            texts[str(row["question_id"])] = str(row.get("text", ""))
    records = list(records) if records is not None else load_records(bench_file)
    missing = [r.id for r in records if r.id not in texts]
    if missing:
        raise ValueError(f"{predictions_file}: no prediction for {len(missing)} record(s), e.g. {missing[0]}")
    Y = np.zeros((len(records), len(classes)), dtype=np.int8)
    P = np.zeros_like(Y)
    for i, record in enumerate(records):
        for label in gold_labels(record, vocabulary):
            if label in classes:
                Y[i, classes.index(label)] = 1
        for label in strict_labels(texts[record.id], subset).labels:
            P[i, classes.index(label)] = 1
    return [r.id for r in records], Y, P


def macro_auc(Y: np.ndarray, P: np.ndarray) -> float:
    """NaN-safe macro ROC-AUC of 0/1 predictions ``P`` against gold ``Y`` (``n x C``), in percent.

    For a 0/1 score the ROC curve has one inner point, so the AUC is ``(TPR + TNR) / 2`` exactly (what
    ``sklearn.metrics.roc_auc_score`` gives on it; tested); computed for all classes at once, as the bootstrap
    calls it thousands of times. A class whose gold is constant has no AUC and is left out of the mean.
    """
    Y = np.asarray(Y, dtype=bool)
    P = np.asarray(P, dtype=bool)
    pos = Y.sum(0)
    neg = Y.shape[0] - pos
    ok = (pos > 0) & (neg > 0)
    if not ok.any():
        return float("nan")
    tpr = (Y & P).sum(0)[ok] / pos[ok]
    tnr = (~Y & ~P).sum(0)[ok] / neg[ok]
    return 100.0 * float(np.mean((tpr + tnr) / 2))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value) of the finite values."""
    arr = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(arr):
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def paired_bootstrap(
    method: Mapping[int, tuple[np.ndarray, np.ndarray]],
    control: Mapping[int, tuple[np.ndarray, np.ndarray]],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Paired bootstrap of ``macro_auc(method) - macro_auc(control)`` over records and seeds.

    Args:
        method, control: ``{seed: (Y, P)}`` on the same records in the same order (``Y`` equal for both).
        n_boot: bootstrap replicates.
        seed: seeds the resampling.

    Returns:
        ``{"diff": observed difference of the seed means, "lo", "hi": 95 % percentile interval, "n_records",
        "n_seeds", "n_boot"}``.
    """
    seeds = sorted(set(method) & set(control))
    if not seeds:
        raise ValueError("no seed in common between the method and the control")
    n = method[seeds[0]][0].shape[0]
    for s in seeds:
        if method[s][0].shape != control[s][0].shape or not np.array_equal(method[s][0], control[s][0]):
            raise ValueError(f"seed {s}: the method and the control were not scored on the same records")
    observed = float(np.mean([macro_auc(*method[s]) for s in seeds]) - np.mean([macro_auc(*control[s]) for s in seeds]))
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for b in range(n_boot):
        drawn = rng.choice(seeds, size=len(seeds), replace=True)
        idx = rng.integers(0, n, size=n)
        m = [macro_auc(method[s][0][idx], method[s][1][idx]) for s in drawn]
        c = [macro_auc(control[s][0][idx], control[s][1][idx]) for s in drawn]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample in which no class has both golds
            diffs[b] = np.nanmean(m) - np.nanmean(c)
    diffs = diffs[np.isfinite(diffs)]
    lo, hi = np.percentile(diffs, [2.5, 97.5]) if len(diffs) else (float("nan"), float("nan"))
    return {
        "diff": observed,
        "lo": float(lo),
        "hi": float(hi),
        "n_records": int(n),
        "n_seeds": len(seeds),
        "n_boot": int(len(diffs)),
    }


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles (no interpolation, so that an infinite replicate stays infinite)."""
    if not len(values):
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [0.025, 0.975], method="inverted_cdf")
    return float(lo), float(hi)


def share_of_gap(
    method: Mapping[int, tuple[np.ndarray, np.ndarray]],
    control: Mapping[int, tuple[np.ndarray, np.ndarray]],
    teacher: tuple[np.ndarray, np.ndarray],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """The share of the control -> teacher gap a method closes, ``(method - control) / (teacher - control)``, with
    its 95 % interval: computed inside each paired resample of records x seeds (as :func:`paired_bootstrap`; the
    teacher, one frozen model, on the same resampled records). A replicate whose gap is not positive is dropped
    (the ratio says nothing there), and ``n_boot`` reports how many remained.

    Returns ``{"share", "lo", "hi", "gap", "n_boot"}`` (``gap``: the observed teacher - control difference).
    """
    seeds = sorted(set(method) & set(control))
    if not seeds:
        raise ValueError("no seed in common between the method and the control")
    n = teacher[0].shape[0]
    for s in seeds:
        if not (np.array_equal(method[s][0], teacher[0]) and np.array_equal(control[s][0], teacher[0])):
            raise ValueError(f"seed {s}: the method, the control and the teacher were not scored on the same records")
    m_obs = float(np.mean([macro_auc(*method[s]) for s in seeds]))
    c_obs = float(np.mean([macro_auc(*control[s]) for s in seeds]))
    gap = macro_auc(*teacher) - c_obs
    rng = np.random.default_rng(seed)
    shares = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(n_boot):
            drawn = rng.choice(seeds, size=len(seeds), replace=True)
            idx = rng.integers(0, n, size=n)
            m = np.nanmean([macro_auc(method[s][0][idx], method[s][1][idx]) for s in drawn])
            c = np.nanmean([macro_auc(control[s][0][idx], control[s][1][idx]) for s in drawn])
            t = macro_auc(teacher[0][idx], teacher[1][idx])
            if np.isfinite(m) and np.isfinite(c) and np.isfinite(t) and t - c > 0:
                shares.append((m - c) / (t - c))
    lo, hi = _percentiles(np.asarray(shares))
    share = (m_obs - c_obs) / gap if gap > 0 else float("nan")
    return {"share": share, "lo": lo, "hi": hi, "gap": gap, "n_boot": len(shares)}


def crossing(sizes: Sequence[float], curve: Sequence[float], target: float) -> float:
    """Where a rising curve (``curve[i]`` at ``sizes[i]``, increasing sizes) first reaches ``target``: linear in
    ``log(size)`` between the two budgets around it; ``sizes[0]`` if the first already does; ``inf`` if none does."""
    for i, value in enumerate(curve):
        if value >= target:
            if i == 0:
                return float(sizes[0])
            lo, hi = math.log(sizes[i - 1]), math.log(sizes[i])
            frac = (target - curve[i - 1]) / (value - curve[i - 1])
            return float(math.exp(lo + frac * (hi - lo)))
    return math.inf


def labels_saved(
    control: Mapping[int, Mapping[int, tuple[np.ndarray, np.ndarray]]],
    method: Mapping[int, tuple[np.ndarray, np.ndarray]],
    method_labels: int,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """The labels a teacher saves: the number of labelled records at which the control (trained on labels alone)
    reaches the method's strict macro AUC, read off the control's curve (:func:`crossing`), over the
    ``method_labels`` the method had.

    ``control``: ``{labelled records: {seed: (Y, P)}}`` (several budgets), ``method``: ``{seed: (Y, P)}``, all on
    the same test records. The interval resamples the records (shared by every budget and the method) and, per
    budget and for the method, the seeds. Returns ``{"records", "lo", "hi", "ratio", "ratio_lo", "ratio_hi",
    "n_boot"}``; ``inf`` where the control's largest budget does not reach it.
    """
    sizes = sorted(control)
    if not sizes or not method:
        raise ValueError("labels_saved needs the control at one budget or more and the method")
    first = next(iter(method.values()))[0]
    n = first.shape[0]
    for size in sizes:
        for s, (Y, _) in control[size].items():
            if not np.array_equal(Y, first):
                raise ValueError(f"control at {size} labels, seed {s}: not scored on the method's records")

    def point(idx: np.ndarray | None, draw: Any) -> float:
        def mean(runs: Mapping[int, tuple[np.ndarray, np.ndarray]]) -> float:
            keys = draw(sorted(runs))
            if idx is None:
                return float(np.nanmean([macro_auc(*runs[k]) for k in keys]))
            return float(np.nanmean([macro_auc(runs[k][0][idx], runs[k][1][idx]) for k in keys]))

        return crossing(sizes, [mean(control[size]) for size in sizes], mean(method))

    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample in which no class has both golds
        observed = point(None, lambda keys: keys)
        for b in range(n_boot):
            idx = rng.integers(0, n, size=n)
            reps[b] = point(idx, lambda keys: list(rng.choice(keys, size=len(keys), replace=True)))
    reps = reps[~np.isnan(reps)]
    lo, hi = _percentiles(reps)
    return {
        "records": observed,
        "lo": lo,
        "hi": hi,
        "ratio": observed / method_labels,
        "ratio_lo": lo / method_labels,
        "ratio_hi": hi / method_labels,
        "n_boot": int(len(reps)),
    }


__all__ = [
    "crossing",
    "label_matrices",
    "labels_saved",
    "macro_auc",
    "mean_std",
    "paired_bootstrap",
    "share_of_gap",
]
