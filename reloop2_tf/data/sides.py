"""Which side of the interaction each column describes, the memory's id groups from that, and
the size of their tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from reloop2_tf.data.errors import DataError
from reloop2_tf.layers.id_keys import (
    EACH,
    EACH_SEPARATOR,
    EACH_SLOTS,
    POPULARITY_BUCKETS,
    each_of,
    long_id_tables,
    popularity_of,
)
from reloop2_tf.wrapper import default_id_groups

# Each id table's size for a log: the newest SIZING_ROWS rows (twice the tables' default
# half-life, after which a row weighs a quarter) and at most SHARED_BUCKET_CHANCE that a new key
# of a cross lands in a bucket another key of the table already uses, SINGLE_FEATURE_CHANCE for
# a table of one feature (the item, the user: many rows per key, the groups the combiner leans
# on; at 2 % the hash draw alone moved ML-100K's gAUC by +-0.02), within ID_BITS_RANGE: at most
# 2^20 buckets (the size measured to help on ML-1M; 2^22 gave nothing more there). docs/core.md,
# "How big the id tables are"; docs/history/benchmarks.md, "Each id table sized to its own keys".
SIZING_ROWS = 200_000
SHARED_BUCKET_CHANCE = 0.02
SINGLE_FEATURE_CHANCE = 0.001
ID_BITS_RANGE = (16, 20)

_NOT_FEATURES = ("timestamp", "label", "history")
# A side's column whose value at most this share of its ids share with another id names them
# (a title; a few titles are shared by two films) rather than grouping them (a genre).
NAME_SHARED_IDS = 0.1


def feature_sides(df: pd.DataFrame, item: str = "item_id",
                  user: str = "user_id") -> dict[str, list[str]]:
    """``{"item": [...], "user": [...], "context": [...]}``: the columns other than the ids.

    A column is item-side when every item has one value of it (genre), user-side when every
    user has one (age), context otherwise (position). Left out: constant columns, float columns
    (scores, not ids), columns with a distinct value in most rows (row numbers, free text), and
    a side's column that names its ids rather than grouping them, where at most
    ``NAME_SHARED_IDS`` of the ids share their value with another id (a movie's title): a cross
    with it is a cross with the id itself, which a log where a user meets an item once never
    reads twice.
    """
    sides: dict[str, list[str]] = {"item": [], "user": [], "context": []}
    for column in df.columns:
        if column in (item, user, *_NOT_FEATURES) or pd.api.types.is_float_dtype(df[column]):
            continue
        distinct = df[column].nunique()
        if distinct < 2 or distinct > len(df) // 2:
            continue
        for side, key in (("item", item), ("user", user)):
            if key in df and df.groupby(key)[column].nunique().max() <= 1:
                if not _names_ids(df, key, column):
                    sides[side].append(column)
                break
        else:
            sides["context"].append(column)
    return sides


def _names_ids(df: pd.DataFrame, key: str, column: str) -> bool:
    """Whether ``column``, one value per ``key``, names the keys: at most ``NAME_SHARED_IDS`` of
    them share their value with another key."""
    values = df[[key, column]].dropna().drop_duplicates(key)[column]
    return bool((values.map(values.value_counts()) > 1).mean() <= NAME_SHARED_IDS)


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


def id_keys_for_frame(df: pd.DataFrame, id_groups) -> dict[str, int]:
    """The distinct keys each id table of a memory keyed by ``id_groups`` would hold after the
    rows of ``df``: every group's table and, for a cross, its first feature's table (which the
    cross is read net of), named by their features joined with ``"*"``.

    A ``"<name>:each"`` feature keys one cell per token (its first ``EACH_SLOTS``); a
    ``"<name>:popularity"`` feature is the bucket ``floor(log2(1 + c))`` of the rows of that
    name before the row (``c``), as the memory reads it off its counts.
    """
    keys = {}
    for table in long_id_tables(id_groups):
        parts = pd.DataFrame({name: _key_part(df, name) for name in table})
        for name in table:
            if each_of(name):
                parts = parts.explode(name)
        parts = parts.dropna()
        keys["*".join(table)] = len(parts.drop_duplicates())
    return keys


def id_bits_for_frame(df: pd.DataFrame, id_groups, rows: int | None = SIZING_ROWS,
                      shared_bucket_chance: float = SHARED_BUCKET_CHANCE,
                      single_feature_chance: float = SINGLE_FEATURE_CHANCE,
                      bits_range: tuple[int, int] = ID_BITS_RANGE) -> dict[str, int]:
    """``LSHErrorMemory(id_bits=...)`` for a log: for every id table (named as in
    ``id_keys_for_frame``), the fewest bits (within ``bits_range``) at which its keys over the
    newest ``rows`` rows of ``df`` (`None`: all of them) fill at most ``shared_bucket_chance``
    of its buckets (a cross's table) or ``single_feature_chance`` (a table of one feature, such
    as the item), which is about the chance that a new key reads a stranger's residual.
    ``df`` must be in time order; give it the training rows only."""
    for name, chance in (("shared_bucket_chance", shared_bucket_chance),
                         ("single_feature_chance", single_feature_chance)):
        if not 0.0 < chance < 1.0:
            raise ValueError(f"`{name}` should be in (0, 1). Received: {name}={chance!r}")
    low, high = bits_range
    if not 1 <= low <= high <= 24:
        raise ValueError(f"`bits_range` should be (low, high) with 1 <= low <= high <= 24. "
                         f"Received: bits_range={bits_range!r}")
    if rows is not None and rows < 1:
        raise ValueError(f"`rows` should be >= 1 or None. Received: rows={rows!r}")
    newest = df if rows is None else df.iloc[-rows:]
    keys = id_keys_for_frame(newest, id_groups)
    bits = {}
    for table in long_id_tables(id_groups):
        name = "*".join(table)
        chance = single_feature_chance if len(table) == 1 else shared_bucket_chance
        wanted = math.ceil(math.log2(max(keys[name], 1) / chance))
        bits[name] = int(min(max(wanted, low), high))
    return bits


def token_slots(values: pd.Series) -> list[np.ndarray]:
    """What a ``"<name>:each"`` feature keys in each row: its first ``EACH_SLOTS`` tokens
    (``"Comedy| Drama"`` -> ``"Comedy"``, ``"Drama"``), stripped, one object array per slot,
    ``""`` where a row lists fewer (the memory's ``id_keys.split_tokens``)."""
    tokens = values.astype(str).str.split(EACH_SEPARATOR, regex=False)
    return [tokens.str[j].fillna("").str.strip().to_numpy(object) for j in range(EACH_SLOTS)]


def _key_part(df: pd.DataFrame, name: str) -> pd.Series:
    """One feature's part of the rows' keys (a list of tokens for ``"<name>:each"``)."""
    column = each_of(name) or popularity_of(name) or name
    if column not in df.columns:
        raise DataError(f"id group feature {name!r} needs column {column!r}, which the log does "
                        f"not have; columns: {list(df.columns)}")
    if each_of(name):
        return pd.Series([[t for t in row if t] or np.nan for row in zip(*token_slots(df[column]))],
                         dtype=object)
    values = df[column].astype(str)
    if popularity_of(name):
        seen = values.groupby(values).cumcount().to_numpy()
        bucket = np.minimum(np.floor(np.log2(1.0 + seen)), POPULARITY_BUCKETS - 1)
        return pd.Series(bucket.astype(int))
    return values.reset_index(drop=True)
