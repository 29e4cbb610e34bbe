"""reloop2-tf: ReLoop2 error-compensation memories for Keras, TFX and TF Serving.

Importing the package selects tf-keras (``TF_USE_LEGACY_KERAS=1``) and does nothing else.
"""

from reloop2_tf import _keras  # noqa: F401  (must come first: sets the Keras line)
from reloop2_tf import layers
from reloop2_tf.layers import ErrorCompensation, KNNErrorMemory, LSHErrorMemory
from reloop2_tf.wrapper import ReLoop2Model

__version__ = "0.1.0"

__all__ = [
    "ErrorCompensation",
    "KNNErrorMemory",
    "LSHErrorMemory",
    "ReLoop2Model",
    "layers",
]
