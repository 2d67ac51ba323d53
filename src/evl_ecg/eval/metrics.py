"""Metrics of ECGBench: multi-label AUC / F1 / Hamming loss on hard 0/1 predictions, and accuracy.

There are no scores in ECGBench: a model writes text, the text gives a set of labels, and the set is binarised.
So the per-class "AUC" is ``roc_auc_score`` of 0/1 predictions, which equals the balanced accuracy at that one
operating point, ``(TPR + TNR) / 2``; a class never predicted gets 0.5.

Two flavours, the same sklearn calls:

* :func:`pulse_multilabel` (the published ``compute_f1_auc``): classes = labels present in the *gold* sets
  (``MultiLabelBinarizer`` fitted on gold; predicted labels unseen in gold are dropped and counted here);
  ``F1 = mean(f1_score(average=None))`` with ``zero_division=0``; ``AUC = np.mean`` of per-class AUCs, where a
  class whose gold column has one value gives NaN (published: ``except ValueError -> NaN``) and makes the macro
  AUC NaN; ``HL = hamming_loss``.
* :func:`strict_multilabel`: classes = the full vocabulary; undefined per-class values (F1 with no gold and no
  predicted positive, AUC with a one-valued gold column) are NaN and left out of the macro averages
  (``np.nanmean``); their count is reported.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, roc_auc_score
from sklearn.preprocessing import MultiLabelBinarizer


def pct(x: float | None) -> float | None:
    """``round(100 * x, 1)`` as the published scorer reports; ``None`` for a NaN/absent value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return round(100 * float(x), 1)


@dataclass
class MultiLabelMetrics:
    """Macro AUC, macro F1 and Hamming loss as fractions (NaN where undefined), with per-class figures.

    Attributes:
        auc, f1, hl: the three numbers (fractions in [0, 1]).
        classes: the classes scored, in the order given (pulse: the vocabulary order restricted to gold classes).
        per_class: class -> {"auc", "f1", "support", "predicted", "tp", "fp", "fn", "tn"}.
        n: number of items.
        undefined_auc, undefined_f1: classes whose AUC / F1 is NaN.
        dropped: predicted labels outside ``classes`` (pulse: unseen in gold), label -> count.
    """

    auc: float
    f1: float
    hl: float
    classes: list[str]
    per_class: dict[str, dict[str, Any]]
    n: int
    undefined_auc: list[str] = field(default_factory=list)
    undefined_f1: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: metrics x 100 to one decimal (``None`` for NaN), per-class likewise."""
        return {
            "AUC": pct(self.auc),
            "F1": pct(self.f1),
            "HL": pct(self.hl),
            "n": self.n,
            "classes": list(self.classes),
            "per_class": {
                c: {k: (pct(v) if k in ("auc", "f1") else v) for k, v in d.items()} for c, d in self.per_class.items()
            },
            "undefined_auc": list(self.undefined_auc),
            "undefined_f1": list(self.undefined_f1),
            "dropped_predicted_labels": dict(self.dropped),
        }


def _binary_auc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """ROC AUC of 0/1 predictions for one class; NaN when ``y_true`` holds one value (sklearn raises a
    ValueError there in old versions, warns and returns NaN in new ones; we decide before calling)."""
    if len(np.unique(y_true)) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return float(roc_auc_score(y_true, y_pred))


def _per_class(Y: np.ndarray, P: np.ndarray, classes: Sequence[str], f1s: np.ndarray) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for j, c in enumerate(classes):
        y, p = Y[:, j], P[:, j]
        out[c] = {
            "auc": _binary_auc(y, p),
            "f1": float(f1s[j]),
            "support": int(y.sum()),
            "predicted": int(p.sum()),
            "tp": int(((y == 1) & (p == 1)).sum()),
            "fp": int(((y == 0) & (p == 1)).sum()),
            "fn": int(((y == 1) & (p == 0)).sum()),
            "tn": int(((y == 0) & (p == 0)).sum()),
        }
    return out


def _order(classes: Sequence[str], vocabulary: Sequence[str] | None) -> list[str]:
    """``classes`` in vocabulary order (unknown ones after, sorted)."""
    if vocabulary is None:
        return sorted(classes)
    known = [c for c in vocabulary if c in classes]
    return known + sorted(c for c in classes if c not in vocabulary)


def pulse_multilabel(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], *, vocabulary: Sequence[str] | None = None
) -> MultiLabelMetrics:
    """The published ``compute_f1_auc``: binariser fitted on ``gold``, F1 average=None then mean, AUC per class on
    0/1 predictions then ``np.mean`` (NaN propagates), ``hamming_loss``. ``vocabulary`` only orders the report."""
    if len(gold) != len(pred):
        raise ValueError(f"gold and pred differ in length: {len(gold)} vs {len(pred)}")
    if not gold:
        raise ValueError("nothing to score: no items")
    mlb = MultiLabelBinarizer()
    Y = mlb.fit_transform([list(g) for g in gold])
    if Y.shape[1] == 0:
        raise ValueError("no gold labels at all: the published scorer cannot fit its classes")
    fitted = [str(c) for c in mlb.classes_]
    dropped: dict[str, int] = {}
    for labels in pred:
        for lab in labels:
            if lab not in fitted:
                dropped[lab] = dropped.get(lab, 0) + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "unknown class(es) will be ignored": counted in `dropped`
        P = mlb.transform([list(p) for p in pred])
    hl = float(hamming_loss(Y, P))
    f1s = np.asarray(f1_score(Y, P, average=None, zero_division=0), dtype=float)
    aucs = [_binary_auc(Y[:, j], P[:, j]) for j in range(Y.shape[1])]
    per = _per_class(Y, P, fitted, f1s)
    order = _order(fitted, vocabulary)
    return MultiLabelMetrics(
        auc=float(np.mean(aucs)),
        # the published loop averages f1s[idx] over the fitted classes: with one class sklearn scores a binary
        # problem, returns two values (labels 0 and 1) and the loop keeps the first, the negative label's
        f1=float(np.mean(f1s[: Y.shape[1]])),
        hl=hl,
        classes=order,
        per_class={c: per[c] for c in order},
        n=len(gold),
        undefined_auc=[c for c in order if math.isnan(per[c]["auc"])],
        undefined_f1=[],
        dropped=dropped,
    )


def strict_multilabel(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], *, classes: Sequence[str]
) -> MultiLabelMetrics:
    """Multi-label metrics over the fixed ``classes``, NaN-safe macro averages (``np.nanmean``)."""
    if len(gold) != len(pred):
        raise ValueError(f"gold and pred differ in length: {len(gold)} vs {len(pred)}")
    if not gold:
        raise ValueError("nothing to score: no items")
    for labels in gold:
        unknown = set(labels) - set(classes)
        if unknown:
            raise ValueError(f"gold labels {sorted(unknown)} are not in the classes {list(classes)}")
    mlb = MultiLabelBinarizer(classes=list(classes))
    Y = mlb.fit_transform([list(g) for g in gold])
    dropped: dict[str, int] = {}
    for labels in pred:
        for lab in labels:
            if lab not in classes:
                dropped[lab] = dropped.get(lab, 0) + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        P = mlb.transform([list(p) for p in pred])
    f1s = np.asarray(f1_score(Y, P, average=None, zero_division=np.nan), dtype=float)
    per = _per_class(Y, P, list(classes), f1s)
    aucs = np.array([per[c]["auc"] for c in classes], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice -> NaN
        auc = float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan")
        f1 = float(np.nanmean(f1s)) if not np.all(np.isnan(f1s)) else float("nan")
    return MultiLabelMetrics(
        auc=auc,
        f1=f1,
        hl=float(hamming_loss(Y, P)),
        classes=list(classes),
        per_class=per,
        n=len(gold),
        undefined_auc=[c for c in classes if math.isnan(per[c]["auc"])],
        undefined_f1=[c for c in classes if math.isnan(per[c]["f1"])],
        dropped=dropped,
    )


def accuracy(gold: Sequence[str], pred: Sequence[str | None]) -> float:
    """``sklearn.accuracy_score``; a ``None`` prediction (unparsable) is wrong."""
    if len(gold) != len(pred):
        raise ValueError(f"gold and pred differ in length: {len(gold)} vs {len(pred)}")
    if not gold:
        raise ValueError("nothing to score: no items")
    return float(accuracy_score(list(gold), ["\0" if p is None else p for p in pred]))
