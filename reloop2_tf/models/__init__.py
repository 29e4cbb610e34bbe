"""The model zoo: DeepFM, DCN, DCN-V2, DIN, DIEN and BST as base models for the error memory.

Every builder takes the same ``FeatureSpec`` and returns a functional ``keras.Model`` from raw
features (a dict of named inputs) to the base logit ``[B, 1]``, computed by a final ``Dense(1)``
layer named ``LOGIT_LAYER``. Its input, the hidden vector ReLoop2 indexes, is the output of
the layer named ``HIDDEN_LAYER``, so a wrapper needs no model-specific code::

    model = build_model("din", FeatureSpec.movielens())
    two_heads = keras.Model(model.inputs, [model.output, model.get_layer(HIDDEN_LAYER).output])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reloop2_tf._keras import keras
from reloop2_tf.features import FeatureSpec
from reloop2_tf.models.blocks import HIDDEN_LAYER, LOGIT_LAYER, ZooModel, hidden_dim
from reloop2_tf.models.bst import build_bst
from reloop2_tf.models.dcn import build_dcn
from reloop2_tf.models.dcnv2 import build_dcnv2
from reloop2_tf.models.deepfm import build_deepfm
from reloop2_tf.models.dien import build_dien
from reloop2_tf.models.din import build_din

MODELS: dict[str, Callable[..., keras.Model]] = {
    "deepfm": build_deepfm,
    "dcn": build_dcn,
    "dcnv2": build_dcnv2,
    "din": build_din,
    "dien": build_dien,
    "bst": build_bst,
}


def build_model(name: str, feature_spec: FeatureSpec, **kwargs: Any) -> keras.Model:
    """Builds the zoo model ``name`` (a key of ``MODELS``); ``kwargs`` go to its builder."""
    key = name.lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise ValueError(f"`name` should be one of {sorted(MODELS)}. Received: `name={name!r}`")
    return MODELS[key](feature_spec, **kwargs)


__all__ = [
    "HIDDEN_LAYER",
    "LOGIT_LAYER",
    "MODELS",
    "ZooModel",
    "build_bst",
    "build_dcn",
    "build_dcnv2",
    "build_deepfm",
    "build_dien",
    "build_din",
    "build_model",
    "hidden_dim",
]
