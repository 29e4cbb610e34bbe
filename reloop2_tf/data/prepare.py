"""``reloop2 data prepare``: write a dataset as one canonical CSV plus its metadata."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from reloop2_tf.data.download import sha256_file
from reloop2_tf.data.errors import DataError
from reloop2_tf.data.history import build_history
from reloop2_tf.data.loaders import (
    CANONICAL_COLUMNS,
    DATASETS,
    DEFAULT_HISTORY_LENGTH,
    HISTORY_COLUMN,
    check_history_length,
    feature_columns,
    load_csv,
    load_dataset,
)

logger = logging.getLogger(__name__)

DATA_FILE = "data.csv"
META_FILE = "meta.json"
PREPARE_DATASETS = (*DATASETS, "csv")

# Argument name -> the CLI flag that sets it, so errors name what the user typed.
_FLAGS = {
    "csv": "--csv",
    "user_col": "--user-col",
    "item_col": "--item-col",
    "time_col": "--time-col",
    "label_col": "--label-col",
    "label_threshold": "--label-threshold",
    "item_features": "--item-features",
    "item_key": "--item-key",
    "user_features": "--user-features",
    "user_key": "--user-key",
    "data_dir": "--data-dir",
}
_CSV_REQUIRED = ("csv", "user_col", "item_col", "time_col", "label_col")


def _iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds)))


def _validate(dataset: object, given: dict[str, object]) -> None:
    if dataset not in PREPARE_DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(PREPARE_DATASETS)}")
    present = [name for name, value in given.items() if value is not None]
    if dataset == "csv":
        missing = [_FLAGS[name] for name in _CSV_REQUIRED if given.get(name) is None]
        if missing:
            raise DataError(f"--dataset csv needs {', '.join(missing)}")
        if "data_dir" in present:
            raise DataError("--data-dir applies to ml-100k/ml-1m; for csv pass --csv")
    else:
        csv_only = [_FLAGS[name] for name in present
                    if name not in ("data_dir", "label_threshold")]
        if csv_only:
            raise DataError(f"{', '.join(csv_only)} only apply to --dataset csv, not {dataset}")
    if given.get("item_key") is not None and given.get("item_features") is None:
        raise DataError("--item-key needs --item-features")
    if given.get("user_key") is not None and given.get("user_features") is None:
        raise DataError("--user-key needs --user-features")


def prepare(
    dataset: str,
    output_dir: str | os.PathLike,
    csv: str | os.PathLike | None = None,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    label_col: str | None = None,
    label_threshold: float | None = None,
    item_features: str | os.PathLike | None = None,
    item_key: str | None = None,
    user_features: str | os.PathLike | None = None,
    user_key: str | None = None,
    data_dir: str | os.PathLike | None = None,
    history_length: int = DEFAULT_HISTORY_LENGTH,
) -> Path:
    """Write ``output_dir/data.csv`` (canonical, time-sorted) and ``output_dir/meta.json``.

    ``dataset`` is "ml-100k", "ml-1m" or "csv"; "csv" needs ``csv``, ``user_col``,
    ``item_col``, ``time_col`` and ``label_col`` (see ``load_csv``). Returns the CSV's path.
    """
    given = {
        "csv": csv, "user_col": user_col, "item_col": item_col, "time_col": time_col,
        "label_col": label_col, "label_threshold": label_threshold,
        "item_features": item_features, "item_key": item_key,
        "user_features": user_features, "user_key": user_key, "data_dir": data_dir,
    }
    _validate(dataset, given)
    history_length = check_history_length(history_length)
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a directory")

    if dataset == "csv":
        frame = load_csv(
            csv, user_col, item_col, time_col, label_col, label_threshold=label_threshold,
            item_features=item_features, item_key=item_key, user_features=user_features,
            user_key=user_key, history_length=history_length,
        )
    else:
        frame = load_dataset(dataset, data_dir=data_dir, history_length=history_length,
                             label_threshold=label_threshold)

    out.mkdir(parents=True, exist_ok=True)
    target = out / DATA_FILE
    partial = out / f".{DATA_FILE}.partial"
    # Written under a temporary name first so a crash never leaves a truncated data.csv that
    # looks complete to the next command.
    frame.to_csv(partial, index=False)
    os.replace(partial, target)

    sources = [
        {"path": str(p), "bytes": Path(p).stat().st_size}
        for p in frame.attrs.get("source_files", [])
    ]
    timestamps = frame["timestamp"]
    meta = {
        "dataset": dataset,
        "format": frame.attrs.get("format"),
        "rows": len(frame),
        "users": int(frame["user_id"].nunique()),
        "items": int(frame["item_id"].nunique()),
        "positive_rate": round(float(frame["label"].mean()), 6),
        "label_rule": frame.attrs.get("label_rule"),
        "time_range": {
            "start": int(timestamps.iloc[0]),
            "end": int(timestamps.iloc[-1]),
            "start_utc": _iso(timestamps.iloc[0]),
            "end_utc": _iso(timestamps.iloc[-1]),
        },
        "columns": list(frame.columns),
        "feature_columns": feature_columns(frame),
        "history_length": history_length,
        "source_files": sources,
        "data_file": DATA_FILE,
        "sha256": sha256_file(target),
    }
    with open(out / META_FILE, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
    logger.info("wrote %s (%d rows) and %s", target, len(frame), out / META_FILE)
    return target


def load_prepared(path_or_dir: str | os.PathLike) -> pd.DataFrame:
    """Read a ``data.csv`` written by ``prepare`` (or its folder) back as the canonical frame.

    Ids, features and history are str (a missing history is ""), ``timestamp`` int64, ``label``
    int8. ``meta.json`` next to the file, if present, is put in ``frame.attrs["meta"]``. A file
    without a history column gets one built with the default length (rows must be time-sorted).
    """
    path = Path(path_or_dir).expanduser()
    if path.is_dir():
        path = path / DATA_FILE
    if not path.is_file():
        raise DataError(f"{path} does not exist; run `reloop2 data prepare` first")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path} is empty") from exc
    missing = [c for c in CANONICAL_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path.name} lacks column(s) {', '.join(missing)}; available columns: "
            f"{', '.join(frame.columns)}"
        )
    if frame.empty:
        raise DataError(f"{path} has no data rows")
    timestamps = pd.to_numeric(frame["timestamp"], errors="coerce")
    if timestamps.isna().any():
        bad = frame["timestamp"][timestamps.isna()].iloc[0]
        raise DataError(f"{path.name}: column 'timestamp' has non-integer values such as {bad!r}")
    frame["timestamp"] = timestamps.astype(np.int64)
    labels = frame["label"].map({"0": 0, "1": 1})
    if labels.isna().any():
        bad = frame["label"][labels.isna()].iloc[0]
        raise DataError(f"{path.name}: column 'label' must be 0/1, found {bad!r}")
    frame["label"] = labels.astype(np.int8)
    if HISTORY_COLUMN not in frame.columns:
        if not frame["timestamp"].is_monotonic_increasing:
            raise DataError(f"{path.name} has no history column and is not sorted by timestamp")
        logger.info("%s has no history column; building it (length %d)", path.name,
                    DEFAULT_HISTORY_LENGTH)
        frame[HISTORY_COLUMN] = build_history(
            frame["user_id"].to_numpy(), frame["item_id"].to_numpy(), DEFAULT_HISTORY_LENGTH
        )
    meta_path = path.parent / META_FILE
    if meta_path.is_file():
        with open(meta_path, encoding="utf-8") as fh:
            frame.attrs["meta"] = json.load(fh)
    return frame
