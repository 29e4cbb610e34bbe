"""Declarative feature spec shared by every model of the zoo.

A spec is written once (``FeatureSpec.movielens()`` for the canonical MovieLens columns) and
every builder in ``reloop2_tf.models`` reads it. Models take raw features: ids are strings (or
int64) hashed inside the model, the behaviour history is one space-separated string per row.
So a SavedModel accepts raw ids, and an id never seen in training only lands in some bucket.

Example:

>>> spec = FeatureSpec([
...     SparseFeature("user_id", num_buckets=1000),
...     SparseFeature("item_id", num_buckets=2000),
...     SequenceFeature("history", max_length=20, share_embedding_with="item_id"),
...     DenseFeature("price"),
... ])
>>> sorted(spec.inputs())
['history', 'item_id', 'price', 'user_id']
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from reloop2_tf._keras import keras, tf

_ID_DTYPES = ("string", "int64")


def _check_name(kind: str, name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind}: `name` should be a non-empty string. Received: `name={name!r}`")


def _check_positive_int(kind: str, name: str, field: str, value: Any, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(
            f"{kind} '{name}': `{field}` should be a positive integer. Received: `{field}={value!r}`"
        )


@dataclasses.dataclass(frozen=True)
class SparseFeature:
    """A categorical feature with one id per row, hashed into ``num_buckets`` inside the model.

    Args:
        name: str. Column name and name of the model input.
        num_buckets: int. Hash buckets, bucket 0 included (it is kept for the empty string,
            i.e. a missing value), so ``num_buckets - 1`` buckets hold real ids.
        embedding_dim: int or None. Overrides the model's ``embedding_dim``. Defaults to `None`.
        dtype: str. ``"string"`` or ``"int64"``: the dtype of the raw input. Integer ids are
            hashed through their decimal string, so ``42`` and ``"42"`` share a bucket.
            Defaults to `"string"`.
    """

    name: str
    num_buckets: int
    embedding_dim: int | None = None
    dtype: str = "string"

    def __post_init__(self) -> None:
        _check_name("SparseFeature", self.name)
        # Bucket 0 is reserved for missing values, so one bucket would hold no id at all.
        if (
            isinstance(self.num_buckets, bool)
            or not isinstance(self.num_buckets, (int, np.integer))
            or self.num_buckets < 2
        ):
            raise ValueError(
                f"SparseFeature '{self.name}': `num_buckets` should be an integer >= 2. "
                f"Received: `num_buckets={self.num_buckets!r}`"
            )
        _check_positive_int("SparseFeature", self.name, "embedding_dim", self.embedding_dim, True)
        if self.dtype not in _ID_DTYPES:
            raise ValueError(
                f"SparseFeature '{self.name}': `dtype` should be one of {_ID_DTYPES}. "
                f"Received: `dtype={self.dtype!r}`"
            )


@dataclasses.dataclass(frozen=True)
class SequenceFeature:
    """A behaviour sequence: one string per row of space-separated ids, oldest first.

    The model splits the string, keeps the ``max_length`` most recent ids and left-pads, so the
    most recent id is always at position ``max_length - 1``; padding is masked.

    Args:
        name: str. Column name and name of the model input.
        max_length: int. Number of most recent ids kept. Required.
        share_embedding_with: str or None. A ``SparseFeature`` whose hashing and embedding table
            the sequence reuses (the target item, so attention compares like with like).
            ``None`` gives the sequence its own table of ``num_buckets``.
            Defaults to `"item_id"`.
        num_buckets: int or None. Only when not sharing. Defaults to `None`.
        embedding_dim: int or None. Only when not sharing. Defaults to `None`.
        separator: str or None. ``None`` splits on any whitespace. Defaults to `None`.
    """

    name: str
    max_length: int | None = None
    share_embedding_with: str | None = "item_id"
    num_buckets: int | None = None
    embedding_dim: int | None = None
    separator: str | None = None

    def __post_init__(self) -> None:
        _check_name("SequenceFeature", self.name)
        if self.max_length is None:
            raise ValueError(
                f"SequenceFeature '{self.name}': `max_length` is required (the number of most "
                f"recent ids to keep). Received: `max_length=None`"
            )
        _check_positive_int("SequenceFeature", self.name, "max_length", self.max_length, False)
        _check_positive_int("SequenceFeature", self.name, "embedding_dim", self.embedding_dim, True)
        if self.share_embedding_with is None:
            if self.num_buckets is None or self.num_buckets < 2:
                raise ValueError(
                    f"SequenceFeature '{self.name}': `num_buckets` should be an integer >= 2 when "
                    f"`share_embedding_with=None`. Received: `num_buckets={self.num_buckets!r}`"
                )
        elif self.num_buckets is not None or self.embedding_dim is not None:
            raise ValueError(
                f"SequenceFeature '{self.name}': `num_buckets` and `embedding_dim` come from "
                f"'{self.share_embedding_with}' when sharing its embedding. Received: "
                f"`num_buckets={self.num_buckets!r}`, `embedding_dim={self.embedding_dim!r}`"
            )
        if self.separator is not None and not isinstance(self.separator, str):
            raise ValueError(
                f"SequenceFeature '{self.name}': `separator` should be a string or None. "
                f"Received: `separator={self.separator!r}`"
            )


@dataclasses.dataclass(frozen=True)
class DenseFeature:
    """A float32 feature: a scalar per row (``dim=1``) or a fixed-width vector.

    Args:
        name: str. Column name and name of the model input.
        dim: int. Width. Defaults to `1`.
    """

    name: str
    dim: int = 1

    def __post_init__(self) -> None:
        _check_name("DenseFeature", self.name)
        _check_positive_int("DenseFeature", self.name, "dim", self.dim, False)


Feature = SparseFeature | SequenceFeature | DenseFeature
_KINDS: dict[str, type] = {
    "sparse": SparseFeature,
    "sequence": SequenceFeature,
    "dense": DenseFeature,
}


class FeatureSpec:
    """The features of a model, validated at construction.

    Args:
        features: iterable of ``SparseFeature``, ``SequenceFeature`` and ``DenseFeature``.
        target_item: str or None. The ``SparseFeature`` that sequence models attend from (the
            candidate item). Defaults to `"item_id"`; ``None`` when there is no target.

    Raises:
        ValueError: duplicate names, a ``share_embedding_with`` or ``target_item`` that names no
            sparse feature, or an empty spec.
    """

    def __init__(self, features: Iterable[Feature], target_item: str | None = "item_id"):
        features = tuple(features)
        if not features:
            raise ValueError("FeatureSpec: `features` should not be empty. Received: `features=[]`")
        seen: set[str] = set()
        for feature in features:
            if not isinstance(feature, (SparseFeature, SequenceFeature, DenseFeature)):
                raise TypeError(
                    "FeatureSpec: every feature should be a SparseFeature, SequenceFeature or "
                    f"DenseFeature. Received: {feature!r}"
                )
            if feature.name in seen:
                raise ValueError(
                    f"FeatureSpec: duplicate feature name. Received: `name={feature.name!r}` twice"
                )
            seen.add(feature.name)
        sparse = {f.name for f in features if isinstance(f, SparseFeature)}
        for feature in features:
            shared = getattr(feature, "share_embedding_with", None)
            if isinstance(feature, SequenceFeature) and shared is not None and shared not in sparse:
                raise ValueError(
                    f"SequenceFeature '{feature.name}': `share_embedding_with` should name a "
                    f"SparseFeature of the spec ({sorted(sparse)}). Received: "
                    f"`share_embedding_with={shared!r}`"
                )
        if target_item is not None and target_item not in sparse:
            raise ValueError(
                f"FeatureSpec: `target_item` should name a SparseFeature of the spec "
                f"({sorted(sparse)}) or be None. Received: `target_item={target_item!r}`"
            )
        self.features: tuple[Feature, ...] = features
        self.target_item = target_item

    # -- views ---------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Feature names in spec order."""
        return [f.name for f in self.features]

    @property
    def sparse(self) -> list[SparseFeature]:
        """The sparse features in spec order."""
        return [f for f in self.features if isinstance(f, SparseFeature)]

    @property
    def sequences(self) -> list[SequenceFeature]:
        """The sequence features in spec order."""
        return [f for f in self.features if isinstance(f, SequenceFeature)]

    @property
    def dense(self) -> list[DenseFeature]:
        """The dense features in spec order."""
        return [f for f in self.features if isinstance(f, DenseFeature)]

    def __getitem__(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"FeatureSpec has no feature {name!r}; it has {self.names}")

    def __iter__(self):
        return iter(self.features)

    def __len__(self) -> int:
        return len(self.features)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureSpec) and self.to_config() == other.to_config()

    def __repr__(self) -> str:
        return f"FeatureSpec(features={list(self.features)!r}, target_item={self.target_item!r})"

    # -- Keras / TF ----------------------------------------------------------------------------
    def input_dtype(self, name: str) -> tf.DType:
        """The dtype of a raw input: tf.string, tf.int64 or tf.float32."""
        feature = self[name]
        if isinstance(feature, DenseFeature):
            return tf.float32
        if isinstance(feature, SparseFeature) and feature.dtype == "int64":
            return tf.int64
        return tf.string

    def input_shape(self, name: str) -> tuple[int, ...]:
        """The per-row shape of a raw input: ``()`` or ``(dim,)`` for wide dense features."""
        feature = self[name]
        if isinstance(feature, DenseFeature) and feature.dim > 1:
            return (feature.dim,)
        return ()

    def inputs(self) -> dict[str, keras.Input]:
        """One ``keras.Input`` per feature, named after the column."""
        return {
            name: keras.Input(shape=self.input_shape(name), dtype=self.input_dtype(name), name=name)
            for name in self.names
        }

    def tensor_specs(self) -> dict[str, tf.TensorSpec]:
        """Named ``tf.TensorSpec``s with a batch dimension, for serving signatures."""
        return {
            name: tf.TensorSpec((None, *self.input_shape(name)), self.input_dtype(name), name=name)
            for name in self.names
        }

    # -- serialisation -------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """A JSON-serialisable dict (it can be stored beside a SavedModel)."""
        kind_of = {cls: kind for kind, cls in _KINDS.items()}
        return {
            "features": [
                {"type": kind_of[type(f)], **dataclasses.asdict(f)} for f in self.features
            ],
            "target_item": self.target_item,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of ``to_config``."""
        features = []
        for entry in config["features"]:
            entry = dict(entry)
            kind = entry.pop("type", None)
            if kind not in _KINDS:
                raise ValueError(
                    f"FeatureSpec.from_config: feature `type` should be one of {sorted(_KINDS)}. "
                    f"Received: `type={kind!r}`"
                )
            features.append(_KINDS[kind](**entry))
        return cls(features, target_item=config.get("target_item"))

    def to_json(self) -> str:
        """``to_config`` as a JSON string."""
        return json.dumps(self.to_config(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        """Inverse of ``to_json``."""
        return cls.from_config(json.loads(text))

    # -- canonical datasets --------------------------------------------------------------------
    @classmethod
    def movielens(
        cls, history_length: int = 20, with_side_features: bool = True
    ) -> FeatureSpec:
        """The canonical MovieLens columns of ``reloop2_tf.data.load_dataset``.

        Bucket counts leave room for ml-1m (6,040 users, 3,706 items) with few collisions.

        Args:
            history_length: int. ``max_length`` of the ``history`` sequence. Defaults to `20`.
            with_side_features: bool. Add age, gender, occupation, genre and release year.
                Defaults to `True`.
        """
        features: list[Feature] = [
            SparseFeature("user_id", num_buckets=20_000),
            SparseFeature("item_id", num_buckets=10_000),
        ]
        if with_side_features:
            features += [
                SparseFeature("age", num_buckets=128),
                SparseFeature("gender", num_buckets=8),
                SparseFeature("occupation", num_buckets=64),
                SparseFeature("genre", num_buckets=1024),
                SparseFeature("release_year", num_buckets=256),
            ]
        features.append(
            SequenceFeature("history", max_length=history_length, share_embedding_with="item_id")
        )
        return cls(features, target_item="item_id")


def features_from_frame(df: pd.DataFrame, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """The model inputs of ``spec`` as numpy arrays: object (str), int64 or float32.

    Missing values of id and sequence columns become ``""`` (bucket 0, masked in sequences).

    Raises:
        ValueError: a column of the spec is missing from ``df``.
    """
    missing = [name for name in spec.names if name not in df.columns]
    if missing:
        raise ValueError(
            f"features_from_frame: `df` lacks the columns {missing} of the spec. "
            f"Received columns: {list(df.columns)}"
        )
    out: dict[str, np.ndarray] = {}
    for feature in spec.features:
        column = df[feature.name]
        if isinstance(feature, DenseFeature):
            if feature.dim == 1:
                out[feature.name] = column.to_numpy(dtype=np.float32)
            else:
                values = np.stack([np.asarray(v, dtype=np.float32) for v in column])
                if values.shape[1:] != (feature.dim,):
                    raise ValueError(
                        f"features_from_frame: DenseFeature '{feature.name}' has `dim="
                        f"{feature.dim}` but the column holds vectors of shape {values.shape[1:]}"
                    )
                out[feature.name] = values
        elif isinstance(feature, SparseFeature) and feature.dtype == "int64":
            out[feature.name] = column.to_numpy(dtype=np.int64)
        else:
            out[feature.name] = column.fillna("").astype(str).to_numpy(dtype=object)
    return out


__all__ = [
    "DenseFeature",
    "FeatureSpec",
    "SequenceFeature",
    "SparseFeature",
    "features_from_frame",
]
