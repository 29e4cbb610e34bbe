"""The exact k-NN error memory (SPEC section 3): the accuracy reference for the sketch."""

from __future__ import annotations

import numpy as np

from reloop2_tf._keras import keras, tf
from reloop2_tf.layers._mutex import locked, mutex_name, when
from reloop2_tf.layers.memory_base import ErrorMemory


@keras.saving.register_keras_serializable(package="reloop2_tf")
class KNNErrorMemory(ErrorMemory):
    """Error memory that keeps the last ``capacity`` rows and retrieves exact cosine top-k.

    Cost is O(capacity * d) per query; this is the baseline the sketch approximates.

    Args:
        capacity: int. Rows kept in the ring buffer; older rows are overwritten. Defaults to
            `100_000`.
        top_k: int. Neighbours retrieved per query. Defaults to `32`.
    """

    def __init__(self, capacity: int = 100_000, top_k: int = 32, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"`capacity` should be an int >= 1. Received: capacity={capacity!r}")
        if not isinstance(top_k, int) or not 1 <= top_k <= capacity:
            raise ValueError(f"`top_k` should be an int in [1, capacity]. Received: top_k={top_k!r}")
        self.capacity = capacity
        self.top_k = top_k
        # A write advances the ring's position read-modify-write: writes, resets and decays
        # take turns on this mutex, so that concurrent writers never take the same slots.
        self._mutex_name = mutex_name("reloop2_knn_memory")

    def _build_state(self, dim: int) -> None:
        c = self.capacity
        self.keys = self.add_weight(name="keys", shape=[c, dim], initializer="zeros", trainable=False)
        self.labels = self.add_weight(name="labels", shape=[c], initializer="zeros", trainable=False)
        self.base_probs = self.add_weight(name="base_probs", shape=[c], initializer="zeros",
                                          trainable=False)
        # Weight 0 marks an empty slot.
        self.row_weights = self.add_weight(name="row_weights", shape=[c], initializer="zeros",
                                        trainable=False)
        self.position = self.add_weight(name="position", shape=[], dtype=tf.int64,
                                        initializer="zeros", trainable=False)

    def call(self, hidden):
        return self.estimate(hidden, temperature=0.1)

    def _normalize(self, hidden) -> tf.Tensor:
        return tf.math.l2_normalize(hidden - self.center, axis=-1)

    def _write(self, hidden, labels, base_probs, sample_weight, ids=None,
               guard=None) -> tf.Tensor:
        if ids is not None:
            raise ValueError("KNNErrorMemory has no id tables: `ids` must be None")
        return self._locked(lambda: when(guard, lambda: self._write_rows(
            hidden, labels, base_probs, sample_weight),
            after=[hidden, labels, base_probs, sample_weight]))

    def _write_rows(self, hidden, labels, base_probs, sample_weight) -> tf.Tensor:
        # Zero-weight rows must not take a slot, or padding would evict real rows.
        keep = tf.reshape(tf.where(sample_weight > 0.0), [-1])
        keep = keep[-self.capacity:]  # a batch larger than the buffer keeps its newest rows
        n = tf.size(keep, out_type=tf.int64)
        slots = (self.position + tf.range(n, dtype=tf.int64)) % self.capacity
        slots = slots[:, None]
        self.keys.scatter_nd_update(slots, self._normalize(tf.gather(hidden, keep)))
        self.labels.scatter_nd_update(slots, tf.gather(labels, keep))
        self.base_probs.scatter_nd_update(slots, tf.gather(base_probs, keep))
        self.row_weights.scatter_nd_update(slots, tf.gather(sample_weight, keep))
        self.position.assign((self.position + n) % self.capacity)
        return tf.reduce_sum(sample_weight)

    def _locked(self, change):
        """Runs ``change()`` holding the memory's mutex (``_mutex.locked``), until every
        variable it may set has been set (a one-element read of each, ordered after its writes:
        no copy of the buffer)."""
        return locked(self._mutex_name, change, held_for=lambda: [
            *(tf.gather(v, [0]) for v in (self.keys, self.labels, self.base_probs,
                                          self.row_weights)),
            self.position.read_value()])

    def neighbours(self, hidden) -> dict[str, tf.Tensor]:
        """Top-k neighbours: ``similarity``, ``index`` and ``valid``, each ``[B, top_k]``."""
        hidden = self._check_hidden(hidden)
        # Writes are sparse, which leaves the variables in copy-on-read mode: a plain read would
        # copy all C rows on every query (1 GB at 10^6 x 256). Reading without the copy puts them
        # back in copy-on-write mode, so a write copies only if a read still holds the buffer.
        keys, weights = _read_no_copy(self.keys), _read_no_copy(self.row_weights)
        sims = tf.matmul(self._normalize(hidden), keys, transpose_b=True)  # [B, C]
        sims = tf.where(weights[None, :] > 0.0, sims, -np.inf)
        top = tf.math.top_k(sims, k=self.top_k, sorted=True)
        return {"similarity": top.values, "index": top.indices,
                "valid": tf.math.is_finite(top.values)}

    def estimate(self, hidden, temperature: float, ids=None) -> dict[str, tf.Tensor]:
        if ids is not None:
            raise ValueError("KNNErrorMemory has no id tables: `ids` must be None")
        nb = self.neighbours(hidden)
        valid = nb["valid"]
        w = tf.gather(self.row_weights, nb["index"])
        # softmax(sim / tau) over valid neighbours, each neighbour counted with its sample weight.
        scores = tf.where(valid, nb["similarity"] / temperature, -np.inf)
        scores -= tf.reduce_max(tf.where(valid, scores, 0.0), axis=-1, keepdims=True)
        attention = tf.where(valid, tf.exp(tf.where(valid, scores, 0.0)) * w, 0.0)
        attention = tf.math.divide_no_nan(attention, tf.reduce_sum(attention, -1, keepdims=True))
        return {
            "label_mean": tf.reduce_sum(attention * tf.gather(self.labels, nb["index"]), -1),
            "base_mean": tf.reduce_sum(attention * tf.gather(self.base_probs, nb["index"]), -1),
            "support": tf.reduce_sum(tf.cast(valid, tf.float32), -1),
        }

    def total_weight(self) -> tf.Tensor:
        return tf.reduce_sum(self.row_weights)

    def reset(self) -> None:
        """Forgets everything."""
        def forget():
            for var in (self.keys, self.labels, self.base_probs, self.row_weights):
                var.assign(tf.zeros_like(var))
            self.position.assign(0)

        self._locked(forget)

    def decay(self, factor) -> None:
        """Multiplies every stored weight by ``factor`` in (0, 1]."""
        factor = float(factor)
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"`factor` should be in (0, 1]. Received: factor={factor!r}")

        def shrink():
            self.row_weights.assign(self.row_weights * factor)

        self._locked(shrink)

    def get_config(self):
        config = super().get_config()
        config.update(capacity=self.capacity, top_k=self.top_k)
        return config


def _read_no_copy(variable) -> tf.Tensor:
    read = getattr(variable, "read_value_no_copy", None)
    return read() if read is not None else tf.convert_to_tensor(variable)
