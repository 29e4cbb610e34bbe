"""ErrorCompensation: corrects a base model's output with the error read from a memory.

Two read-outs (docs/core.md):

* self-tuning (the default): each table group of the memory gives a shrunk residual, and an
  online logistic combiner in logit space learns from the feedback stream how much to trust each
  group. It starts at zero trust, which is the base model.
* the paper's (``ErrorCompensation.paper()``, SPEC section 1): a fixed blend in probability
  space, ``y_pred = clip(y_base + lambda * rho * (gamma (y_bar - y_base)
  + (1 - gamma)(y_bar - y_bar_base)), 0, 1)``.
"""

from __future__ import annotations

import math

from reloop2_tf._keras import keras, tf
from reloop2_tf.layers import _validation as v
from reloop2_tf.layers.lsh_memory import LSHErrorMemory
from reloop2_tf.layers.memory_base import ErrorMemory, probability_to_logit


@keras.saving.register_keras_serializable(package="reloop2_tf")
class ErrorCompensation(keras.layers.Layer):
    """Compensates base predictions with the error the memory holds for similar rows and ids.

    Self-tuning (default): ``logit = z + compensation_weight * (sum_g w_g f_g + b)`` where
    ``f_g`` are the groups' shrunk residuals (``LSHErrorMemory.trust_features``) and the trust
    ``w``, ``b`` is an online Newton fit of the logloss of every row written, each read as it
    was served (before its write) and forgotten at the memory's half-life (``trust``).
    The sums behind it are additive, so they snapshot, restore and merge with the tables.

    Paper (``self_tuning=False``): ``y_pred = clip(y_base + compensation_weight * y_err, 0, 1)``
    with ``y_err = rho (gamma (y_bar - y_base) + (1 - gamma)(y_bar - y_bar_base))``.

    ``call`` only reads; labels are written with ``update_memory`` or ``update_memory_by_keys``.

    Args:
        memory: an ``LSHErrorMemory`` (or, with ``self_tuning=False``, a ``KNNErrorMemory``).
            Defaults to `LSHErrorMemory()`.
        compensation_weight: float >= 0, lambda. `0` returns the base probability exactly.
            Self-tuning: a multiplier on the learnt correction. Defaults to `1.0`.
        temperature: float > 0, tau of the paper's read. Defaults to `1.0`.
        gamma: float in [0, 1], of the paper's read. Defaults to `0.0`.
        prior_count: float >= 0. Shrinkage pseudo-count: self-tuning reads every group's
            residual at ``prior_count`` and ``10 * prior_count`` and learns the blend; the paper's
            read uses ``rho = n / (n + prior_count)``. Defaults to `2.0`.
        self_tuning: bool. Learn the trust online (`True`) or use the paper's fixed blend.
            Defaults to `True`.

    Example:

    >>> comp = ErrorCompensation()
    >>> probs = comp(base_logits, hidden)                  # [B, 1]
    >>> comp.update_memory(base_logits, hidden, labels)    # after the labels arrive
    """

    def __init__(self, memory: ErrorMemory | None = None, compensation_weight: float = 1.0,
                 temperature: float = 1.0, gamma: float = 0.0, prior_count: float = 2.0,
                 self_tuning: bool = True, **kwargs):
        super().__init__(**kwargs)
        if isinstance(memory, dict):
            memory = keras.saving.deserialize_keras_object(memory)
        if memory is not None and not isinstance(memory, ErrorMemory):
            raise ValueError(
                f"`memory` should be an LSHErrorMemory or KNNErrorMemory. Received: memory={memory!r}"
            )
        if not (compensation_weight >= 0 and math.isfinite(compensation_weight)):
            raise ValueError("`compensation_weight` should be a finite number >= 0. "
                             f"Received: compensation_weight={compensation_weight!r}")
        if not temperature > 0:
            raise ValueError(f"`temperature` should be > 0. Received: temperature={temperature!r}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"`gamma` should be in [0, 1]. Received: gamma={gamma!r}")
        if not (prior_count >= 0 and math.isfinite(prior_count)):
            raise ValueError("`prior_count` should be a finite number >= 0. "
                             f"Received: prior_count={prior_count!r}")
        self.memory = memory if memory is not None else LSHErrorMemory()
        self.self_tuning = bool(self_tuning)
        if self.self_tuning and not isinstance(self.memory, LSHErrorMemory):
            raise ValueError("`self_tuning` (True) reads the table groups of an LSHErrorMemory; with "
                             f"a {type(self.memory).__name__} use self_tuning=False (the paper's read)")
        self.compensation_weight = float(compensation_weight)
        self.temperature = float(temperature)
        self.gamma = float(gamma)
        self.prior_count = float(prior_count)

    @classmethod
    def paper(cls, memory: ErrorMemory | None = None, **kwargs) -> ErrorCompensation:
        """The paper's configuration: a 64 x 12-bit sketch, lambda 0.5, gamma 1, tau 1, no trust
        learning (SPEC section 1). ``kwargs`` override any of these."""
        settings = dict(compensation_weight=0.5, temperature=1.0, gamma=1.0, prior_count=0.0,
                        self_tuning=False)
        settings.update(kwargs)
        return cls(memory if memory is not None
                   else LSHErrorMemory(num_tables=64, num_bits=12, half_life=None),
                   **settings)

    # -- reads -------------------------------------------------------------------------------

    def call(self, base_logits, hidden, ids=None):
        return self.compensate(base_logits, hidden, ids)["probability"][:, None]

    def compensate(self, base_logits, hidden, ids=None) -> dict[str, tf.Tensor]:
        """Serving outputs, each ``[B]``: ``probability``, ``base_probability``,
        ``estimated_error`` (probability - base) and ``memory_support`` (mean weight over the
        tables); with an ``LSHErrorMemory`` also ``memory_keys`` (int32 ``[B, T]``)."""
        base_logits = v.as_column(base_logits, "base_logits")
        hidden = self.memory._check_hidden(hidden)
        served = isinstance(self.memory, LSHErrorMemory) and self.self_tuning
        # First: the id tables' part of the read waits for no check made after it.
        id_read = self.memory.read_ids(ids) if served else None
        # A read cannot corrupt the memory, and a non-finite hidden vector only picks SRP
        # buckets: its finiteness is checked on writes, not on every read (docs/performance.md).
        with tf.control_dependencies([v.same_rows(hidden, base_logits, "base_logits")]):
            base_logits = v.finite(base_logits, "base_logits")
        if not isinstance(self.memory, LSHErrorMemory):
            return self._paper_read(base_logits, self.memory.estimate(hidden, self.temperature, ids))
        if not self.self_tuning:
            return self._read_keys(base_logits, self.memory.keys(hidden, ids))
        base = tf.sigmoid(base_logits)
        read = self.memory.serve(hidden, id_read, base, self.prior_count)
        return self._corrected(base_logits, base, read["correction"], read["support"],
                               read["memory_keys"])

    def compensate_keys(self, base_logits, keys) -> dict[str, tf.Tensor]:
        """``compensate`` for rows given by their memory keys (from ``memory.keys``)."""
        base_logits = v.as_column(base_logits, "base_logits")
        keys = self.memory.check_keys(keys)
        with tf.control_dependencies([v.same_rows(keys, base_logits, "base_logits",
                                                  "memory_keys")]):
            base_logits = v.finite(base_logits, "base_logits")
        return self._read_keys(base_logits, keys)

    def _read_keys(self, base_logits, keys) -> dict[str, tf.Tensor]:
        """Reads rows by their keys ``[B, T]`` (``LSHErrorMemory.keys``)."""
        if self.self_tuning:
            base = tf.sigmoid(base_logits)
            correction, support = self.memory.correction(keys, base, self.prior_count)
            return self._corrected(base_logits, base, correction, support, keys)
        out = self._paper_read(base_logits, self.memory.estimate_from_stats(
            self.memory.lookup_keys(keys), self.temperature))
        out["memory_keys"] = keys
        return out

    def _corrected(self, base_logits, base, correction, support, keys) -> dict[str, tf.Tensor]:
        """The self-tuned outputs from the combiner's ``correction`` of the base logit
        (``LSHErrorMemory.correction``: ``trust . trust_features``)."""
        probability = tf.sigmoid(base_logits + self.compensation_weight * correction)
        return {"probability": probability, "base_probability": base,
                "estimated_error": probability - base, "memory_support": support,
                "memory_keys": keys}

    def trust(self) -> tf.Tensor:
        """float32 ``[F]``: the learnt trust of every group (then the base logit and the bias),
        zero when empty.

        An online Newton fit of the ridge-regularised, forgetting-weighted logloss of every row
        written so far: each row adds its loss's second-order expansion at the trust it was
        served with, so that ``trust = (H + R)^-1 m`` (``R``: the ridges, docs/core.md) with
        ``H`` the curvature sum and ``m`` the sum of ``H_t w_t - g_t`` (curvature times served
        trust minus gradient), both kept beside the tables. From zero trust its first step is
        Newton's; later ones refine it where one step from zero would stop short (a large
        correction, a sign flip). The memory solves it whenever its state changes
        (``LSHErrorMemory.trust``), so reads never solve.
        """
        return self.memory.trust()

    def _paper_read(self, base_logits, est) -> dict[str, tf.Tensor]:
        base = tf.sigmoid(base_logits)
        support = est["support"]
        if self.prior_count > 0:
            rho = support / (support + self.prior_count)
        else:
            rho = tf.cast(support > 0.0, tf.float32)
        error = rho * (self.gamma * (est["label_mean"] - base)
                       + (1.0 - self.gamma) * (est["label_mean"] - est["base_mean"]))
        probability = tf.clip_by_value(base + self.compensation_weight * error, 0.0, 1.0)
        return {"probability": probability, "base_probability": base,
                "estimated_error": error, "memory_support": support}

    # -- writes ------------------------------------------------------------------------------

    def update_memory(self, base_logits, hidden, labels, sample_weight=None, ids=None,
                      learn_trust: bool = True, guard=None) -> tf.Tensor:
        """Writes ``(hidden, ids, labels, sigmoid(base_logits))``; returns the total weight written.

        Self-tuning: the rows also add their logloss expansion at the current trust, read as
        they were served (before the write), to the combiner's sums. ``learn_trust=False``
        writes the tables only: for rows the base model was trained on (a warm start), whose
        residuals understate its error on new traffic and would teach the combiner too little
        trust. ``guard``: a callable returning a scalar bool tensor, run while the memory is
        locked and after every input is checked; the rows are written only if it is true, else
        0 is returned (``ErrorMemory.update``; the export's exactly-once write ids).
        """
        base_logits = v.as_column(base_logits, "base_logits")
        hidden = self.memory._check_hidden(hidden)
        with tf.control_dependencies([v.same_rows(hidden, base_logits, "base_logits")]):
            base = tf.sigmoid(v.finite(base_logits, "base_logits"))
        if not isinstance(self.memory, LSHErrorMemory):
            return self.memory.update(hidden, labels, base, sample_weight, ids, guard=guard)
        keys, labels, base, sample_weight = self.memory.checked_write(hidden, labels, base,
                                                                      sample_weight, ids)
        return self._write_keys(keys, base, labels, sample_weight, learn_trust, guard)

    def update_memory_by_keys(self, keys, base_probs, labels, sample_weight=None,
                              learn_trust: bool = True, guard=None) -> tf.Tensor:
        """Writes rows by the ``memory_keys`` and ``base_probability`` that ``compensate``
        returned: no base model, no hashing. Same memory as ``update_memory`` on the same rows;
        ``guard`` as there."""
        keys, labels, base_probs, sample_weight = self.memory.checked_key_write(
            keys, labels, base_probs, sample_weight)
        return self._write_keys(keys, base_probs, labels, sample_weight, learn_trust, guard)

    def _write_keys(self, keys, base_probs, labels, sample_weight, learn_trust=True,
                    guard=None) -> tf.Tensor:
        trust_delta = None
        if self.self_tuning and learn_trust:
            # The rows' logloss expansion at the trust they are served with, their features
            # read before the write: curvature H_t and moment H_t w_t - g_t.
            x_t = self.memory.read(keys, base_probs, self.prior_count)[0]  # [F, B]
            trust = self.trust()
            p = tf.sigmoid(probability_to_logit(base_probs)
                           + tf.linalg.matvec(x_t, trust, transpose_a=True))
            curvature = tf.matmul(x_t * (sample_weight * p * (1.0 - p))[None, :], x_t,
                                  transpose_b=True)
            moment = (tf.linalg.matvec(curvature, trust)
                      - tf.linalg.matvec(x_t, sample_weight * (p - labels)))
            trust_delta = (curvature, moment)
        return self.memory.write_keys(keys, labels, base_probs, sample_weight, trust_delta, guard)

    def reset_memory(self) -> None:
        """Forgets the memory, the learnt trust with it."""
        self.memory.reset()

    def get_config(self):
        config = super().get_config()
        config.update(
            memory=keras.saving.serialize_keras_object(self.memory),
            compensation_weight=self.compensation_weight,
            temperature=self.temperature,
            gamma=self.gamma,
            prior_count=self.prior_count,
            self_tuning=self.self_tuning,
        )
        return config
