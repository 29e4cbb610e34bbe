"""A PredictionService-compatible development server for ReLoop2 SavedModels.

The real ``tensorflow_model_server`` cannot be installed on the development and CI machines (no
Debian or PyPI package, no Docker engine), so this server stands in for it in tests and demos.
It loads a SavedModel the way TF Serving does, in a TF1 Session over the SignatureDefs, and
speaks the same gRPC API (``tensorflow.serving.PredictionService``: ``Predict`` and
``GetModelMetadata``; ``tensorflow.serving.ModelService``: ``GetModelStatus``), so the client
and the tests run unchanged against the real server. With ``--rest-port`` it also serves TF
Serving's REST API (``reloop2_serving.rest``) over the same loaded model.

    python -m reloop2_serving.dev_server --model-dir DIR [--port 8500] [--rest-port 8501]

``DIR`` is a SavedModel or a TF-Serving base dir with numbered versions; the newest is served.
It is not a production server: no batching scheduler, no model config file.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from concurrent import futures
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from reloop2_tf.export import (
    WARMUP_FILE,
    WRITE_SIGNATURES,
    numbered_versions,
    resolve_model_dir,
)
from reloop2_serving.durable import DurableMemory, MemoryEndpoint
from reloop2_serving.errors import ServingError
from reloop2_serving.flags import add_serve_arguments
from reloop2_serving import signals
from reloop2_serving.rest import start_rest_server
from reloop2_serving.store import MemoryStore
from reloop2_serving.tensor_proto import from_proto, to_proto

logger = logging.getLogger("reloop2.dev_server")

DEFAULT_SIGNATURE = "serving_default"
# TF Serving lifts gRPC's 4 MB default; a 64 x 2**14 sketch is 12 MB.
GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def readable(message: str) -> str:
    """A TF error message without the graph-node dump, the way a client wants to read it."""
    message = re.sub(r"\s*\[\[\{\{node [^\n]*", "", message)
    message = re.sub(r"^(Graph execution error:|\s)+", "", message)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Detected at node", "Stack trace"))]
    text = " ".join(lines)
    # "assertion failed: [msg] [Condition ...] [x (label:0) = ] [2 0 1...] ..." -> "msg (...)"
    match = re.match(r"assertion failed: \[(.*?)\] \[(Condition .*)$", text)
    if match:
        detail = re.sub(r"\] \[|\[|\]", " ", match.group(2))
        text = f"{match.group(1).strip()} ({' '.join(detail.split())})"
    return text if len(text) <= 600 else text[:600] + " ..."


def _dtype_name(enum: int) -> str:
    return types_pb2.DataType.Name(enum)


class Servable:
    """One loaded version: a TF1 Session and the SignatureDefs of its ``serve`` MetaGraph."""

    def __init__(self, path: Path, version: int):
        self.path, self.version = path, version
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], str(path))
        self.signature_defs = dict(meta.signature_def)
        self._inflight = 0
        self._cond = threading.Condition()
        self._closing = False
        self._memory: MemoryEndpoint | None = None
        # Session callables, one per (signature, outputs, inputs), made from CallableOptions
        # (TF_SessionMakeCallable): `Session.run`, and `Session.make_callable` with feeds, which
        # delegates to it, rebuild their fetch and feed handlers in Python on every call.
        self._callables: dict[tuple, object] = {}
        self._shapes: dict[str, dict] = {}

    def signature(self, name: str):
        name = name or DEFAULT_SIGNATURE
        sig = self.signature_defs.get(name)
        if sig is None or name.startswith("__"):
            available = sorted(k for k in self.signature_defs if not k.startswith("__"))
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f'Serving signature name: "{name}" not found in signature def; '
                               f"available: {available}")
        return name, sig

    def _input_shapes(self, name: str, sig) -> dict:
        """``{alias: dims}`` of a signature's inputs (``None``: any shape; -1: any size)."""
        shapes = self._shapes.get(name)
        if shapes is None:
            shapes = {alias: (None if info.tensor_shape.unknown_rank
                              else tuple(d.size for d in info.tensor_shape.dim))
                      for alias, info in sig.inputs.items()}
            self._shapes[name] = shapes
        return shapes

    def _feeds(self, name: str, sig, inputs) -> dict:
        expected, sent = set(sig.inputs), set(inputs)
        if expected != sent:
            parts = [f"signature '{name}' expects inputs {sorted(expected)}"]
            if expected - sent:
                parts.append(f"missing: {sorted(expected - sent)}")
            if sent - expected:
                parts.append(f"unexpected: {sorted(sent - expected)}")
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(parts))
        feeds = {}
        for alias, proto in inputs.items():
            info = sig.inputs[alias]
            if proto.dtype != info.dtype:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input '{alias}' must have dtype {_dtype_name(info.dtype)}, "
                                   f"got {_dtype_name(proto.dtype)}")
            try:
                value = from_proto(proto)
            except Exception as err:  # a malformed TensorProto has many ways to fail
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input '{alias}' is not a valid TensorProto: {err}") from err
            dims = self._input_shapes(name, sig)[alias]
            if dims is not None and (len(dims) != value.ndim or any(
                    d >= 0 and d != n for d, n in zip(dims, value.shape))):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input '{alias}' must have shape "
                                   f"{tf.TensorShape(info.tensor_shape)}, got {list(value.shape)}")
            feeds[info.name] = value
        return feeds

    def run(self, signature_name: str, inputs, output_filter: Iterable[str] = (),
            internal: bool = False):
        """Runs a signature on TensorProto inputs; returns ``(signature name, {alias: ndarray})``.

        ``internal`` calls (the durable memory's) still run while the servable is unloading.
        """
        name, sig = self.signature(signature_name)
        feeds = self._feeds(name, sig, inputs)
        aliases = list(output_filter) or list(sig.outputs)
        unknown = sorted(set(aliases) - set(sig.outputs))
        if unknown or len(set(aliases)) != len(aliases):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output_filter {aliases} must name distinct outputs of "
                               f"'{name}': {sorted(sig.outputs)}")
        fetches = {alias: sig.outputs[alias].name for alias in aliases}
        with self._cond:
            if self._closing and not internal:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "servable is being unloaded")
            self._inflight += 1
        try:
            key = (name, tuple(aliases), tuple(feeds))
            run = self._callables.get(key)
            if run is None:
                options = config_pb2.CallableOptions(feed=list(feeds),
                                                     fetch=[fetches[a] for a in aliases])
                run = self.session._make_callable_from_options(options)  # noqa: SLF001
                self._callables[key] = run
            return name, dict(zip(aliases, run(*feeds.values())))
        except tf.errors.OpError as err:
            raise ServingError(_CODES.get(err.error_code, grpc.StatusCode.INTERNAL),
                               readable(err.message)) from err
        except (ValueError, TypeError) as err:  # feed conversion errors of the Python Session
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from err
        finally:
            with self._cond:
                self._inflight -= 1
                self._cond.notify_all()

    def memory(self) -> MemoryEndpoint:
        """This version's memory signatures, called in process."""
        def call(name, arrays):
            protos = {k: tf.make_tensor_proto(np.asarray(v)) for k, v in arrays.items()}
            return self.run(name, protos, internal=True)[1]

        if self._memory is None:
            self._memory = MemoryEndpoint(call, self.version, set(self.signature_defs))
        return self._memory

    def warm_up(self) -> int:
        """Replays ``assets.extra/tf_serving_warmup_requests`` as TF Serving does at load.

        Unlike TF Serving, it refuses a record that would write the memory: such a record
        would add the same rows again at every load.
        """
        path = self.path / WARMUP_FILE
        if not path.is_file():
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            log = prediction_log_pb2.PredictionLog.FromString(record)
            if not log.HasField("predict_log"):
                continue
            request = log.predict_log.request
            signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
            if signature in WRITE_SIGNATURES:
                raise ValueError(f"{path}: warm-up record {count} calls '{signature}', which "
                                 "writes the memory; warm-up requests must be read-only")
            self.run(signature, request.inputs, request.output_filter)
            count += 1
        return count

    def close(self, timeout: float = 30.0, before_close=None) -> None:
        """Refuses new calls, waits for the in-flight ones, runs ``before_close()``, closes."""
        with self._cond:
            self._closing = True
            self._cond.wait_for(lambda: self._inflight == 0, timeout=timeout)
        try:
            if before_close is not None:
                before_close()
        except Exception:
            logger.exception("while unloading version %d", self.version)
        finally:
            self.session.close()


class ModelManager:
    """The servable currently served under ``model_name``; optionally polls for new versions.

    With ``durable``, every loaded version gets the memory before it becomes current: the
    store's newest valid snapshot at start, the previous version's live memory on a version
    change. The memory is snapshotted periodically and once more at ``close``.
    """

    def __init__(self, model_dir: str | os.PathLike, model_name: str, poll_seconds: float = 0.0,
                 durable: DurableMemory | None = None):
        self.model_dir = Path(model_dir)
        self.model_name = model_name
        self.durable = durable
        self._lock = threading.Lock()
        self.current = self._load(*resolve_model_dir(self.model_dir))
        if durable is not None:
            durable.restore_newest(self.current.memory())
            durable.start(lambda: self.current.memory())
        self._stop = threading.Event()
        self._poller = None
        if poll_seconds > 0:
            self._poller = threading.Thread(target=self._poll, args=(poll_seconds,), daemon=True)
            self._poller.start()

    @staticmethod
    def _load(path: Path, version: int) -> Servable:
        started = time.monotonic()
        servable = Servable(path, version)
        warmed = servable.warm_up()
        logger.info("loaded version %d from %s in %.1f s (%d warm-up requests)", version, path,
                    time.monotonic() - started, warmed)
        return servable

    def _poll(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            versions = numbered_versions(self.model_dir)
            newest = max(versions, default=None)
            if newest is None or newest <= self.current.version:
                continue
            try:
                fresh = self._load(versions[newest], newest)
            except Exception:
                logger.exception("could not load version %d; still serving %d", newest,
                                 self.current.version)
                continue
            handed = None
            if self.durable is not None:
                try:
                    handed = self.durable.hand_over(self.current.memory(), fresh.memory())
                except Exception:
                    logger.exception("memory hand-over to version %d failed; it starts from "
                                     "its exported memory", newest)
            with self._lock:
                old, self.current = self.current, fresh
            # Without a durable store the new version starts from its exported memory: what
            # the old one learnt since its export is gone unless a sidecar carries it over.
            logger.info("now serving version %d; unloading %d", newest, old.version)
            carry = None
            if self.durable is not None:
                def carry():
                    self.durable.carry_rest(old.memory(), fresh.memory(), handed)
            old.close(before_close=carry)

    def get(self, model_spec) -> Servable:
        if model_spec.name != self.model_name:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Latest({model_spec.name}); "
                               f"this server serves '{self.model_name}'")
        with self._lock:
            servable = self.current
        if model_spec.HasField("version") and model_spec.version.value != servable.version:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Specific({model_spec.name}, "
                               f"{model_spec.version.value}); loaded: {servable.version}")
        if model_spec.version_label:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"unknown version label '{model_spec.version_label}'")
        return servable

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        final = None
        if self.durable is not None:
            self.durable.stop()
            current = self.current

            def final():
                self.durable.save(current.memory())
        self.current.close(before_close=final)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``Predict`` on any signature and ``GetModelMetadata``, as TF Serving implements them."""

    def __init__(self, manager: ModelManager):
        self.manager = manager

    def Predict(self, request, context):
        try:
            servable = self.manager.get(request.model_spec)
            name, outputs = servable.run(request.model_spec.signature_name, request.inputs,
                                         request.output_filter)
        except ServingError as err:
            context.abort(err.code, err.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.manager.model_name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = name
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(to_proto(np.asarray(value)))
        return response

    def GetModelMetadata(self, request, context):
        try:
            servable = self.manager.get(request.model_spec)
            unsupported = [f for f in request.metadata_field if f != "signature_def"]
            if unsupported or not request.metadata_field:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "metadata_field must be ['signature_def']; "
                                   f"got {list(request.metadata_field)}")
        except ServingError as err:
            context.abort(err.code, err.message)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.manager.model_name
        response.model_spec.version.value = servable.version
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in servable.signature_defs.items():
            signatures.signature_def[key].CopyFrom(sig)
        response.metadata["signature_def"].Pack(signatures)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``GetModelStatus``: the loaded version is AVAILABLE (readiness checks use it)."""

    def __init__(self, manager: ModelManager):
        self.manager = manager

    def GetModelStatus(self, request, context):
        try:
            servable = self.manager.get(request.model_spec)
        except ServingError as err:
            context.abort(err.code, err.message)
        status = get_model_status_pb2.ModelVersionStatus(
            version=servable.version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        return get_model_status_pb2.GetModelStatusResponse(model_version_status=[status])


def start_server(model_dir: str | os.PathLike, port: int = 8500, model_name: str = "reloop2",
                 host: str = "127.0.0.1", max_workers: int = 16, poll_seconds: float = 0.0,
                 durable: DurableMemory | None = None) -> tuple[grpc.Server, ModelManager, int]:
    """Loads the model and starts serving; returns ``(server, manager, bound port)``."""
    manager = ModelManager(model_dir, model_name, poll_seconds, durable)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=GRPC_OPTIONS)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(manager), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # grpcio 1.66 raises where older versions returned 0
        bound = 0
    if not bound:
        manager.close()
        raise OSError(f"cannot bind {host}:{port} (is the port in use?)")
    server.start()
    return server, manager, bound


def serve(model_dir: str | os.PathLike, port: int = 8500, model_name: str = "reloop2",
          host: str = "127.0.0.1", max_workers: int = 16, poll_seconds: float = 0.0,
          rest_port: int | None = None, rest_host: str = "127.0.0.1",
          durable: DurableMemory | None = None) -> int:
    """Serves until SIGTERM or SIGINT, then drains in-flight calls (and, with ``durable``,
    writes a last snapshot) and exits 0.

    ``rest_port`` (``None``: no REST API; 0 picks a free port) also serves TF Serving's REST
    API on ``rest_host``.
    """
    server, manager, bound = start_server(model_dir, port, model_name, host, max_workers,
                                          poll_seconds, durable)
    rest = None
    if rest_port is not None:
        try:
            rest = start_rest_server(manager, rest_host, rest_port)
        except OSError:
            server.stop(grace=0).wait()
            manager.close()
            raise
    stop = signals.StopSignal()
    if rest is not None:  # printed before the ready line, which readiness checks wait for
        print(f"reloop2 dev server: REST API at http://{rest.host}:{rest.port}/v1/models/"
              f"{model_name}", flush=True)
    print(f"reloop2 dev server: serving model '{model_name}' version {manager.current.version} "
          f"from {manager.current.path} on {host}:{bound}", flush=True)
    stop.wait()
    logger.info("shutting down")
    if rest is not None:
        rest.close()
    server.stop(grace=5).wait()
    manager.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m reloop2_serving.dev_server`` (the same as ``reloop2 serve``)."""
    parser = argparse.ArgumentParser(prog="python -m reloop2_serving.dev_server",
                                     description=__doc__.split("\n\n")[0])
    return add_serve_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Runs the server for parsed ``args``; exits non-zero with a one-line error on bad input."""
    try:
        resolve_model_dir(args.model_dir)
        for flag, value in (("--port", args.port), ("--rest-port", args.rest_port)):
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{flag} must be in [0, 65535], got {value}")
        durable = None
        if args.memory_store:
            if not args.snapshot_seconds > 0:
                raise ValueError(f"--snapshot-seconds must be > 0, got {args.snapshot_seconds}")
            if args.keep_snapshots < 1:
                raise ValueError(f"--keep-snapshots must be >= 1, got {args.keep_snapshots}")
            durable = DurableMemory(MemoryStore(args.memory_store, args.model_name,
                                                args.keep_snapshots), args.snapshot_seconds)
        return serve(args.model_dir, args.port, args.model_name, args.host, args.max_workers,
                     args.poll_seconds, args.rest_port, args.rest_host, durable)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
