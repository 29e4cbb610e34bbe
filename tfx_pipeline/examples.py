"""tf.Examples of CsvExampleGen -> the raw string features the zoo models take.

CsvExampleGen infers each column's type from its text: MovieLens ids, ages and years become
INT, genders and the ``history`` strings BYTES, and an empty cell (a user's first row has an
empty ``history``) is a missing feature. The models take every id as a string and hash it
inside the graph (``IdHashing`` hashes an integer through its decimal string, so ``42`` and
``"42"`` agree), so the parsing here turns every id column into ``tf.string`` and a missing
value into ``""`` (bucket 0, masked in sequences). One function does it for the training
input and for the serialized-Example signature the Evaluator calls, so both see the same
features.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from reloop2_tf._keras import tf
from reloop2_tf.features import FeatureSpec, SequenceFeature, SparseFeature

logger = logging.getLogger(__name__)

LABEL_KEY = "label"
TIME_KEY = "timestamp"
HISTORY_KEY = "history"
# Not model inputs: the label, and the time that only orders rows.
NON_FEATURES = (LABEL_KEY, TIME_KEY)

# Hash buckets: room for ml-1m's 6,040 users and 3,706 items with few collisions; side features
# (age, gender, occupation, genre, year, ...) have at most a few hundred values.
USER_BUCKETS = 20_000
ITEM_BUCKETS = 10_000
SIDE_BUCKETS = 1_024

_TYPE_NAMES = {1: "BYTES", 2: "INT", 3: "FLOAT"}
_DTYPES = {"BYTES": tf.string, "INT": tf.int64, "FLOAT": tf.float32}


def read_schema(path: str):
    """The ``tensorflow_metadata`` Schema proto of a ``schema.pbtxt`` file."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    with tf.io.gfile.GFile(path, "r") as fh:
        return text_format.Parse(fh.read(), schema_pb2.Schema())


def column_types(schema) -> dict[str, str]:
    """Column name -> ``"BYTES"``, ``"INT"`` or ``"FLOAT"``, as the schema declares them."""
    types = {}
    for feature in schema.feature:
        if feature.type not in _TYPE_NAMES:
            raise ValueError(f"schema feature {feature.name!r} has unsupported type "
                             f"{feature.type}; expected BYTES, INT or FLOAT")
        types[feature.name] = _TYPE_NAMES[feature.type]
    for required in (LABEL_KEY, "user_id", "item_id"):
        if required not in types:
            raise ValueError(f"the schema has no {required!r} column; it has {sorted(types)}")
    return types


def feature_spec_from_columns(types: Mapping[str, str],
                              history_length: int = 20) -> FeatureSpec:
    """The zoo's ``FeatureSpec`` for the columns of a canonical CSV.

    ``user_id`` and ``item_id`` get their own tables, ``history`` shares ``item_id``'s (so the
    attention models compare like with like), every other column is a hashed categorical side
    feature: the canonical layout keeps side features as strings.
    """
    features: list = [SparseFeature("user_id", num_buckets=USER_BUCKETS),
                      SparseFeature("item_id", num_buckets=ITEM_BUCKETS)]
    for name in types:
        if name in (*NON_FEATURES, "user_id", "item_id", HISTORY_KEY):
            continue
        features.append(SparseFeature(name, num_buckets=SIDE_BUCKETS))
    if HISTORY_KEY in types:
        features.append(SequenceFeature(HISTORY_KEY, max_length=history_length,
                                        share_embedding_with="item_id"))
    return FeatureSpec(features, target_item="item_id")


def _as_strings(ragged: tf.RaggedTensor) -> tf.RaggedTensor:
    values = ragged.flat_values
    if values.dtype == tf.string:
        return ragged
    # shortest=True writes 1.5 as "1.5", as it was in the CSV (not "1.500000").
    text = (tf.strings.as_string(values, shortest=True) if values.dtype.is_floating
            else tf.strings.as_string(values))
    return ragged.with_flat_values(text)


def _first(ragged: tf.RaggedTensor, default) -> tf.Tensor:
    """One value per row: the first one, or ``default`` where the feature is missing."""
    return ragged.to_tensor(default_value=default, shape=[None, 1])[:, 0]


def parse_examples(serialized: tf.Tensor, types: Mapping[str, str], spec: FeatureSpec,
                   with_label: bool = True, with_time: bool = False) -> dict[str, tf.Tensor]:
    """Parses a ``[B]`` batch of serialized tf.Examples into the model's raw inputs.

    Returns the spec's features (``tf.string [B]``; dense features ``float32``), plus
    ``label`` (float32) and ``timestamp`` (int64, -1 if missing) when asked for. Columns the
    spec does not use are not parsed, so a serving request may carry extra features.
    """
    wanted = list(spec.names)
    if with_label:
        wanted.append(LABEL_KEY)
    if with_time and TIME_KEY in types:
        wanted.append(TIME_KEY)
    missing = [name for name in wanted if name not in types]
    if missing:
        raise ValueError(f"the schema lacks the column(s) {missing} the model needs")
    parsed = tf.io.parse_example(serialized, {
        name: tf.io.RaggedFeature(_DTYPES[types[name]], row_splits_dtype=tf.int64)
        for name in wanted})
    out = {}
    for name in spec.names:
        if spec.input_dtype(name) == tf.float32:
            out[name] = _first(tf.cast(parsed[name], tf.float32), 0.0)
        else:
            out[name] = _first(_as_strings(parsed[name]), "")
    if with_label:
        out[LABEL_KEY] = _first(tf.cast(parsed[LABEL_KEY], tf.float32), -1.0)
    if with_time and TIME_KEY in types:
        out[TIME_KEY] = _first(tf.cast(parsed[TIME_KEY], tf.int64), tf.constant(-1, tf.int64))
    return out


def examples_dataset(file_patterns: Sequence[str], types: Mapping[str, str], spec: FeatureSpec,
                     batch_size: int, with_time: bool = False, shuffle_buffer: int = 0,
                     repeat: bool = False, seed: int | None = 0) -> tf.data.Dataset:
    """Batches of parsed features (with ``label``) from CsvExampleGen's gzipped TFRecords."""
    files = []
    for pattern in file_patterns:
        files.extend(sorted(tf.io.gfile.glob(pattern)))
    if not files:
        raise ValueError(f"no TFRecord files match {list(file_patterns)}")
    records = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if shuffle_buffer > 0:
        records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        records = records.repeat()
    return (records.batch(batch_size)
            .map(lambda s: parse_examples(s, types, spec, with_label=True, with_time=with_time),
                 num_parallel_calls=tf.data.AUTOTUNE))


def split_label(batch: Mapping[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """``(features, label)`` for ``keras.Model.fit``."""
    features = {k: v for k, v in batch.items() if k not in NON_FEATURES}
    return features, batch[LABEL_KEY]


def newest_rows(dataset: tf.data.Dataset, count: int) -> dict[str, np.ndarray]:
    """The ``count`` rows with the largest ``timestamp`` (oldest first), kept in one pass.

    CsvExampleGen's output files do not keep the CSV's order, so recency comes from the
    timestamp column. Memory is bounded by ``count`` plus one batch.
    """
    if count <= 0:
        raise ValueError(f"`count` should be > 0. Received: count={count!r}")
    kept: dict[str, np.ndarray] | None = None
    for batch in dataset.as_numpy_iterator():
        if TIME_KEY not in batch:
            raise ValueError("newest_rows needs the `timestamp` column (with_time=True)")
        merged = batch if kept is None else {k: np.concatenate([kept[k], batch[k]])
                                             for k in batch}
        n = len(merged[TIME_KEY])
        if n > count:
            top = np.sort(np.argsort(merged[TIME_KEY], kind="stable")[n - count:])
            merged = {k: v[top] for k, v in merged.items()}
        kept = merged
    if kept is None:
        raise ValueError("the dataset is empty")
    order = np.argsort(kept[TIME_KEY], kind="stable")
    return {k: v[order] for k, v in kept.items()}


def first_rows(dataset: tf.data.Dataset, count: int) -> dict[str, np.ndarray]:
    """Up to ``count`` rows from the start of ``dataset``, as numpy arrays."""
    parts: list[dict[str, np.ndarray]] = []
    total = 0
    for batch in dataset.as_numpy_iterator():
        parts.append(batch)
        total += len(batch[LABEL_KEY])
        if total >= count:
            break
    if not parts:
        raise ValueError("the dataset is empty")
    return {k: np.concatenate([p[k] for p in parts])[:count] for k in parts[0]}
