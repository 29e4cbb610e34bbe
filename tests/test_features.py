"""Feature spec: validation, serialisation, Keras inputs and frame conversion."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from reloop2_tf._keras import tf
from reloop2_tf.features import (
    DenseFeature,
    FeatureSpec,
    SequenceFeature,
    SparseFeature,
    features_from_frame,
)


def small_spec() -> FeatureSpec:
    return FeatureSpec(
        [
            SparseFeature("user_id", num_buckets=100),
            SparseFeature("item_id", num_buckets=200, dtype="int64"),
            SequenceFeature("history", max_length=5),
            DenseFeature("price"),
            DenseFeature("vec", dim=3),
        ]
    )


@pytest.mark.parametrize(
    ("make", "field", "value"),
    [
        (lambda: SparseFeature("u", num_buckets=100, embedding_dim=0), "embedding_dim", "0"),
        (lambda: SparseFeature("u", num_buckets=100, embedding_dim=-4), "embedding_dim", "-4"),
        (lambda: SparseFeature("u", num_buckets=1), "num_buckets", "1"),
        (lambda: SparseFeature("u", num_buckets=10, dtype="float32"), "dtype", "'float32'"),
        (lambda: SparseFeature("", num_buckets=10), "name", "''"),
        (lambda: SequenceFeature("h"), "max_length", "None"),
        (lambda: SequenceFeature("h", max_length=0), "max_length", "0"),
        (lambda: SequenceFeature("h", max_length=5, embedding_dim=0), "embedding_dim", "0"),
        (
            lambda: SequenceFeature("h", max_length=5, share_embedding_with=None),
            "num_buckets",
            "None",
        ),
        (lambda: DenseFeature("d", dim=0), "dim", "0"),
    ],
)
def test_bad_feature_fails_at_construction_naming_field_and_value(make, field, value):
    with pytest.raises(ValueError, match=rf"`{field}={value}`"):
        make()


def test_bad_spec_fails_at_construction():
    user = SparseFeature("user_id", num_buckets=10)
    item = SparseFeature("item_id", num_buckets=10)
    with pytest.raises(ValueError, match=r"share_embedding_with='movie_id'"):
        FeatureSpec([user, item, SequenceFeature("history", 5, share_embedding_with="movie_id")])
    with pytest.raises(ValueError, match=r"target_item='movie_id'"):
        FeatureSpec([user, item], target_item="movie_id")
    with pytest.raises(ValueError, match=r"duplicate feature name.*'user_id'"):
        FeatureSpec([user, item, SparseFeature("user_id", num_buckets=20)])
    with pytest.raises(ValueError, match="should not be empty"):
        FeatureSpec([])
    # A dense feature cannot be an embedding to share or attend from.
    with pytest.raises(ValueError, match=r"target_item='price'"):
        FeatureSpec([user, DenseFeature("price")], target_item="price")
    with pytest.raises(TypeError, match="SparseFeature, SequenceFeature or DenseFeature"):
        FeatureSpec([user, "item_id"])


def test_config_round_trips_through_json():
    spec = FeatureSpec.movielens(history_length=7)
    text = json.dumps(spec.to_config())
    again = FeatureSpec.from_config(json.loads(text))
    assert again == spec
    assert again.to_config() == spec.to_config()
    assert FeatureSpec.from_json(spec.to_json()) == spec
    assert again["history"].max_length == 7
    assert again.target_item == "item_id"
    with pytest.raises(ValueError, match="`type='wide'`"):
        FeatureSpec.from_config({"features": [{"type": "wide", "name": "x"}]})


def test_movielens_spec_names_the_canonical_columns():
    spec = FeatureSpec.movielens()
    assert spec.names == [
        "user_id",
        "item_id",
        "age",
        "gender",
        "occupation",
        "genre",
        "release_year",
        "history",
    ]
    assert [f.name for f in FeatureSpec.movielens(with_side_features=False)] == [
        "user_id",
        "item_id",
        "history",
    ]


def test_inputs_and_tensor_specs_are_named_after_columns():
    spec = small_spec()
    inputs = spec.inputs()
    assert sorted(inputs) == sorted(spec.names)
    for name, tensor in inputs.items():
        assert tensor.name.split(":")[0] == name
    assert inputs["user_id"].dtype == tf.string
    assert inputs["item_id"].dtype == tf.int64
    assert inputs["history"].dtype == tf.string
    assert inputs["price"].dtype == tf.float32
    assert tuple(inputs["price"].shape) == (None,)
    assert tuple(inputs["vec"].shape) == (None, 3)
    specs = spec.tensor_specs()
    assert specs["vec"] == tf.TensorSpec((None, 3), tf.float32, name="vec")
    assert specs["user_id"].name == "user_id"


def test_features_from_frame_dtypes_and_missing_values():
    spec = small_spec()
    df = pd.DataFrame(
        {
            "user_id": ["a", None, 3],
            "item_id": [1, 2, 3],
            "history": ["1 2", "", np.nan],
            "price": [1, 2.5, 3],
            "vec": [[0, 1, 2], [3, 4, 5], [6, 7, 8]],
            "unused": [0, 0, 0],
        }
    )
    out = features_from_frame(df, spec)
    assert set(out) == set(spec.names)
    assert out["user_id"].dtype == object and list(out["user_id"]) == ["a", "", "3"]
    assert out["item_id"].dtype == np.int64
    assert list(out["history"]) == ["1 2", "", ""]
    assert out["price"].dtype == np.float32 and out["price"].shape == (3,)
    assert out["vec"].dtype == np.float32 and out["vec"].shape == (3, 3)
    with pytest.raises(ValueError, match=r"lacks the columns \['history'\]"):
        features_from_frame(df.drop(columns=["history"]), spec)


def test_features_from_real_movielens_rows():
    from reloop2_tf.data import load_dataset

    df = load_dataset("ml-100k", history_length=20).iloc[-200:]
    spec = FeatureSpec.movielens()
    out = features_from_frame(df, spec)
    assert all(len(v) == 200 for v in out.values())
    assert all(v.dtype == object for v in out.values())
    assert max(len(h.split()) for h in out["history"]) == 20
