"""TF Serving's REST API on the development server (``--rest-port``).

    GET  /v1/models/<name>[/versions/<v> | /labels/<l>]              model status
    GET  /v1/models/<name>[/versions/<v> | /labels/<l>]/metadata     signature_def map
    POST /v1/models/<name>[/versions/<v> | /labels/<l>]:predict      any signature

The URL grammar, the JSON of requests and responses (``serving.json_tensor``) and the status
codes follow tensorflow/serving 2.16 (``http_rest_api_handler.cc``, ``http_rest_api_util.cc``,
``http_server.cc``). Errors are ``{"error": "<message>"}``. A predict request runs through the
same ``Servable.run`` as a gRPC ``Predict``, so both front ends validate and answer alike.

It is built on the standard library's ``http.server.ThreadingHTTPServer``: a development server
on loopback needs one thread per connection and nothing more, and a web framework would be a
new dependency for the package and its CI. It is not hardened for untrusted networks.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    status_pb2,
)

from reloop2_serving import json_tensor
from reloop2_serving.errors import ServingError, invalid

logger = logging.getLogger("reloop2.rest")

_PREDICT = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?"
                      r":(classify|regress|predict)", re.IGNORECASE)
_STATUS = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?"
                     r"(?:/(metadata))?", re.IGNORECASE)


def _model_spec(name: str, version: str | None, label: str | None) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=unquote(name))
    if version is not None:
        spec.version.value = int(version)
    if label is not None:
        spec.version_label = unquote(label)
    return spec


def _to_json(message) -> str:
    return json_format.MessageToJson(message, including_default_value_fields=True,
                                     preserving_proto_field_name=True)


class RestApi:
    """Answers one REST call: ``handle(method, path, body) -> (HTTP status, JSON text)``.

    ``manager`` is the dev server's ``ModelManager`` (``get(model_spec)`` returns the servable).
    """

    def __init__(self, manager):
        self.manager = manager

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        try:
            return 200, self._dispatch(method, urlsplit(path).path, body)
        except ServingError as err:
            if err.http_status >= 500:
                logger.warning("%s %s: %s", method, path, err.message)
            return err.http_status, json.dumps({"error": err.message})
        except Exception as err:  # noqa: BLE001  (the client gets a 500, the log the trace)
            logger.exception("%s %s failed", method, path)
            return 500, json.dumps({"error": f"internal error: {err}"})

    def _dispatch(self, method: str, path: str, body: bytes) -> str:
        if not path.lower().startswith("/v1/"):
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"no REST endpoint at {path}; the API lives under /v1/models/")
        malformed = invalid(f"Malformed request: {method} {path}")
        if method == "POST":
            match = _PREDICT.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, verb = match.groups()
            if verb.lower() != "predict":
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"the development server implements :predict only, not "
                                   f":{verb.lower()}")
            return self.predict(_model_spec(name, version, label), body)
        if method == "GET":
            match = _STATUS.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, metadata = match.groups()
            if not name:
                raise invalid("Missing model name in request.")
            spec = _model_spec(name, version, label)
            return self.metadata(spec) if metadata else self.status(spec)
        raise malformed

    def predict(self, spec: model_pb2.ModelSpec, body: bytes) -> str:
        # TF Serving's order: the JSON is parsed before the model is looked up.
        doc = json_tensor.parse_request(body)
        signature = json_tensor.signature_name(doc)
        servable = self.manager.get(spec)
        name, sig = servable.signature(signature)
        inputs, fmt = json_tensor.request_tensors(doc, sig.inputs, name)
        if fmt == json_tensor.ROW:
            json_tensor.check_row_outputs(sig.outputs, name)
        _, outputs = servable.run(name, inputs)
        return json_tensor.response_json(outputs, fmt)

    def status(self, spec: model_pb2.ModelSpec) -> str:
        servable = self.manager.get(spec)
        status = get_model_status_pb2.ModelVersionStatus(
            version=servable.version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE,
            status=status_pb2.StatusProto())  # error_code OK, printed as TF Serving prints it
        return _to_json(get_model_status_pb2.GetModelStatusResponse(model_version_status=[status]))

    def metadata(self, spec: model_pb2.ModelSpec) -> str:
        servable = self.manager.get(spec)
        model_spec = model_pb2.ModelSpec(name=self.manager.model_name)
        model_spec.version.value = servable.version
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in servable.signature_defs.items():
            signatures.signature_def[key].CopyFrom(sig)
        # As TF Serving writes it: the two parts are converted separately and joined.
        return json.dumps({"model_spec": json.loads(_to_json(model_spec)),
                           "metadata": {"signature_def": json.loads(_to_json(signatures))}},
                          indent=1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients of TF Serving expect
    server_version = "reloop2-dev-server"
    api: RestApi  # set on the subclass made by start_rest_server

    def _answer(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            status, text = 411, json.dumps({"error": "send a Content-Length; chunked request "
                                                     "bodies are not supported"})
            self.close_connection = True
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            status, text = self.api.handle(self.command, self.path, body)
        payload = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, format: str, *args) -> None:  # noqa: A002  (the base class's name)
        logger.debug("%s %s", self.address_string(), format % args)


class RestServer:
    """A running REST API: ``port`` is the bound port; ``close()`` stops it."""

    def __init__(self, httpd: ThreadingHTTPServer):
        self.httpd = httpd
        self.host, self.port = httpd.server_address[:2]
        self._thread = threading.Thread(target=httpd.serve_forever, name="reloop2-rest",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def start_rest_server(manager, host: str = "127.0.0.1", port: int = 8501) -> RestServer:
    """Serves TF Serving's REST API for ``manager`` on ``host:port`` (0 picks a free port)."""
    handler = type("Handler", (_Handler,), {"api": RestApi(manager)})
    try:
        httpd = ThreadingHTTPServer((host, port), handler)
    except OSError as err:
        raise OSError(f"cannot bind the REST API to {host}:{port}: {err.strerror or err}") from err
    httpd.daemon_threads = True
    return RestServer(httpd)
