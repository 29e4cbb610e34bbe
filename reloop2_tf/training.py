"""A compact training helper for zoo models: Adam, BCE on logits, AUC, early stopping.

It is plain Keras underneath: ``compile_model`` calls ``model.compile`` and ``fit`` calls
``model.fit`` on a ``tf.data`` pipeline, so ``model.compile(...)`` / ``model.fit(...)`` by hand
work the same way.

Example:

>>> spec = FeatureSpec.movielens()
>>> model = build_model("deepfm", spec)
>>> history = fit(model, train_df, spec, validation_df=valid_df, epochs=5)  # doctest: +SKIP
>>> probs = predict(model, test_df, spec)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from reloop2_tf._keras import keras, tf
from reloop2_tf.evaluation import metrics
from reloop2_tf.features import FeatureSpec, features_from_frame

logger = logging.getLogger(__name__)

LABEL_COLUMN = "label"


def compile_model(
    model: keras.Model,
    learning_rate: float = 1e-3,
    steps_per_execution: int = 1,
    jit_compile: bool = False,
) -> keras.Model:
    """Compiles with Adam, ``BinaryCrossentropy(from_logits=True)`` and ``AUC(from_logits=True)``.

    Args:
        model: a model whose output is a logit ``[B, 1]``.
        learning_rate: float. Adam's learning rate. Defaults to `1e-3`.
        steps_per_execution: int. Training steps per ``tf.function`` call; more amortises the
            Python overhead of small steps. Defaults to `1`.
        jit_compile: bool. XLA-compile the train step. Defaults to `False` (string ops of the
            id hashing have no XLA kernel).

    Returns:
        The same model, compiled.
    """
    if not learning_rate > 0:
        raise ValueError(
            f"`learning_rate` should be > 0. Received: `learning_rate={learning_rate!r}`"
        )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.AUC(from_logits=True, name="auc")],
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    return model


def make_dataset(
    df: pd.DataFrame,
    spec: FeatureSpec,
    batch_size: int = 256,
    shuffle: bool = False,
    seed: int | None = 0,
    label: str | None = LABEL_COLUMN,
) -> tf.data.Dataset:
    """A batched ``tf.data.Dataset`` of ``(features, label)`` (or features only if ``label=None``).

    The frame is converted to tensors once, so each step only slices memory; a Python
    generator here would make training input-bound.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"`batch_size` should be a positive integer. Received: {batch_size!r}")
    features = features_from_frame(df, spec)
    if label is None:
        data = tf.data.Dataset.from_tensor_slices(features)
    else:
        if label not in df.columns:
            raise ValueError(f"`df` has no label column {label!r}. Columns: {list(df.columns)}")
        labels = df[label].to_numpy(dtype=np.float32)
        data = tf.data.Dataset.from_tensor_slices((features, labels))
    if shuffle:
        data = data.shuffle(len(df), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class _EpochTimer(keras.callbacks.Callback):
    """Adds the wall time of each training epoch (validation excluded) to the logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_test_begin(self, logs=None):
        self._train_seconds = time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            seconds = getattr(self, "_train_seconds", None)
            logs["epoch_seconds"] = (
                seconds if seconds is not None else time.perf_counter() - self._start
            )
            self._train_seconds = None


class TrainingProgress(keras.callbacks.Callback):
    """One tqdm bar over every training batch of a ``model.fit`` (use with ``verbose=0``).

    Keras's own progress bar redraws a line per batch, which fills a log file or a CI console;
    ``tqdm.keras.TqdmCallback`` subclasses whichever ``keras`` imports first (Keras 3 here, not
    the tf-keras models this package trains), so this is the few lines it takes.
    """

    def __init__(self, desc: str = "training"):
        super().__init__()
        self.desc = desc
        self._bar = None

    def on_train_begin(self, logs=None):
        steps, epochs = self.params.get("steps"), self.params.get("epochs", 1)
        self._bar = tqdm(total=steps * epochs if steps else None, desc=self.desc,
                         unit="batch", leave=False)

    def on_train_batch_end(self, batch, logs=None):
        self._bar.update(1)
        if logs and "loss" in logs:
            self._bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)

    def on_train_end(self, logs=None):
        self._bar.close()


def fit(
    model: keras.Model,
    train_df: pd.DataFrame,
    spec: FeatureSpec,
    validation_df: pd.DataFrame | None = None,
    epochs: int = 5,
    batch_size: int = 256,
    patience: int = 2,
    learning_rate: float = 1e-3,
    monitor: str = "val_auc",
    shuffle: bool = True,
    seed: int | None = 0,
    verbose: int | str = "auto",
    callbacks: Sequence[keras.callbacks.Callback] = (),
    label: str = LABEL_COLUMN,
) -> keras.callbacks.History:
    """Trains on ``train_df`` with early stopping on the validation AUC.

    An uncompiled model is compiled with ``compile_model(model, learning_rate)``; a compiled
    one keeps its optimizer, loss and metrics. With ``validation_df``, training stops after
    ``patience`` epochs without a better ``monitor`` and the best weights are restored.

    Returns:
        The Keras ``History``; ``history.history["epoch_seconds"]`` holds the training time
        of each epoch.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
        raise ValueError(f"`epochs` should be a positive integer. Received: `epochs={epochs!r}`")
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
        raise ValueError(f"`patience` should be an integer >= 0. Received: `patience={patience!r}`")
    if model.optimizer is None or not getattr(model, "compiled_loss", None):
        compile_model(model, learning_rate)
    train = make_dataset(train_df, spec, batch_size, shuffle=shuffle, seed=seed, label=label)
    validation = None
    all_callbacks = [_EpochTimer(), *callbacks]
    if validation_df is not None:
        validation = make_dataset(validation_df, spec, batch_size, label=label)
        mode = "min" if "loss" in monitor else "max"
        all_callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor, mode=mode, patience=patience, restore_best_weights=True
            )
        )
    logger.info(
        "training %s on %d rows (validation: %s) for up to %d epochs",
        model.name,
        len(train_df),
        "none" if validation_df is None else f"{len(validation_df)} rows",
        epochs,
    )
    return model.fit(
        train, validation_data=validation, epochs=epochs, callbacks=all_callbacks, verbose=verbose
    )


def predict(
    model: keras.Model, df: pd.DataFrame, spec: FeatureSpec, batch_size: int = 4096
) -> np.ndarray:
    """Click probabilities ``sigmoid(logit)`` of a zoo model, shape ``[N]``."""
    logits = model.predict(make_dataset(df, spec, batch_size, label=None), verbose=0)
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64).reshape(-1)))


def evaluate_frame(
    model: keras.Model,
    df: pd.DataFrame,
    spec: FeatureSpec,
    group: str | None = "user_id",
    label: str = LABEL_COLUMN,
    batch_size: int = 4096,
) -> dict[str, float]:
    """AUC, gAUC (grouped by ``group``) and logloss of ``model`` on ``df``."""
    probs = predict(model, df, spec, batch_size)
    groups = df[group].to_numpy() if group is not None else None
    return metrics.evaluate(df[label].to_numpy(), probs, groups)


__all__ = [
    "LABEL_COLUMN",
    "TrainingProgress",
    "compile_model",
    "evaluate_frame",
    "fit",
    "make_dataset",
    "predict",
]
