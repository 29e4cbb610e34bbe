"""ndarray <-> TensorProto for the gRPC client and the development server.

Numbers go as raw ``tensor_content``, which is what ``tf.make_tensor_proto`` writes for a
numeric array too, and are read back with one ``np.frombuffer``, without the generic conversion
and checks of ``tf.make_tensor_proto`` / ``tf.make_ndarray`` (~10-25 us per tensor, several per
request: a measurable share of a write by keys, docs/performance.md). Anything else (strings,
typed value fields, Python values) goes through TensorFlow's own functions.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

# The numeric dtypes a TensorProto may carry as raw tensor_content, as NumPy dtypes.
_NUMPY = {enum: tf.as_dtype(enum).as_numpy_dtype for enum in (
    types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_INT32, types_pb2.DT_INT64,
    types_pb2.DT_UINT8, types_pb2.DT_INT8, types_pb2.DT_INT16, types_pb2.DT_UINT16,
    types_pb2.DT_UINT32, types_pb2.DT_UINT64, types_pb2.DT_BOOL, types_pb2.DT_HALF)}


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


def from_proto(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The ndarray a TensorProto holds, as ``tf.make_ndarray`` reads it."""
    dtype = _NUMPY.get(proto.dtype)
    if dtype is None or not proto.tensor_content or proto.tensor_shape.unknown_rank:
        return tf.make_ndarray(proto)
    shape = [d.size for d in proto.tensor_shape.dim]
    value = np.frombuffer(proto.tensor_content, dtype=dtype)
    if value.size != math.prod(shape):  # np.prod of a list: ~3.4 of this function's ~6 us
        raise ValueError(f"tensor_content holds {value.size} values for shape {shape}")
    return value.reshape(shape).copy()
