"""The model zoo on real MovieLens 100K rows: training, hidden width, SavedModel, config."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest

from reloop2_tf._keras import keras, tf
from reloop2_tf.features import (
    DenseFeature,
    FeatureSpec,
    SequenceFeature,
    SparseFeature,
    features_from_frame,
)
from reloop2_tf.models import (
    HIDDEN_LAYER,
    LOGIT_LAYER,
    MODELS,
    build_dcn,
    build_dcnv2,
    build_deepfm,
    build_din,
    build_model,
    hidden_dim,
)
from reloop2_tf.models.blocks import HistoryTokens, IdHashing, MaskedMeanPooling
from reloop2_tf.models.deepfm import FMInteraction
from reloop2_tf.models.dien import AUGRUCell
from reloop2_tf.models.din import TargetAttention

EMBEDDING_DIM = 8
DNN_UNITS = (32, 16)
HISTORY_LENGTH = 10
SMALL = {"embedding_dim": EMBEDDING_DIM, "dnn_units": DNN_UNITS}
KWARGS = {
    "deepfm": SMALL,
    "dcn": {**SMALL, "num_cross_layers": 2},
    "dcnv2": {**SMALL, "low_rank": 4},
    "din": {**SMALL, "attention_units": (16,)},
    "dien": {**SMALL, "aux_loss": True},
    "bst": {**SMALL, "num_heads": 2},
}
FIELDS = 8  # 7 sparse columns + the pooled history
# Widths derived from the architectures, independently of the code under test.
EXPECTED_HIDDEN = {
    "deepfm": DNN_UNITS[-1] + EMBEDDING_DIM + 1,  # DNN, FM interaction vector, first order
    "dcn": FIELDS * EMBEDDING_DIM + DNN_UNITS[-1],  # cross output beside the DNN
    "dcnv2": DNN_UNITS[-1],  # stacked: the DNN on top of the cross network
    "din": DNN_UNITS[-1],
    "dien": DNN_UNITS[-1],
    "bst": DNN_UNITS[-1],
}


@functools.cache
def spec() -> FeatureSpec:
    return FeatureSpec.movielens(history_length=HISTORY_LENGTH)


@functools.cache
def frame():
    from reloop2_tf.data import load_dataset

    df = load_dataset("ml-100k", history_length=HISTORY_LENGTH)
    # Late rows: every user has a history by then.
    return df.iloc[-2000:].reset_index(drop=True)


def serving_rows() -> dict[str, np.ndarray]:
    """Real rows, some with ids never seen anywhere, empty ids and an empty history."""
    x = features_from_frame(frame().iloc[:12], spec())
    x["user_id"][:3] = ["never-seen-user", "", "99999999"]
    x["item_id"][:3] = ["never-seen-item", "", "31337"]
    x["history"][:3] = ["unseen-1 unseen-2 1 2", "", " ".join(str(i) for i in range(1, 40))]
    x["occupation"][3] = "astronaut"
    return x


@functools.cache
def trained(name: str):
    """Builds ``name`` and trains 4 steps of 64 real rows; cached across the tests below."""
    keras.utils.set_random_seed(0)
    model = build_model(name, spec(), **KWARGS[name])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    rows = frame().iloc[-256:]
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(
        features_from_frame(rows, spec()),
        rows["label"].to_numpy(np.float32),
        batch_size=64,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    return model, before, history.history["loss"][0]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_trains_on_real_rows_and_exposes_hidden_of_declared_width(name):
    model, before, loss = trained(name)
    assert np.isfinite(loss) and loss > 0
    changed = [not np.allclose(a, b) for a, b in zip(before, model.get_weights())]
    assert sum(changed) >= len(changed) // 2, f"only {sum(changed)} of {len(changed)} moved"
    # The embedding table that history and item share was trained.
    table = model.get_layer("embedding_item_id")
    assert table is not None

    assert hidden_dim(model) == EXPECTED_HIDDEN[name]
    hidden_layer = model.get_layer(HIDDEN_LAYER)
    logit_layer = model.get_layer(LOGIT_LAYER)
    assert isinstance(logit_layer, keras.layers.Dense) and logit_layer.units == 1
    assert logit_layer.input is hidden_layer.output  # the hidden vector feeds the logit
    two_heads = keras.Model(model.inputs, [model.output, hidden_layer.output])
    x = serving_rows()
    logit, hidden = two_heads(x, training=False)
    assert logit.shape == (12, 1) and hidden.shape == (12, EXPECTED_HIDDEN[name])
    assert np.isfinite(logit.numpy()).all() and np.isfinite(hidden.numpy()).all()
    # The logit is exactly the Dense(1) of the hidden vector.
    kernel, bias = logit_layer.get_weights()
    np.testing.assert_allclose(logit.numpy(), hidden.numpy() @ kernel + bias, rtol=1e-5, atol=1e-5)


def export(model: keras.Model, path: str) -> None:
    two_heads = keras.Model(model.inputs, [model.output, model.get_layer(HIDDEN_LAYER).output])

    @tf.function(input_signature=[spec().tensor_specs()])
    def serve(features):
        logit, hidden = two_heads(features, training=False)
        return {"logit": logit, "hidden": hidden}

    tf.saved_model.save(model, path, signatures={"serving_default": serve})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_saved_model_takes_raw_unseen_ids_eagerly_and_in_tf1_session(name, tmp_path):
    model, _, _ = trained(name)
    x = serving_rows()
    expected = model(x, training=False).numpy()
    path = str(tmp_path / name)
    export(model, path)

    loaded = tf.saved_model.load(path)
    eager = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in x.items()})
    np.testing.assert_allclose(eager["logit"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert eager["hidden"].shape == (12, EXPECTED_HIDDEN[name])

    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        signature = meta.signature_def["serving_default"]
        assert sorted(signature.inputs) == sorted(spec().names)
        feed = {signature.inputs[k].name: v for k, v in x.items()}
        logit, hidden = sess.run(
            [signature.outputs["logit"].name, signature.outputs["hidden"].name], feed
        )
    np.testing.assert_allclose(logit, eager["logit"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hidden, eager["hidden"].numpy(), rtol=1e-5, atol=1e-6)
    assert np.isfinite(logit).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_get_config_round_trips(name):
    model, _, _ = trained(name)
    config = model.get_config()
    # from_config consumes parts of the dict it is given (RNN pops its cell), hence the copy.
    clone = type(model).from_config(copy.deepcopy(config))
    assert type(clone) is type(model)
    assert clone.get_config() == config
    clone.set_weights(model.get_weights())
    x = serving_rows()
    np.testing.assert_allclose(
        clone(x, training=False).numpy(), model(x, training=False).numpy(), rtol=1e-6, atol=1e-6
    )
    # A plain keras.Model.from_config works too (no custom_objects needed).
    plain = keras.Model.from_config(copy.deepcopy(config))
    assert hidden_dim(plain) == EXPECTED_HIDDEN[name]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_keras_format_save_and_load_without_custom_objects(name, tmp_path):
    model, _, _ = trained(name)
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    x = serving_rows()
    np.testing.assert_allclose(
        loaded(x, training=False).numpy(), model(x, training=False).numpy(), rtol=1e-6, atol=1e-6
    )


def test_sequence_models_read_history_and_keep_the_most_recent_items():
    x = serving_rows()
    for name in ("din", "dien", "bst"):
        model, _, _ = trained(name)
        base = model(x, training=False).numpy()
        older = dict(x)
        # Older items cannot matter once a history is full: only the last 10 are kept.
        full = np.array([len(h.split()) >= HISTORY_LENGTH for h in x["history"]])
        assert 3 <= full.sum() < len(full)
        older["history"] = np.array(["1 2 3 4 5 " + h for h in x["history"]], dtype=object)
        changed = model(older, training=False).numpy()
        np.testing.assert_allclose(changed[full], base[full], atol=1e-6)
        assert not np.allclose(changed[~full], base[~full], atol=1e-6), name
        other = dict(x)
        other["history"] = np.array(["50 51 52"] * len(x["history"]), dtype=object)
        assert not np.allclose(model(other, training=False).numpy(), base, atol=1e-6), name


def test_dien_auxiliary_loss_only_in_training():
    model, _, _ = trained("dien")
    x = serving_rows()
    model(x, training=False)
    assert not model.losses
    model(x, training=True)
    assert len(model.losses) == 1 and float(model.losses[0]) > 0
    plain = build_model("dien", spec(), **{**KWARGS["dien"], "aux_loss": False})
    plain(x, training=True)
    assert not plain.losses


# -- golden values of the building blocks --------------------------------------------------------
def test_id_hashing_matches_keras_hashing_and_reserves_zero():
    ids = tf.constant(["1", "242", "", "unseen", "42"])
    ours = IdHashing(1000)(ids).numpy()
    reference = keras.layers.Hashing(1000, mask_value="")(ids).numpy()
    np.testing.assert_array_equal(ours, reference)
    assert ours[2] == 0 and (ours[[0, 1, 3, 4]] > 0).all()
    # Integer ids land in the bucket of their decimal string.
    assert IdHashing(1000)(tf.constant([42], tf.int64)).numpy()[0] == ours[4]


def test_history_tokens_keep_most_recent_left_padded():
    out = HistoryTokens(3)(tf.constant(["1 2 3 4 5", "", "7", "a  b"])).numpy().astype(str)
    np.testing.assert_array_equal(
        out, [["3", "4", "5"], ["", "", ""], ["", "", "7"], ["", "a", "b"]]
    )


def test_fm_interaction_and_masked_pooling_golden():
    v1, v2 = tf.constant([[1.0, 2.0]]), tf.constant([[3.0, 4.0]])
    # 0.5 * ((v1 + v2)^2 - v1^2 - v2^2) = v1 * v2 for two fields.
    np.testing.assert_allclose(FMInteraction()([v1, v2]).numpy(), [[3.0, 8.0]])
    values = tf.constant([[[1.0], [5.0], [3.0]], [[2.0], [2.0], [2.0]]])
    mask = tf.constant([[False, True, True], [False, False, False]])
    np.testing.assert_allclose(MaskedMeanPooling()([values, mask]).numpy(), [[4.0], [0.0]])


def test_target_attention_ignores_padding():
    keras.utils.set_random_seed(1)
    layer = TargetAttention((8,))
    query = tf.random.normal([2, 4])
    keys = tf.random.normal([2, 3, 4])
    mask = tf.constant([[False, True, True], [True, True, True]])
    out = layer([query, keys, mask]).numpy()
    changed = tf.tensor_scatter_nd_update(keys, [[0, 0]], [tf.fill([4], 100.0)])
    np.testing.assert_allclose(layer([query, changed, mask]).numpy()[0], out[0], atol=1e-6)
    assert not np.allclose(layer([query, changed, tf.ones_like(mask)]).numpy()[0], out[0])


def test_augru_zero_attention_keeps_the_state():
    cell = AUGRUCell(3)
    state = tf.constant([[0.5, -0.25, 1.0]])
    x = tf.constant([[1.0, 2.0]])
    still, _ = cell(tf.concat([x, [[0.0]]], axis=-1), [state])
    np.testing.assert_allclose(still.numpy(), state.numpy())
    moved, _ = cell(tf.concat([x, [[1.0]]], axis=-1), [state])
    assert not np.allclose(moved.numpy(), state.numpy())


# -- bad configurations -----------------------------------------------------------------------
def spec_without_history() -> FeatureSpec:
    return FeatureSpec(
        [SparseFeature("user_id", 100), SparseFeature("item_id", 100), DenseFeature("x")]
    )


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda s: build_model("wide", s), r"`name='wide'`"),
        (lambda s: build_deepfm(s, embedding_dim=0), r"`embedding_dim=0`"),
        (lambda s: build_deepfm(s, embedding_dim=-3), r"`embedding_dim=-3`"),
        (lambda s: build_dcn(s, dnn_units=()), r"`dnn_units=\(\)`"),
        (lambda s: build_dcn(s, dnn_units=(64, 0)), r"`dnn_units=\(64, 0\)`"),
        (lambda s: build_dcn(s, num_cross_layers=0), r"`num_cross_layers=0`"),
        (lambda s: build_dcnv2(s, structure="mixed"), r"`structure='mixed'`"),
        (lambda s: build_dcnv2(s, low_rank=0), r"`low_rank=0`"),
        (lambda s: build_din(s, dropout=1.5), r"`dropout=1.5`"),
        (lambda s: build_model("bst", s, num_heads=3), r"`num_heads=3`"),
        (lambda s: build_model("dien", s, gru_units=0), r"`gru_units=0`"),
        (lambda s: build_din(s, sequence="clicks"), r"`sequence='clicks'`"),
    ],
)
def test_bad_model_config_fails_at_construction(build, pattern):
    with pytest.raises(ValueError, match=pattern):
        build(spec())


@pytest.mark.parametrize("name", ["din", "dien", "bst"])
def test_sequence_models_need_a_sequence_and_a_target(name):
    with pytest.raises(ValueError, match="needs a SequenceFeature"):
        build_model(name, spec_without_history())
    no_target = FeatureSpec(
        [SparseFeature("item_id", 100), SequenceFeature("history", 5)], target_item=None
    )
    with pytest.raises(ValueError, match="`target_item=None`"):
        build_model(name, no_target)


def test_mismatched_embedding_dims_are_rejected_where_they_must_match():
    odd = FeatureSpec(
        [
            SparseFeature("user_id", 100, embedding_dim=4),
            SparseFeature("item_id", 100),
            SequenceFeature("history", 5),
        ]
    )
    with pytest.raises(ValueError, match=r"DeepFM needs equal embedding dims.*'user_id': 4"):
        build_deepfm(odd, embedding_dim=8)
    own_table = FeatureSpec(
        [
            SparseFeature("item_id", 100),
            SequenceFeature(
                "history", 5, share_embedding_with=None, num_buckets=50, embedding_dim=4
            ),
        ]
    )
    with pytest.raises(ValueError, match=r"DIN needs equal embedding dims"):
        build_din(own_table, embedding_dim=8)
    # Models without a dot product between fields accept mixed widths.
    assert hidden_dim(build_dcn(odd, embedding_dim=8, dnn_units=(4,))) == 4 + 8 + 8 + 4
