"""A fixed pseudo-random code per id, for the id tables of ``LSHErrorMemory`` (docs/drift.md)."""

from __future__ import annotations

from reloop2_tf._keras import keras, tf

_BUCKETS = 2**24  # code values are multiples of 2**-23 in [-1, 1)


@keras.saving.register_keras_serializable(package="reloop2_tf")
class IdCode(keras.layers.Layer):
    """Maps ids (strings or integers, ``[B]`` or ``[B, 1]``) to fixed codes ``[B, dims]`` in [-1, 1).

    Column ``j`` of an id's code is FarmHash64 of ``"<id>#<seed>#<j>"``, so the code depends only on
    the id and ``seed``: no vocabulary, no state, identical in training, export and serving.
    Appended to the hidden vector it lets ``LSHErrorMemory(num_id_tables=J, id_dims=dims)`` keep
    ``J`` tables keyed by the id beside its similarity tables. Signed random projections of
    distinct codes are independent bits, so each id lands in its own random bucket of every id
    table (colliding with another id with probability ``2**-num_bits``).

    Args:
        dims: int. Code width; use at least the memory's ``num_bits``. Defaults to `16`.
        seed: int. Defaults to `0`.

    Example:

    >>> codes = IdCode(dims=16)(tf.constant(["item_1", "item_2"]))   # [2, 16]
    >>> hidden_with_ids = tf.concat([hidden, codes], axis=-1)
    """

    def __init__(self, dims: int = 16, seed: int = 0, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if not isinstance(dims, int) or dims < 1:
            raise ValueError(f"`dims` should be an int >= 1. Received: dims={dims!r}")
        self.dims = dims
        self.seed = int(seed)

    def call(self, ids):
        ids = tf.convert_to_tensor(ids)
        if ids.dtype != tf.string:
            if not ids.dtype.is_integer:
                raise ValueError(f"ids must be strings or integers. Received dtype {ids.dtype.name}")
            ids = tf.strings.as_string(ids)
        ids = tf.reshape(ids, [-1, 1])
        suffixes = tf.constant([[f"#{self.seed}#{j}" for j in range(self.dims)]])
        keys = tf.strings.join([tf.broadcast_to(ids, [tf.shape(ids)[0], self.dims]),
                                tf.broadcast_to(suffixes, [tf.shape(ids)[0], self.dims])])
        buckets = tf.strings.to_hash_bucket_fast(keys, _BUCKETS)
        return tf.cast(buckets, tf.float32) / (_BUCKETS / 2) - 1.0

    def get_config(self):
        config = super().get_config()
        config.update(dims=self.dims, seed=self.seed)
        return config
