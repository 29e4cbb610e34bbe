"""Time-ordered splits of a canonical frame: train/test and the test stream's slots."""

from __future__ import annotations

import numpy as np
import pandas as pd

from reloop2_tf.data.errors import DataError


def _check_time_order(df: pd.DataFrame) -> None:
    if "timestamp" not in df.columns:
        raise DataError("frame has no 'timestamp' column; load it with load_dataset/load_csv")
    if not df["timestamp"].is_monotonic_increasing:
        raise DataError("rows are not sorted by timestamp; splits are by position in time order")


def time_split(
    df: pd.DataFrame, train_fraction: float = 0.8
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a time-sorted frame by row position: the first ``train_fraction`` of rows, the rest.

    Both parts keep the original index. Raises DataError if either part would be empty.
    """
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)):
        raise DataError(f"train_fraction must be a number in (0, 1), got {train_fraction!r}")
    if not 0.0 < float(train_fraction) < 1.0:
        raise DataError(f"train_fraction must be in (0, 1), got {train_fraction}")
    _check_time_order(df)
    n_train = round(len(df) * float(train_fraction))
    if n_train == 0 or n_train == len(df):
        raise DataError(
            f"train_fraction={train_fraction} of {len(df)} rows leaves an empty train or test part"
        )
    return df.iloc[:n_train], df.iloc[n_train:]


def slots(df: pd.DataFrame, num_slots: int) -> list[pd.DataFrame]:
    """Cut a time-sorted frame into ``num_slots`` consecutive chunks of (almost) equal size.

    Sizes differ by at most one row (earlier slots get the extra rows); the original index is
    kept. Raises DataError if a slot would be empty.
    """
    if isinstance(num_slots, bool) or not isinstance(num_slots, (int, np.integer)):
        raise DataError(f"num_slots must be a positive integer, got {num_slots!r}")
    if num_slots < 1:
        raise DataError(f"num_slots must be >= 1, got {num_slots}")
    if num_slots > len(df):
        raise DataError(f"cannot cut {len(df)} rows into {num_slots} non-empty slots")
    _check_time_order(df)
    base, extra = divmod(len(df), int(num_slots))
    sizes = [base + (1 if i < extra else 0) for i in range(int(num_slots))]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [df.iloc[bounds[i]: bounds[i + 1]] for i in range(int(num_slots))]
