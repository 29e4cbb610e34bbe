"""Keras layers: the error memories and the compensation layer."""

from reloop2_tf.layers.compensation import ErrorCompensation, probability_to_logit
from reloop2_tf.layers.id_keys import normalize_id_groups
from reloop2_tf.layers.knn_memory import KNNErrorMemory
from reloop2_tf.layers.lsh_memory import LSHErrorMemory
from reloop2_tf.layers.memory_base import ErrorMemory

__all__ = ["ErrorCompensation", "ErrorMemory", "KNNErrorMemory", "LSHErrorMemory",
           "normalize_id_groups", "probability_to_logit"]
