"""DCN (Wang et al., ADKDD 2017): a cross network beside a DNN, on ``tfrs.layers.dcn.Cross``.

``tfrs.layers.dcn.Cross`` is the matrix cross layer of DCN-V2 (``x0 * (W x + b) + x``);
without ``projection_dim`` it is full rank. ``build_dcn`` keeps the original DCN's
architecture: cross network and DNN in parallel on the same input, outputs concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow_recommenders as tfrs

from reloop2_tf._keras import keras, tf
from reloop2_tf.features import FeatureSpec
from reloop2_tf.models import blocks


@keras.saving.register_keras_serializable(package="reloop2_tf")
class Cross(tfrs.layers.dcn.Cross):
    """``tfrs.layers.dcn.Cross``, traced without AutoGraph.

    AutoGraph skips the ``keras`` package but not ``tf_keras``, so converting this layer's call
    re-transpiles tf-keras' ``Layer.__call__`` machinery of its inner ``Dense`` (about 10 s on
    2 cores for three layers). The call has no tensor-dependent Python control flow.
    """

    def build(self, input_shape):
        super().build(input_shape)
        # tfrs' build skips the base build, which records the shape that get_build_config
        # saves; without it a model rebuilt from its config differs from the original.
        keras.layers.Layer.build(self, input_shape)

    def call(self, x0, x=None):
        return _cross_call(self, x0, x)


@tf.autograph.experimental.do_not_convert
def _cross_call(layer: Cross, x0, x):
    return tfrs.layers.dcn.Cross.call(layer, x0, x)


def cross_network(
    x0: keras.KerasTensor, num_cross_layers: int, projection_dim: int | None, prefix: str
) -> keras.KerasTensor:
    """``num_cross_layers`` stacked ``tfrs.layers.dcn.Cross`` layers on ``x0``."""
    x = x0
    for i in range(num_cross_layers):
        x = Cross(projection_dim=projection_dim, name=f"{prefix}_{i}")(x0, x)
    return x


def build_dcn(
    spec: FeatureSpec,
    num_cross_layers: int = 3,
    embedding_dim: int = 16,
    dnn_units: Sequence[int] = (256, 128, 64),
    dropout: float = 0.1,
    activation: str = "relu",
    batch_norm: bool = False,
    name: str = "dcn",
) -> keras.Model:
    """Builds DCN (full-rank cross network in parallel with a DNN) from a feature spec.

    Args:
        spec: FeatureSpec. The inputs.
        num_cross_layers: int. Cross layers. Defaults to `3`.
        embedding_dim: int. Default embedding width. Defaults to `16`.
        dnn_units: sequence of int. DNN widths. Defaults to `(256, 128, 64)`.
        dropout: float. DNN dropout rate. Defaults to `0.1`.
        activation: str. DNN activation. Defaults to `"relu"`.
        batch_norm: bool. Batch norm in the DNN. Defaults to `False`.
        name: str. Model name. Defaults to `"dcn"`.

    Returns:
        A functional model from raw features to the logit ``[B, 1]``; its ``hidden`` layer is
        ``input_dim + dnn_units[-1]`` wide, ``input_dim`` being the concatenated embeddings
        and dense features.
    """
    dnn_units = blocks.check_common(spec, embedding_dim, dnn_units, dropout)
    blocks.check_positive("num_cross_layers", num_cross_layers)
    embedded = blocks.embed_features(spec, embedding_dim)
    x0 = blocks.concat(embedded.fields() + [embedded.dense], name="dcn_input")
    cross = cross_network(x0, num_cross_layers, None, prefix="cross")
    deep = blocks.mlp(x0, dnn_units, activation, dropout, batch_norm, prefix="dnn")
    hidden = blocks.concat([cross, deep], name="dcn_hidden")
    return blocks.hidden_and_logit(embedded.inputs, hidden, name)
