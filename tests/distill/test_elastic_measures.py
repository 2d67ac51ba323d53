"""The three measures ``benchmarks/elastic.py`` prints, against values worked out by hand.

* effective rank (Roy and Vetterli, 2007): ``exp`` of the entropy of the normalised singular values of the centred
  rows; for singular values proportional to (1, 1) it is 2, for (3, 1) it is ``exp(-(.75 ln .75 + .25 ln .25))``;
* precision@k: the share of each row's ``k`` cosine-nearest rows (itself excluded) with exactly its label set;
* the linear probe's macro AUC: 1 where each finding is a threshold on one coordinate.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "elastic.py"
_SPEC = importlib.util.spec_from_file_location("evl_ecg_elastic_benchmark", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench
_SPEC.loader.exec_module(bench)


def test_effective_rank_of_two_equal_directions_is_two():
    # rows +-e1, +-e2: centred already, singular values sqrt(2), sqrt(2)
    z = np.array([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]])
    assert bench.effective_rank(z) == pytest.approx(2.0, abs=1e-12)


def test_effective_rank_of_unequal_directions_by_hand():
    # rows +-3 e1, +-e2 (and a constant offset the centring removes): singular values 3 sqrt(2), sqrt(2) -> p = .75, .25
    z = np.array([[3.0, 0], [-3, 0], [0, 1], [0, -1]]) + np.array([5.0, -2.0])
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert bench.effective_rank(z) == pytest.approx(expected, abs=1e-12)


def test_effective_rank_of_one_direction_is_one():
    z = np.outer(np.arange(6.0), [1.0, 2.0, -1.0])
    assert bench.effective_rank(z) == pytest.approx(1.0, abs=1e-9)


def test_precision_at_k_by_hand():
    # four rows: 0 and 1 point the same way, 2 and 3 nearly so; labels: 0,1,2 share set A, 3 has set B
    z = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    labels = np.array([[1, 0], [1, 0], [1, 0], [0, 1]])
    # k=1: nearest of 0 is 1 (same), of 1 is 0 (same), of 2 is 3 (differs), of 3 is 2 (differs) -> 2/4
    assert bench.precision_at_k(z, labels, k=1) == pytest.approx(0.5)
    # k=2: row 0 -> {1, 3}: 1 same; row 1 -> {0, 3}: 1; row 2 -> {3, 1}: 1; row 3 -> {2, 1}: 0 -> 3/8
    assert bench.precision_at_k(z, labels, k=2) == pytest.approx(3 / 8)


def test_precision_at_k_caps_k_at_the_other_rows():
    z = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array([[1], [1], [0]])
    # k=10 becomes 2: row 0 -> {1, 2}: 1/2; row 1 -> {0, 2}: 1/2; row 2 -> {1, 0}: 0 -> 1/3
    assert bench.precision_at_k(z, labels, k=10) == pytest.approx(1 / 3)


def test_probe_auc_is_one_when_each_finding_is_a_coordinate_threshold():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(80, 3))
    z[:, :2] += np.sign(z[:, :2]) * 2.0  # a margin of 4 around each threshold
    labels = (z[:, :2] > 0).astype(int)
    assert bench.probe_auc(z, labels, seed=0) == pytest.approx(1.0)


def test_probe_auc_skips_a_finding_absent_from_a_half():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(40, 2))
    z[:, 0] += np.sign(z[:, 0]) * 2.0
    labels = np.stack([(z[:, 0] > 0).astype(int), np.r_[np.zeros(20), np.ones(20)].astype(int)], axis=1)
    # the second finding is all 0 in the fitting half: skipped, so the macro AUC is the first one's alone
    assert bench.probe_auc(z, labels, seed=0) == pytest.approx(1.0)
