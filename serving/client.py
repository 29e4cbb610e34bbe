"""gRPC client for a ReLoop2 model on TF Serving (or on ``reloop2_serving.dev_server``).

>>> client = ReLoop2Client("localhost:8500")
>>> out = client.predict({"user_id": ["u1"], "item_id": ["i9"]})      # out["probability"]: [1]
>>> client.update_memory({"user_id": ["u1"], "item_id": ["i9"]}, labels=[1.0])

Writes are exactly-once: every ``update_memory``, ``update_memory_by_keys`` and ``merge`` sends
a ``write_id`` (a fresh one unless the caller gives one), and a call that fails with UNAVAILABLE
or DEADLINE_EXCEEDED is retried with the same id. The model drops an id it has already written
(``weight_written`` 0), so a retry of a write whose answer was lost adds nothing
(docs/serving.md, "Exactly-once writes").
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent import futures
from typing import Self

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from reloop2_serving.tensor_proto import from_proto, to_proto

logger = logging.getLogger(__name__)

GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
# Status codes after which a call may or may not have reached the model: retried (writes with
# the same write_id, so the model counts them once).
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def parse_targets(targets: str | Sequence[str], minimum: int = 1) -> list[str]:
    """``"a:8500,b:8500"`` (or a list) -> ``["a:8500", "b:8500"]``; raises ``ValueError`` unless
    every entry is ``HOST:PORT`` with a port in 1..65535, there are at least ``minimum``, and
    none repeats (a replica named twice would get every write twice)."""
    items = str(targets).split(",") if isinstance(targets, str) else [str(t) for t in targets]
    items = [t.strip() for t in items]
    if any(not t for t in items):
        raise ValueError(f"--targets has an empty entry: {targets!r} "
                         "(expected HOST:PORT,HOST:PORT,...)")
    for target in items:
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--targets entry {target!r} is not HOST:PORT")
    if len(items) < minimum:
        raise ValueError(f"--targets names {len(items)} replica(s); at least {minimum} needed")
    repeated = sorted({t for t in items if items.count(t) > 1})
    if repeated:
        raise ValueError(f"--targets names {', '.join(repeated)} more than once")
    return items


def new_write_id() -> str:
    """A fresh, unique ``write_id``."""
    return uuid.uuid4().hex


class ReLoop2Client:
    """Calls the ReLoop2 signatures of one server over gRPC.

    Args:
        target: ``host:port`` of a PredictionService.
        model_name: str. The model name in the server's config. Defaults to `"reloop2"`.
        timeout: float. Seconds per call. Defaults to `30.0`.
        version: optional int. Pin a model version. Defaults to `None` (the newest).
        retries: int >= 0. Further attempts after UNAVAILABLE or DEADLINE_EXCEEDED, with
            exponential backoff from ``backoff`` seconds. Defaults to `3`.
        backoff: float. Seconds before the first retry. Defaults to `0.1`.
    """

    def __init__(self, target: str, model_name: str = "reloop2", timeout: float = 30.0,
                 version: int | None = None, retries: int = 3, backoff: float = 0.1):
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"`retries` should be an int >= 0. Received: retries={retries!r}")
        self.target = target
        self.model_name = model_name
        self.timeout = timeout
        self.version = version
        self.retries = retries
        self.backoff = float(backoff)
        self._channel = grpc.insecure_channel(target, options=GRPC_OPTIONS)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._model_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._signatures: dict | None = None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- low level -------------------------------------------------------------------------------
    def request(self, signature_name: str, inputs: Mapping[str, object],
                output_filter: Sequence[str] = ()) -> predict_pb2.PredictRequest:
        """A ``PredictRequest``; values are TensorProtos or arrays (sent with their own dtype)."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature_name
        if self.version is not None:
            request.model_spec.version.value = self.version
        for name, value in inputs.items():
            proto = value if isinstance(value, tensor_pb2.TensorProto) else to_proto(value)
            request.inputs[name].CopyFrom(proto)
        request.output_filter.extend(output_filter)
        return request

    def call(self, signature_name: str, inputs: Mapping[str, object],
             output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Runs any signature; raises ``grpc.RpcError`` with the server's status code.

        UNAVAILABLE and DEADLINE_EXCEEDED are retried ``retries`` times (the same request, so a
        write keeps its ``write_id``); other errors are raised at once.
        """
        return self._send(signature_name, self.request(signature_name, inputs, output_filter))

    def _send(self, signature_name: str, request: predict_pb2.PredictRequest,
              failed: grpc.RpcError | None = None) -> dict[str, np.ndarray]:
        """Sends ``request`` until it is answered or fails for good; ``failed``: the error of a
        first attempt already made (``PendingWrite``)."""
        attempt = 0 if failed is None else 1
        while True:
            if failed is None:
                try:
                    return _outputs(self._stub.Predict(request, timeout=self.timeout))
                except grpc.RpcError as err:
                    failed = err
                attempt += 1
            if failed.code() not in RETRYABLE or attempt > self.retries:
                raise failed
            logger.info("%s on %s: %s; retry %d of %d", signature_name, self.target,
                        failed.code().name, attempt, self.retries)
            time.sleep(self.backoff * 2 ** (attempt - 1))
            failed = None

    def metadata(self) -> dict[str, dict[str, dict[str, tuple[str, list[int] | None]]]]:
        """Signature name -> ``{"inputs": {alias: (dtype, shape)}, "outputs": {...}}``.

        Shapes use ``-1`` for unknown dimensions and ``None`` for an unknown rank.
        """
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = self.model_name
        if self.version is not None:
            request.model_spec.version.value = self.version
        response = self._stub.GetModelMetadata(request, timeout=self.timeout)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)

        def describe(infos):
            out = {}
            for alias, info in infos.items():
                shape = tf.TensorShape(info.tensor_shape)
                dims = None if shape.rank is None else [-1 if d is None else d
                                                        for d in shape.as_list()]
                out[alias] = (tf.dtypes.as_dtype(info.dtype).name, dims)
            return out

        return {name: {"inputs": describe(sig.inputs), "outputs": describe(sig.outputs)}
                for name, sig in signatures.signature_def.items() if not name.startswith("__")}

    def status(self) -> dict[int, str]:
        """Version -> state (``AVAILABLE``, ``LOADING``, ...) from ``ModelService.GetModelStatus``."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        response = self._model_stub.GetModelStatus(request, timeout=self.timeout)
        states = get_model_status_pb2.ModelVersionStatus.State
        return {s.version: states.Name(s.state) for s in response.model_version_status}

    def input_dtypes(self, signature_name: str = "serving_default") -> dict[str, tf.DType]:
        """The dtype of every input of a signature (fetched once, then cached)."""
        if self._signatures is None:
            self._signatures = self.metadata()
        if signature_name not in self._signatures:
            raise ValueError(f"the server has no signature {signature_name!r}; it has "
                             f"{sorted(self._signatures)}")
        return {alias: tf.dtypes.as_dtype(dtype)
                for alias, (dtype, _) in self._signatures[signature_name]["inputs"].items()}

    def _features(self, features: Mapping[str, object], signature_name: str) -> dict:
        """Features as arrays of the signature's dtypes (floats to float32, ids as given)."""
        dtypes = self.input_dtypes(signature_name)
        out = {}
        for name, value in features.items():
            value = np.asarray(value)
            dtype = dtypes.get(name)
            if dtype is not None and dtype != tf.string and value.dtype.kind in "biuf":
                value = value.astype(dtype.as_numpy_dtype)
            elif dtype == tf.string and value.dtype.kind in "US":
                value = value.astype(object)
            out[name] = value
        return out

    # -- the ReLoop2 signatures -------------------------------------------------------------------
    def predict(self, features: Mapping[str, object], signature_name: str = "serving_default",
                output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """``probability``, ``base_probability``, ``estimated_error``, ``memory_support`` and,
        for a sketch memory, ``memory_keys`` (what ``update_memory_by_keys`` takes back)."""
        return self.call(signature_name, self._features(features, signature_name), output_filter)

    def update_memory(self, features: Mapping[str, object], labels, sample_weight=None,
                      write_id: str | None = None) -> dict[str, np.ndarray]:
        """Writes revealed labels; returns ``weight_written`` (0 if ``write_id`` was already
        written) and ``memory_weight``.

        TF Serving feeds every input of a signature, so missing weights are sent as ones.
        ``write_id``: `None` for a fresh one, ``""`` for no deduplication.
        """
        return self.call("update_memory",
                         self._update_inputs(features, labels, sample_weight, write_id))

    def update_memory_by_keys(self, memory_keys, base_probability, labels, sample_weight=None,
                              write_id: str | None = None) -> dict[str, np.ndarray]:
        """Writes revealed labels by the ``memory_keys`` and ``base_probability`` that ``predict``
        returned for the same rows: the server runs no model. Same outputs as ``update_memory``."""
        return self.call("update_memory_by_keys", _by_keys_inputs(
            memory_keys, base_probability, labels, sample_weight, write_id))

    def writer(self, in_flight: int = 4) -> Writer:
        """A ``Writer`` that keeps up to ``in_flight`` writes on the wire from one thread."""
        return Writer(self, in_flight)

    def _update_inputs(self, features, labels, sample_weight, write_id) -> dict:
        return {**self._features(features, "update_memory"),
                **_label_inputs(labels, sample_weight, write_id)}

    def snapshot(self) -> np.ndarray:
        """The memory's whole state ``[num_state_rows, 3]`` in true units (tables, then the
        self-tuning combiner's sums)."""
        return self.call("memory_snapshot", {})["sketch"]

    def memory_weight(self) -> float:
        """The memory's total weight (``memory_layout``; a model exported before it returned the
        weight answers through ``memory_snapshot``, which copies the whole state)."""
        out = self.call("memory_layout", {})
        if "memory_weight" not in out:
            out = self.call("memory_snapshot", {}, ["memory_weight"])
        return float(out["memory_weight"])

    def restore(self, sketch) -> float:
        """Replaces the memory with ``sketch``; returns the new total weight."""
        out = self.call("memory_restore", {"sketch": np.asarray(sketch, dtype=np.float32)})
        return float(out["memory_weight"])

    def merge(self, delta, write_id: str | None = None) -> dict[str, np.ndarray]:
        """Adds ``delta`` (a sketch or a difference of snapshots); returns ``weight_written``
        (the delta's weight, 0 if ``write_id`` was already written) and ``memory_weight``."""
        return self.call("memory_merge", {"sketch": np.asarray(delta, dtype=np.float32),
                                          "write_id": _write_id(write_id)})


def _write_id(write_id: str | None) -> np.ndarray:
    if write_id is None:
        write_id = new_write_id()
    if not isinstance(write_id, str):
        raise TypeError(f"`write_id` should be a str or None. Received: {type(write_id).__name__}")
    return np.array(write_id.encode("utf-8"), dtype=object)


def _label_inputs(labels, sample_weight, write_id) -> dict:
    """``label``, ``sample_weight`` (ones when `None`: TF Serving feeds every input) and
    ``write_id`` of a write."""
    labels = np.asarray(labels, dtype=np.float32).reshape(-1)
    if sample_weight is None:
        sample_weight = np.ones_like(labels)
    return {"label": labels,
            "sample_weight": np.asarray(sample_weight, dtype=np.float32).reshape(-1),
            "write_id": _write_id(write_id)}


def _by_keys_inputs(memory_keys, base_probability, labels, sample_weight, write_id) -> dict:
    return {"memory_keys": np.asarray(memory_keys, dtype=np.int32),
            "base_probability": np.asarray(base_probability, dtype=np.float32).reshape(-1),
            **_label_inputs(labels, sample_weight, write_id)}


def _outputs(response) -> dict[str, np.ndarray]:
    return {alias: from_proto(proto) for alias, proto in response.outputs.items()}


class PendingWrite:
    """A write a ``Writer`` has sent. ``result()`` waits for its answer and returns the outputs
    (``weight_written``, ``memory_weight``); UNAVAILABLE and DEADLINE_EXCEEDED are retried
    there with the same request (so the same ``write_id``), as ``ReLoop2Client.call`` does;
    another error is raised."""

    def __init__(self, client: ReLoop2Client, signature_name: str,
                 request: predict_pb2.PredictRequest):
        self._client, self._signature_name, self._request = client, signature_name, request
        self._future = client._stub.Predict.future(request, timeout=client.timeout)
        self._outputs: dict[str, np.ndarray] | None = None
        self._error: grpc.RpcError | None = None

    def done(self) -> bool:
        """Whether ``result()`` returns without waiting for the first answer."""
        return self._outputs is not None or self._error is not None or self._future.done()

    def result(self) -> dict[str, np.ndarray]:
        if self._outputs is None and self._error is None:
            try:
                self._outputs = _outputs(self._future.result())
            except grpc.RpcError as err:
                try:
                    self._outputs = self._client._send(self._signature_name, self._request,
                                                       failed=err)
                except grpc.RpcError as final:
                    self._error = final
        if self._error is not None:
            raise self._error
        return self._outputs


class Writer:
    """Sends writes without waiting for each answer, from one thread: up to ``in_flight``
    requests are on the wire at once (a write waits for the oldest one's answer when that many
    are). A feedback consumer keeps a replica busy this way, where one call at a time waits a
    round trip per batch (docs/serving.md, "Writing feedback fast").

    >>> with client.writer(in_flight=4) as writer:
    ...     for keys, probs, labels, event_id in feedback:
    ...         writer.update_memory_by_keys(keys, probs, labels, write_id=event_id)
    ... # leaving the block waits for every answer and raises the first failed write's error

    Writes in flight run concurrently on the server, so they may be applied in any order. The
    tables' sums do not depend on it; with a ``half_life`` a concurrent write can miss a decay
    step (docs/serving.md, "Concurrent writes are exact"). Each write keeps its ``write_id``
    through retries, so it counts once.
    """

    def __init__(self, client: ReLoop2Client, in_flight: int = 4):
        if isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1:
            raise ValueError(f"`in_flight` should be an int >= 1. Received: in_flight={in_flight!r}")
        self.client, self.in_flight = client, in_flight
        self._pending: collections.deque[PendingWrite] = collections.deque()
        self._failed: list[PendingWrite] = []

    def update_memory(self, features: Mapping[str, object], labels, sample_weight=None,
                      write_id: str | None = None) -> PendingWrite:
        """``ReLoop2Client.update_memory``, sent without waiting for the answer."""
        return self._send("update_memory", self.client._update_inputs(
            features, labels, sample_weight, write_id))

    def update_memory_by_keys(self, memory_keys, base_probability, labels, sample_weight=None,
                              write_id: str | None = None) -> PendingWrite:
        """``ReLoop2Client.update_memory_by_keys``, sent without waiting for the answer."""
        return self._send("update_memory_by_keys", _by_keys_inputs(
            memory_keys, base_probability, labels, sample_weight, write_id))

    def _send(self, signature_name: str, inputs: dict) -> PendingWrite:
        request = self.client.request(signature_name, inputs)
        while len(self._pending) >= self.in_flight:
            self._wait(self._pending.popleft())
        pending = PendingWrite(self.client, signature_name, request)
        self._pending.append(pending)
        return pending

    def _wait(self, pending: PendingWrite) -> None:
        try:
            pending.result()
        except grpc.RpcError as err:
            logger.warning("a write to %s failed: %s", self.client.target, err.code().name)
            self._failed.append(pending)

    def _drain(self) -> None:
        while self._pending:
            self._wait(self._pending.popleft())

    def flush(self) -> None:
        """Waits for every write sent; raises the first failed write's ``grpc.RpcError`` (each
        write's own outcome is its ``PendingWrite.result()``)."""
        self._drain()
        failed, self._failed = self._failed, []
        if failed:
            if len(failed) > 1:
                logger.warning("%d writes failed; raising the first", len(failed))
            failed[0].result()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.flush()
        else:  # the caller's error goes first; still wait for what is on the wire
            self._drain()


@dataclasses.dataclass
class FanOutResult:
    """Per-replica outcome of a fan-out call: ``results`` of the replicas that succeeded and
    ``errors`` (the exception) of those that failed."""

    results: dict[str, dict[str, np.ndarray]]
    errors: dict[str, Exception]

    @property
    def ok(self) -> bool:
        return not self.errors


class FanOutClient:
    """Sends every ``update_memory`` to all replicas in parallel, so their memories stay equal.

    Every replica gets the same ``write_id``, and each client retries UNAVAILABLE and
    DEADLINE_EXCEEDED with it. A replica that still fails is reported; heal it with
    ``memory_restore`` from a healthy replica's snapshot (``reloop2 memory sync`` does).

    Args:
        targets: ``host:port`` of every replica.
        model_name: str. Defaults to `"reloop2"`.
        timeout: float. Seconds per call. Defaults to `30.0`.
    """

    def __init__(self, targets: Sequence[str], model_name: str = "reloop2", timeout: float = 30.0):
        if not targets:
            raise ValueError("`targets` should name at least one replica.")
        self.clients = {t: ReLoop2Client(t, model_name, timeout) for t in targets}
        self._pool = futures.ThreadPoolExecutor(max_workers=len(self.clients))

    def _each(self, method: str, *args, **kwargs) -> FanOutResult:
        pending = {target: self._pool.submit(getattr(client, method), *args, **kwargs)
                   for target, client in self.clients.items()}
        results, errors = {}, {}
        for target, future in pending.items():
            try:
                results[target] = future.result()
            except (grpc.RpcError, ValueError, TypeError, OSError) as err:
                logger.warning("replica %s: %s failed: %s", target, method, err)
                errors[target] = err
        return FanOutResult(results, errors)

    def update_memory(self, features, labels, sample_weight=None,
                      write_id: str | None = None) -> FanOutResult:
        """``update_memory`` on every replica at once, with one ``write_id``."""
        write_id = new_write_id() if write_id is None else write_id
        return self._each("update_memory", features, labels, sample_weight, write_id)

    def predict(self, features) -> FanOutResult:
        """``predict`` on every replica (to compare them)."""
        return self._each("predict", features)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for client in self.clients.values():
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
