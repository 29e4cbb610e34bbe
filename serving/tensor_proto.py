"""ndarray -> TensorProto for the gRPC client and the development server.

Numbers go as raw ``tensor_content``, which is what ``tf.make_tensor_proto`` writes for a
numeric array too, without its generic conversion and checks (~25 us per tensor, several per
request: a measurable share of a write by keys, docs/performance.md). Anything else (strings,
Python values) goes through ``tf.make_tensor_proto``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2


def to_proto(value) -> tensor_pb2.TensorProto:
    """``value`` (an ndarray, or anything ``tf.make_tensor_proto`` takes) as a TensorProto with
    its own dtype and shape."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        return tf.make_tensor_proto(value)
    return tensor_pb2.TensorProto(
        dtype=tf.as_dtype(value.dtype).as_datatype_enum,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in value.shape]),
        tensor_content=np.ascontiguousarray(value).tobytes())
