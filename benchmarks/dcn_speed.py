"""Training speed of DCN at batch 1024 on CPU: tf-keras ``fit`` vs a plain ``tf.function`` loop
vs Keras 3.

Every variant trains the same DCN (raw MovieLens 100K features, ids hashed in the model, three
full-rank cross layers beside a (256, 128, 64) DNN) with Adam on BCE, from the same in-memory
``tf.data`` pipeline (97 steps of 1024 rows per epoch), and reports the first epoch (which
includes tracing) and then, over ``--rounds`` epochs interleaved across the variants, the median
steps per second and process CPU milliseconds per step.

    TF_USE_LEGACY_KERAS=1 RELOOP2_DATA=../shared/data \\
        .venv/bin/python benchmarks/dcn_speed.py --output runs/dcn_speed.json

Keras 3 runs in a subprocess (``TF_USE_LEGACY_KERAS=0``) on a DCN written with Keras 3 layers,
because tensorflow-recommenders refuses Keras 3; ``--no-keras3`` skips it.
"""

from __future__ import annotations

import argparse
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


def compiled(keras, model, **compile_kw):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.AUC(from_logits=True)],
        **compile_kw,
    )
    return model


def fit_epoch(model, data):
    """One epoch of ``model.fit``; the train function is built on the first call only."""
    return lambda: model.fit(data, epochs=1, verbose=0)


def loop_epoch(keras, tf, model, data, autograph: bool):
    """One epoch of a hand-written ``tf.function`` training loop."""
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

    def run():
        for x, y in data:
            loss = step(x, y)
        float(loss)  # wait for the last step

    return run


def input_epoch(data):
    def run():
        for _batch in data:
            pass

    return run


def measure(variants: dict, steps: int, rounds: int) -> list[dict]:
    """First epoch of each variant (tracing included), then ``rounds`` interleaved epochs.

    Interleaving spreads the load of other processes on a shared machine over all variants;
    process CPU time per step is reported beside wall-clock steps/s because it depends less on
    what else runs.
    """
    first = {}
    for name, run in variants.items():
        start = time.perf_counter()
        run()
        first[name] = time.perf_counter() - start
        logger.info("%s: first epoch %.1f s", name, first[name])
    walls: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    return [
        {
            "variant": name,
            "first_epoch_seconds": first[name],
            "steps_per_second": steps / float(np.median(walls[name])),
            "cpu_ms_per_step": 1000 * float(np.median(cpus[name])) / steps,
            "steps_per_epoch": steps,
            "rounds": rounds,
        }
        for name in variants
    ]


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


def keras3_worker(npz: str, batch_size: int, rounds: int, history_length: int) -> list[dict]:
    import keras
    import tensorflow as tf

    if not keras.__version__.startswith("3"):
        raise RuntimeError(f"expected Keras 3, got {keras.__version__}")
    arrays = np.load(npz, allow_pickle=True)
    features = {c: arrays[c] for c in COLUMNS}
    data = dataset(tf, features, arrays["label"], batch_size)
    steps = len(arrays["label"]) // batch_size
    keras.utils.set_random_seed(0)
    model = compiled(keras, portable_dcn(keras, tf, history_length))
    rows = measure({f"Keras {keras.__version__} fit": fit_epoch(model, data)}, steps, rounds)
    rows[0]["params"] = int(model.count_params())
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per variant")
    parser.add_argument("--history-length", type=int, default=20)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--no-keras3", dest="keras3", action="store_false")
    parser.add_argument("--output", default="runs/dcn_speed.json")
    parser.add_argument("--keras3-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.keras3_worker:
        rows = keras3_worker(args.keras3_worker, args.batch_size, args.rounds, args.history_length)
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
    logger.info("%d steps of %d rows per epoch, %d rounds", steps, args.batch_size, args.rounds)

    def zoo_dcn():
        keras.utils.set_random_seed(0)
        return build_dcn(spec)

    keras.backend.clear_session()
    zoo = compiled(keras, zoo_dcn())
    params = int(zoo.count_params())
    zoo_spe = compiled(keras, zoo_dcn(), steps_per_execution=16)
    # The same graph as a plain keras.Model: its train step goes through AutoGraph.
    base = zoo_dcn()
    plain = compiled(keras, keras.Model(base.inputs, base.outputs))
    keras.utils.set_random_seed(0)
    portable = compiled(keras, portable_dcn(keras, tf, args.history_length))
    variants = {
        "input pipeline alone": input_epoch(data),
        "tf-keras fit, zoo DCN (ZooModel)": fit_epoch(zoo, data),
        "tf-keras fit, zoo DCN, steps_per_execution=16": fit_epoch(zoo_spe, data),
        "tf-keras fit, same DCN as plain keras.Model": fit_epoch(plain, data),
        "plain tf.function loop, zoo DCN": loop_epoch(keras, tf, zoo_dcn(), data, True),
        "plain tf.function loop, zoo DCN, autograph=False": loop_epoch(
            keras, tf, zoo_dcn(), data, False
        ),
        "tf-keras fit, Keras-3 DCN code": fit_epoch(portable, data),
    }
    rows = measure(variants, steps, args.rounds)
    for row in rows:
        row.setdefault("params", params)
        logger.info("%s", row)
    rows[-1]["params"] = int(portable.count_params())

    if args.keras3:
        with tempfile.TemporaryDirectory() as tmp:
            npz = str(Path(tmp) / "features.npz")
            np.savez(npz, label=labels, **features)
            env = {**os.environ, "TF_USE_LEGACY_KERAS": "0"}
            cmd = [sys.executable, __file__, "--keras3-worker", npz,
                   "--batch-size", str(args.batch_size), "--rounds", str(args.rounds),
                   "--history-length", str(args.history_length)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode == 0:
                rows.extend(json.loads(done.stdout.strip().splitlines()[-1]))
            else:
                logger.warning("Keras 3 run failed:\n%s", done.stderr[-3000:])

    lines = [
        "| variant | first epoch (s, incl. tracing) | steady steps/s | CPU ms / step | params |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {row['first_epoch_seconds']:.1f} | "
            f"{row['steps_per_second']:.1f} | {row['cpu_ms_per_step']:.0f} | {row['params']:,} |"
        )
    table = "\n".join(lines)
    print(table)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    record = {"rows": rows, "args": vars(args), "table": table, "load_average": os.getloadavg()}
    output.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
