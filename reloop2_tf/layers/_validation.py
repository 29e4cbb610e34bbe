"""Input checks shared by the memories. Every check runs before any write (SPEC section 4)."""

from __future__ import annotations

from reloop2_tf._keras import tf


def as_column(x, name: str, dtype=tf.float32) -> tf.Tensor:
    """Returns ``x`` as a rank-1 tensor; accepts ``[B]`` or ``[B, 1]``."""
    x = tf.convert_to_tensor(x, dtype_hint=dtype)
    if x.dtype != dtype:
        if not (x.dtype.is_floating or x.dtype.is_integer or x.dtype == tf.bool):
            raise ValueError(f"`{name}` must be numeric. Received: dtype={x.dtype.name}")
        x = tf.cast(x, dtype)
    rank = x.shape.rank
    if rank == 2:
        if x.shape[-1] is not None and x.shape[-1] != 1:
            raise ValueError(f"`{name}` must have shape [B] or [B, 1]. Received: shape={x.shape}")
        x = tf.reshape(x, [-1])
    elif rank != 1:
        raise ValueError(f"`{name}` must have shape [B] or [B, 1]. Received: shape={x.shape}")
    return x


def as_hidden(hidden, dim: int | None) -> tf.Tensor:
    """Returns ``hidden`` as float32 ``[B, d]`` after a static rank/width check."""
    hidden = tf.convert_to_tensor(hidden, dtype_hint=tf.float32)
    if not (hidden.dtype.is_floating or hidden.dtype.is_integer):
        raise ValueError(f"`hidden` must be numeric. Received: dtype={hidden.dtype.name}")
    hidden = tf.cast(hidden, tf.float32)
    if hidden.shape.rank != 2:
        raise ValueError(f"`hidden` must have shape [B, d]. Received: shape={hidden.shape}")
    if dim is not None and hidden.shape[-1] is not None and hidden.shape[-1] != dim:
        raise ValueError(
            f"`hidden` must have width d={dim}, the width the memory was built with. "
            f"Received: shape={hidden.shape}"
        )
    return hidden


def check_finite(x: tf.Tensor, name: str) -> tf.Operation:
    return tf.debugging.assert_all_finite(x, f"`{name}` contains NaN or Inf")


def check_in_unit_interval(x: tf.Tensor, name: str) -> list[tf.Operation]:
    return [
        check_finite(x, name),
        tf.debugging.assert_greater_equal(x, 0.0, message=f"`{name}` must be in [0, 1]"),
        tf.debugging.assert_less_equal(x, 1.0, message=f"`{name}` must be in [0, 1]"),
    ]


def check_same_rows(reference: tf.Tensor, other: tf.Tensor, name: str,
                    reference_name: str = "hidden") -> tf.Operation:
    rows, other_rows = reference.shape[0], other.shape[0]
    if rows is not None and other_rows is not None and rows != other_rows:
        raise ValueError(f"`{name}` must have one entry per row of `{reference_name}` ({rows}). "
                         f"Received: {other_rows} entries")
    return tf.debugging.assert_equal(
        tf.shape(other)[0],
        tf.shape(reference)[0],
        message=f"`{name}` must have one entry per row of `{reference_name}`",
    )


def write_columns(labels, base_probs, sample_weight):
    """Labels, base probabilities and weights of a write as float32 ``[B]`` (weights default 1)."""
    labels = as_column(labels, "labels")
    base_probs = as_column(base_probs, "base_probs")
    if sample_weight is None:
        sample_weight = tf.ones_like(labels)
    return labels, base_probs, as_column(sample_weight, "sample_weight")


def update_checks(hidden, labels, base_probs, sample_weight, reference=None,
                  reference_name: str = "hidden"):
    """All assertions for a write; returns the list of assert ops.

    Rows are counted on ``hidden``, or on ``reference`` (e.g. the memory keys) when it is given.
    """
    checks = [] if hidden is None else [check_finite(hidden, "hidden")]
    reference = hidden if reference is None else reference
    checks += check_in_unit_interval(labels, "labels")
    checks += check_in_unit_interval(base_probs, "base_probs")
    checks += [
        check_finite(sample_weight, "sample_weight"),
        tf.debugging.assert_non_negative(
            sample_weight, message="`sample_weight` must be >= 0"
        ),
        check_same_rows(reference, labels, "labels", reference_name),
        check_same_rows(reference, base_probs, "base_probs", reference_name),
        check_same_rows(reference, sample_weight, "sample_weight", reference_name),
    ]
    return checks
