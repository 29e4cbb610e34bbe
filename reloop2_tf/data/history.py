"""Per-user behaviour histories built from a time-sorted log."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from reloop2_tf.data.errors import DataError


def build_history(
    user_ids: Sequence[str] | np.ndarray | pd.Series,
    item_ids: Sequence[str] | np.ndarray | pd.Series,
    history_length: int = 20,
) -> np.ndarray:
    """Return, for each row, the user's previous items as one space-separated string.

    Rows must already be in time order. Row ``i`` gets the items of the (at most
    ``history_length``) rows of the same user that come strictly before ``i``, oldest first
    and most recent last; a user's first row gets ``""``. The result is an object array of
    ``str`` aligned with the input.
    """
    if isinstance(history_length, bool) or not isinstance(history_length, (int, np.integer)):
        raise DataError(f"history_length must be an integer, got {history_length!r}")
    if history_length < 0:
        raise DataError(f"history_length must be >= 0, got {history_length}")
    users = np.asarray(user_ids, dtype=object)
    items = np.asarray(item_ids, dtype=object)
    if users.shape != items.shape or users.ndim != 1:
        raise DataError(
            "user_ids and item_ids must be 1-D and of equal length, got "
            f"{users.shape} and {items.shape}"
        )
    n = len(users)
    out = np.full(n, "", dtype=object)
    if n == 0 or history_length == 0:
        return out

    codes, _ = pd.factorize(users)
    # A stable sort by user keeps each user's rows in their time order.
    order = np.argsort(codes, kind="stable")
    item_codes, item_uniques = pd.factorize(items)
    if (item_codes < 0).any():
        raise DataError("item_ids contain missing values")
    names = np.asarray([str(u) for u in item_uniques], dtype=object)
    name_widths = np.fromiter((len(u) + 1 for u in names), dtype=np.int64, count=len(names))
    grouped_item_codes = item_codes[order]
    grouped_codes = codes[order]
    pos = np.arange(n, dtype=np.int64)
    new_user = np.empty(n, dtype=bool)
    new_user[0] = True
    np.not_equal(grouped_codes[1:], grouped_codes[:-1], out=new_user[1:])
    user_start = np.maximum.accumulate(np.where(new_user, pos, 0))
    first = np.maximum(user_start, pos - history_length)

    # All items joined into one string: each history is then a single slice of it, which
    # keeps the work to one C-level join plus one cheap slice per row (seconds for 1M rows).
    widths = name_widths[grouped_item_codes]
    begins = np.cumsum(widths) - widths
    joined = " ".join(names[grouped_item_codes].tolist())
    starts = begins[first]
    # The slice ends before the separator that precedes the current item. A user's first row
    # gets an empty slice; it must not be start:start-1, which is -1 (the whole string) at row 0.
    ends = np.where(first == pos, starts, begins - 1)
    histories = [joined[a:b] for a, b in zip(starts.tolist(), ends.tolist())]
    out[order] = histories
    return out
