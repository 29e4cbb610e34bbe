"""reloop2-tf: ReLoop2 error-compensation memories for Keras, TFX and TF Serving.

Importing the package selects tf-keras (``TF_USE_LEGACY_KERAS=1``) and does nothing else. The
names below load with their module on first use (``r2.ErrorCompensation``, ``from reloop2_tf
import FeatureSpec``), so that light parts of the package, such as ``reloop2 --help``, start
without TensorFlow. The first module that touches TensorFlow checks the Keras line (``_keras``);
if TensorFlow is already loaded when the package is imported, the check runs at once.
"""

from __future__ import annotations

import importlib
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
if "tensorflow" in sys.modules:  # too late to choose the Keras line: fail loudly if it is wrong
    from reloop2_tf import _keras  # noqa: F401

__version__ = "0.1.0"

# The public names and where they live; each loads with its module on first use.
_MODULES = {
    "features": "reloop2_tf.features",
    "layers": "reloop2_tf.layers",
    "metrics": "reloop2_tf.evaluation.metrics",
    "models": "reloop2_tf.models",
    "training": "reloop2_tf.training",
}
_FROM = {
    "reloop2_tf.features": ["DenseFeature", "FeatureSpec", "SequenceFeature", "SparseFeature",
                            "features_from_frame"],
    "reloop2_tf.layers": ["ErrorCompensation", "KNNErrorMemory", "LSHErrorMemory"],
    "reloop2_tf.models": ["HIDDEN_LAYER", "LOGIT_LAYER", "MODELS", "build_model", "hidden_dim"],
    "reloop2_tf.wrapper": ["ReLoop2Model", "default_id_groups", "default_srp_centre"],
}
_NAMES = {name: module for module, names in _FROM.items() for name in names}

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
    "default_srp_centre",
    "features",
    "features_from_frame",
    "hidden_dim",
    "layers",
    "metrics",
    "models",
    "training",
]


def __getattr__(name: str):
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
