"""Offline metrics as plain functions: AUC, gAUC and logloss.

AUC and logloss come from scikit-learn. gAUC is the row-weighted mean of per-user AUC over users
that have both classes (DeepCTR/FuxiCTR convention); sklearn has no grouped AUC, so it is written
here (ranks per group, checked against ``roc_auc_score`` in the tests).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
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
    """``(group, rows, auc)`` of every group that has both classes, groups in sorted order.

    Computed for all groups at once from tie-averaged ranks (Mann-Whitney U), which is what
    ``roc_auc_score`` computes per group. Written here because a Python loop of ``roc_auc_score``
    calls cost ~0.3 ms per user and dominated the drift testbed's per-window metrics.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    codes, names = pd.factorize(np.asarray(groups).reshape(-1), sort=True)
    order = np.lexsort((probs, codes))
    g, p, y = codes[order], probs[order], labels[order]
    new_group = np.r_[True, g[1:] != g[:-1]]
    group = np.cumsum(new_group) - 1
    position = np.arange(g.size) - np.flatnonzero(new_group)[group] + 1.0
    new_tie = new_group | np.r_[True, p[1:] != p[:-1]]
    tie = np.cumsum(new_tie) - 1
    rank = (np.bincount(tie, weights=position) / np.bincount(tie))[tie]
    rows = np.bincount(group).astype(np.float64)
    positives = np.bincount(group, weights=y)
    negatives = rows - positives
    valid = (positives > 0) & (negatives > 0)
    rank_sum = np.bincount(group, weights=rank * y)
    aucs = (rank_sum[valid] - positives[valid] * (positives[valid] + 1) / 2) / (
        positives[valid] * negatives[valid])
    return np.asarray(names)[g[new_group]][valid], rows[valid], aucs


# Below this many groups with both classes a group bootstrap is degenerate (a log whose "user"
# column has a handful of values); gauc_delta_ci resamples rows instead.
MIN_BOOTSTRAP_GROUPS = 50


def gauc_delta_ci(labels, probs_a, probs_b, groups, num_resamples: int = 500, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float, float]:
    """gAUC(b) - gAUC(a) with a user-bootstrap confidence interval: ``(delta, low, high)``.

    With fewer than ``MIN_BOOTSTRAP_GROUPS`` groups the bootstrap resamples rows (paired).
    """
    _, sizes, auc_a = per_group_auc(labels, probs_a, groups)
    _, sizes_b, auc_b = per_group_auc(labels, probs_b, groups)
    if not np.array_equal(sizes, sizes_b):
        raise ValueError("`probs_a` and `probs_b` must be scored on the same rows and groups.")
    if sizes.size == 0:
        return float("nan"), float("nan"), float("nan")
    diff = auc_b - auc_a
    delta = float((sizes * diff).sum() / sizes.sum())
    rng = np.random.default_rng(seed)
    if sizes.size >= MIN_BOOTSTRAP_GROUPS:
        picks = rng.integers(0, sizes.size, size=(num_resamples, sizes.size))
        boot = (sizes[picks] * diff[picks]).sum(1) / sizes[picks].sum(1)
    else:
        labels, groups = np.asarray(labels).reshape(-1), np.asarray(groups).reshape(-1)
        a = np.asarray(probs_a, np.float64).reshape(-1)
        b = np.asarray(probs_b, np.float64).reshape(-1)
        boot = []
        for _ in range(num_resamples):
            i = rng.integers(0, labels.size, labels.size)
            _, w, ga = per_group_auc(labels[i], a[i], groups[i])
            _, _, gb = per_group_auc(labels[i], b[i], groups[i])
            if w.size:
                boot.append(float((w * (gb - ga)).sum() / w.sum()))
    tail = (1 - level) / 2
    return delta, float(np.quantile(boot, tail)), float(np.quantile(boot, 1 - tail))


def auc_delta_ci(labels, probs_a, probs_b, level: float = 0.95) -> tuple[float, float, float]:
    """AUC(b) - AUC(a) with DeLong's paired interval (DeLong et al. 1988, in the rank form of
    Sun and Xu 2014): ``(delta, low, high)``. sklearn and scipy have no paired AUC test."""
    labels = np.asarray(labels).reshape(-1) > 0.5
    m, n = int(labels.sum()), int((~labels).sum())
    if m == 0 or n == 0:
        return float("nan"), float("nan"), float("nan")
    v10, v01, aucs = [], [], []
    for probs in (probs_a, probs_b):
        s = np.asarray(probs, np.float64).reshape(-1)
        ranks = stats.rankdata(s)
        pos = ranks[labels] - stats.rankdata(s[labels])   # negatives below each positive
        neg = ranks[~labels] - stats.rankdata(s[~labels])  # positives below each negative
        v10.append(pos / n)
        v01.append(1.0 - neg / m)
        aucs.append(pos.sum() / (m * n))
    delta = aucs[1] - aucs[0]
    d10, d01 = v10[1] - v10[0], v01[1] - v01[0]
    var = (d10.var(ddof=1) if m > 1 else 0.0) / m + (d01.var(ddof=1) if n > 1 else 0.0) / n
    half = stats.norm.ppf(0.5 + level / 2) * np.sqrt(var)
    return float(delta), float(delta - half), float(delta + half)


def logloss_delta_ci(labels, probs_a, probs_b, level: float = 0.95) -> tuple[float, float, float]:
    """logloss(b) - logloss(a) with the paired normal interval of the per-row loss difference."""
    y = np.asarray(labels, np.float64).reshape(-1)
    loss = [-(y * np.log(p) + (1 - y) * np.log1p(-p)) for p in (
        np.clip(np.asarray(q, np.float64).reshape(-1), _EPS, 1 - _EPS) for q in (probs_a, probs_b))]
    diff = loss[1] - loss[0]
    if diff.size < 2:
        return float("nan"), float("nan"), float("nan")
    half = stats.norm.ppf(0.5 + level / 2) * diff.std(ddof=1) / np.sqrt(diff.size)
    return float(diff.mean()), float(diff.mean() - half), float(diff.mean() + half)
