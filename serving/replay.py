"""Replays a time-ordered canonical CSV through a server: score each batch, then write its labels.

Each batch is scored first, then its labels are written back: with ``update_memory_by_keys`` (the
memory keys and base probability ``predict`` returned; no model runs) when the model has it, else
with ``update_memory``. The base and compensated predictions are compared at the end.
``reloop2 replay`` and the demo use it.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)


def _columns(frame, dtypes: dict) -> dict:
    """The signature's inputs from the CSV columns, converted to the dtypes the server expects."""
    import numpy as np
    import pandas as pd

    missing = sorted(set(dtypes) - set(frame.columns))
    if missing:
        raise ValueError(f"the data lacks the model input column(s) {missing}; "
                         f"it has {list(frame.columns)}")
    out = {}
    for name, dtype in dtypes.items():
        column = frame[name]
        if dtype.name == "string":
            out[name] = column.astype(str).to_numpy(dtype=object)
            continue
        values = pd.to_numeric(column, errors="coerce")
        if values.isna().any():
            bad = column[values.isna()].iloc[0]
            raise ValueError(f"column {name!r} must be numeric for the model; found {bad!r}")
        out[name] = values.to_numpy().astype(dtype.as_numpy_dtype)
    return {k: np.asarray(v) for k, v in out.items()}


def replay(data: str, target: str, model_name: str = "reloop2", batch_size: int = 256,
           max_rows: int | None = None, timeout: float = 30.0, progress: bool = False,
           frame=None) -> dict:
    """Replays ``data`` through the server at ``target``; returns metrics of base and ReLoop2.

    Returns:
        ``{"base": {...}, "reloop2": {...}, "rows", "batches", "seconds", "memory_weight",
        "predictions"}``, the metrics being ``auc``, ``gauc`` and ``logloss`` over all rows;
        ``predictions`` holds the per-row arrays ``base``, ``reloop2``, ``labels``, ``users``
        and ``timestamps`` (for per-slot reports; not JSON).
    """
    import numpy as np

    from reloop2_tf.data import load_prepared
    from reloop2_tf.evaluation import metrics
    from reloop2_serving.client import ReLoop2Client

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"--max-rows must be >= 1, got {max_rows}")
    from tqdm.auto import tqdm

    if frame is None:
        frame = load_prepared(data)
    if not frame["timestamp"].is_monotonic_increasing:
        logger.warning("%s is not sorted by time; replaying it in timestamp order", data)
        frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    if max_rows is not None:
        frame = frame.iloc[:max_rows]
    with ReLoop2Client(target, model_name, timeout=timeout) as client:
        dtypes = client.input_dtypes("update_memory")
        dtypes = {k: v for k, v in dtypes.items()
                  if k not in ("label", "sample_weight", "write_id")}
        by_keys = "update_memory_by_keys" in client.metadata()
        features = _columns(frame, dtypes)
        labels = frame["label"].to_numpy().astype(np.float32)
        base, compensated = np.empty(len(frame)), np.empty(len(frame))
        started = time.monotonic()
        batches = 0
        written = None
        for start in tqdm(range(0, len(frame), batch_size), desc="replay", unit="batch",
                          disable=not progress):
            rows = slice(start, start + batch_size)
            batch = {k: v[rows] for k, v in features.items()}
            out = client.predict(batch)  # scored before its labels are revealed
            base[rows], compensated[rows] = out["base_probability"], out["probability"]
            if by_keys:
                written = client.update_memory_by_keys(out["memory_keys"], out["base_probability"],
                                                       labels[rows])
            else:
                written = client.update_memory(batch, labels[rows])
            batches += 1
        seconds = time.monotonic() - started
    users = frame["user_id"].to_numpy()
    return {
        "base": metrics.evaluate(labels, base, users),
        "reloop2": metrics.evaluate(labels, compensated, users),
        "rows": len(frame),
        "batches": batches,
        "seconds": round(seconds, 3),
        "memory_weight": float(written["memory_weight"]) if written else 0.0,
        "predictions": {"base": base, "reloop2": compensated, "labels": labels, "users": users,
                        "timestamps": frame["timestamp"].to_numpy()},
    }


def format_results(results: dict) -> str:
    """A small table: one line per method."""
    lines = [f"{'method':<10} {'auc':>8} {'gauc':>8} {'logloss':>9}"]
    for method in ("base", "reloop2"):
        m = results[method]
        lines.append(f"{method:<10} {m['auc']:>8.4f} {m['gauc']:>8.4f} {m['logloss']:>9.4f}")
    rate = results["rows"] / results["seconds"] if results["seconds"] else float("nan")
    lines.append(f"{results['rows']} rows in {results['batches']} batches, "
                 f"{results['seconds']:.1f} s ({rate:.0f} rows/s, predict + update); "
                 f"memory weight {results['memory_weight']:.0f}")
    return "\n".join(lines)
