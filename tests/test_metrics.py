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
