"""Offline metrics as plain functions: AUC, gAUC and logloss.

AUC and logloss come from scikit-learn. gAUC is the row-weighted mean of per-user AUC over users
that have both classes (DeepCTR/FuxiCTR convention); sklearn has no grouped AUC, so it is written
here on top of ``roc_auc_score``.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

_EPS = 1e-7


def auc(labels, probs) -> float:
    """ROC AUC; NaN when only one class is present."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0 or np.unique(labels).size < 2:
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(probs).reshape(-1)))


def gauc(labels, probs, groups) -> float:
    """Per-group AUC weighted by the group's rows; one-class groups are skipped."""
    labels = np.asarray(labels).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if not labels.size == probs.size == groups.size:
        raise ValueError(
            f"`labels`, `probs` and `groups` must have the same length. Received: "
            f"{labels.size}, {probs.size}, {groups.size}"
        )
    _, sizes, aucs = per_group_auc(labels, probs, groups)
    return float((sizes * aucs).sum() / sizes.sum()) if sizes.size else float("nan")


def logloss(labels, probs) -> float:
    """Binary cross-entropy with probabilities clipped to [eps, 1 - eps]."""
    probs = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), _EPS, 1 - _EPS)
    return float(log_loss(np.asarray(labels).reshape(-1), probs, labels=[0, 1]))


def evaluate(labels, probs, groups=None) -> dict[str, float]:
    """AUC, gAUC (when ``groups`` is given) and logloss in one dict."""
    out = {"auc": auc(labels, probs), "logloss": logloss(labels, probs)}
    out["gauc"] = gauc(labels, probs, groups) if groups is not None else float("nan")
    out["rows"] = int(np.asarray(labels).size)
    return out


def per_group_auc(labels, probs, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(group, rows, auc)`` of every group that has both classes."""
    labels = np.asarray(labels).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    ends = np.r_[starts[1:], sorted_groups.size]
    names, sizes, aucs = [], [], []
    for s, e in zip(starts, ends):
        idx = order[s:e]
        y = labels[idx]
        if 0 < y.sum() < y.size:
            names.append(sorted_groups[s])
            sizes.append(y.size)
            aucs.append(roc_auc_score(y, probs[idx]))
    return np.asarray(names), np.asarray(sizes, dtype=np.float64), np.asarray(aucs)


def gauc_delta_ci(labels, probs_a, probs_b, groups, num_resamples: int = 500, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float, float]:
    """gAUC(b) - gAUC(a) with a user-bootstrap confidence interval: ``(delta, low, high)``."""
    _, sizes, auc_a = per_group_auc(labels, probs_a, groups)
    _, sizes_b, auc_b = per_group_auc(labels, probs_b, groups)
    if not np.array_equal(sizes, sizes_b):
        raise ValueError("`probs_a` and `probs_b` must be scored on the same rows and groups.")
    if sizes.size == 0:
        return float("nan"), float("nan"), float("nan")
    diff = auc_b - auc_a
    delta = float((sizes * diff).sum() / sizes.sum())
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, sizes.size, size=(num_resamples, sizes.size))
    boot = (sizes[picks] * diff[picks]).sum(1) / sizes[picks].sum(1)
    tail = (1 - level) / 2
    return delta, float(np.quantile(boot, tail)), float(np.quantile(boot, 1 - tail))
