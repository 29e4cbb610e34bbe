"""ndarray <-> TensorProto for the gRPC client and the development server.

Numbers go as raw ``tensor_content``, which is what ``tf.make_tensor_proto`` writes for a
numeric array too, and are read back with one ``np.frombuffer``, without the generic conversion
and checks of ``tf.make_tensor_proto`` / ``tf.make_ndarray`` (~10-25 us per tensor, several per
request: a measurable share of a write by keys, docs/performance.md). Arrays of bytes or str go
as ``string_val`` (UTF-8), read back as an object array of bytes, as TensorFlow's functions do.
Anything else (typed value fields, Python values, mixed object arrays) goes through them.
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


def _shape(value: np.ndarray) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in value.shape])


def to_proto(value) -> tensor_pb2.TensorProto:
    """``value`` (an ndarray, or anything ``tf.make_tensor_proto`` takes) as a TensorProto with
    its own dtype and shape."""
    if not isinstance(value, np.ndarray):
        return tf.make_tensor_proto(value)
    if value.dtype.kind in "biuf":
        return tensor_pb2.TensorProto(
            dtype=tf.as_dtype(value.dtype).as_datatype_enum, tensor_shape=_shape(value),
            tensor_content=np.ascontiguousarray(value).tobytes())
    strings = _strings(value)
    if strings is None:
        return tf.make_tensor_proto(value)
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=_shape(value),
                                  string_val=strings)


def _strings(value: np.ndarray) -> list[bytes] | None:
    """The elements of a str or bytes array as UTF-8 bytes (what ``tf.make_tensor_proto``
    writes, without its ~8 us + 0.3 us per element of generic checks); None for anything else
    (numbers in an object array, mixed types): TensorFlow's function decides."""
    if value.dtype.kind not in "OU":
        return None
    items = value.ravel().tolist()
    kinds = set(map(type, items))
    if kinds <= {bytes}:
        return items
    if kinds == {str}:
        return [item.encode("utf-8") for item in items]
    return None


def from_proto(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The ndarray a TensorProto holds, as ``tf.make_ndarray`` reads it."""
    if proto.dtype == types_pb2.DT_STRING and not proto.tensor_shape.unknown_rank:
        shape = [d.size for d in proto.tensor_shape.dim]
        values = list(proto.string_val)
        if len(values) == math.prod(shape):  # else make_ndarray pads with the last value
            return np.array(values, dtype=object).reshape(shape)
        return tf.make_ndarray(proto)
    dtype = _NUMPY.get(proto.dtype)
    if dtype is None or not proto.tensor_content or proto.tensor_shape.unknown_rank:
        return tf.make_ndarray(proto)
    shape = [d.size for d in proto.tensor_shape.dim]
    value = np.frombuffer(proto.tensor_content, dtype=dtype)
    if value.size != math.prod(shape):  # np.prod of a list: ~3.4 of this function's ~6 us
        raise ValueError(f"tensor_content holds {value.size} values for shape {shape}")
    return value.reshape(shape).copy()
