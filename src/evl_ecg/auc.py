"""Macro ROC-AUC over class columns, for every stage that scores continuous outputs (the label likelihood in
evaluation, the vision pretraining's held-out findings): sklearn's ``roc_auc_score`` per class, a class whose gold
column has one value left out. (0/1 predictions have their own exact fast path, :func:`evl_ecg.eval.stats.macro_auc`,
tested equal to sklearn, as the bootstrap calls it thousands of times.)"""

from __future__ import annotations

import math

import numpy as np


def roc_auc_per_class(gold: np.ndarray, scores: np.ndarray) -> list[float]:
    """sklearn ``roc_auc_score`` per class column; ``nan`` where the gold column has a single value."""
    from sklearn.metrics import roc_auc_score

    gold, scores = np.asarray(gold), np.asarray(scores, dtype=np.float64)
    if gold.shape != scores.shape or gold.ndim != 2:
        raise ValueError(f"gold and scores must both be N x C, got {gold.shape} and {scores.shape}")
    out = []
    for c in range(gold.shape[1]):
        col = gold[:, c]
        out.append(float(roc_auc_score(col, scores[:, c])) if len(np.unique(col)) == 2 else math.nan)
    return out


def roc_auc_macro(gold: np.ndarray, scores: np.ndarray) -> float:
    """Macro ROC-AUC: nan-safe mean of :func:`roc_auc_per_class` (``nan`` if no class has both gold values)."""
    per = [a for a in roc_auc_per_class(gold, scores) if not math.isnan(a)]
    return float(np.mean(per)) if per else math.nan


__all__ = ["roc_auc_macro", "roc_auc_per_class"]
