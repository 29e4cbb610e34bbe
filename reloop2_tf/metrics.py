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
    order = np.argsort(groups, kind="stable")
    groups_sorted = groups[order]
    starts = np.flatnonzero(np.r_[True, groups_sorted[1:] != groups_sorted[:-1]])
    ends = np.r_[starts[1:], groups_sorted.size]
    total, weight = 0.0, 0
    for s, e in zip(starts, ends):
        idx = order[s:e]
        y = labels[idx]
        positives = y.sum()
        if positives == 0 or positives == y.size:
            continue
        total += roc_auc_score(y, probs[idx]) * y.size
        weight += y.size
    return float(total / weight) if weight else float("nan")


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
