"""What the two error memories share: the ``center``, validated writes and the read contract."""

from __future__ import annotations

from reloop2_tf._keras import keras, tf
from reloop2_tf.layers import _validation as v

_EPS = 1e-7


def probability_to_logit(probs) -> tf.Tensor:
    """Logit of a probability clipped to [eps, 1 - eps] (SPEC section 1)."""
    probs = tf.clip_by_value(tf.cast(probs, tf.float32), _EPS, 1.0 - _EPS)
    return tf.math.log(probs) - tf.math.log1p(-probs)


class ErrorMemory(keras.layers.Layer):
    """Base class of the error memories.

    Subclasses define ``_build_state(dim)`` (their variables), ``_write(hidden, labels, base_probs,
    sample_weight, ids)`` (called after validation, returns the weight written; the sketch
    overrides ``update`` itself, since it writes by keys), ``estimate(hidden,
    temperature)`` (a dict of ``label_mean``, ``base_mean`` and ``support``, each ``[B]``) and
    ``total_weight()``.

    A memory stores ``(hidden, label, base_prob, weight)`` rows in non-trainable variables. Writes
    happen only through ``update``; ``call`` and ``estimate`` never write.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.dim: int | None = None

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        if input_shape.rank != 2 or input_shape[-1] is None:
            raise ValueError(
                f"`hidden` must have a known width: shape [B, d]. Received: shape={input_shape}"
            )
        self.dim = int(input_shape[-1])
        self.center = self.add_weight(
            name="center", shape=[self.dim], initializer="zeros", trainable=False
        )
        self._build_state(self.dim)
        super().build(input_shape)

    def _ensure_built(self, hidden: tf.Tensor) -> None:
        if not self.built:
            # Variables must be created outside any tf.function / functional-construction graph.
            with tf.init_scope():
                self.build(hidden.shape)

    def set_center(self, center) -> None:
        """Sets the vector subtracted from every hidden row before hashing or similarity."""
        center = tf.convert_to_tensor(center, tf.float32)
        if center.shape != (self.dim,):
            raise ValueError(f"`center` must have shape [{self.dim}]. Received: shape={center.shape}")
        tf.debugging.assert_all_finite(center, "`center` contains NaN or Inf")
        self.center.assign(center)

    def update(self, hidden, labels, base_probs, sample_weight=None, ids=None,
               guard=None) -> tf.Tensor:
        """Writes labelled rows. Returns the total weight written (a float32 scalar).

        Args:
            hidden: float ``[B, d]``. The base model's hidden vectors.
            labels: ``[B]`` or ``[B, 1]`` in [0, 1].
            base_probs: ``[B]`` or ``[B, 1]`` in [0, 1]: the base model's predictions.
            sample_weight: optional ``[B]`` or ``[B, 1]``, >= 0. Rows with weight 0 change nothing.
            ids: dict of id features, for a memory with id tables. Defaults to `None`.
            guard: optional callable returning a scalar bool tensor, run while the memory is
                locked and after every input is checked: the rows are written only if it is
                true, else 0 is returned (the export's exactly-once write ids use it).
        """
        hidden = v.as_hidden(hidden, self.dim)
        self._ensure_built(hidden)
        labels, base_probs, sample_weight = v.write_columns(labels, base_probs, sample_weight)
        checks = v.update_checks(hidden, labels, base_probs, sample_weight)
        with tf.control_dependencies(checks):
            written = self._write(hidden, labels, base_probs, sample_weight, ids, guard=guard)
        return written

    def _check_hidden(self, hidden) -> tf.Tensor:
        hidden = v.as_hidden(hidden, self.dim)
        self._ensure_built(hidden)
        return hidden
