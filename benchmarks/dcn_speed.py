"""Training speed of DCN at batch 1024 on CPU: tf-keras ``fit`` vs a plain ``tf.function`` loop
vs Keras 3.

Every variant trains the same DCN (raw MovieLens 100K features, ids hashed in the model, three
full-rank cross layers beside a (256, 128, 64) DNN) with Adam on BCE, from the same in-memory
``tf.data`` pipeline, and reports the time to the end of the first epoch (which includes
tracing) and the steady-state steps per second of the later epochs.

    TF_USE_LEGACY_KERAS=1 RELOOP2_DATA=../shared/data \\
        .venv/bin/python benchmarks/dcn_speed.py --output runs/dcn_speed.json

Keras 3 runs in a subprocess (``TF_USE_LEGACY_KERAS=0``) on a DCN written with Keras 3 layers,
because tensorflow-recommenders refuses Keras 3; ``--no-keras3`` skips it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("dcn_speed")

COLUMNS = ("user_id", "item_id", "age", "gender", "occupation", "genre", "release_year", "history")
BUCKETS = {
    "user_id": 20_000,
    "item_id": 10_000,
    "age": 128,
    "gender": 8,
    "occupation": 64,
    "genre": 1024,
    "release_year": 256,
}


def dataset(tf, features: dict, labels: np.ndarray, batch_size: int):
    return (
        tf.data.Dataset.from_tensor_slices((features, labels))
        .batch(batch_size, drop_remainder=True)
        .cache()
        .prefetch(tf.data.AUTOTUNE)
    )


def summarise(name: str, start: float, ends: list[float], steps: int, **extra) -> dict:
    steady = [b - a for a, b in itertools.pairwise(ends)]
    return {
        "variant": name,
        "first_epoch_seconds": ends[0] - start,
        "steps_per_second": steps / float(np.median(steady)),
        "steps_per_epoch": steps,
        **extra,
    }


def keras_fit(keras, tf, model, data, steps: int, epochs: int, name: str, **compile_kw) -> dict:
    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start, self.ends = time.perf_counter(), []

        def on_epoch_end(self, epoch, logs=None):
            self.ends.append(time.perf_counter())

    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.AUC(from_logits=True)],
        **compile_kw,
    )
    clock = Clock()
    model.fit(data, epochs=epochs, callbacks=[clock], verbose=0)
    return summarise(name, clock.start, clock.ends, steps, **compile_kw)


def tf_function_loop(keras, tf, model, data, steps: int, epochs: int, autograph: bool) -> dict:
    optimizer = keras.optimizers.Adam(1e-3)
    loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)
    auc = keras.metrics.AUC(from_logits=True)

    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        auc.update_state(y, logits)
        return loss

    step = tf.function(step, autograph=autograph)
    start, ends = time.perf_counter(), []
    for _ in range(epochs):
        for x, y in data:
            loss = step(x, y)
        float(loss)  # wait for the last step
        ends.append(time.perf_counter())
    name = "plain tf.function loop" + ("" if autograph else " (autograph=False)")
    return summarise(name, start, ends, steps)


def input_only(tf, data, steps: int, epochs: int) -> dict:
    start, ends = time.perf_counter(), []
    for _ in range(epochs):
        for _batch in data:
            pass
        ends.append(time.perf_counter())
    return summarise("input pipeline alone", start, ends, steps)


def portable_dcn(keras, tf, history_length: int, embedding_dim: int = 16):
    """The zoo's DCN written with layers that exist in tf-keras and Keras 3 alike."""

    class Hash(keras.layers.Layer):
        def __init__(self, buckets, **kw):
            super().__init__(**kw)
            self.buckets = buckets

        def call(self, x):
            h = tf.strings.to_hash_bucket_fast(x, self.buckets - 1) + 1
            return tf.where(tf.equal(x, ""), tf.zeros_like(h), h)

    class Tokens(keras.layers.Layer):
        def call(self, x):
            t = tf.strings.split(x)[:, -history_length:]
            return t.to_tensor(default_value="", shape=[None, history_length])

    class MeanPool(keras.layers.Layer):
        def call(self, ids, emb):
            w = tf.cast(tf.not_equal(ids, 0), emb.dtype)[..., None]
            return tf.math.divide_no_nan(tf.reduce_sum(emb * w, 1), tf.reduce_sum(w, 1))

    class CrossLayer(keras.layers.Layer):
        def build(self, input_shape):
            self.dense = keras.layers.Dense(input_shape[-1])
            self.dense.build(input_shape)

        def call(self, x0, x):
            return x0 * self.dense(x) + x

    inputs = {c: keras.Input(shape=(), dtype="string", name=c) for c in COLUMNS}
    tables = {c: keras.layers.Embedding(BUCKETS[c], embedding_dim) for c in BUCKETS}
    hashers = {c: Hash(BUCKETS[c]) for c in BUCKETS}
    fields = [tables[c](hashers[c](inputs[c])) for c in BUCKETS]
    hist_ids = hashers["item_id"](Tokens()(inputs["history"]))
    fields.append(MeanPool()(hist_ids, tables["item_id"](hist_ids)))
    x0 = keras.layers.Concatenate()(fields)
    x = x0
    for _ in range(3):
        x = CrossLayer()(x0, x)
    deep = x0
    for units in (256, 128, 64):
        deep = keras.layers.Dense(units, activation="relu")(deep)
        deep = keras.layers.Dropout(0.1)(deep)
    hidden = keras.layers.Concatenate()([x, deep])
    return keras.Model(inputs, keras.layers.Dense(1)(hidden))


def keras3_worker(npz: str, batch_size: int, epochs: int, history_length: int) -> list[dict]:
    import keras
    import tensorflow as tf

    if not keras.__version__.startswith("3"):
        raise RuntimeError(f"expected Keras 3, got {keras.__version__}")
    arrays = np.load(npz, allow_pickle=True)
    features = {c: arrays[c] for c in COLUMNS}
    data = dataset(tf, features, arrays["label"], batch_size)
    steps = len(arrays["label"]) // batch_size
    keras.utils.set_random_seed(0)
    model = portable_dcn(keras, tf, history_length)
    out = keras_fit(keras, tf, model, data, steps, epochs, f"Keras {keras.__version__} fit")
    out["params"] = int(model.count_params())
    return [out]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3, help="the first includes tracing")
    parser.add_argument("--history-length", type=int, default=20)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--no-keras3", dest="keras3", action="store_false")
    parser.add_argument("--output", default="runs/dcn_speed.json")
    parser.add_argument("--keras3-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.keras3_worker:
        rows = keras3_worker(args.keras3_worker, args.batch_size, args.epochs, args.history_length)
        print(json.dumps(rows))
        return 0

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from reloop2_tf._keras import keras, tf
    from reloop2_tf.data import load_dataset
    from reloop2_tf.features import FeatureSpec, features_from_frame
    from reloop2_tf.models import build_dcn

    df = load_dataset("ml-100k", data_dir=args.data_dir, history_length=args.history_length)
    spec = FeatureSpec.movielens(history_length=args.history_length)
    features = features_from_frame(df, spec)
    labels = df["label"].to_numpy(np.float32)
    steps = len(labels) // args.batch_size
    data = dataset(tf, features, labels, args.batch_size)
    logger.info("%d steps of %d rows per epoch, %d epochs", steps, args.batch_size, args.epochs)

    def zoo_dcn():
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        return build_dcn(spec)

    rows = [input_only(tf, data, steps, args.epochs)]
    model = zoo_dcn()
    params = int(model.count_params())
    rows.append(keras_fit(keras, tf, model, data, steps, args.epochs, "tf-keras fit (zoo DCN)"))
    rows.append(
        keras_fit(
            keras, tf, zoo_dcn(), data, steps, args.epochs, "tf-keras fit (zoo DCN)",
            steps_per_execution=16,
        )
    )
    plain = zoo_dcn()
    # The same graph as a plain keras.Model: its train step goes through AutoGraph.
    plain = keras.Model(plain.inputs, plain.outputs)
    rows.append(
        keras_fit(keras, tf, plain, data, steps, args.epochs, "tf-keras fit, plain keras.Model")
    )
    rows.append(tf_function_loop(keras, tf, zoo_dcn(), data, steps, args.epochs, autograph=True))
    rows.append(tf_function_loop(keras, tf, zoo_dcn(), data, steps, args.epochs, autograph=False))
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    portable = portable_dcn(keras, tf, args.history_length)
    rows.append(
        keras_fit(keras, tf, portable, data, steps, args.epochs, "tf-keras fit, Keras-3 DCN code")
    )
    for row in rows:
        row.setdefault("params", params)
        logger.info("%s", row)

    if args.keras3:
        with tempfile.TemporaryDirectory() as tmp:
            npz = str(Path(tmp) / "features.npz")
            np.savez(npz, label=labels, **features)
            env = {**os.environ, "TF_USE_LEGACY_KERAS": "0"}
            cmd = [sys.executable, __file__, "--keras3-worker", npz,
                   "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
                   "--history-length", str(args.history_length)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode == 0:
                rows.extend(json.loads(done.stdout.strip().splitlines()[-1]))
            else:
                logger.warning("Keras 3 run failed:\n%s", done.stderr[-3000:])

    lines = [
        "| variant | first epoch (s, incl. tracing) | steady steps/s | params |",
        "|---|---|---|---|",
    ]
    for row in rows:
        name = row["variant"]
        if row.get("steps_per_execution"):
            name += f", steps_per_execution={row['steps_per_execution']}"
        lines.append(
            f"| {name} | {row['first_epoch_seconds']:.1f} | {row['steps_per_second']:.1f} | "
            f"{row['params']:,} |"
        )
    table = "\n".join(lines)
    print(table)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"rows": rows, "args": vars(args), "table": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
