"""DIN (Zhou et al., KDD 2018): target attention of the candidate item over the user history."""

from __future__ import annotations

from collections.abc import Sequence

from reloop2_tf._keras import keras, tf
from reloop2_tf.features import FeatureSpec
from reloop2_tf.models import blocks


@keras.saving.register_keras_serializable(package="reloop2_tf")
class TargetAttention(keras.layers.Layer):
    """DIN's local activation unit with masked weighted-sum pooling.

    Inputs ``[query [B, d], keys [B, L, d], mask [B, L]]``; an MLP scores
    ``[q, k, q - k, q * k]`` per position and the output is ``sum_l w_l k_l`` ``[B, d]``.
    Padding gets weight 0. As in the paper the weights are not softmax-normalised unless
    ``use_softmax=True``, so the pooled vector keeps the intensity of the user's interest.

    Args:
        units: sequence of int. Widths of the scoring MLP. Defaults to `(64, 32)`.
        activation: str. Its activation. Defaults to `"sigmoid"`.
        use_softmax: bool. Normalise weights over valid positions. Defaults to `False`.
    """

    def __init__(
        self,
        units: Sequence[int] = (64, 32),
        activation: str = "sigmoid",
        use_softmax: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = blocks.check_units("units", units)
        self.activation = activation
        self.use_softmax = bool(use_softmax)
        self.scorer = [keras.layers.Dense(u, activation=activation) for u in self.units]
        self.scorer.append(keras.layers.Dense(1))

    def call(self, inputs):
        return self._attend(*inputs)

    # AutoGraph would otherwise transpile tf-keras' Layer.__call__ for each inner Dense.
    @tf.autograph.experimental.do_not_convert
    def _attend(self, query, keys, mask):
        length = tf.shape(keys)[1]
        queries = tf.tile(query[:, tf.newaxis, :], [1, length, 1])
        x = tf.concat([queries, keys, queries - keys, queries * keys], axis=-1)
        for layer in self.scorer:
            x = layer(x)
        scores = tf.squeeze(x, axis=-1)
        if self.use_softmax:
            scores = tf.where(mask, scores, tf.fill(tf.shape(scores), -1e9))
            weights = tf.nn.softmax(scores, axis=-1) * tf.cast(mask, scores.dtype)
        else:
            weights = scores * tf.cast(mask, scores.dtype)
        return tf.reduce_sum(weights[..., tf.newaxis] * keys, axis=1)

    def get_config(self):
        return {
            **super().get_config(),
            "units": list(self.units),
            "activation": self.activation,
            "use_softmax": self.use_softmax,
        }


def build_din(
    spec: FeatureSpec,
    embedding_dim: int = 16,
    dnn_units: Sequence[int] = (256, 128, 64),
    attention_units: Sequence[int] = (64, 32),
    attention_activation: str = "sigmoid",
    use_softmax: bool = False,
    dropout: float = 0.1,
    activation: str = "relu",
    batch_norm: bool = False,
    sequence: str | None = None,
    name: str = "din",
) -> keras.Model:
    """Builds DIN from a feature spec.

    The spec's ``target_item`` attends over ``sequence`` (default: its first sequence feature,
    which must share the target's embedding width). Other features enter the DNN as embeddings;
    other sequences through mean pooling.

    Args:
        spec: FeatureSpec. The inputs; needs ``target_item`` and a sequence feature.
        embedding_dim: int. Default embedding width. Defaults to `16`.
        dnn_units: sequence of int. DNN widths. Defaults to `(256, 128, 64)`.
        attention_units: sequence of int. Attention MLP widths. Defaults to `(64, 32)`.
        attention_activation: str. Attention MLP activation. Defaults to `"sigmoid"`.
        use_softmax: bool. Softmax-normalised attention. Defaults to `False` (as the paper).
        dropout: float. DNN dropout rate. Defaults to `0.1`.
        activation: str. DNN activation. Defaults to `"relu"`.
        batch_norm: bool. Batch norm in the DNN. Defaults to `False`.
        sequence: str or None. The sequence to attend over. Defaults to `None` (the first).
        name: str. Model name. Defaults to `"din"`.

    Returns:
        A functional model from raw features to the logit ``[B, 1]``; its ``hidden`` layer is
        ``dnn_units[-1]`` wide.
    """
    dnn_units = blocks.check_common(spec, embedding_dim, dnn_units, dropout)
    attention_units = blocks.check_units("attention_units", attention_units)
    history = blocks.require_sequence(spec, "DIN", sequence)
    embedded = blocks.embed_features(spec, embedding_dim)
    blocks.check_same_dim(embedded, [spec.target_item, history.name], "DIN")
    interest = TargetAttention(
        attention_units, attention_activation, use_softmax, name="target_attention"
    )(
        [
            embedded.sparse[spec.target_item],
            embedded.sequences[history.name],
            embedded.masks[history.name],
        ]
    )
    others = [v for k, v in embedded.pooled.items() if k != history.name]
    x = blocks.concat(
        list(embedded.sparse.values()) + others + [interest, embedded.dense], name="dnn_input"
    )
    hidden = blocks.mlp(x, dnn_units, activation, dropout, batch_norm, prefix="dnn")
    return blocks.hidden_and_logit(embedded.inputs, hidden, name)
