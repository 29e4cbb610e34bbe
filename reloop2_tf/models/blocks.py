"""Building blocks shared by the zoo: id hashing, history parsing, embeddings and the MLP tower.

Every custom layer is registered under the ``reloop2_tf`` package, so a saved model or a
``get_config`` dict loads without ``custom_objects``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from reloop2_tf._keras import keras, tf
from reloop2_tf.features import FeatureSpec, SequenceFeature

HIDDEN_LAYER = "hidden"
LOGIT_LAYER = "logit"
EMBEDDING_INIT_STD = 1e-4

_register = keras.saving.register_keras_serializable(package="reloop2_tf")


def check_units(name: str, units: Sequence[int]) -> tuple[int, ...]:
    units = tuple(units)
    if not units or any(isinstance(u, bool) or not isinstance(u, int) or u <= 0 for u in units):
        raise ValueError(
            f"`{name}` should be a non-empty sequence of positive integers. "
            f"Received: `{name}={units!r}`"
        )
    return units


def check_positive(name: str, value: object) -> None:
    """Raises ValueError unless ``value`` is a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` should be a positive integer. Received: `{name}={value!r}`")


def check_rate(name: str, value: object) -> None:
    """Raises ValueError unless ``value`` is a float in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"`{name}` should be a float in [0, 1). Received: `{name}={value!r}`")


@_register
class IdHashing(keras.layers.Layer):
    """Hashes raw ids (string or integer) into ``[1, num_buckets)``; ``""`` maps to 0.

    Same hash as ``keras.layers.Hashing(num_buckets, mask_value="")`` (FarmHash64 of the
    string); integers are hashed through their decimal string so ``42`` and ``"42"`` agree,
    which lets an int64 ``item_id`` share a table with the string ``history``.

    Args:
        num_buckets: int. Buckets including the reserved bucket 0.
    """

    def __init__(self, num_buckets: int, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or num_buckets < 2:
            raise ValueError(
                f"`num_buckets` should be an integer >= 2. Received: `num_buckets={num_buckets!r}`"
            )
        self.num_buckets = num_buckets

    def call(self, inputs):
        if inputs.dtype != tf.string:
            inputs = tf.strings.as_string(inputs)
        hashed = tf.strings.to_hash_bucket_fast(inputs, self.num_buckets - 1) + 1
        return tf.where(tf.equal(inputs, ""), tf.zeros_like(hashed), hashed)

    def get_config(self):
        return {**super().get_config(), "num_buckets": self.num_buckets}


@_register
class HistoryTokens(keras.layers.Layer):
    """Splits one history string per row into its ``max_length`` most recent tokens.

    Output: string ``[B, max_length]``, left-padded with ``""`` so the most recent id is
    always last (a fixed position relative to the target, which positional embeddings need).

    Args:
        max_length: int. Tokens kept.
        separator: str or None. ``None`` splits on any whitespace.
    """

    def __init__(self, max_length: int, separator: str | None = None, **kwargs):
        super().__init__(**kwargs)
        check_positive("max_length", max_length)
        self.max_length = max_length
        self.separator = separator

    def call(self, inputs):
        tokens = tf.strings.split(inputs, sep=self.separator)
        lengths = tf.minimum(tokens.row_lengths(), self.max_length)
        # Keep the most recent: slice the ragged rows from the end.
        tokens = tokens[:, -self.max_length :]
        right_padded = tokens.to_tensor(default_value="", shape=[None, self.max_length])
        # reverse_sequence reverses the first `length` tokens of each row; a full reverse then
        # moves the padding to the front while restoring the chronological order.
        flipped = tf.reverse_sequence(right_padded, lengths, seq_axis=1, batch_axis=0)
        return tf.reverse(flipped, axis=[1])

    def get_config(self):
        return {
            **super().get_config(),
            "max_length": self.max_length,
            "separator": self.separator,
        }


@_register
class PaddingMask(keras.layers.Layer):
    """``ids != 0`` as a boolean mask (bucket 0 is padding)."""

    def call(self, inputs):
        return tf.not_equal(inputs, 0)


@_register
class MaskedMeanPooling(keras.layers.Layer):
    """Mean of ``[B, L, d]`` over the valid positions of a ``[B, L]`` mask; zeros if none."""

    def call(self, inputs):
        values, mask = inputs
        weights = tf.cast(mask, values.dtype)[..., tf.newaxis]
        total = tf.reduce_sum(values * weights, axis=1)
        count = tf.reduce_sum(weights, axis=1)
        return tf.math.divide_no_nan(total, count)


@dataclasses.dataclass
class EmbeddedFeatures:
    """The symbolic tensors a builder composes its model from.

    ``sparse``: name -> ``[B, d]``; ``sequences``: name -> ``[B, L, d]``; ``masks``:
    name -> bool ``[B, L]``; ``pooled``: name -> masked mean ``[B, d]``; ``dense``:
    ``[B, n]`` or None; ``first_order``: ``[B, 1]`` linear term (only when asked for).
    """

    inputs: dict[str, keras.KerasTensor]
    sparse: dict[str, keras.KerasTensor]
    sequences: dict[str, keras.KerasTensor]
    masks: dict[str, keras.KerasTensor]
    pooled: dict[str, keras.KerasTensor]
    dense: keras.KerasTensor | None
    first_order: keras.KerasTensor | None
    dims: dict[str, int]

    def fields(self) -> list[keras.KerasTensor]:
        """Sparse embeddings then pooled sequences, in spec order: one ``[B, d]`` per field."""
        return list(self.sparse.values()) + list(self.pooled.values())


def _table(num_buckets: int, dim: int, name: str) -> keras.layers.Embedding:
    return keras.layers.Embedding(
        num_buckets,
        dim,
        # FuxiCTR's default, normal(std=1e-4): rows of ids never seen in training stay near
        # zero instead of random noise, which matters under a time split (85% of the ML-100K
        # test rows come from users absent from its training part).
        embeddings_initializer=keras.initializers.RandomNormal(stddev=EMBEDDING_INIT_STD),
        name=name,
    )


def embed_features(
    spec: FeatureSpec, embedding_dim: int, first_order: bool = False
) -> EmbeddedFeatures:
    """Creates the inputs of ``spec``, hashes ids and looks up embeddings.

    A sequence that shares its table with a sparse feature reuses that feature's hashing and
    ``Embedding`` layer, so ``history`` and ``item_id`` live in one space.
    """
    check_positive("embedding_dim", embedding_dim)
    inputs = spec.inputs()
    hashers: dict[str, IdHashing] = {}
    tables: dict[str, keras.layers.Embedding] = {}
    dims: dict[str, int] = {}
    sparse: dict[str, keras.KerasTensor] = {}
    linear_terms: list[keras.KerasTensor] = []
    for feature in spec.sparse:
        dim = feature.embedding_dim or embedding_dim
        hashers[feature.name] = IdHashing(feature.num_buckets, name=f"hash_{feature.name}")
        tables[feature.name] = _table(feature.num_buckets, dim, f"embedding_{feature.name}")
        dims[feature.name] = dim
        ids = hashers[feature.name](inputs[feature.name])
        sparse[feature.name] = tables[feature.name](ids)
        if first_order:
            linear_terms.append(_table(feature.num_buckets, 1, f"linear_{feature.name}")(ids))
    sequences: dict[str, keras.KerasTensor] = {}
    masks: dict[str, keras.KerasTensor] = {}
    pooled: dict[str, keras.KerasTensor] = {}
    for feature in spec.sequences:
        tokens = HistoryTokens(
            feature.max_length, feature.separator, name=f"tokens_{feature.name}"
        )(inputs[feature.name])
        if feature.share_embedding_with is not None:
            hasher = hashers[feature.share_embedding_with]
            table = tables[feature.share_embedding_with]
            dims[feature.name] = dims[feature.share_embedding_with]
        else:
            dims[feature.name] = feature.embedding_dim or embedding_dim
            hasher = IdHashing(feature.num_buckets, name=f"hash_{feature.name}")
            table = _table(feature.num_buckets, dims[feature.name], f"embedding_{feature.name}")
        ids = hasher(tokens)
        masks[feature.name] = PaddingMask(name=f"mask_{feature.name}")(ids)
        sequences[feature.name] = table(ids)
        pooled[feature.name] = MaskedMeanPooling(name=f"pool_{feature.name}")(
            [sequences[feature.name], masks[feature.name]]
        )
    dense_inputs = []
    for feature in spec.dense:
        x = inputs[feature.name]
        if feature.dim == 1:
            x = keras.layers.Reshape((1,), name=f"reshape_{feature.name}")(x)
        dense_inputs.append(x)
    dense = None
    if len(dense_inputs) == 1:
        dense = dense_inputs[0]
    elif dense_inputs:
        dense = keras.layers.Concatenate(name="dense_features")(dense_inputs)
    linear = None
    if first_order:
        if dense is not None:
            linear_terms.append(keras.layers.Dense(1, use_bias=False, name="linear_dense")(dense))
        if len(linear_terms) > 1:
            linear = keras.layers.Add(name="linear")(linear_terms)
        elif linear_terms:
            linear = linear_terms[0]
    return EmbeddedFeatures(inputs, sparse, sequences, masks, pooled, dense, linear, dims)


def concat(tensors: list[keras.KerasTensor], name: str) -> keras.KerasTensor:
    """Concatenates on the last axis (a no-op for one tensor, which Concatenate rejects)."""
    tensors = [t for t in tensors if t is not None]
    if len(tensors) == 1:
        return tensors[0]
    return keras.layers.Concatenate(name=name)(tensors)


def mlp(
    x: keras.KerasTensor,
    units: Sequence[int],
    activation: str = "relu",
    dropout: float = 0.0,
    batch_norm: bool = False,
    prefix: str = "dnn",
) -> keras.KerasTensor:
    """Dense [-> BatchNorm] -> activation -> Dropout, once per width in ``units``."""
    for i, width in enumerate(units):
        x = keras.layers.Dense(width, name=f"{prefix}_dense_{i}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"{prefix}_bn_{i}")(x)
        x = keras.layers.Activation(activation, name=f"{prefix}_act_{i}")(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"{prefix}_dropout_{i}")(x)
    return x


@_register
class ZooModel(keras.Model):
    """A functional ``keras.Model`` whose train/test/predict steps skip AutoGraph.

    AutoGraph's do-not-convert list names the ``keras`` package but not ``tf_keras``, so under
    tf-keras every ``fit`` re-transpiles Keras' own training code (hundreds of functions, about
    20 s on 2 CPU cores) before the first step. The steps hold no tensor-dependent Python
    control flow, so tracing them unconverted gives the same graph.
    """

    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        return super().train_step(data)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, data):
        return super().test_step(data)

    @tf.autograph.experimental.do_not_convert
    def predict_step(self, data):
        return super().predict_step(data)


def hidden_and_logit(
    inputs: dict[str, keras.KerasTensor], hidden: keras.KerasTensor, name: str
) -> keras.Model:
    """Ends every zoo model the same way: ``hidden`` layer, then ``Dense(1)`` named ``logit``."""
    hidden = keras.layers.Identity(name=HIDDEN_LAYER)(hidden)
    logit = keras.layers.Dense(1, name=LOGIT_LAYER)(hidden)
    return ZooModel(inputs=inputs, outputs=logit, name=name)


def hidden_dim(model: keras.Model) -> int:
    """Width of the hidden vector of a zoo model (the input of its ``logit`` layer)."""
    return int(model.get_layer(HIDDEN_LAYER).output.shape[-1])


def check_common(
    spec: FeatureSpec, embedding_dim: int, dnn_units: Sequence[int], dropout: float
) -> tuple[int, ...]:
    """Validates the arguments every builder shares; returns ``dnn_units`` as a tuple."""
    if not isinstance(spec, FeatureSpec):
        raise TypeError(f"`spec` should be a FeatureSpec. Received: `spec={spec!r}`")
    check_positive("embedding_dim", embedding_dim)
    check_rate("dropout", dropout)
    return check_units("dnn_units", dnn_units)


def require_sequence(spec: FeatureSpec, model: str, sequence: str | None) -> SequenceFeature:
    """The sequence a target-attention model attends over; ValueError if there is none."""
    if spec.target_item is None:
        raise ValueError(
            f"{model} needs a target item: the spec should set `target_item`. "
            f"Received: `target_item=None`"
        )
    candidates = spec.sequences
    if sequence is not None:
        candidates = [f for f in candidates if f.name == sequence]
    if not candidates:
        raise ValueError(
            f"{model} needs a SequenceFeature in the spec to attend over. Received: "
            f"`sequence={sequence!r}` with sequences {[f.name for f in spec.sequences]}"
        )
    return candidates[0]


def check_same_dim(embedded: EmbeddedFeatures, names: Sequence[str], model: str) -> int:
    """The common embedding width of ``names``; ValueError naming the odd one out."""
    dims = {name: embedded.dims[name] for name in names}
    if len(set(dims.values())) > 1:
        raise ValueError(
            f"{model} needs equal embedding dims for {list(names)}. Received: {dims} "
            f"(set `embedding_dim` on the features or leave it None)"
        )
    return next(iter(dims.values()))


__all__ = [
    "EMBEDDING_INIT_STD",
    "HIDDEN_LAYER",
    "LOGIT_LAYER",
    "EmbeddedFeatures",
    "HistoryTokens",
    "IdHashing",
    "MaskedMeanPooling",
    "PaddingMask",
    "ZooModel",
    "embed_features",
    "hidden_dim",
    "mlp",
]
