"""Which side of the interaction each column describes, and the memory's id groups from that."""

from __future__ import annotations

import pandas as pd

from reloop2_tf.layers.id_keys import EACH, EACH_SEPARATOR
from reloop2_tf.wrapper import default_id_groups

_NOT_FEATURES = ("timestamp", "label", "history")


def feature_sides(df: pd.DataFrame, item: str = "item_id",
                  user: str = "user_id") -> dict[str, list[str]]:
    """``{"item": [...], "user": [...], "context": [...]}``: the columns other than the ids.

    A column is item-side when every item has one value of it (genre), user-side when every
    user has one (age), context otherwise (position). Left out: constant columns, float columns
    (scores, not ids) and columns with a distinct value in most rows (row numbers, free text).
    """
    sides: dict[str, list[str]] = {"item": [], "user": [], "context": []}
    for column in df.columns:
        if column in (item, user, *_NOT_FEATURES) or pd.api.types.is_float_dtype(df[column]):
            continue
        distinct = df[column].nunique()
        if distinct < 2 or distinct > len(df) // 2:
            continue
        if item in df and df.groupby(item)[column].nunique().max() <= 1:
            sides["item"].append(column)
        elif user in df and df.groupby(user)[column].nunique().max() <= 1:
            sides["user"].append(column)
        else:
            sides["context"].append(column)
    return sides


def id_groups_for_frame(df: pd.DataFrame, item: str = "item_id",
                        user: str = "user_id") -> list[list[str]]:
    """The default memory's id groups for a log (``reloop2_tf.default_id_groups``): the item,
    the user crossed with every item-side column, the item crossed with every user-side and
    context column; a column whose values list several tokens (``"Comedy|Drama"``) is crossed
    with each of them (``"genres:each"``)."""
    sides = feature_sides(df, item, user)

    def names(columns):
        return [f"{c}{EACH}" if _lists_tokens(df[c]) else c for c in columns]

    groups = default_id_groups(df.columns, item, user, names(sides["item"]),
                               names(sides["user"] + sides["context"]))
    return [list(g) for g in groups]


def _lists_tokens(column: pd.Series) -> bool:
    """Whether a column's values list several tokens (``"Comedy|Drama"``) in some row."""
    values = column.astype(str)
    return bool(values.str.contains(EACH_SEPARATOR, regex=False).any())
