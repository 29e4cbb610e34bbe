"""Grouped AUC against scikit-learn's roc_auc_score, group by group."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from reloop2_tf.evaluation import metrics


def test_per_group_auc_matches_sklearn_with_ties_and_one_class_groups(rng):
    n = 5_000
    groups = rng.choice([f"u{i}" for i in range(300)], size=n)
    labels = (rng.random(n) < 0.4).astype(np.float32)
    probs = np.round(rng.random(n) * 0.5 + 0.4 * labels, 2)  # coarse: many ties
    labels[groups == "u7"] = 1.0  # a one-class group is skipped
    names, rows, aucs = metrics.per_group_auc(labels, probs, groups)
    assert "u7" not in names and list(names) == sorted(names)
    for name, size, value in zip(names, rows, aucs):
        mask = groups == name
        assert size == mask.sum()
        assert value == pytest.approx(roc_auc_score(labels[mask], probs[mask]), abs=1e-12)
    expected = sum(r * a for r, a in zip(rows, aucs)) / rows.sum()
    assert metrics.gauc(labels, probs, groups) == pytest.approx(expected, abs=1e-12)


def test_gauc_of_hand_made_groups():
    # User a: ranked right (AUC 1); user b: one tie between its positive and a negative (0.75).
    labels = [1, 0, 1, 0, 0]
    probs = [0.9, 0.1, 0.5, 0.5, 0.2]
    groups = ["a", "a", "b", "b", "b"]
    assert metrics.gauc(labels, probs, groups) == pytest.approx((2 * 1.0 + 3 * 0.75) / 5)
    assert np.isnan(metrics.gauc([1, 1], [0.2, 0.3], ["a", "a"]))


def _paired_scores(rng, n=3000):
    labels = (rng.random(n) < 0.3).astype(float)
    a = labels * 0.8 + rng.normal(size=n)
    b = a + 0.6 * labels * rng.random(n) + 0.3 * rng.normal(size=n)  # better, and correlated with a
    return labels, 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))


def test_auc_delta_ci_is_delong_s_paired_interval(rng):
    labels, a, b = _paired_scores(rng)
    delta, low, high = metrics.auc_delta_ci(labels, a, b)
    assert delta == pytest.approx(roc_auc_score(labels, b) - roc_auc_score(labels, a), abs=1e-12)
    # DeLong's standard error agrees with a paired row bootstrap of the difference.
    boot = []
    for _ in range(300):
        i = rng.integers(0, labels.size, labels.size)
        boot.append(roc_auc_score(labels[i], b[i]) - roc_auc_score(labels[i], a[i]))
    assert (high - low) / (2 * 1.96) == pytest.approx(np.std(boot), rel=0.2)
    assert low < delta < high and low > 0  # b is better here and the test sees it
    same = metrics.auc_delta_ci(labels, a, a)
    assert same == (0.0, 0.0, 0.0)


def test_logloss_delta_ci_is_the_difference_of_loglosses(rng):
    labels, a, b = _paired_scores(rng)
    delta, low, high = metrics.logloss_delta_ci(labels, a, b)
    assert delta == pytest.approx(metrics.logloss(labels, b) - metrics.logloss(labels, a), rel=1e-9)
    assert low < delta < high


def test_gauc_interval_resamples_rows_when_there_are_few_users(rng):
    labels, a, b = _paired_scores(rng)
    few = rng.integers(0, 4, labels.size)  # four "users": a user bootstrap would be degenerate
    delta, low, high = metrics.gauc_delta_ci(labels, a, b, few, num_resamples=200)
    assert delta == pytest.approx(metrics.gauc(labels, b, few) - metrics.gauc(labels, a, few))
    assert low < delta < high and high - low > 0.005
    many = rng.integers(0, 200, labels.size)
    _, low_u, high_u = metrics.gauc_delta_ci(labels, a, b, many, num_resamples=200)
    assert low_u < high_u
