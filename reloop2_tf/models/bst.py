"""BST (Chen et al., DLP-KDD 2019): a transformer over the user history plus the target item."""

from __future__ import annotations

from collections.abc import Sequence

from reloop2_tf._keras import keras, tf
from reloop2_tf.features import FeatureSpec
from reloop2_tf.models import blocks


@keras.saving.register_keras_serializable(package="reloop2_tf")
class TargetSequence(keras.layers.Layer):
    """Appends the target to the history and adds learned position embeddings.

    Inputs ``[history [B, L, d], mask [B, L], target [B, d]]``; outputs
    ``[sequence [B, L + 1, d], mask [B, L + 1]]`` with the target at the last position (the
    history is left-padded, so position ``L - 1`` is always the most recent item).
    """

    def build(self, input_shape):
        history_shape = input_shape[0]
        self.positions = self.add_weight(
            name="position_embedding",
            shape=(int(history_shape[1]) + 1, int(history_shape[2])),
            initializer=keras.initializers.RandomUniform(-0.05, 0.05),
        )
        super().build(input_shape)

    def call(self, inputs):
        history, mask, target = inputs
        sequence = tf.concat([history, target[:, tf.newaxis, :]], axis=1) + self.positions
        target_valid = tf.ones_like(mask[:, :1])
        return sequence, tf.concat([mask, target_valid], axis=1)


@keras.saving.register_keras_serializable(package="reloop2_tf")
class TransformerBlock(keras.layers.Layer):
    """Post-norm transformer encoder block with key padding mask.

    Inputs ``[x [B, T, d], mask [B, T]]``; output ``[B, T, d]``.

    Args:
        num_heads: int. Attention heads. Defaults to `2`.
        ff_units: int or None. Feed-forward width; ``None`` is ``4 * d``. Defaults to `None`.
        dropout: float. Dropout on attention and feed-forward outputs. Defaults to `0.1`.
    """

    def __init__(
        self, num_heads: int = 2, ff_units: int | None = None, dropout: float = 0.1, **kwargs
    ):
        super().__init__(**kwargs)
        blocks.check_positive("num_heads", num_heads)
        if ff_units is not None:
            blocks.check_positive("ff_units", ff_units)
        blocks.check_rate("dropout", dropout)
        self.num_heads = num_heads
        self.ff_units = ff_units
        self.dropout = dropout

    def build(self, input_shape):
        dim = int(input_shape[0][-1])
        if dim % self.num_heads:
            raise ValueError(
                f"`num_heads` should divide the embedding width {dim}. "
                f"Received: `num_heads={self.num_heads}`"
            )
        self.attention = keras.layers.MultiHeadAttention(
            self.num_heads, dim // self.num_heads, dropout=self.dropout, name="attention"
        )
        self.feed_forward = [
            keras.layers.Dense(self.ff_units or 4 * dim, activation="relu", name="ff_in"),
            keras.layers.Dense(dim, name="ff_out"),
        ]
        self.norm_attention = keras.layers.LayerNormalization(name="norm_attention")
        self.norm_ff = keras.layers.LayerNormalization(name="norm_ff")
        self.drop_attention = keras.layers.Dropout(self.dropout)
        self.drop_ff = keras.layers.Dropout(self.dropout)
        super().build(input_shape)

    def call(self, inputs, training=None):
        return self._encode(*inputs, training=training)

    # AutoGraph would otherwise transpile tf-keras' Layer.__call__ for every inner layer.
    @tf.autograph.experimental.do_not_convert
    def _encode(self, x, mask, training=None):
        # Keys are masked; every query still sees the target, so no row is all -inf.
        steps = tf.shape(x)[1]
        attention_mask = tf.tile(mask[:, tf.newaxis, :], [1, steps, 1])
        attended = self.attention(x, x, attention_mask=attention_mask, training=training)
        x = self.norm_attention(x + self.drop_attention(attended, training=training))
        y = x
        for layer in self.feed_forward:
            y = layer(y)
        return self.norm_ff(x + self.drop_ff(y, training=training))

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "ff_units": self.ff_units,
            "dropout": self.dropout,
        }


@keras.saving.register_keras_serializable(package="reloop2_tf")
class TargetAndMeanPooling(keras.layers.Layer):
    """``[x [B, T, d], mask [B, T]]`` -> ``[B, 2d]``: the last (target) position and the mean."""

    def call(self, inputs):
        x, mask = inputs
        weights = tf.cast(mask, x.dtype)[..., tf.newaxis]
        mean = tf.math.divide_no_nan(
            tf.reduce_sum(x * weights, axis=1), tf.reduce_sum(weights, axis=1)
        )
        return tf.concat([x[:, -1, :], mean], axis=-1)


def build_bst(
    spec: FeatureSpec,
    num_heads: int = 2,
    num_blocks: int = 1,
    embedding_dim: int = 16,
    ff_units: int | None = None,
    dnn_units: Sequence[int] = (256, 128, 64),
    attention_dropout: float = 0.1,
    dropout: float = 0.1,
    activation: str = "relu",
    batch_norm: bool = False,
    sequence: str | None = None,
    name: str = "bst",
) -> keras.Model:
    """Builds BST from a feature spec.

    The history and the target item, with learned position embeddings, go through
    ``num_blocks`` transformer blocks; the target position's output and the masked mean of all
    positions join the other features in the DNN.

    Args:
        spec: FeatureSpec. The inputs; needs ``target_item`` and a sequence feature.
        num_heads: int. Attention heads; must divide the embedding width. Defaults to `2`.
        num_blocks: int. Transformer blocks. Defaults to `1`.
        embedding_dim: int. Default embedding width. Defaults to `16`.
        ff_units: int or None. Feed-forward width (``None``: 4x embedding). Defaults to `None`.
        dnn_units: sequence of int. DNN widths. Defaults to `(256, 128, 64)`.
        attention_dropout: float. Dropout in the transformer. Defaults to `0.1`.
        dropout: float. DNN dropout rate. Defaults to `0.1`.
        activation: str. DNN activation. Defaults to `"relu"`.
        batch_norm: bool. Batch norm in the DNN. Defaults to `False`.
        sequence: str or None. The behaviour sequence. Defaults to `None` (the first).
        name: str. Model name. Defaults to `"bst"`.

    Returns:
        A functional model from raw features to the logit ``[B, 1]``; its ``hidden`` layer is
        ``dnn_units[-1]`` wide.
    """
    dnn_units = blocks.check_common(spec, embedding_dim, dnn_units, dropout)
    blocks.check_positive("num_heads", num_heads)
    blocks.check_positive("num_blocks", num_blocks)
    if ff_units is not None:
        blocks.check_positive("ff_units", ff_units)
    blocks.check_rate("attention_dropout", attention_dropout)
    history = blocks.require_sequence(spec, "BST", sequence)
    embedded = blocks.embed_features(spec, embedding_dim)
    dim = blocks.check_same_dim(embedded, [spec.target_item, history.name], "BST")
    if dim % num_heads:
        raise ValueError(
            f"`num_heads` should divide the embedding width of '{history.name}' ({dim}). "
            f"Received: `num_heads={num_heads}`"
        )
    x, mask = TargetSequence(name="target_sequence")(
        [
            embedded.sequences[history.name],
            embedded.masks[history.name],
            embedded.sparse[spec.target_item],
        ]
    )
    for i in range(num_blocks):
        x = TransformerBlock(num_heads, ff_units, attention_dropout, name=f"transformer_{i}")(
            [x, mask]
        )
    interest = TargetAndMeanPooling(name="transformer_pooling")([x, mask])
    others = [v for k, v in embedded.pooled.items() if k != history.name]
    features = blocks.concat(
        list(embedded.sparse.values()) + others + [interest, embedded.dense], name="dnn_input"
    )
    hidden = blocks.mlp(features, dnn_units, activation, dropout, batch_norm, prefix="dnn")
    return blocks.hidden_and_logit(embedded.inputs, hidden, name)
