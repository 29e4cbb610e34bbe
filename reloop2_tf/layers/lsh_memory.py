"""The LSH sketch error memory (SPEC section 2): O(1) reads and writes, constant footprint."""

from __future__ import annotations

import math

import numpy as np

from reloop2_tf._keras import keras, tf
from reloop2_tf.layers.memory_base import ErrorMemory

# Below this global scale the stored values are folded back into true units, so float32 never
# overflows: the fold costs one pass over the table every ~20 half-lives of rows.
_MIN_SCALE = 1e-6
_CHANNELS = ("weight_sum", "label_sum", "base_sum")


@keras.saving.register_keras_serializable(package="reloop2_tf")
class LSHErrorMemory(ErrorMemory):
    """Error memory held in a signed-random-projection (SRP) sketch.

    ``num_tables`` tables of ``2**num_bits`` buckets each store ``(weight_sum, label_sum,
    base_sum)``. A row's bucket in table ``k`` is ``sum_j [ (h - center) . P[k, :, j] > 0 ] * 2**j``.
    Reading a row averages the label and base prediction stored in its ``num_tables`` buckets.

    Args:
        num_tables: int. Number of hash tables K. Defaults to `64`.
        num_bits: int. SRP bits per table L; each table has ``2**num_bits`` buckets.
            Defaults to `12`.
        seed: int. Seed of the N(0, 1) projections. Defaults to `0`.
        half_life: optional float. If set, older rows fade exponentially: a row's weight halves
            after ``half_life`` further rows are written. Costs O(1) per write. Defaults to `None`.
        num_id_tables: int. Extra tables keyed by identity (docs/drift.md). When > 0, the last
            ``id_dims`` columns of the hidden input must be an id code (from ``IdCode``): the
            ``num_tables`` SRP tables then hash only the other columns, and each id table hashes
            only the code, i.e. is a hash table keyed by the id. One memory serves similarity and
            identity. Defaults to `0`.
        id_dims: int. Width of the id code at the end of the hidden input; > 0 exactly when
            ``num_id_tables`` > 0. Defaults to `0`.

    Example:

    >>> mem = LSHErrorMemory(num_tables=4, num_bits=3, seed=0)
    >>> mem.update(tf.ones([2, 8]), labels=[1.0, 0.0], base_probs=[0.5, 0.5])
    >>> mem.lookup(tf.ones([1, 8]))["label_mean"]   # [1, 4] of 0.5
    """

    def __init__(self, num_tables: int = 64, num_bits: int = 12, seed: int = 0,
                 half_life: float | None = None, num_id_tables: int = 0, id_dims: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_tables, int) or num_tables < 1:
            raise ValueError(f"`num_tables` should be an int >= 1. Received: num_tables={num_tables!r}")
        if not isinstance(num_bits, int) or not 1 <= num_bits <= 24:
            raise ValueError(f"`num_bits` should be an int in [1, 24]. Received: num_bits={num_bits!r}")
        if half_life is not None and not (half_life > 0 and math.isfinite(half_life)):
            raise ValueError("`half_life` should be a positive number or None. "
                             f"Received: half_life={half_life!r}")
        for name, value in (("num_id_tables", num_id_tables), ("id_dims", id_dims)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` should be an int >= 0. Received: {name}={value!r}")
        if (num_id_tables > 0) != (id_dims > 0):
            raise ValueError("`num_id_tables` and `id_dims` go together: both 0, or both > 0. "
                             f"Received: num_id_tables={num_id_tables}, id_dims={id_dims}")
        self.num_tables = num_tables
        self.num_id_tables = num_id_tables
        self.id_dims = id_dims
        self.num_bits = num_bits
        self.seed = int(seed)
        self.half_life = None if half_life is None else float(half_life)

    @property
    def num_buckets(self) -> int:
        return 2**self.num_bits

    @property
    def total_tables(self) -> int:
        """SRP tables plus id tables: the sketch's first axis."""
        return self.num_tables + self.num_id_tables

    def _build_state(self, dim: int) -> None:
        k, l = self.total_tables, self.num_bits
        if self.id_dims and dim <= self.id_dims:
            raise ValueError(f"the hidden input (width {dim}) must be wider than `id_dims` "
                             f"({self.id_dims}): hidden columns first, then the id code")
        # Drawn with NumPy so that the projections depend only on `seed`, not on TF's RNG version.
        values = np.random.default_rng(self.seed).standard_normal((k, dim, l)).astype(np.float32)
        if self.id_dims:  # SRP tables ignore the id code; id tables see nothing else
            values[:self.num_tables, dim - self.id_dims:, :] = 0.0
            values[self.num_tables:, :dim - self.id_dims, :] = 0.0
        self.projections = self.add_weight(
            name="projections", shape=[k, dim, l], trainable=False,
            initializer=keras.initializers.Constant(values),
        )
        self.sketch = self.add_weight(
            name="sketch", shape=[k, self.num_buckets, 3], initializer="zeros", trainable=False
        )
        # True sketch = sketch * scale. Only half-life forgetting moves it away from 1.
        self.scale = self.add_weight(name="scale", shape=[], initializer="ones", trainable=False)
        # [L, 1] powers of two: packing bits is one [B*K, L] x [L, 1] matmul, exact in float32
        # because every partial sum is an integer below 2**24.
        self._bit_values = tf.constant([[2.0**j] for j in range(l)], dtype=tf.float32)
        self._table_offsets = tf.range(k, dtype=tf.int32) * self.num_buckets
        # A batch of at least this many rows is summed per bucket and added in one pass over the
        # table; smaller batches scatter. Scattering costs ~30x more per update than the pass
        # costs per cell (docs/performance.md), so the pass wins from 2**L / 32 rows.
        self._dense_write_rows = max(1, self.num_buckets // 32)

    def call(self, hidden):
        return self.lookup(hidden)

    def bucket_ids(self, hidden) -> tf.Tensor:
        """int32 ``[B, K]``: the bucket of every row in every table."""
        hidden = self._check_hidden(hidden)
        k, l = self.total_tables, self.num_bits
        # One fused [d, K*L] matmul instead of K small ones.
        fused = tf.reshape(tf.transpose(self.projections, [1, 0, 2]), [self.dim, k * l])
        bits = tf.cast(tf.matmul(hidden - self.center, fused) > 0.0, tf.float32)  # [B, K*L]
        buckets = tf.matmul(tf.reshape(bits, [-1, l]), self._bit_values)  # [B*K, 1]
        return tf.reshape(tf.cast(buckets, tf.int32), [-1, k])

    def _indices(self, buckets) -> tf.Tensor:
        tables = tf.broadcast_to(tf.range(self.total_tables, dtype=tf.int32), tf.shape(buckets))
        return tf.stack([tables, buckets], axis=-1)  # [B, K, 2]

    def _scatter(self, buckets, values):
        """Adds ``values`` ``[B, 3]`` at every row's K buckets: O(K) cells touched per row."""
        updates = tf.broadcast_to(values[:, None, :], [tf.shape(values)[0], self.total_tables, 3])
        self.sketch.scatter_nd_add(self._indices(buckets), updates)
        return tf.no_op()

    def _add_dense(self, buckets, values):
        """Same sum as ``_scatter``: per-bucket totals, then one locked ``assign_add``."""
        flat = tf.reshape(buckets + self._table_offsets, [-1])  # [B*K], row-major
        rows = tf.repeat(tf.range(tf.shape(values)[0]), self.total_tables)
        delta = tf.math.unsorted_segment_sum(tf.gather(values, rows), flat,
                                             self.total_tables * self.num_buckets)
        # Scatters leave the sketch in copy-on-read mode, where assign_add first copies the
        # whole table; switching back to copy-on-write skips that copy when nothing else holds it.
        with tf.control_dependencies([tf.raw_ops.DisableCopyOnRead(resource=self.sketch.handle)]):
            self.sketch.assign_add(tf.reshape(delta, [self.total_tables, self.num_buckets, 3]))
        return tf.no_op()

    def _write(self, hidden, labels, base_probs, sample_weight) -> tf.Tensor:
        buckets = self.bucket_ids(hidden)
        if self.half_life is not None:
            rows = tf.reduce_sum(tf.cast(sample_weight > 0, tf.float32))
            self.scale.assign(self.scale * tf.pow(0.5, rows / self.half_life))
        w = sample_weight / self.scale
        values = tf.stack([w, w * labels, w * base_probs], axis=-1)  # [B, 3]
        batch = buckets.shape[0]
        if batch is not None:
            (self._add_dense if batch >= self._dense_write_rows else self._scatter)(buckets, values)
        else:
            tf.cond(tf.shape(buckets)[0] >= self._dense_write_rows,
                    lambda: self._add_dense(buckets, values),
                    lambda: self._scatter(buckets, values))
        if self.half_life is not None:
            tf.cond(self.scale < _MIN_SCALE, self._fold_scale, tf.no_op)
        return tf.reduce_sum(sample_weight)

    def _fold_scale(self):
        self.sketch.assign(self.sketch * self.scale)
        self.scale.assign(1.0)
        return tf.no_op()

    def lookup(self, hidden) -> dict[str, tf.Tensor]:
        """Reads the buckets of ``hidden``: ``weight``, ``label_mean``, ``base_mean``, each ``[B, K]``.

        Means are 0 where a bucket is empty (weight 0).
        """
        stats = tf.gather_nd(self.sketch, self._indices(self.bucket_ids(hidden))) * self.scale  # [B, K, 3]
        weight = stats[..., 0]
        return {
            "weight": weight,
            "label_mean": tf.math.divide_no_nan(stats[..., 1], weight),
            "base_mean": tf.math.divide_no_nan(stats[..., 2], weight),
        }

    def estimate(self, hidden, temperature: float) -> dict[str, tf.Tensor]:
        # Attention over tables with similarity s_k = log c_k: a_k = c_k^(1/tau) / sum_j c_j^(1/tau).
        stats = self.lookup(hidden)
        weight = stats["weight"]
        filled = weight > 0.0
        scores = tf.where(filled, tf.math.log(tf.where(filled, weight, 1.0)) / temperature, 0.0)
        scores -= tf.reduce_max(tf.where(filled, scores, -np.inf), axis=-1, keepdims=True)
        attention = tf.where(filled, tf.exp(tf.where(filled, scores, 0.0)), 0.0)
        attention = tf.math.divide_no_nan(attention, tf.reduce_sum(attention, -1, keepdims=True))
        return {
            "label_mean": tf.reduce_sum(attention * stats["label_mean"], axis=-1),
            "base_mean": tf.reduce_sum(attention * stats["base_mean"], axis=-1),
            "support": tf.reduce_sum(weight, axis=-1) / self.total_tables,
        }

    def total_weight(self) -> tf.Tensor:
        return tf.reduce_sum(self.sketch[0, :, 0]) * self.scale

    def reset(self) -> None:
        """Forgets everything."""
        self.sketch.assign(tf.zeros_like(self.sketch))
        self.scale.assign(1.0)

    def decay(self, factor) -> None:
        """Multiplies every stored weight by ``factor`` in (0, 1]."""
        factor = float(factor)
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"`factor` should be in (0, 1]. Received: factor={factor!r}")
        self.scale.assign(self.scale * factor)
        tf.cond(self.scale < _MIN_SCALE, self._fold_scale, tf.no_op)

    def snapshot(self) -> tf.Tensor:
        """The sketch in true units, ``[K, 2**L, 3]``: what ``restore`` and ``merge`` take."""
        return self.sketch * self.scale

    def _check_state(self, state) -> tf.Tensor:
        state = tf.convert_to_tensor(state, tf.float32)
        expected = [self.total_tables, self.num_buckets, 3]
        if state.shape.is_fully_defined() and state.shape.as_list() != expected:
            raise ValueError(f"`state` must have shape {expected}. Received: shape={state.shape}")
        checks = [
            tf.debugging.assert_equal(tf.shape(state), tf.constant(expected),
                                      message=f"`state` must have shape {expected}"),
            tf.debugging.assert_all_finite(state, "`state` contains NaN or Inf"),
            tf.debugging.assert_non_negative(state[..., 0], "`state` has negative weights"),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(state)

    def restore(self, state) -> None:
        """Replaces the sketch with ``state`` (from ``snapshot``)."""
        state = self._check_state(state)
        self.sketch.assign(state)
        self.scale.assign(1.0)

    def merge(self, other) -> None:
        """Adds another sketch (an ``LSHErrorMemory`` or a ``snapshot``) built on the same projections.

        One ``assign_add`` holds the variable's lock for the whole add, so a merge never loses a
        concurrent ``update`` (stored values are true values divided by ``scale``).
        """
        if isinstance(other, LSHErrorMemory):
            if ((other.num_tables, other.num_id_tables, other.num_bits, other.dim)
                    != (self.num_tables, self.num_id_tables, self.num_bits, self.dim)):
                raise ValueError("`other` must have the same num_tables, num_id_tables, num_bits "
                                 "and width d.")
            if not bool(tf.reduce_all(other.projections == self.projections)):
                raise ValueError("`other` must share this memory's projections (same seed and d).")
            other = other.snapshot()
        state = self._check_state(other)
        self.sketch.assign_add(state / self.scale)

    def get_config(self):
        config = super().get_config()
        config.update(num_tables=self.num_tables, num_bits=self.num_bits, seed=self.seed,
                      half_life=self.half_life, num_id_tables=self.num_id_tables,
                      id_dims=self.id_dims)
        return config
