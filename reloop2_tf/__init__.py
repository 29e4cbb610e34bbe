"""reloop2-tf: ReLoop2 error-compensation memories for Keras, TFX and TF Serving.

Importing the package selects tf-keras (``TF_USE_LEGACY_KERAS=1``) and does nothing else.
"""

from reloop2_tf import _keras  # noqa: F401  (must come first: sets the Keras line)
from reloop2_tf import features, layers, metrics, models, training
from reloop2_tf.features import (
    DenseFeature,
    FeatureSpec,
    SequenceFeature,
    SparseFeature,
    features_from_frame,
)
from reloop2_tf.layers import ErrorCompensation, KNNErrorMemory, LSHErrorMemory
from reloop2_tf.models import HIDDEN_LAYER, LOGIT_LAYER, MODELS, build_model, hidden_dim
from reloop2_tf.wrapper import ReLoop2Model, default_id_groups

__version__ = "0.1.0"

__all__ = [
    "HIDDEN_LAYER",
    "LOGIT_LAYER",
    "MODELS",
    "DenseFeature",
    "ErrorCompensation",
    "FeatureSpec",
    "KNNErrorMemory",
    "LSHErrorMemory",
    "ReLoop2Model",
    "SequenceFeature",
    "SparseFeature",
    "build_model",
    "default_id_groups",
    "features",
    "features_from_frame",
    "hidden_dim",
    "layers",
    "metrics",
    "models",
    "training",
]
