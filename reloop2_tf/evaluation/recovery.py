"""Recovery after a shift: metrics over fine windows, and the drop / recovery / regret of a curve.

A method's curve is compared, window by window, with a *reference*: what the metric would have
been had nothing shifted (the drift testbed uses the static model scored on the unshifted stream,
so that the log's own slow drift is not mistaken for the injected shift). Without a reference the
level is the mean of the windows before the onset. With the gap = reference - metric (for logloss,
where lower is better, metric - reference):

* **drop**: the largest post-onset gap, after a trailing mean over ``smooth`` windows (post-onset
  windows only, so the pre-shift windows never hide a drop);
* **recovery rows**: rows from the onset to the end of the first window, at or after that largest
  gap, whose smoothed gap is back within ``tolerance``; 0 if the gap never exceeds ``tolerance``;
  `None` if it never comes back;
* **regret**: the signed area of the gap over the post-onset windows, ``sum_i gap_i * rows_i / 1000``
  in metric x thousand rows. Signed, so that noise around an unchanged level averages out instead of
  piling up.
"""

from __future__ import annotations

import numpy as np

from reloop2_tf.evaluation import metrics


def window_edges(start: int, onsets: list[int], stop: int, window: int) -> np.ndarray:
    """Window boundaries over ``[start, stop)`` of ``window`` rows, restarted at every onset.

    A window shorter than half of ``window`` at the end of a segment joins the one before it.
    """
    if window < 1:
        raise ValueError(f"`window` should be >= 1. Received: window={window!r}")
    cuts = sorted({start, stop, *[o for o in onsets if start < o < stop]})
    edges = [start]
    for a, b in zip(cuts[:-1], cuts[1:]):
        inner = list(range(a + window, b, window))
        if inner and b - inner[-1] < window / 2:
            inner.pop()
        edges.extend([*inner, b])
    return np.asarray(edges)


def window_metrics(labels, probs, groups, edges) -> dict[str, np.ndarray]:
    """AUC, gAUC and logloss of every window (NaN where a window has a single class)."""
    out = {"auc": [], "gauc": [], "logloss": [], "rows": []}
    for a, b in zip(edges[:-1], edges[1:]):
        m = metrics.evaluate(labels[a:b], probs[a:b], groups[a:b])
        for key in ("auc", "gauc", "logloss"):
            out[key].append(np.nan if m[key] is None else m[key])
        out["rows"].append(b - a)
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def trailing_mean(values, smooth: int) -> np.ndarray:
    """Mean of each value and the ``smooth - 1`` before it (fewer at the start), NaNs ignored."""
    values = np.asarray(values, dtype=float)
    return np.array([np.nanmean(values[max(0, i - smooth + 1): i + 1]) for i in range(len(values))])


def recovery(curve, rows, onset: int, stop: int | None = None, reference=None,
             tolerance: float = 0.01, smooth: int = 1, higher_is_better: bool = True) -> dict:
    """Drop, recovery rows and regret of ``curve`` (one value per window) after window ``onset``.

    Args:
        curve: metric per window.
        rows: rows per window.
        onset: index of the first shifted window.
        stop: end (exclusive) of the windows to score; defaults to all of them.
        reference: the no-shift metric per window (array), or one level (float); defaults to the
            mean of the windows before ``onset``.
        tolerance: "recovered" means within this much of the reference (0.01 = one AUC point).
        smooth: windows in the trailing mean that locates the largest gap and the recovery.
        higher_is_better: False for logloss.
    """
    sign = 1.0 if higher_is_better else -1.0
    curve = np.asarray(curve, dtype=float)
    rows = np.asarray(rows, dtype=float)
    stop = len(curve) if stop is None else stop
    if not 0 < onset < stop <= len(curve):
        raise ValueError(f"need 0 < onset < stop <= {len(curve)} windows. Received: onset={onset}, "
                         f"stop={stop}")
    if reference is None:
        reference = np.nanmean(curve[:onset])
    reference = np.broadcast_to(np.asarray(reference, dtype=float), curve.shape)
    gap = sign * (reference - curve)[onset:stop]
    post_rows = rows[onset:stop]
    smoothed = trailing_mean(gap, smooth)
    worst = int(np.nanargmax(smoothed))
    drop = float(smoothed[worst])
    if drop <= tolerance:
        recovered = 0
    else:
        back = np.flatnonzero(smoothed[worst:] <= tolerance)
        recovered = int(post_rows[: worst + back[0] + 1].sum()) if back.size else None
    valid = ~np.isnan(gap)
    regret = float(np.sum(gap[valid] * post_rows[valid]) / 1000.0)
    return {"level": float(np.nanmean(reference[onset:stop])), "drop": drop,
            "recovery_rows": recovered, "regret": regret, "low_window": onset + worst}


def won_back(curve, static_curve, reference, windows: slice) -> float:
    """Share of the static model's shortfall below ``reference`` that a method wins back.

    Means over ``windows``; ``reference`` is a level or a per-window curve. 1 means the method is
    back at the reference, 0 that it does no better than static, negative that it does worse.
    NaN when static lost nothing there.
    """
    method = np.nanmean(np.asarray(curve, dtype=float)[windows])
    static = np.nanmean(np.asarray(static_curve, dtype=float)[windows])
    reference = np.broadcast_to(np.asarray(reference, dtype=float), np.shape(static_curve))
    loss = np.nanmean(reference[windows]) - static
    return float((method - static) / loss) if loss > 0 else float("nan")
