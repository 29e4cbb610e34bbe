"""DeepFM (Guo et al., IJCAI 2017): a factorisation machine and a DNN over shared embeddings.

To end in one ``Dense(1)`` like every zoo model, the FM's second-order term is kept as its
``embedding_dim``-wide interaction vector and the first-order term as a scalar; the hidden
vector is ``[dnn_out, fm_vector, first_order]`` and the ``logit`` layer weighs them. With unit
weights on the FM part this is exactly DeepFM's sum; learned weights make it a weighted FM.
"""

from __future__ import annotations

from collections.abc import Sequence

from reloop2_tf._keras import keras, tf
from reloop2_tf.features import FeatureSpec
from reloop2_tf.models import blocks


@keras.saving.register_keras_serializable(package="reloop2_tf")
class FMInteraction(keras.layers.Layer):
    """FM second-order interactions of F fields ``[B, d]`` as a vector ``[B, d]``.

    ``0.5 * ((sum_f v_f)^2 - sum_f v_f^2)``; summing it over ``d`` gives the FM term.
    """

    def call(self, inputs):
        fields = tf.stack(inputs, axis=1)
        square_of_sum = tf.square(tf.reduce_sum(fields, axis=1))
        sum_of_squares = tf.reduce_sum(tf.square(fields), axis=1)
        return 0.5 * (square_of_sum - sum_of_squares)


def build_deepfm(
    spec: FeatureSpec,
    embedding_dim: int = 16,
    dnn_units: Sequence[int] = (256, 128, 64),
    dropout: float = 0.1,
    activation: str = "relu",
    batch_norm: bool = False,
    name: str = "deepfm",
) -> keras.Model:
    """Builds DeepFM from a feature spec.

    Sequence features enter as fields through masked mean pooling; dense features feed the
    DNN and the first-order term.

    Args:
        spec: FeatureSpec. The inputs.
        embedding_dim: int. Width of every field embedding (FM needs them equal).
            Defaults to `16`.
        dnn_units: sequence of int. DNN widths. Defaults to `(256, 128, 64)`.
        dropout: float. DNN dropout rate. Defaults to `0.1`.
        activation: str. DNN activation. Defaults to `"relu"`.
        batch_norm: bool. Batch norm in the DNN. Defaults to `False`.
        name: str. Model name. Defaults to `"deepfm"`.

    Returns:
        A functional model from raw features to the logit ``[B, 1]``; its ``hidden`` layer is
        ``dnn_units[-1] + embedding_dim + 1`` wide.
    """
    dnn_units = blocks.check_common(spec, embedding_dim, dnn_units, dropout)
    embedded = blocks.embed_features(spec, embedding_dim, first_order=True)
    field_names = [f.name for f in spec.sparse] + [f.name for f in spec.sequences]
    if len(field_names) < 2:
        raise ValueError(
            f"DeepFM needs at least two sparse or sequence fields to interact. "
            f"Received: fields {field_names}"
        )
    blocks.check_same_dim(embedded, field_names, "DeepFM")
    fields = embedded.fields()
    fm = FMInteraction(name="fm")(fields)
    deep = blocks.concat(fields + [embedded.dense], name="dnn_input")
    deep = blocks.mlp(deep, dnn_units, activation, dropout, batch_norm, prefix="dnn")
    hidden = blocks.concat([deep, fm, embedded.first_order], name="deepfm_hidden")
    return blocks.hidden_and_logit(embedded.inputs, hidden, name)
