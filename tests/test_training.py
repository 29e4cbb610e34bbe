"""Training helper: compile, fit with early stopping, predict, plain Keras habits."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from reloop2_tf import training
from reloop2_tf._keras import keras
from reloop2_tf.data import time_split
from reloop2_tf.evaluation import metrics
from reloop2_tf.features import FeatureSpec
from reloop2_tf.models import build_model

SMALL = {"embedding_dim": 8, "dnn_units": (16,), "dropout": 0.0}


@functools.cache
def spec() -> FeatureSpec:
    return FeatureSpec.movielens(history_length=5)


@functools.cache
def split():
    from reloop2_tf.data import load_dataset

    df = load_dataset("ml-100k", history_length=5)
    train, test = time_split(df, 0.8)
    return train.iloc[-1500:], test.iloc[:500]


def test_compile_model_uses_adam_bce_on_logits_and_auc():
    model = training.compile_model(build_model("dcnv2", spec(), **SMALL), learning_rate=3e-3)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert np.isclose(float(model.optimizer.learning_rate), 3e-3)
    assert isinstance(model.loss, keras.losses.BinaryCrossentropy)
    assert model.loss.get_config()["from_logits"] is True
    with pytest.raises(ValueError, match="`learning_rate=0`"):
        training.compile_model(model, learning_rate=0)


def test_fit_stops_early_on_val_auc_and_restores_the_best_weights():
    train, valid = split()
    keras.utils.set_random_seed(0)
    model = build_model("deepfm", spec(), **SMALL)
    history = training.fit(
        model,
        train,
        spec(),
        validation_df=valid,
        epochs=6,
        batch_size=128,
        patience=1,
        learning_rate=2e-2,  # large on purpose: overfits in a few epochs, so stopping matters
        verbose=0,
    )
    logs = history.history
    assert {"loss", "auc", "val_loss", "val_auc", "epoch_seconds"} <= set(logs)
    assert all(s > 0 for s in logs["epoch_seconds"])
    epochs_run = len(logs["val_auc"])
    best = int(np.argmax(logs["val_auc"]))
    assert epochs_run == best + 2 < 6  # stopped early, one epoch (patience=1) past the best
    # The weights in the model are those of the best epoch.
    result = model.evaluate(training.make_dataset(valid, spec(), 128), return_dict=True, verbose=0)
    assert result["auc"] == pytest.approx(max(logs["val_auc"]), abs=1e-5)


def test_predict_and_evaluate_frame_agree_with_metrics():
    train, valid = split()
    model = build_model("din", spec(), **SMALL)
    training.fit(model, train.iloc[-300:], spec(), epochs=1, batch_size=100, verbose=0)
    probs = training.predict(model, valid, spec())
    assert probs.shape == (len(valid),) and ((probs > 0) & (probs < 1)).all()
    logits = model.predict(training.make_dataset(valid, spec(), 256, label=None), verbose=0)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits.reshape(-1))), rtol=1e-5)
    result = training.evaluate_frame(model, valid, spec())
    expected = metrics.evaluate(valid["label"].to_numpy(), probs, valid["user_id"].to_numpy())
    assert result == pytest.approx(expected)


def test_plain_keras_compile_and_fit_work():
    train, _ = split()
    model = build_model("bst", spec(), **SMALL)
    model.compile("adam", keras.losses.BinaryCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(training.make_dataset(train.iloc[:256], spec(), 64), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert 0 <= history.history["accuracy"][0] <= 1


def test_autograph_free_train_step_computes_the_same_update():
    # ZooModel traces its steps without AutoGraph (tf-keras is not on AutoGraph's skip list);
    # the update must be the one a plain functional model computes.
    train, _ = split()
    keras.utils.set_random_seed(0)
    zoo = build_model("dcn", spec(), **SMALL)
    plain = keras.Model(zoo.inputs, zoo.outputs)
    assert type(plain) is not type(zoo)
    start = zoo.get_weights()
    batch = next(iter(training.make_dataset(train.iloc[:64], spec(), 64)))
    results = []
    for model in (zoo, plain):
        model.set_weights(start)
        model.compile(keras.optimizers.SGD(0.1), keras.losses.BinaryCrossentropy(from_logits=True))
        model.train_on_batch(*batch)
        results.append(model.get_weights())
    for a, b, s in zip(*results, start):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a, s) for a, s in zip(results[0], start))


def test_fit_rejects_bad_arguments():
    train, _ = split()
    model = build_model("dcnv2", spec(), **SMALL)
    with pytest.raises(ValueError, match="`epochs=0`"):
        training.fit(model, train, spec(), epochs=0)
    with pytest.raises(ValueError, match="`patience=-1`"):
        training.fit(model, train, spec(), patience=-1)
    with pytest.raises(ValueError, match="batch_size"):
        training.make_dataset(train, spec(), batch_size=0)
    with pytest.raises(ValueError, match="no label column 'click'"):
        training.make_dataset(train, spec(), label="click")
