"""The study's statistics: macro AUC as sklearn computes it, the bootstrap's interval where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from evl_ecg.eval.metrics import strict_multilabel
from evl_ecg.eval.stats import macro_auc, mean_std, paired_bootstrap


def _data(seed: int, n: int = 200, c: int = 5, flip: float = 0.3):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, c)) < 0.3).astype(np.int8)
    P = np.where(rng.random((n, c)) < flip, 1 - Y, Y).astype(np.int8)
    return Y, P


def test_macro_auc_equals_sklearn_and_the_strict_scorer():
    Y, P = _data(0)
    assert macro_auc(Y, P) == pytest.approx(100 * roc_auc_score(Y, P, average="macro"), abs=1e-9)
    classes = ["A", "B", "C", "D", "E"]
    gold = [[classes[j] for j in np.flatnonzero(row)] for row in Y]
    pred = [[classes[j] for j in np.flatnonzero(row)] for row in P]
    assert macro_auc(Y, P) == pytest.approx(100 * strict_multilabel(gold, pred, classes=classes).auc, abs=1e-9)


def test_a_class_with_constant_gold_is_left_out_of_the_mean():
    Y, P = _data(1)
    Y[:, 2] = 0
    keep = [0, 1, 3, 4]
    assert macro_auc(Y, P) == pytest.approx(100 * roc_auc_score(Y[:, keep], P[:, keep], average="macro"))


def test_bootstrap_of_a_method_against_itself_is_zero():
    runs = {s: _data(s) for s in range(3)}
    b = paired_bootstrap(runs, runs, n_boot=200)
    assert b["diff"] == 0 and b["lo"] == 0 and b["hi"] == 0 and b["n_seeds"] == 3 and b["n_records"] == 200


def test_bootstrap_interval_excludes_zero_for_a_clearly_better_method_and_covers_it_for_noise():
    control = {s: _data(s, flip=0.3) for s in range(3)}
    better = {s: (control[s][0], _data(s + 10, flip=0.05)[1]) for s in range(3)}
    for s in range(3):  # the better method's predictions of the same gold
        Y = control[s][0]
        rng = np.random.default_rng(100 + s)
        better[s] = (Y, np.where(rng.random(Y.shape) < 0.05, 1 - Y, Y).astype(np.int8))
    b = paired_bootstrap(better, control, n_boot=300)
    assert b["lo"] > 0 and b["diff"] > 10
    same_noise = {}
    for s in range(3):  # another draw of the control's noise level: no real difference
        Y = control[s][0]
        rng = np.random.default_rng(200 + s)
        same_noise[s] = (Y, np.where(rng.random(Y.shape) < 0.3, 1 - Y, Y).astype(np.int8))
    b = paired_bootstrap(same_noise, control, n_boot=300)
    assert b["lo"] < 0 < b["hi"]


def test_bootstrap_refuses_runs_on_different_records():
    a = {0: _data(0)}
    b = {0: _data(1)}
    with pytest.raises(ValueError, match="same records"):
        paired_bootstrap(a, b)


def test_mean_std_is_the_sample_spread():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
