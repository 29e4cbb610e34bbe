"""Shared by test_export.py and test_serving.py: a small raw-feature model and a dev-server process."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

import reloop2_tf as r2
from reloop2_tf._keras import keras, tf
from reloop2_serving.process import DevServerProcess

ROOT = Path(__file__).resolve().parents[1]
NUM_TABLES, NUM_BITS, ID_BITS = 8, 5, 10
ID_GROUPS = ["item_id", ("user_id", "item_id")]
# Rows of the memory's state (snapshot, restore, merge): its table cells, the totals row, then
# the trust sums. No recent tables: they forget at `recent_half_life` whatever `half_life` says,
# and these tests check sums that must be exact across replicas (test_export.py covers them).
_LAYOUT = r2.LSHErrorMemory(num_tables=NUM_TABLES, num_bits=NUM_BITS, id_groups=ID_GROUPS,
                            id_bits=ID_BITS, recent_groups=())
STATE_ROWS, TABLE_SIZES = _LAYOUT.num_state_rows, _LAYOUT.table_sizes
TOTALS_ROW = _LAYOUT.totals_row


def build_model(seed: int = 0, compensation_weight: float = 1.0, memory=None) -> r2.ReLoop2Model:
    """String ``user_id``/``item_id`` and a float ``price``, hashed and embedded inside the model."""
    keras.utils.set_random_seed(seed)
    user = keras.Input(shape=(), dtype=tf.string, name="user_id")
    item = keras.Input(shape=(), dtype=tf.string, name="item_id")
    price = keras.Input(shape=(), dtype=tf.float32, name="price")
    # Unit-scale embeddings: with the default +-0.05 the untrained hidden vector would depend on
    # price alone, and rows of different ids would share buckets.
    embed = keras.layers.Embedding(
        101, 8, embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0))
    u = embed(keras.layers.Hashing(101)(user))
    i = embed(keras.layers.Hashing(101)(item))
    x = keras.layers.Concatenate()([u, i, keras.layers.Reshape((1,))(price)])
    hidden = keras.layers.Dense(16, activation="tanh", name="hidden")(x)
    logit = keras.layers.Dense(1, name="logit")(hidden)
    base = keras.Model({"user_id": user, "item_id": item, "price": price}, logit)
    memory = memory if memory is not None else r2.LSHErrorMemory(
        num_tables=NUM_TABLES, num_bits=NUM_BITS, seed=seed, half_life=None,
        id_groups=ID_GROUPS, id_bits=ID_BITS, recent_groups=())
    return r2.ReLoop2Model(base, compensation=r2.ErrorCompensation(
        memory, compensation_weight=compensation_weight,
        self_tuning=isinstance(memory, r2.LSHErrorMemory)))


def make_features(n: int, rng: np.random.Generator, users: int = 30, items: int = 50) -> dict:
    return {
        "user_id": np.array([f"u{k}" for k in rng.integers(0, users, n)], dtype=object),
        "item_id": np.array([f"i{k}" for k in rng.integers(0, items, n)], dtype=object),
        "price": rng.uniform(0, 3, n).astype(np.float32),
    }


def take(features: dict, index) -> dict:
    return {k: v[index] for k, v in features.items()}


class DevServer(DevServerProcess):
    """``python -m reloop2_serving.dev_server`` in a subprocess on a free loopback port."""


class Session:
    """A SavedModel loaded the way TF Serving loads it: TF1 Session over the SignatureDefs."""

    def __init__(self, path):
        self.graph = tf.Graph()
        self.sess = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(self.sess, ["serve"], str(path))
        self.sigs = {k: v for k, v in meta.signature_def.items() if not k.startswith("__")}

    def __call__(self, name, **inputs):
        sig = self.sigs[name]
        if "write_id" in sig.inputs:
            inputs.setdefault("write_id", "")  # no deduplication unless a test names an id
        return self.sess.run({k: t.name for k, t in sig.outputs.items()},
                             {sig.inputs[k].name: v for k, v in inputs.items()})

    def checksum(self):
        return hashlib.sha256(self("memory_snapshot")["sketch"].tobytes()).hexdigest()

    def close(self):
        self.sess.close()
