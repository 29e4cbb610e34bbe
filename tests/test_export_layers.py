"""A SavedModel holding the layers loads eagerly and in a TF1 Session (TF Serving's path)."""

import numpy as np
import pytest

import reloop2_tf as r2
from reloop2_tf._keras import keras, tf

D = 6


def make_module(memory):
    x = keras.Input(shape=(4,), name="x")
    h = keras.layers.Dense(D, activation="tanh", name="hidden")(x)
    logit = keras.layers.Dense(1, name="logit")(h)
    model = r2.ReLoop2Model(keras.Model({"x": x}, logit),
                            compensation=r2.ErrorCompensation(
                                memory, compensation_weight=1.0,
                                self_tuning=isinstance(memory, r2.LSHErrorMemory)))
    model.compensate({"x": np.zeros((1, 4), np.float32)})  # builds the memory

    module = tf.Module()
    module.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def predict(x):
        return module.model.compensate({"x": x})

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"),
                                  tf.TensorSpec([None], tf.float32, name="label")])
    def update_memory(x, label):
        written = module.model.update_memory({"x": x}, label)
        return {"weight_written": written, "memory_weight": module.model.memory.total_weight()}

    return module, {"serving_default": predict, "update_memory": update_memory}


@pytest.mark.parametrize("memory", [lambda: r2.LSHErrorMemory(num_tables=8, num_bits=4,
                                                               half_life=None),
                                    lambda: r2.KNNErrorMemory(capacity=64, top_k=4)],
                         ids=["lsh", "knn"])
def test_saved_model_updates_through_signature_eager_and_tf1_session(memory, tmp_path, rng):
    keras.utils.set_random_seed(0)
    module, signatures = make_module(memory())
    path = str(tmp_path / "model")
    tf.saved_model.save(module, path, signatures=signatures)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    labels = np.ones(5, np.float32)

    loaded = tf.saved_model.load(path)
    before = loaded.signatures["serving_default"](x=tf.constant(x))["probability"].numpy()
    out = loaded.signatures["update_memory"](x=tf.constant(x), label=tf.constant(labels))
    assert float(out["weight_written"]) == 5.0 and float(out["memory_weight"]) == 5.0
    after = loaded.signatures["serving_default"](x=tf.constant(x))["probability"].numpy()
    # The write reached the served state, and the combiner fits the rows it was fed: their
    # logloss against label 1 falls (not every row rises: five rows are no evidence of a level
    # shift, docs/core.md, so the correction is the tempering of the base's spread).
    assert np.abs(after - before).max() > 1e-4
    assert np.mean(-np.log(after)) < np.mean(-np.log(before))
    # In-process reference: the same Keras objects, updated the same way.
    module.model.update_memory({"x": x}, labels)
    np.testing.assert_allclose(module.model.compensate({"x": x})["probability"].numpy(), after,
                               rtol=1e-5)

    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        pred, upd = meta.signature_def["serving_default"], meta.signature_def["update_memory"]
        feed = {pred.inputs["x"].name: x}
        s_before = sess.run(pred.outputs["probability"].name, feed)
        np.testing.assert_allclose(s_before, before, rtol=1e-5)  # restored from the checkpoint
        written = sess.run(upd.outputs["weight_written"].name,
                           {upd.inputs["x"].name: x, upd.inputs["label"].name: labels})
        assert written == 5.0
        s_after = sess.run(pred.outputs["probability"].name, feed)
        np.testing.assert_allclose(s_after, after, rtol=1e-5)
        bad = {upd.inputs["x"].name: x, upd.inputs["label"].name: labels * 2}
        with pytest.raises(tf.errors.InvalidArgumentError, match="`labels`"):
            sess.run(upd.outputs["weight_written"].name, bad)
        np.testing.assert_allclose(sess.run(pred.outputs["probability"].name, feed), s_after)


def test_keras_model_with_layer_saves_and_loads_without_custom_objects(tmp_path, rng):
    logits_in = keras.Input(shape=(1,), name="logits")
    hidden_in = keras.Input(shape=(D,), name="hidden")
    comp = r2.ErrorCompensation(memory=r2.LSHErrorMemory(num_tables=4, num_bits=3),
                                compensation_weight=0.8)
    model = keras.Model([logits_in, hidden_in], comp(logits_in, hidden_in))
    h = rng.normal(size=(6, D)).astype(np.float32)
    logits = np.zeros((6, 1), np.float32)
    comp.update_memory(logits, h, np.ones(6))
    expected = model([logits, h]).numpy()
    path = str(tmp_path / "keras_model")
    model.save(path, save_format="tf")
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded([logits, h]).numpy(), expected, rtol=1e-6)
    loaded_comp = [l for l in loaded.layers if isinstance(l, r2.ErrorCompensation)][0]
    np.testing.assert_array_equal(loaded_comp.memory.snapshot().numpy(),
                                  comp.memory.snapshot().numpy())
