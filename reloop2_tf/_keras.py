"""Selects the Keras line this package runs on: tf-keras (Keras 2).

tensorflow-recommenders needs tf-keras, and Keras-3 SavedModels are not restored by the TF1
Session loader that TF Serving uses. ``TF_USE_LEGACY_KERAS`` must be set before the first access
to ``tf.keras``; this module sets it and fails loudly if it is too late.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

_MESSAGE = (
    "reloop2_tf needs tf-keras (Keras 2), but `tf.keras` resolved to {name}. "
    "Set the environment variable TF_USE_LEGACY_KERAS=1 before Python starts (or before the "
    "first `tf.keras` access), and `pip install tf-keras==2.16.0`."
)


def _check_keras() -> None:
    name = getattr(tf.keras, "__name__", "")
    if not name.startswith("tf_keras"):
        raise ImportError(_MESSAGE.format(name=name or "an unknown module"))


_check_keras()
keras = tf.keras

__all__ = ["keras", "tf"]
