"""Rows of ``reloop2 feedback run``: parsing, the per-window ``CombineFn`` and the write ids.

A labelled row carries either the model's raw features (the inputs of its ``update_memory``
signature) or the ``memory_keys`` and ``base_probability`` that ``predict`` returned, plus
``label`` and an optional ``sample_weight`` (default 1) and ``timestamp`` (seconds, for
``--window-seconds``). Parsed rows are plain dicts::

    {"order": (major, minor), "label": float, "sample_weight": float, "timestamp": float | None,
     "memory_keys": [int] | None, "base_probability": float | None, "features": {name: value}}

``order`` is the row's place in the stream: ``(row index, "")`` for files, ``(event time, digest)``
for unbounded sources. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping

import apache_beam as beam
import numpy as np

LABEL, WEIGHT, TIMESTAMP = "label", "sample_weight", "timestamp"
KEYS, BASE = "memory_keys", "base_probability"
_SPLIT = re.compile(r"[\s,]+")
WRITE_ID_VERSION = "reloop2-feedback/1"


class RowError(ValueError):
    """A labelled row that cannot be written (reported and dropped, never sent)."""


def _number(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowError(f"`{name}` must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise RowError(f"`{name}` must be finite, got {value!r}")
    return number


def _keys(value, num_tables: int) -> list[int]:
    if isinstance(value, str):
        text = value.strip().strip("[]").strip()
        value = [v for v in _SPLIT.split(text) if v] if text else []
    try:
        keys = [int(v) for v in value]
    except (TypeError, ValueError):
        raise RowError(f"`{KEYS}` must be a list of ints, got {value!r}") from None
    if len(keys) != num_tables:
        raise RowError(f"`{KEYS}` must hold {num_tables} keys (one per table), got {len(keys)}")
    return keys


def _feature(value, name: str, dtype: str):
    if dtype == "string":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise RowError(f"`{name}` is a string id; got {value!r} (floats are never ids)")
        return str(value)
    if dtype.startswith(("int", "uint")):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise RowError(f"`{name}` must be an integer, got {value!r}") from None
    return _number(value, name)


def parse_row(record: Mapping[str, object], features: Mapping[str, str], num_tables: int,
              order: tuple = (0, "")) -> dict:
    """One labelled row from a CSV record (all strings) or a JSON object.

    ``features`` maps the ``update_memory`` feature inputs to their dtype names. A row with a
    non-empty ``memory_keys`` is written by keys; any other row needs every feature.
    """
    if record.get(LABEL) in (None, ""):
        raise RowError(f"the row has no `{LABEL}`")
    label = _number(record[LABEL], LABEL)
    if not 0.0 <= label <= 1.0:
        raise RowError(f"`{LABEL}` must be in [0, 1], got {label}")
    weight = record.get(WEIGHT)
    weight = 1.0 if weight in (None, "") else _number(weight, WEIGHT)
    if weight < 0:
        raise RowError(f"`{WEIGHT}` must be >= 0, got {weight}")
    stamp = record.get(TIMESTAMP)
    row = {"order": order, "label": label, "sample_weight": weight,
           "timestamp": None if stamp in (None, "") else _number(stamp, TIMESTAMP),
           KEYS: None, BASE: None, "features": None}
    keys = record.get(KEYS)
    if keys not in (None, "", []):
        row[KEYS] = _keys(keys, num_tables)
        if record.get(BASE) in (None, ""):
            raise RowError(f"a row with `{KEYS}` needs `{BASE}`")
        base = _number(record[BASE], BASE)
        if not 0.0 <= base <= 1.0:
            raise RowError(f"`{BASE}` must be in [0, 1], got {base}")
        row[BASE] = base
        return row
    missing = [name for name in features if record.get(name) is None]
    if missing:
        raise RowError(f"the row has neither `{KEYS}` nor the feature(s) {missing}")
    row["features"] = {name: _feature(record[name], name, dtype)
                       for name, dtype in features.items()}
    return row


def parse_json(line: str | bytes, features: Mapping[str, str], num_tables: int,
               order: tuple = (0, "")) -> dict:
    try:
        record = json.loads(line)
    except ValueError as err:
        raise RowError(f"not a JSON object: {err}") from None
    if not isinstance(record, dict):
        raise RowError(f"not a JSON object: {str(line)[:80]!r}")
    return parse_row(record, features, num_tables, order)


def row_digest(row: Mapping) -> str:
    """A content digest of a row (orders rows of an unbounded source within a window)."""
    text = json.dumps({k: v for k, v in row.items() if k != "order"}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class WindowBatchFn(beam.CombineFn):
    """Gathers one window's rows into columnar arrays.

    The accumulator is a dict of column lists, each with its rows' ``order``, so adding and
    merging (concatenation) are associative and commutative; ``extract_output`` restores the
    stream order by ``order``. Rows written by keys and rows with raw features have their own
    columns; ``keyed`` says which kind each row of the window is.
    """

    def __init__(self, features: Mapping[str, str], num_tables: int):
        self.features = dict(features)
        self.num_tables = num_tables

    def _columns(self) -> tuple[str, ...]:
        return ("order", "label", "sample_weight", "keyed", "keyed_order", KEYS, BASE,
                "raw_order", *(f"f:{name}" for name in self.features))

    def create_accumulator(self) -> dict:
        return {column: [] for column in self._columns()}

    def add_input(self, acc: dict, row: Mapping) -> dict:
        acc["order"].append(row["order"])
        acc["label"].append(row["label"])
        acc["sample_weight"].append(row["sample_weight"])
        keyed = row[KEYS] is not None
        acc["keyed"].append(keyed)
        if keyed:
            acc["keyed_order"].append(row["order"])
            acc[KEYS].append(row[KEYS])
            acc[BASE].append(row[BASE])
        else:
            acc["raw_order"].append(row["order"])
            for name in self.features:
                acc[f"f:{name}"].append(row["features"][name])
        return acc

    def merge_accumulators(self, accumulators: Iterable[dict]) -> dict:
        out = self.create_accumulator()
        for acc in accumulators:
            for column, values in acc.items():
                out[column].extend(values)
        return out

    def extract_output(self, acc: dict) -> dict:
        def ranked(order):
            return sorted(range(len(order)), key=order.__getitem__)

        rank, keyed_rank, raw_rank = (ranked(acc[k]) for k in ("order", "keyed_order",
                                                                 "raw_order"))
        batch = {
            "rows": len(rank),
            "label": np.asarray([acc["label"][i] for i in rank], np.float32),
            "sample_weight": np.asarray([acc["sample_weight"][i] for i in rank], np.float32),
            "keyed": np.asarray([acc["keyed"][i] for i in rank], bool),
            KEYS: np.asarray([acc[KEYS][i] for i in keyed_rank], np.int32).reshape(
                -1, self.num_tables),
            BASE: np.asarray([acc[BASE][i] for i in keyed_rank], np.float32),
            "features": {},
        }
        for name, dtype in self.features.items():
            values = [acc[f"f:{name}"][i] for i in raw_rank]
            batch["features"][name] = (np.asarray(values, dtype=object) if dtype == "string"
                                       else np.asarray(values, dtype=np.dtype(dtype)))
        batch["digest"] = batch_digest(batch)
        return batch


def batch_digest(batch: Mapping) -> str:
    """sha256 of a window's rows in stream order (labels, weights, keys, features)."""
    h = hashlib.sha256()
    for key in ("label", "sample_weight", "keyed", KEYS, BASE):
        h.update(key.encode() + b"\0" + np.ascontiguousarray(batch[key]).tobytes())
    for name, values in sorted(batch["features"].items()):
        h.update(name.encode() + b"\0")
        if values.dtype == object:
            h.update("\x1f".join(values.tolist()).encode() + b"\0")
        else:
            h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


def write_id(source_id: str, window_spec: str, window: int, digest: str) -> str:
    """The window's write id: the same input, windowing and rows always give the same id, so a
    re-run is dropped by every replica's dedup window."""
    text = "|".join((WRITE_ID_VERSION, source_id, window_spec, str(window), digest))
    return "fb1-" + hashlib.sha256(text.encode()).hexdigest()[:40]
