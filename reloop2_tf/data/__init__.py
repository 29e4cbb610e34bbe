"""Datasets for reloop2-tf: loaders for MovieLens and generic CSV logs, in one canonical layout.

The canonical frame has ``user_id, item_id, timestamp, label`` first, then str feature columns,
then ``history`` (the user's previous items, space-separated); see docs/data.md.
"""

from reloop2_tf.data.download import default_cache_dir, extract_members, fetch
from reloop2_tf.data.errors import DataError
from reloop2_tf.data.history import build_history
from reloop2_tf.data.loaders import (
    CANONICAL_COLUMNS,
    DATASETS,
    HISTORY_COLUMN,
    feature_columns,
    load_csv,
    load_dataset,
)
from reloop2_tf.data.prepare import load_prepared, prepare
from reloop2_tf.data.sides import (
    feature_sides,
    id_bits_for_frame,
    id_groups_for_frame,
    id_keys_for_frame,
)
from reloop2_tf.data.splits import slots, time_split

__all__ = [
    "CANONICAL_COLUMNS",
    "DATASETS",
    "HISTORY_COLUMN",
    "DataError",
    "build_history",
    "default_cache_dir",
    "extract_members",
    "feature_columns",
    "feature_sides",
    "fetch",
    "id_bits_for_frame",
    "id_groups_for_frame",
    "id_keys_for_frame",
    "load_csv",
    "load_dataset",
    "load_prepared",
    "prepare",
    "slots",
    "time_split",
]
