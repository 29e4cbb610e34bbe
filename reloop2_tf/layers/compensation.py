"""ErrorCompensation: corrects a base model's output with the error read from a memory (SPEC 1)."""

from __future__ import annotations

import math

from reloop2_tf._keras import keras, tf
from reloop2_tf.layers import _validation as v
from reloop2_tf.layers.lsh_memory import LSHErrorMemory
from reloop2_tf.layers.memory_base import ErrorMemory

_EPS = 1e-7


@keras.saving.register_keras_serializable(package="reloop2_tf")
class ErrorCompensation(keras.layers.Layer):
    """Compensates base predictions with the error the memory holds for similar rows.

        y_err  = rho * (gamma * (y_bar - y_base) + (1 - gamma) * (y_bar - y_bar_base))
        y_pred = clip(y_base + compensation_weight * y_err, 0, 1)

    with ``y_bar``/``y_bar_base`` the attention-weighted label/base prediction of the retrieved
    rows, and ``rho = n / (n + prior_count)`` the shrinkage by the retrieved support ``n``.
    ``call`` only reads the memory; labels are written with ``update_memory``.

    Args:
        memory: an ``LSHErrorMemory`` or ``KNNErrorMemory``. Defaults to `LSHErrorMemory()`.
        compensation_weight: float >= 0, lambda. `0` returns the base probability exactly.
            Defaults to `0.5`.
        temperature: float > 0, tau (may be `inf`: all tables weigh the same). Defaults to `1.0`.
        gamma: float in [0, 1]. `1` blends with the neighbours' label average, `0` adds their mean
            residual. Defaults to `1.0`.
        prior_count: float >= 0. Support shrinkage pseudo-count. Defaults to `0.0`.

    Example:

    >>> comp = ErrorCompensation()
    >>> probs = comp(base_logits, hidden)                  # [B, 1]
    >>> comp.update_memory(base_logits, hidden, labels)    # after the labels arrive
    """

    def __init__(self, memory: ErrorMemory | None = None, compensation_weight: float = 0.5,
                 temperature: float = 1.0, gamma: float = 1.0, prior_count: float = 0.0,
                 **kwargs):
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
        self.compensation_weight = float(compensation_weight)
        self.temperature = float(temperature)
        self.gamma = float(gamma)
        self.prior_count = float(prior_count)

    def call(self, base_logits, hidden):
        return self.compensate(base_logits, hidden)["probability"][:, None]

    def compensate(self, base_logits, hidden) -> dict[str, tf.Tensor]:
        """All serving outputs, each ``[B]``: ``probability``, ``base_probability``,
        ``estimated_error`` (y_err) and ``memory_support`` (n)."""
        base_logits = v.as_column(base_logits, "base_logits")
        hidden = self.memory._check_hidden(hidden)
        checks = [v.check_finite(base_logits, "base_logits"), v.check_finite(hidden, "hidden"),
                  v.check_same_rows(hidden, base_logits, "base_logits")]
        with tf.control_dependencies(checks):
            base = tf.sigmoid(base_logits)
        est = self.memory.estimate(hidden, self.temperature)
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

    def update_memory(self, base_logits, hidden, labels, sample_weight=None) -> tf.Tensor:
        """Writes ``(hidden, labels, sigmoid(base_logits))``; returns the total weight written."""
        base_logits = v.as_column(base_logits, "base_logits")
        hidden = self.memory._check_hidden(hidden)
        with tf.control_dependencies([v.check_finite(base_logits, "base_logits"),
                                      v.check_same_rows(hidden, base_logits, "base_logits")]):
            base = tf.sigmoid(base_logits)
        return self.memory.update(hidden, labels, base, sample_weight)

    def reset_memory(self) -> None:
        self.memory.reset()

    def get_config(self):
        config = super().get_config()
        config.update(
            memory=keras.saving.serialize_keras_object(self.memory),
            compensation_weight=self.compensation_weight,
            temperature=self.temperature,
            gamma=self.gamma,
            prior_count=self.prior_count,
        )
        return config


def probability_to_logit(probs) -> tf.Tensor:
    """Logit of a probability clipped to [eps, 1 - eps] (SPEC section 1)."""
    probs = tf.clip_by_value(tf.cast(probs, tf.float32), _EPS, 1.0 - _EPS)
    return tf.math.log(probs) - tf.math.log1p(-probs)
