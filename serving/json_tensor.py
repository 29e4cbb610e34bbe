"""JSON <-> TensorProto for the REST API, as TF Serving converts them (``util/json_tensor.cc``).

Requests carry either ``instances`` (row format: one entry per example, an object of named
inputs, or a bare value when the signature has a single input) or ``inputs`` (columnar: an
object of named tensors, or a bare tensor for a single input). DT_STRING values are JSON
strings or ``{"b64": "<base64>"}`` objects. Each input takes the dtype its SignatureDef gives
it, and a dense tensor's shape is read from its first elements, then checked everywhere.

Responses mirror the request: ``predictions`` (a list of examples) for a row request,
``outputs`` for a columnar one. Floats are written with the fewest digits that read back as
the same float32, as TF Serving does, and NaN/Infinity as bare tokens.

Two deliberate departures from TF Serving, both stricter or safer:

* a columnar object with an input the signature does not take is refused (TF Serving ignores
  it), so that a misspelt ``sample_weight`` cannot go unnoticed;
* a signature without inputs (``memory_snapshot``) is callable with ``"inputs": {}`` or no
  tensors at all; TF Serving answers "Failed to get input map for signature".
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from reloop2_serving.errors import ServingError, invalid

ROW, COLUMNAR = "row", "columnar"
_B64 = "b64"
_BYTES_SUFFIX = "_bytes"  # TF Serving writes outputs named *_bytes as {"b64": ...}
_INTS = (types_pb2.DT_INT8, types_pb2.DT_INT16, types_pb2.DT_INT32, types_pb2.DT_INT64,
         types_pb2.DT_UINT8, types_pb2.DT_UINT16, types_pb2.DT_UINT32, types_pb2.DT_UINT64)
_FLOATS = (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16, types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE)


def _debug(value, limit: int = 256) -> str:
    text = json.dumps(value, allow_nan=True, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "..."


def _type_name(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype)


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(_B64), str)


def parse_request(body: bytes) -> dict:
    """The request document: a JSON object (NaN and Infinity are accepted, as in TF Serving)."""
    if not body.strip():
        raise invalid("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise invalid(f"JSON Parse error: {err}") from err
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {_debug(doc)} Is not object")
    return doc


def signature_name(doc: Mapping) -> str:
    """The optional ``signature_name`` of a request ('' for the default)."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid(f"JSON Value: {_debug(doc)} not formatted correctly. 'signature_name' key "
                      "must be a string value.")
    return name


def _leaf(value, dtype: int):
    """One JSON scalar as a value of ``dtype``; the error names the value and the dtype."""
    if dtype == types_pb2.DT_STRING:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict):
            if not _is_b64(value):
                raise invalid(f"JSON Value: {_debug(value)} not formatted correctly for base64 "
                              "data")
            text = value[_B64]
            try:  # absl::Base64Unescape accepts unpadded input too
                return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
            except (binascii.Error, ValueError) as err:
                raise invalid(f"Unable to base64 decode {_debug(value)}: {err}") from err
    elif dtype in _FLOATS:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    elif dtype in _INTS:
        if isinstance(value, int) and not isinstance(value, bool):
            info = np.iinfo(tf.dtypes.as_dtype(dtype).as_numpy_dtype)
            if info.min <= value <= info.max:
                return value
    elif dtype == types_pb2.DT_BOOL:
        if isinstance(value, bool):
            return value
    else:
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                           f"Conversion of JSON Value: {_debug(value)} to type: "
                           f"{_dtype_name(dtype)}")
    raise invalid(f"JSON Value: {_debug(value)} Type: {_type_name(value)} is not of expected "
                  f"type: {_dtype_name(dtype)}")


def _dense_shape(value) -> list[int]:
    """The shape read along the first elements (TF Serving's GetDenseTensorShape)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level: int, shape: list[int], dtype: int, out: list) -> None:
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid(f"JSON Value: {_debug(value)} found at incorrect level: {level + 1} in "
                          f"the JSON DOM. Expected at level: {len(shape)}")
        out.append(_leaf(value, dtype))
        return
    if level >= len(shape):
        raise invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise invalid(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                      f"expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _values(value, dtype: int) -> tuple[list, list[int]]:
    shape = _dense_shape(value)
    out: list = []
    _fill(value, 0, shape, dtype, out)
    return out, shape


def _proto(values: list, shape: list[int], dtype: int):
    np_dtype = object if dtype == types_pb2.DT_STRING else \
        tf.dtypes.as_dtype(dtype).as_numpy_dtype
    array = np.empty(len(values), dtype=np_dtype)
    array[:] = values
    return tf.make_tensor_proto(array.reshape(shape), dtype=tf.dtypes.as_dtype(dtype))


def _from_instances(instances: list, infos: Mapping) -> dict:
    names = sorted(infos)
    first = instances[0]
    as_objects = isinstance(first, dict) and not _is_b64(first)
    if not as_objects and len(names) > 1:
        raise invalid("instances is a plain list, but expecting list of objects as multiple input "
                      f"tensors required as per tensorinfo_map: {names}")
    columns: dict[str, list] = {}
    shapes: dict[str, list[int]] = {}

    def add(index: int, name: str, item) -> None:
        try:
            values, shape = _values(item, infos[name].dtype)
        except ServingError as err:
            raise invalid(f"Failed to process element: {index} key: {name} of 'instances' list. "
                          f"Error: {err.message}") from err
        if name in shapes and shapes[name] != shape:
            raise invalid(f"Failed to process element: {index} key: {name} of 'instances' list. "
                          f"Error: Expecting shape {shapes[name]} but got: {shape}")
        shapes.setdefault(name, shape)
        columns.setdefault(name, []).extend(values)

    for index, element in enumerate(instances):
        if not as_objects:
            if isinstance(element, dict) and not _is_b64(element):
                raise invalid(f"Expecting value/list but got object at item {index} of input list")
            add(index, names[0], element)
            continue
        if not isinstance(element, dict) or _is_b64(element):
            raise invalid(f"Expecting object but got list at item {index} of input list")
        for name, item in element.items():
            if name not in infos:
                raise invalid(f"Failed to process element: {index} key: {name} of 'instances' "
                              f"list. Error: JSON object: does not have named input: {name}")
            add(index, name, item)
        if set(element) != set(names):
            raise invalid(f"Failed to process element: {index} of 'instances' list. JSON object: "
                          f"{_debug(element)} keys must be equal to: {','.join(names)}")
    rows = len(instances)
    return {name: _proto(columns[name], [rows, *shapes[name]], infos[name].dtype)
            for name in names}


def _from_inputs(inputs, infos: Mapping, signature: str) -> dict:
    names = sorted(infos)
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(names) != 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple input "
                          f"tensors required as per tensorinfo_map: {names}")
        return {names[0]: _proto(*_values(inputs, infos[names[0]].dtype), infos[names[0]].dtype)}
    extra = sorted(set(inputs) - set(names))
    if extra:
        raise invalid(f"Unexpected named input(s): {extra} in 'inputs' object; signature "
                      f"'{signature}' takes {names}")
    tensors = {}
    for name in names:
        if name not in inputs:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        try:
            tensors[name] = _proto(*_values(inputs[name], infos[name].dtype), infos[name].dtype)
        except ServingError as err:
            raise invalid(f"Input '{name}': {err.message}") from err
    return tensors


def request_tensors(doc: Mapping, infos: Mapping, signature: str) -> tuple[dict, str]:
    """``(inputs as TensorProtos, ROW or COLUMNAR)`` of a predict request for ``infos``.

    ``infos`` is the signature's ``inputs`` map (alias -> TensorInfo).
    """
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid(f"JSON Value: {_debug(doc)} Not formatted correctly expecting only one of "
                      "'inputs' or 'instances' keys to exist ")
    if not infos:  # e.g. memory_snapshot; TF Serving cannot call these over REST at all
        if has_instances or doc.get("inputs", {}) not in ({}, [], None):
            raise invalid(f"signature '{signature}' takes no inputs; send no 'instances' and "
                          "'inputs': {} (or no 'inputs' key)")
        return {}, COLUMNAR
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid(f"JSON Value: {_debug(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid(f"JSON Value: {_debug(doc)} No values in 'instances' array")
        return _from_instances(instances, infos), ROW
    if has_inputs:
        return _from_inputs(doc["inputs"], infos, signature), COLUMNAR
    raise invalid("Missing 'inputs' or 'instances' key")


def check_row_outputs(outputs: Mapping, signature: str) -> None:
    """Refuses a row-format request whose outputs have no batch dimension, before it runs.

    TF Serving runs such a request and then fails to write the answer ("has no shape
    information"), so an ``update_memory`` sent as ``instances`` would write the memory and
    still return an error. Here it is refused first and nothing is written.
    """
    for alias in sorted(outputs):
        shape = outputs[alias].tensor_shape
        if shape.unknown_rank or not shape.dim:
            raise invalid(f"Tensor name: {alias} has no shape information: signature "
                          f"'{signature}' returns scalars, which the row format ('instances') "
                          "cannot carry; send 'inputs' (columnar) instead. Nothing was run.")


def _jsonable(name: str, array: np.ndarray):
    array = np.asarray(array)
    if array.dtype == np.float32 or array.dtype == np.float16:
        # The shortest decimal that reads back as the same float32 (TF Serving: StrCat, else
        # max_digits10), not the float64 expansion of it.
        flat = [float(str(x)) for x in array.ravel()]
    elif array.dtype == object or array.dtype.kind == "S":
        as_b64 = name.endswith(_BYTES_SUFFIX)
        flat = [{_B64: base64.b64encode(bytes(x)).decode("ascii")} if as_b64
                else bytes(x).decode("utf-8", errors="replace") for x in array.ravel()]
    else:
        return array.tolist()
    if array.ndim == 0:
        return flat[0]
    nested = np.empty(len(flat), dtype=object)
    nested[:] = flat
    return nested.reshape(array.shape).tolist()


def response_json(outputs: Mapping[str, np.ndarray], fmt: str) -> str:
    """``{"predictions": ...}`` for a row request, ``{"outputs": ...}`` for a columnar one."""
    names = sorted(outputs)
    if fmt == ROW:
        batch = None
        for name in names:
            shape = np.shape(outputs[name])
            if not shape:
                raise invalid(f"Tensor name: {name} has no shape information ")
            if batch is not None and shape[0] != batch:
                raise invalid(f"Tensor name: {name} has inconsistent batch size: {shape[0]} "
                              f"expecting: {batch}")
            batch = shape[0]
        columns = {name: _jsonable(name, outputs[name]) for name in names}
        if len(names) == 1:
            predictions = columns[names[0]]
        else:
            predictions = [{name: columns[name][i] for name in names} for i in range(batch or 0)]
        return json.dumps({"predictions": predictions})
    columns = {name: _jsonable(name, outputs[name]) for name in names}
    return json.dumps({"outputs": columns[names[0]] if len(names) == 1 else columns})
