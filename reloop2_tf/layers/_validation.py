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


def assert_that(condition: tf.Tensor, message: str) -> tf.Operation:
    """One ``Assert`` of a scalar bool ``condition`` that fails with ``message``.

    An assertion is three ops here (the condition's reduction, the message, the ``Assert``)
    where a ``tf.debugging.assert_*`` adds six to eight (constants for its own messages, the
    comparison's names); a write checks a dozen things per call, and at batch 1 a served call's
    cost is its op count (docs/performance.md). The checks stay separate ops, so none waits
    for another.
    """
    return tf.debugging.Assert(condition, [message])


def finite(x: tf.Tensor, name: str) -> tf.Tensor:
    """``x``, gated by a check that it holds no NaN or Inf (one ``CheckNumerics``)."""
    return tf.debugging.check_numerics(x, f"`{name}` contains NaN or Inf")


def in_unit_interval(x: tf.Tensor, name: str) -> tf.Operation:
    """Every value in [0, 1]. Give it ``finite(x)`` to report NaN as NaN."""
    return assert_that(tf.reduce_all((x >= 0.0) & (x <= 1.0)), f"`{name}` must be in [0, 1]")


def non_negative(x: tf.Tensor, name: str) -> tf.Operation:
    return assert_that(tf.reduce_all(x >= 0.0), f"`{name}` must be >= 0")


def same_rows(reference: tf.Tensor, other: tf.Tensor, name: str,
              reference_name: str = "hidden") -> tf.Operation:
    """As many rows in ``other`` as in ``reference``; raises at once when both are static."""
    rows, other_rows = reference.shape[0], other.shape[0]
    if rows is not None and other_rows is not None and rows != other_rows:
        raise ValueError(f"`{name}` must have one entry per row of `{reference_name}` ({rows}). "
                         f"Received: {other_rows} entries")
    return assert_that(tf.equal(tf.shape(other)[0], tf.shape(reference)[0]),
                       f"`{name}` must have one entry per row of `{reference_name}`")


def write_columns(labels, base_probs, sample_weight):
    """Labels, base probabilities and weights of a write as float32 ``[B]`` (weights default 1)."""
    labels = as_column(labels, "labels")
    base_probs = as_column(base_probs, "base_probs")
    if sample_weight is None:
        sample_weight = tf.ones_like(labels)
    return labels, base_probs, as_column(sample_weight, "sample_weight")


def update_checks(hidden, labels, base_probs, sample_weight, reference=None,
                  reference_name: str = "hidden") -> list:
    """The assertions of a write (for ``tf.control_dependencies``).

    Rows are counted on ``hidden``, or on ``reference`` (e.g. the memory keys) when it is given.
    """
    checks = [] if hidden is None else [finite(hidden, "hidden")]
    reference = hidden if reference is None else reference
    labels, base_probs = finite(labels, "labels"), finite(base_probs, "base_probs")
    sample_weight = finite(sample_weight, "sample_weight")
    return checks + [
        in_unit_interval(labels, "labels"), in_unit_interval(base_probs, "base_probs"),
        non_negative(sample_weight, "sample_weight"),
        same_rows(reference, labels, "labels", reference_name),
        same_rows(reference, base_probs, "base_probs", reference_name),
        same_rows(reference, sample_weight, "sample_weight", reference_name)]
