import numpy as np
import pytest

import reloop2_tf as r2
from reloop2_tf._keras import keras, tf


def base_model(dim=6, sigmoid=False):
    x = keras.Input(shape=(dim,), name="x")
    h = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    out = keras.layers.Dense(1, name="logit", activation="sigmoid" if sigmoid else None)(h)
    return keras.Model({"x": x}, out)


def test_wrap_by_layer_name_predict_update_reset(rng):
    keras.utils.set_random_seed(0)
    model = r2.ReLoop2Model(base_model(), hidden_layer="hidden",
                            compensation=r2.ErrorCompensation(compensation_weight=1.0))
    feats = {"x": rng.normal(size=(40, 6)).astype(np.float32)}
    before = model.predict(feats, verbose=0)
    base = tf.sigmoid(model.base_model(feats)).numpy()
    np.testing.assert_allclose(before, base, rtol=1e-6)  # empty memory: the base model
    assert float(model.update_memory(feats, np.ones(40))) == 40.0
    after = model.predict(feats, verbose=0)
    # The combiner fits the rows it was fed: their logloss against label 1 falls.
    assert np.mean(-np.log(after)) < np.mean(-np.log(before)) - 0.01
    np.testing.assert_allclose(model.compensate(feats)["base_probability"].numpy(), base[:, 0],
                               rtol=1e-6)
    model.reset_memory()
    np.testing.assert_allclose(model.predict(feats, verbose=0), base, rtol=1e-6)


def test_wrap_model_that_returns_logits_and_hidden(rng):
    x = keras.Input(shape=(3,), name="x")
    h = keras.layers.Dense(4, activation="tanh")(x)
    logit = keras.layers.Dense(1)(h)
    model = r2.ReLoop2Model(keras.Model(x, [logit, h]), hidden_layer=None)
    feats = rng.normal(size=(5, 3)).astype(np.float32)
    logits, hidden = model.encode(feats)
    assert logits.shape == (5,) and hidden.shape == (5, 4)
    model.update_memory(feats, np.zeros(5))
    assert float(model.memory.total_weight()) == pytest.approx(5.0, rel=1e-6)


def test_probability_output_is_converted_to_logits(rng):
    keras.utils.set_random_seed(1)
    base = base_model(sigmoid=True)
    model = r2.ReLoop2Model(base, output_is_logits=False)
    feats = {"x": rng.normal(size=(7, 6)).astype(np.float32)}
    np.testing.assert_allclose(model.compensate(feats)["base_probability"].numpy(),
                               base(feats).numpy()[:, 0], rtol=1e-5)


def test_set_center_uses_mean_hidden(rng):
    model = r2.ReLoop2Model(base_model())
    feats = {"x": rng.normal(size=(30, 6)).astype(np.float32)}
    center = model.set_center(feats, batch_size=7)
    expected = model.base_model.get_layer("hidden").output
    sub = keras.Model(model.base_model.inputs, expected)
    np.testing.assert_allclose(center.numpy(), sub(feats).numpy().mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.memory.center.numpy(), center.numpy())


def test_bad_wrapping_is_explained():
    with pytest.raises(ValueError, match="`hidden_layer`"):
        r2.ReLoop2Model(base_model(), hidden_layer="nope")
    with pytest.raises(ValueError, match="`base_model`"):
        r2.ReLoop2Model(base_model(), hidden_layer=None)


def test_get_config_round_trip(rng):
    model = r2.ReLoop2Model(base_model(), compensation=r2.ErrorCompensation(
        memory=r2.LSHErrorMemory(num_tables=4, num_bits=4), compensation_weight=0.3))
    config = model.get_config()
    clone = r2.ReLoop2Model.from_config(config)
    assert clone.compensation.get_config() == model.compensation.get_config()
    clone.base_model.set_weights(model.base_model.get_weights())
    feats = {"x": rng.normal(size=(4, 6)).astype(np.float32)}
    np.testing.assert_allclose(clone(feats).numpy(), model(feats).numpy(), rtol=1e-6)


def test_hidden_layer_of_a_shared_layer_picks_a_call(rng):
    x = keras.Input(shape=(3,), name="x")
    y = keras.Input(shape=(3,), name="y")
    shared = keras.layers.Dense(4, name="shared")
    hx, hy = shared(x), shared(y)
    logit = keras.layers.Dense(1)(keras.layers.Concatenate()([hx, hy]))
    base = keras.Model({"x": x, "y": y}, logit)
    with pytest.raises(ValueError, match="shared:0"):
        r2.ReLoop2Model(base, hidden_layer="shared")
    model = r2.ReLoop2Model(base, hidden_layer="shared:1")
    feats = {"x": rng.normal(size=(2, 3)).astype(np.float32),
             "y": rng.normal(size=(2, 3)).astype(np.float32)}
    np.testing.assert_allclose(model.encode(feats)[1].numpy(), shared(feats["y"]).numpy(),
                               rtol=1e-6)


def test_the_default_memory_centres_its_srp_tables_on_the_user():
    # The user's table is in the memory (the first feature of a cross): centre on it.
    assert r2.default_srp_centre([("item_id",), ("user_id", "genre")]) == "user_id"
    assert r2.default_srp_centre(["item_id", "user_id"]) == "user_id"
    assert r2.default_srp_centre([("item_id",), ("item_id", "age")]) is None  # no user table
    assert r2.default_srp_centre([("uid", "genre")], user="uid") == "uid"
    model = r2.ReLoop2Model(r2.build_model("dcn", r2.FeatureSpec.movielens()))
    assert model.memory.srp_centre == "user_id"
    assert ("user_id",) in model.memory.id_tables
    x = keras.Input(shape=(3,), name="item_id")  # an item alone: nothing to centre on
    h = keras.layers.Dense(4, name="hidden")(x)
    bare = r2.ReLoop2Model(keras.Model({"item_id": x}, keras.layers.Dense(1)(h)))
    assert bare.memory.id_groups == (("item_id",),) and bare.memory.srp_centre is None
