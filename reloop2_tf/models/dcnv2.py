"""DCN-V2 (Wang et al., WWW 2021): low-rank cross layers, stacked or parallel with a DNN."""

from __future__ import annotations

from collections.abc import Sequence

from reloop2_tf._keras import keras
from reloop2_tf.features import FeatureSpec
from reloop2_tf.models import blocks
from reloop2_tf.models.dcn import cross_network

STRUCTURES = ("stacked", "parallel")


def build_dcnv2(
    spec: FeatureSpec,
    num_cross_layers: int = 3,
    low_rank: int | None = 32,
    structure: str = "stacked",
    embedding_dim: int = 16,
    dnn_units: Sequence[int] = (256, 128, 64),
    dropout: float = 0.1,
    activation: str = "relu",
    batch_norm: bool = False,
    name: str = "dcnv2",
) -> keras.Model:
    """Builds DCN-V2 from a feature spec.

    Args:
        spec: FeatureSpec. The inputs.
        num_cross_layers: int. Cross layers. Defaults to `3`.
        low_rank: int or None. Rank of each cross matrix ``W = U V``; ``None`` is full rank.
            Defaults to `32`.
        structure: str. ``"stacked"`` (cross network then DNN) or ``"parallel"`` (both on
            the input, concatenated). Defaults to `"stacked"`.
        embedding_dim: int. Default embedding width. Defaults to `16`.
        dnn_units: sequence of int. DNN widths. Defaults to `(256, 128, 64)`.
        dropout: float. DNN dropout rate. Defaults to `0.1`.
        activation: str. DNN activation. Defaults to `"relu"`.
        batch_norm: bool. Batch norm in the DNN. Defaults to `False`.
        name: str. Model name. Defaults to `"dcnv2"`.

    Returns:
        A functional model from raw features to the logit ``[B, 1]``. Its ``hidden`` layer is
        ``dnn_units[-1]`` wide when stacked, ``input_dim + dnn_units[-1]`` when parallel.
    """
    dnn_units = blocks.check_common(spec, embedding_dim, dnn_units, dropout)
    blocks.check_positive("num_cross_layers", num_cross_layers)
    if low_rank is not None:
        blocks.check_positive("low_rank", low_rank)
    if structure not in STRUCTURES:
        raise ValueError(
            f"`structure` should be one of {STRUCTURES}. Received: `structure={structure!r}`"
        )
    embedded = blocks.embed_features(spec, embedding_dim)
    x0 = blocks.concat(embedded.fields() + [embedded.dense], name="dcn_input")
    cross = cross_network(x0, num_cross_layers, low_rank, prefix="cross")
    if structure == "stacked":
        hidden = blocks.mlp(cross, dnn_units, activation, dropout, batch_norm, prefix="dnn")
    else:
        deep = blocks.mlp(x0, dnn_units, activation, dropout, batch_norm, prefix="dnn")
        hidden = blocks.concat([cross, deep], name="dcn_hidden")
    return blocks.hidden_and_logit(embedded.inputs, hidden, name)
