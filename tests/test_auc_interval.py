"""The ROC-AUC interval reported beside every federated AUC (shared.evaluation.roc_auc_interval)."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedchurn.shared.evaluation import (
    average_precision,
    device_histogram,
    histogram_length,
    metrics_from_histogram,
    pr_auc_interval,
    roc_auc_interval,
)


def _counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every device its own score bin, in increasing score order."""
    order = np.argsort(scores)
    return labels[order].astype(float), 1.0 - labels[order]


def test_the_interval_covers_the_true_auc_about_95_times_in_100() -> None:
    """Binormal scores with a known AUC, 100 churners and 900 others (a held-out set of the
    default scenario's size): the interval's width matches the AUC's real spread, and it covers
    the true value at about its nominal rate."""
    rng = np.random.default_rng(0)
    shift, n_pos, n_neg = 1.2, 100, 900
    true_auc = NormalDist().cdf(shift / 2**0.5)
    labels = np.concatenate([np.ones(n_pos), np.zeros(n_neg)])
    aucs, half_widths, covered = [], [], 0
    for _ in range(400):
        scores = np.concatenate([rng.normal(shift, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)])
        auc = float(roc_auc_score(labels, scores))
        lo, hi = roc_auc_interval(*_counts(scores, labels))
        assert np.isclose((lo + hi) / 2, auc)  # centred on the same Mann-Whitney AUC
        covered += lo <= true_auc <= hi
        aucs.append(auc)
        half_widths.append((hi - lo) / 2)
    predicted_sd = float(np.mean(half_widths)) / NormalDist().inv_cdf(0.975)
    assert 0.85 < float(np.std(aucs)) / predicted_sd < 1.15
    assert 0.92 <= covered / 400 <= 0.98


def test_more_devices_give_a_narrower_interval() -> None:
    rng = np.random.default_rng(2)
    widths = []
    for n in (200, 2_000, 20_000):
        labels = (rng.random(n) < 0.1).astype(float)
        scores = rng.normal(labels, 1.0)
        lo, hi = roc_auc_interval(*_counts(scores, labels))
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2] > 0


def test_the_interval_stays_inside_0_and_1() -> None:
    assert roc_auc_interval(np.array([0, 0, 3.0]), np.array([4.0, 0, 0])) == (1.0, 1.0)
    lo, hi = roc_auc_interval(np.array([0, 1, 3.0]), np.array([4.0, 1, 0]))
    assert 0.0 <= lo < hi == 1.0


@pytest.mark.parametrize(
    ("pos", "neg"),
    [([1.0, 0.0], [5.0, 5.0]), ([3.0, 3.0], [0.0, 1.0]), ([3.0, -1.0], [5.0, 5.0]), ([3.0], [5.0, 5.0])],
)
def test_impossible_counts_are_refused(pos: list[float], neg: list[float]) -> None:
    with pytest.raises(ValueError, match="AUC interval"):
        roc_auc_interval(np.array(pos), np.array(neg))


def test_histogram_metrics_carry_the_interval() -> None:
    rng = np.random.default_rng(1)
    hist = np.zeros(histogram_length(14))
    for _ in range(300):
        churn = rng.random() < 0.2
        prob = float(np.clip(rng.normal(0.5 if churn else 0.2, 0.15), 0.01, 0.99))
        hist += device_histogram(prob, int(rng.integers(1, 15)) if churn else 14, churn, 14)
    m = metrics_from_histogram(hist, 14)
    lo, hi = m["roc_auc_ci95"]
    assert lo < m["roc_auc"] < hi and hi - lo < 0.2


def test_the_pr_auc_bootstrap_interval_matches_the_spread_of_pr_auc() -> None:
    """Binned binormal scores, 100 churners and 900 others: the bootstrap interval's width is the
    PR-AUC's real spread across held-out sets, and it is a public function of the counts."""
    rng = np.random.default_rng(1)
    edges = np.linspace(-4, 5, 61)
    values, widths = [], []
    for _ in range(60):
        s_pos, s_neg = rng.normal(1.2, 1.0, 100), rng.normal(0.0, 1.0, 900)
        pos = np.histogram(s_pos, edges)[0].astype(float)
        neg = np.histogram(s_neg, edges)[0].astype(float)
        values.append(average_precision(pos, neg))
        lo, hi = pr_auc_interval(pos, neg)
        assert lo <= values[-1] <= hi and pr_auc_interval(pos, neg) == (lo, hi)
        widths.append(hi - lo)
    spread = 2 * NormalDist().inv_cdf(0.975) * float(np.std(values))
    assert 0.75 < float(np.mean(widths)) / spread < 1.3
    with pytest.raises(ValueError, match="at least 2 devices per class"):
        pr_auc_interval(np.array([1.0, 0.0]), np.array([5.0, 5.0]))
