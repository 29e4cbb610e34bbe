"""DIEN (Zhou et al., AAAI 2019): a GRU interest extractor and AUGRU interest evolution.

The extractor GRU turns the history embeddings into interest states; attention of the target
item over those states drives an AUGRU (a GRU whose update gate is scaled by the attention
score), whose final state is the evolved interest. The auxiliary loss (each interest state
should tell the next clicked item from a random one) is optional.
"""

from __future__ import annotations

from collections.abc import Sequence

from reloop2_tf._keras import keras, tf
from reloop2_tf.features import FeatureSpec
from reloop2_tf.models import blocks


@keras.saving.register_keras_serializable(package="reloop2_tf")
class AUGRUCell(keras.layers.Layer):
    """GRU cell with attentional update gate, for ``keras.layers.RNN``.

    Each step's input is ``[x_t, a_t]``: the features with the attention score appended as the
    last column. The update gate ``u_t`` becomes ``a_t * u_t``, so steps the target does not
    attend to barely move the state.

    Args:
        units: int. State width.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        blocks.check_positive("units", units)
        self.units = units
        self.state_size = units
        self.output_size = units

    def build(self, input_shape):
        input_dim = int(input_shape[-1]) - 1
        self.kernel = self.add_weight(
            name="kernel", shape=(input_dim, 3 * self.units), initializer="glorot_uniform"
        )
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel", shape=(self.units, 3 * self.units), initializer="orthogonal"
        )
        self.bias = self.add_weight(name="bias", shape=(3 * self.units,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs, states):
        x, attention = inputs[:, :-1], inputs[:, -1:]
        state = states[0] if isinstance(states, (list, tuple)) else states
        x_z, x_r, x_h = tf.split(tf.matmul(x, self.kernel) + self.bias, 3, axis=-1)
        h_z, h_r, h_h = tf.split(tf.matmul(state, self.recurrent_kernel), 3, axis=-1)
        update = tf.sigmoid(x_z + h_z) * attention
        reset = tf.sigmoid(x_r + h_r)
        candidate = tf.tanh(x_h + reset * h_h)
        new_state = (1.0 - update) * state + update * candidate
        return new_state, [new_state]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="reloop2_tf")
class InterestAttention(keras.layers.Layer):
    """Softmax over valid positions of ``h_t W q``: inputs ``[states, query, mask]`` -> ``[B, L]``."""

    def build(self, input_shape):
        states_shape, query_shape, _ = input_shape
        self.kernel = self.add_weight(
            name="kernel",
            shape=(int(states_shape[-1]), int(query_shape[-1])),
            initializer="glorot_uniform",
        )
        super().build(input_shape)

    def call(self, inputs):
        states, query, mask = inputs
        scores = tf.einsum("blh,hd,bd->bl", states, self.kernel, query)
        scores = tf.where(mask, scores, tf.fill(tf.shape(scores), -1e9))
        return tf.nn.softmax(scores, axis=-1) * tf.cast(mask, scores.dtype)


@keras.saving.register_keras_serializable(package="reloop2_tf")
class AppendScore(keras.layers.Layer):
    """``[states [B, L, H], scores [B, L]]`` -> ``[B, L, H + 1]``, the AUGRU's step input."""

    def call(self, inputs):
        states, scores = inputs
        return tf.concat([states, scores[..., tf.newaxis]], axis=-1)


@keras.saving.register_keras_serializable(package="reloop2_tf")
class AuxiliaryInterestLoss(keras.layers.Layer):
    """DIEN's auxiliary loss, added with ``add_loss`` in training; passes ``states`` through.

    Inputs ``[states [B, L, H], embeddings [B, L, d], mask [B, L]]``. State ``t`` must tell the
    embedding of item ``t + 1`` from a negative: the same position of another row of the batch
    (in-batch negative sampling, since the data carry no impressions).

    Args:
        weight: float. Weight of the loss. Defaults to `1.0`.
        units: sequence of int. Widths of the scoring MLP. Defaults to `(32,)`.
    """

    def __init__(self, weight: float = 1.0, units: Sequence[int] = (32,), **kwargs):
        super().__init__(**kwargs)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"`weight` should be a float >= 0. Received: `weight={weight!r}`")
        self.weight = float(weight)
        self.units = blocks.check_units("units", units)
        self.scorer = [keras.layers.Dense(u, activation="sigmoid") for u in self.units]
        self.scorer.append(keras.layers.Dense(1))

    # AutoGraph would otherwise transpile tf-keras' Layer.__call__ for each inner Dense.
    @tf.autograph.experimental.do_not_convert
    def _score(self, states, items):
        x = tf.concat([states, items], axis=-1)
        for layer in self.scorer:
            x = layer(x)
        return tf.squeeze(x, axis=-1)

    def call(self, inputs, training=None):
        states, embeddings, mask = inputs
        # Score at build time too, so the scorer's weights exist before the first training step.
        states_t, positives = states[:, :-1], embeddings[:, 1:]
        negatives = tf.roll(embeddings, shift=1, axis=0)[:, 1:]
        valid = tf.cast(tf.logical_and(mask[:, :-1], mask[:, 1:]), states.dtype)
        pos_logit = self._score(states_t, positives)
        neg_logit = self._score(states_t, negatives)
        if training:
            loss = tf.nn.sigmoid_cross_entropy_with_logits(
                labels=tf.ones_like(pos_logit), logits=pos_logit
            ) + tf.nn.sigmoid_cross_entropy_with_logits(
                labels=tf.zeros_like(neg_logit), logits=neg_logit
            )
            loss = tf.math.divide_no_nan(tf.reduce_sum(loss * valid), tf.reduce_sum(valid))
            self.add_loss(self.weight * loss)
        return states

    def get_config(self):
        return {**super().get_config(), "weight": self.weight, "units": list(self.units)}


def build_dien(
    spec: FeatureSpec,
    embedding_dim: int = 16,
    gru_units: int | None = None,
    dnn_units: Sequence[int] = (256, 128, 64),
    aux_loss: bool = False,
    aux_loss_weight: float = 1.0,
    dropout: float = 0.1,
    activation: str = "relu",
    batch_norm: bool = False,
    sequence: str | None = None,
    name: str = "dien",
) -> keras.Model:
    """Builds DIEN from a feature spec.

    Args:
        spec: FeatureSpec. The inputs; needs ``target_item`` and a sequence feature.
        embedding_dim: int. Default embedding width. Defaults to `16`.
        gru_units: int or None. Width of both GRUs; ``None`` uses the history's embedding
            width. Defaults to `None`.
        dnn_units: sequence of int. DNN widths. Defaults to `(256, 128, 64)`.
        aux_loss: bool. Add the auxiliary next-item loss in training. Defaults to `False`.
        aux_loss_weight: float. Its weight. Defaults to `1.0`.
        dropout: float. DNN dropout rate. Defaults to `0.1`.
        activation: str. DNN activation. Defaults to `"relu"`.
        batch_norm: bool. Batch norm in the DNN. Defaults to `False`.
        sequence: str or None. The behaviour sequence. Defaults to `None` (the first).
        name: str. Model name. Defaults to `"dien"`.

    Returns:
        A functional model from raw features to the logit ``[B, 1]``; its ``hidden`` layer is
        ``dnn_units[-1]`` wide.
    """
    dnn_units = blocks.check_common(spec, embedding_dim, dnn_units, dropout)
    if gru_units is not None:
        blocks.check_positive("gru_units", gru_units)
    history = blocks.require_sequence(spec, "DIEN", sequence)
    embedded = blocks.embed_features(spec, embedding_dim)
    units = gru_units or embedded.dims[history.name]
    seq, mask = embedded.sequences[history.name], embedded.masks[history.name]
    target = embedded.sparse[spec.target_item]
    states = keras.layers.GRU(units, return_sequences=True, name="interest_extractor")(
        seq, mask=mask
    )
    if aux_loss:
        states = AuxiliaryInterestLoss(aux_loss_weight, name="auxiliary_loss")(
            [states, seq, mask]
        )
    scores = InterestAttention(name="interest_attention")([states, target, mask])
    evolution_input = AppendScore(name="augru_input")([states, scores])
    interest = keras.layers.RNN(AUGRUCell(units), name="interest_evolution")(
        evolution_input, mask=mask
    )
    others = [v for k, v in embedded.pooled.items() if k != history.name]
    x = blocks.concat(
        list(embedded.sparse.values())
        + others
        + [embedded.pooled[history.name], interest, embedded.dense],
        name="dnn_input",
    )
    hidden = blocks.mlp(x, dnn_units, activation, dropout, batch_norm, prefix="dnn")
    return blocks.hidden_and_logit(embedded.inputs, hidden, name)
