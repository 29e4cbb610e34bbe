"""Loading interaction logs into the canonical frame: MovieLens datasets and generic CSV files.

The canonical frame has ``user_id, item_id, timestamp, label`` first, then str feature columns,
then ``history``; rows are sorted by time (stable). Every problem with the input is reported as
a one-line DataError before any downstream work starts.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from reloop2_tf.data.download import default_cache_dir, fetch
from reloop2_tf.data.errors import DataError
from reloop2_tf.data.formats import (
    ITEM_FEATURES,
    USER_FEATURES,
    DetectedSource,
    MovieLensTables,
    detect_format,
    read_movielens,
)
from reloop2_tf.data.history import build_history

logger = logging.getLogger(__name__)

CANONICAL_COLUMNS = ("user_id", "item_id", "timestamp", "label")
HISTORY_COLUMN = "history"
DEFAULT_HISTORY_LENGTH = 20
ENV_DATA_DIR = "RELOOP2_DATA"
# Dataset name -> folder name in the shared development data layout.
DATASETS = {"ml-100k": "movielens_100k", "ml-1m": "movielens_1m"}
MOVIELENS_LABEL_THRESHOLD = 4.0

_BINARY_LABELS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}
_RESERVED = (*CANONICAL_COLUMNS, HISTORY_COLUMN)
_WHITESPACE_RUN = re.compile(r"\s+")


def _examples(values: pd.Series, limit: int = 3) -> str:
    uniques = pd.unique(values.astype(str))[:limit]
    return ", ".join(repr(v) for v in uniques)


def check_history_length(history_length: object) -> int:
    """Return ``history_length`` as int, or raise DataError if it is not an integer >= 0."""
    if isinstance(history_length, bool) or not isinstance(history_length, (int, np.integer)):
        raise DataError(f"history_length must be an integer >= 0, got {history_length!r}")
    if history_length < 0:
        raise DataError(f"history_length must be an integer >= 0, got {history_length}")
    return int(history_length)


def _on_uniques(values: pd.Series, func) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``func`` (Series -> array) to the distinct values only; return (result, missing).

    Logs have few distinct labels and ids but many rows, so this is what keeps loading ML-1M
    in seconds.
    """
    codes, uniques = pd.factorize(values)
    result = np.asarray(func(pd.Series(uniques, dtype=object)))
    missing = codes < 0
    taken = result[np.where(missing, 0, codes)] if len(result) else np.empty(len(codes), object)
    return taken, missing


def parse_timestamps(values: pd.Series, column: str, source: str) -> np.ndarray:
    """Convert unix seconds (int or float) or ISO datetime strings to int64 unix seconds.

    Naive datetimes are taken as UTC; fractional seconds are floored. Raises DataError giving
    the number of missing/unparseable values and the first one.
    """
    try:
        numeric = values.to_numpy().astype(np.float64)
        if np.isfinite(numeric).all():
            return np.floor(numeric).astype(np.int64)
    except (TypeError, ValueError):
        pass
    text = values.astype(str).str.strip()
    missing = values.isna().to_numpy() | (text == "").to_numpy()
    numeric = pd.to_numeric(text.where(~missing), errors="coerce").to_numpy(dtype=np.float64)
    numeric_ok = np.isfinite(numeric)
    if numeric_ok.all():
        return np.floor(numeric).astype(np.int64)
    ok = numeric_ok
    if not numeric_ok[~missing].all():
        # Not all numbers: try datetimes, unless most values are numbers (then the rest are
        # simply bad values in a numeric column).
        parsed = pd.to_datetime(text.where(~missing), errors="coerce", utc=True)
        parsed_ok = parsed.notna().to_numpy()
        if parsed_ok.all():
            seconds = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
            return seconds.to_numpy(dtype=np.int64)
        if parsed_ok.sum() > numeric_ok.sum():
            ok = parsed_ok
    bad = np.flatnonzero(~ok)
    first = bad[0]
    raise DataError(
        f"{source}: column {column!r} has {len(bad)} of {len(values)} rows with missing or "
        f"unparseable timestamps (first: {text.iloc[first]!r} in data row {first + 1}); "
        f"expected unix seconds or ISO-8601 datetimes"
    )


def binarize_labels(
    values: pd.Series, column: str, source: str, threshold: float | None = None
) -> np.ndarray:
    """Return int8 0/1 labels: ``value >= threshold``, or the column's own 0/1 / true/false."""

    def convert(uniques: pd.Series) -> np.ndarray:
        text = uniques.astype(str).str.strip()
        if threshold is not None:
            return pd.to_numeric(text.where(text != ""), errors="coerce").to_numpy(np.float64)
        return text.str.lower().map(_BINARY_LABELS).to_numpy(np.float64)

    converted, missing = _on_uniques(values, convert)
    converted = converted.astype(np.float64)
    bad = missing | np.isnan(converted)
    if bad.any():
        shown = _examples(values[bad].fillna(""))
        if threshold is not None:
            raise DataError(
                f"{source}: label column {column!r} has {int(bad.sum())} missing or non-numeric "
                f"values ({shown}), so label_threshold={threshold:g} cannot apply"
            )
        raise DataError(
            f"{source}: label column {column!r} is not binary (0/1 or true/false): "
            f"{int(bad.sum())} rows like {shown}; pass a label threshold "
            f"(--label-threshold) to binarize it"
        )
    if threshold is not None:
        return (converted >= threshold).astype(np.int8)
    return converted.astype(np.int8)


def _check_ids(values: pd.Series, column: str, source: str) -> pd.Series:
    ids, missing = _on_uniques(values, lambda u: u.astype(str).str.strip().to_numpy(object))
    empty = missing | (ids == "")
    if empty.any():
        raise DataError(
            f"{source}: column {column!r} has {int(empty.sum())} empty ids "
            f"(first in data row {int(np.flatnonzero(empty)[0]) + 1})"
        )
    return pd.Series(ids, index=values.index, dtype=object)


def _single_token_ids(items: np.ndarray, source: str) -> np.ndarray:
    """Replace whitespace inside item ids by '_', since histories are space-separated."""
    uniques = pd.unique(items)
    spaced = [u for u in uniques if _WHITESPACE_RUN.search(u)]
    if not spaced:
        return items
    mapping = {u: _WHITESPACE_RUN.sub("_", u) for u in spaced}
    taken = set(uniques) - set(spaced)
    seen: dict[str, str] = {}
    for old, new in mapping.items():
        clash = new if new in taken else seen.get(new)
        if clash is not None:
            raise DataError(
                f"{source}: item ids {old!r} and {clash!r} collide once whitespace is replaced "
                f"by '_' (history is space-separated); make item ids single tokens"
            )
        seen[new] = old
    logger.info("%s: replaced whitespace by '_' in %d item ids", source, len(mapping))
    return pd.Series(items).map(lambda x: mapping.get(x, x)).to_numpy(dtype=object)


def finalize_frame(
    users: pd.Series,
    items: pd.Series,
    timestamps: np.ndarray,
    labels: np.ndarray,
    features: dict[str, pd.Series],
    history_length: int,
    source: str,
    attrs: dict | None = None,
) -> pd.DataFrame:
    """Assemble the canonical frame: stable time sort, str features, history column last."""
    n = len(users)
    item_ids = _single_token_ids(items.to_numpy(dtype=object), source)
    order = np.argsort(timestamps, kind="stable")
    columns: dict[str, object] = {
        "user_id": users.to_numpy(dtype=object)[order],
        "item_id": item_ids[order],
        "timestamp": np.asarray(timestamps, dtype=np.int64)[order],
        "label": np.asarray(labels, dtype=np.int8)[order],
    }
    for name, values in features.items():
        columns[name] = values.fillna("").astype(str).to_numpy(dtype=object)[order]
    columns[HISTORY_COLUMN] = build_history(columns["user_id"], columns["item_id"], history_length)
    frame = pd.DataFrame(columns, index=pd.RangeIndex(n))
    frame.attrs.update(attrs or {})
    frame.attrs["feature_columns"] = list(features)
    frame.attrs["history_length"] = history_length
    positives = float(frame["label"].mean()) if n else 0.0
    if n and positives in (0.0, 1.0):
        logger.warning("%s: every label is %d; AUC will be undefined", source, int(positives))
    return frame


# ---------------------------------------------------------------------------------------------
# MovieLens


def resolve_source(name: str, data_dir: str | os.PathLike | None = None) -> DetectedSource:
    """Find the files of dataset ``name``: ``data_dir``, else $RELOOP2_DATA, else cache/fetch."""
    looked_for = f"{name}.inter[.gz], u.data, ratings.dat or ratings.csv"
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        if not base.is_dir():
            raise DataError(f"data_dir {base} is not a directory")
        candidates = [base, base / DATASETS.get(name, name), base / name]
        for candidate in candidates:
            source = detect_format(candidate, name)
            if source is not None:
                return source
        present = sorted(p.name for p in base.iterdir())[:12]
        raise DataError(
            f"no MovieLens files in {base} (looked for {looked_for}); it holds: "
            f"{', '.join(present) or 'nothing'}"
        )
    if name not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; choose {', '.join(DATASETS)} (or pass data_dir, or use "
            f"load_csv for other data)"
        )
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        for candidate in (Path(env) / DATASETS[name], Path(env) / name):
            if candidate.is_dir():
                source = detect_format(candidate, name)
                if source is None:
                    raise DataError(
                        f"{candidate} (from ${ENV_DATA_DIR}) holds no MovieLens files "
                        f"(looked for {looked_for})"
                    )
                return source
        logger.info(
            "$%s=%s has no %s/ or %s/; using the cache", ENV_DATA_DIR, env, DATASETS[name], name
        )
    cache = default_cache_dir() / name
    source = detect_format(cache, name)
    if source is None:
        fetch(name, default_cache_dir())
        source = detect_format(cache, name)
        if source is None:
            raise DataError(f"fetched {name} into {cache}, but found no MovieLens files there")
    return source


def check_label_threshold(label_threshold) -> float | None:
    """Return ``label_threshold`` as float (`None` stays `None`), or raise DataError if it is
    not a number."""
    if label_threshold is None:
        return None
    try:
        if isinstance(label_threshold, bool):
            raise TypeError("bool")
        label_threshold = float(label_threshold)
    except (TypeError, ValueError) as exc:
        raise DataError(f"label_threshold must be a number, got {label_threshold!r}") from exc
    if math.isnan(label_threshold):
        raise DataError("label_threshold must be a number, got nan")
    return label_threshold


def _movielens_frame(
    tables: MovieLensTables, name: str, history_length: int, attrs: dict,
    label_threshold: float,
) -> pd.DataFrame:
    ratings = tables.ratings
    source = f"{name} ({ratings.shape[0]} rows of {tables.files[0].name})"
    if ratings.empty:
        raise DataError(f"{tables.files[0]} has no rating rows")
    users = _check_ids(ratings["user_id"], "user_id", source)
    items = _check_ids(ratings["item_id"], "item_id", source)
    timestamps = parse_timestamps(ratings["timestamp"], "timestamp", source)
    labels = binarize_labels(ratings["rating"], "rating", source, label_threshold)
    features: dict[str, pd.Series] = {}
    for table, key, names, ids in (
        (tables.users, "user_id", USER_FEATURES, users),
        (tables.items, "item_id", ITEM_FEATURES, items),
    ):
        if table is None:
            continue
        side = table.assign(**{key: table[key].str.strip()}).drop_duplicates(key).set_index(key)
        for col in names:
            if col in side.columns:
                features[col] = ids.map(side[col])
    return finalize_frame(users, items, timestamps, labels, features, history_length, source, attrs)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    history_length: int = DEFAULT_HISTORY_LENGTH,
    label_threshold: float | None = None,
) -> pd.DataFrame:
    """Load MovieLens ``name`` ("ml-100k" or "ml-1m") as the canonical frame.

    ``data_dir`` may hold RecBole atomic files or GroupLens' ``u.data`` / ``ratings.dat`` /
    ``ratings.csv`` layouts; without it the files come from ``$RELOOP2_DATA``, the cache
    ``~/.cache/reloop2/<name>``, or are fetched there. Label: rating >= ``label_threshold``
    (`None`: 4). Features: user ``age, gender, occupation``, item ``genre`` (first genre) and
    ``release_year``.
    """
    history_length = check_history_length(history_length)
    label_threshold = check_label_threshold(label_threshold)
    if label_threshold is None:
        label_threshold = MOVIELENS_LABEL_THRESHOLD
    if not isinstance(name, str) or not name:
        raise DataError(f"dataset name must be a non-empty string, got {name!r}")
    start = time.perf_counter()
    detected = resolve_source(name, data_dir)
    tables = read_movielens(detected)
    attrs = {
        "dataset": name,
        "format": detected.fmt,
        "source_files": [str(p) for p in detected.files],
        "label_rule": f"rating >= {label_threshold:g}",
    }
    frame = _movielens_frame(tables, name, history_length, attrs, label_threshold)
    logger.info(
        "loaded %s from %s (%s): %d rows, %d users, %d items in %.2f s",
        name, detected.folder, detected.fmt, len(frame), frame["user_id"].nunique(),
        frame["item_id"].nunique(), time.perf_counter() - start,
    )
    return frame


# ---------------------------------------------------------------------------------------------
# Generic CSV


def _sniff_sep(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".tsv", ".tab")):
        return "\t"
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        header = fh.readline()
    return "\t" if "\t" in header else ","


def _read_table(path: str | os.PathLike, sep: str | None, what: str) -> tuple[pd.DataFrame, Path]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    if sep is None:
        sep = _sniff_sep(path)
    options = {"sep": sep, "dtype": str, "keep_default_na": False, "na_filter": False}
    try:
        try:
            frame = pd.read_csv(path, encoding="utf-8-sig", **options)
        except UnicodeDecodeError:
            frame = pd.read_csv(path, encoding="latin-1", **options)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{what} {path} is empty") from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"{what} {path} cannot be parsed: {str(exc).splitlines()[0]}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise DataError(f"{what} {path} has a header but no data rows")
    return frame, path


def _require_columns(frame: pd.DataFrame, wanted: dict[str, str | None], path: Path) -> None:
    for role, column in wanted.items():
        if column is None or column == "":
            raise DataError(f"no column given for {role}")
        if column not in frame.columns:
            raise DataError(
                f"{role} column {column!r} not found in {path.name}; available columns: "
                f"{', '.join(frame.columns)}"
            )


def _free_name(name: str, taken: set[str], prefix: str) -> str:
    candidate = name if name not in taken else f"{prefix}{name}"
    suffix = 2
    while candidate in taken:
        candidate = f"{prefix}{name}_{suffix}"
        suffix += 1
    return candidate


def _join_side_table(
    ids: pd.Series,
    table: pd.DataFrame,
    key: str,
    path: Path,
    prefix: str,
    taken: set[str],
    features: dict[str, pd.Series],
) -> None:
    keys = table[key].astype(str).str.strip()
    table = table.assign(**{key: keys})
    duplicated = int(keys.duplicated().sum())
    if duplicated:
        logger.warning("%s: %d duplicate %r keys; keeping the first row of each", path.name,
                       duplicated, key)
        table = table.drop_duplicates(key)
    side = table.set_index(key)
    matched = ids.isin(side.index).to_numpy()
    if not matched.any():
        raise DataError(
            f"no id of the log matches key column {key!r} of {path.name} (log ids like "
            f"{_examples(ids)}; {key} values like {_examples(side.index.to_series())})"
        )
    if not matched.all():
        logger.warning("%s: %d of %d rows have no match on %r; their features are ''",
                       path.name, int((~matched).sum()), len(ids), key)
    for column in side.columns:
        name = _free_name(column, taken, prefix)
        taken.add(name)
        features[name] = ids.map(side[column])


def load_csv(
    path: str | os.PathLike,
    user_col: str,
    item_col: str,
    time_col: str,
    label_col: str,
    label_threshold: float | None = None,
    item_features: str | os.PathLike | None = None,
    item_key: str | None = None,
    user_features: str | os.PathLike | None = None,
    user_key: str | None = None,
    sep: str | None = None,
    history_length: int = DEFAULT_HISTORY_LENGTH,
) -> pd.DataFrame:
    """Load any interaction log (CSV/TSV, optionally .gz) as the canonical frame.

    The log's remaining columns are kept as str features. ``item_features`` / ``user_features``
    are side tables left-joined on ``item_key`` / ``user_key`` (default: the log's item / user
    column name); their other columns become str features too. Labels are ``label_col >=
    label_threshold`` when a threshold is given, else the column must be 0/1 or true/false.
    Timestamps are unix seconds or ISO-8601 datetimes. ``sep`` defaults to tab for .tsv files
    or a header with a tab, else comma.
    """
    history_length = check_history_length(history_length)
    label_threshold = check_label_threshold(label_threshold)
    if item_key is not None and item_features is None:
        raise DataError("item_key is given but item_features (the item table) is not")
    if user_key is not None and user_features is None:
        raise DataError("user_key is given but user_features (the user table) is not")

    frame, csv_path = _read_table(path, sep, "CSV file")
    roles = {"user": user_col, "item": item_col, "time": time_col, "label": label_col}
    _require_columns(frame, roles, csv_path)
    sides = []
    for table_path, key, default_key, what, prefix in (
        (user_features, user_key, user_col, "user", "user_"),
        (item_features, item_key, item_col, "item", "item_"),
    ):
        if table_path is None:
            continue
        table, side_path = _read_table(table_path, None, f"{what} features file")
        key = key or default_key
        if key not in table.columns:
            raise DataError(
                f"join key {key!r} not found in {what} features file {side_path.name}; "
                f"available columns: {', '.join(table.columns)}"
            )
        sides.append((table, key, side_path, what, prefix))

    source = csv_path.name
    users = _check_ids(frame[user_col], user_col, source)
    items = _check_ids(frame[item_col], item_col, source)
    timestamps = parse_timestamps(frame[time_col], time_col, source)
    labels = binarize_labels(frame[label_col], label_col, source, label_threshold)

    used = {user_col, item_col, time_col, label_col}
    taken: set[str] = set(_RESERVED)
    features: dict[str, pd.Series] = {}
    for column in frame.columns:
        if column in used:
            continue
        name = _free_name(column, taken, "raw_")
        taken.add(name)
        features[name] = frame[column]
    for table, key, side_path, what, prefix in sides:
        ids = users if what == "user" else items
        _join_side_table(ids, table, key, side_path, prefix, taken, features)

    rule = (
        f"{label_col} >= {label_threshold:g}" if label_threshold is not None
        else f"{label_col} (binary)"
    )
    attrs = {
        "dataset": "csv",
        "format": "csv",
        "source_files": [str(csv_path)] + [str(side[2]) for side in sides],
        "label_rule": rule,
    }
    start = time.perf_counter()
    result = finalize_frame(users, items, timestamps, labels, features, history_length, source,
                            attrs)
    logger.info("loaded %s: %d rows, %d feature columns (%.2f s)", source, len(result),
                len(features), time.perf_counter() - start)
    return result


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """Return the feature columns of a canonical frame (between the canonical and history)."""
    return [c for c in frame.columns if c not in _RESERVED]


__all__ = [
    "CANONICAL_COLUMNS",
    "HISTORY_COLUMN",
    "binarize_labels",
    "feature_columns",
    "load_csv",
    "load_dataset",
    "parse_timestamps",
    "resolve_source",
]
