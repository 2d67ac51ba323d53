"""The study's statistics: macro AUC as sklearn computes it, the bootstrap's interval where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from evl_ecg.eval.metrics import strict_multilabel
from evl_ecg.eval.stats import crossing, labels_saved, macro_auc, mean_std, paired_bootstrap, share_of_gap


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


def _noisy(Y: np.ndarray, flip: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(Y.shape) < flip, 1 - Y, Y).astype(np.int8)


def _sk(Y: np.ndarray, P: np.ndarray) -> float:
    return 100 * roc_auc_score(Y, P, average="macro")


def test_share_of_gap_is_the_ratio_of_differences_with_its_interval():
    Y = _data(0, n=400)[0]
    control = {s: (Y, _noisy(Y, 0.30, s)) for s in range(3)}
    method = {s: (Y, _noisy(Y, 0.20, 10 + s)) for s in range(3)}
    teacher = (Y, _noisy(Y, 0.10, 99))
    got = share_of_gap(method, control, teacher, n_boot=300)
    c = np.mean([_sk(*control[s]) for s in range(3)])
    m = np.mean([_sk(*method[s]) for s in range(3)])
    want = (m - c) / (_sk(*teacher) - c)  # computed with scikit-learn, by hand
    assert got["share"] == pytest.approx(want, abs=1e-9) and 0.3 < want < 0.7
    assert got["lo"] < got["share"] < got["hi"] and got["n_boot"] == 300
    # a method that is the teacher closes the whole gap in every resample
    same = share_of_gap({s: teacher for s in range(3)}, control, teacher, n_boot=100)
    assert same["share"] == pytest.approx(1.0) and same["lo"] == pytest.approx(1.0) == same["hi"]
    with pytest.raises(ValueError, match="same records"):
        share_of_gap(method, control, _data(5, n=400), n_boot=10)


def test_crossing_interpolates_in_log_records():
    assert crossing([100, 200, 400], [60.0, 70.0, 80.0], 75.0) == pytest.approx((200 * 400) ** 0.5)
    assert crossing([100, 200, 400], [60.0, 70.0, 80.0], 70.0) == pytest.approx(200)
    assert crossing([100, 200, 400], [60.0, 70.0, 80.0], 50.0) == 100
    assert crossing([100, 200, 400], [60.0, 70.0, 80.0], 90.0) == float("inf")


def test_labels_saved_reads_the_controls_curve_at_the_methods_score():
    Y = _data(0, n=600)[0]
    flips = {100: 0.35, 200: 0.25, 400: 0.15}
    control = {n: {s: (Y, _noisy(Y, f, 1000 * n + s)) for s in range(3)} for n, f in flips.items()}
    method = {s: (Y, _noisy(Y, 0.20, 7 + s)) for s in range(3)}
    got = labels_saved(control, method, 100, n_boot=200)
    curve = [np.mean([_sk(*control[n][s]) for s in range(3)]) for n in sorted(flips)]
    target = np.mean([_sk(*method[s]) for s in range(3)])
    i = next(k for k, v in enumerate(curve) if v >= target)  # by hand: log-linear between budgets i-1 and i
    lo_n, hi_n = sorted(flips)[i - 1], sorted(flips)[i]
    frac = (target - curve[i - 1]) / (curve[i] - curve[i - 1])
    want = float(np.exp(np.log(lo_n) + frac * (np.log(hi_n) - np.log(lo_n))))
    assert got["records"] == pytest.approx(want) and 200 < want < 400
    assert got["ratio"] == pytest.approx(want / 100) and got["lo"] <= want <= got["hi"]
    # a method no budget of the control reaches: infinitely many labels saved, said as such
    perfect = {s: (Y, Y.copy()) for s in range(3)}
    assert labels_saved(control, perfect, 100, n_boot=20)["records"] == float("inf")
