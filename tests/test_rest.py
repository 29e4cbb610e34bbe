"""TF Serving's REST API on the development server, over loopback HTTP, against its gRPC answers.

One server process (``--rest-port 0``) serves both front ends over the same loaded model, so a
REST call and a gRPC call see the same memory; each test first resets it with ``memory_restore``.
"""

import base64
import hashlib
import json
import shutil
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest
from serving_helpers import STATE_ROWS, DevServer, build_model, make_features, take

from reloop2_tf import export as ex
from reloop2_serving import dev_server
from reloop2_serving.client import ReLoop2Client

pytestmark = pytest.mark.e2e
ZEROS = np.zeros([STATE_ROWS, 3], np.float32)
FEATURES = ("item_id", "price", "user_id")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = build_model(seed=7, compensation_weight=1.0)
    base = tmp_path_factory.mktemp("rest") / "reloop2"
    ex.export_serving_model(model, base, version="auto")
    server = DevServer(base, extra_args=["--rest-port", "0"])
    client = ReLoop2Client(server.target, timeout=60)
    yield server, client
    client.close()
    assert server.stop() == 0, "".join(server.lines)


def http(server, method, path, body=None):
    """``(HTTP status, raw body bytes)`` of one call with urllib, the plain stdlib client."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    request = urllib.request.Request(server.rest_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def predict(server, body, path="/v1/models/reloop2:predict"):
    status, raw = http(server, "POST", path, body)
    assert status == 200, raw
    return json.loads(raw)


def checksum(client):
    return hashlib.sha256(client.snapshot().tobytes()).hexdigest()


def columns(features):
    return {k: [v.item() if hasattr(v, "item") else v for v in values]
            for k, values in features.items()}


def rows(features, b64=False):
    out = []
    for i in range(len(features["price"])):
        row = {k: features[k][i] for k in FEATURES}
        row["price"] = float(row["price"])
        if b64:
            row["user_id"] = {"b64": base64.b64encode(row["user_id"].encode()).decode()}
        out.append(row)
    return out


def writes(n, rng):
    x = make_features(n, rng)
    return x, rng.integers(0, 2, n).astype(np.float32), rng.uniform(0, 2, n).astype(np.float32)


def test_rest_binds_loopback_and_reports_status_and_metadata_like_grpc(served):
    server, client = served
    assert server.rest_url.startswith("http://127.0.0.1:")
    status, raw = http(server, "GET", "/v1/models/reloop2")
    assert status == 200
    assert json.loads(raw) == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                         "error_message": ""}}]}
    assert http(server, "GET", "/v1/models/reloop2/versions/1")[1] == raw
    meta = json.loads(http(server, "GET", "/v1/models/reloop2/versions/1/metadata")[1])
    assert meta["model_spec"] == {"name": "reloop2", "signature_name": "", "version": "1"}
    signatures = meta["metadata"]["signature_def"]["signature_def"]
    grpc_meta = client.metadata()
    assert set(grpc_meta) <= set(signatures)
    for name, sig in grpc_meta.items():
        assert set(signatures[name].get("inputs", {})) == set(sig["inputs"]), name
        assert set(signatures[name]["outputs"]) == set(sig["outputs"]), name
    assert signatures["update_memory"]["inputs"]["label"]["dtype"] == "DT_FLOAT"
    assert signatures["predict"]["method_name"] == "tensorflow/serving/predict"


def test_rest_predict_rows_columns_and_b64_match_grpc(served):
    server, client = served
    client.restore(ZEROS)
    rng = np.random.default_rng(3)
    x, labels, weights = writes(60, rng)
    client.update_memory(x, labels, weights)  # a non-empty memory, so compensation is non-zero
    query = make_features(7, rng)
    expected = client.predict(query)
    assert (expected["memory_support"] > 0).any()
    by_row = predict(server, {"instances": rows(query)})["predictions"]
    by_b64 = predict(server, {"signature_name": "predict", "instances": rows(query, b64=True)})
    by_column = predict(server, {"signature_name": "serving_default",
                                 "inputs": columns(query)})["outputs"]
    assert len(by_row) == 7 and set(by_row[0]) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose([r[key] for r in by_row], value, rtol=0, atol=1e-6)
        np.testing.assert_allclose([r[key] for r in by_b64["predictions"]], value, atol=1e-6)
        np.testing.assert_allclose(by_column[key], value, rtol=0, atol=1e-6)
    assert np.asarray(by_column["memory_keys"]).dtype.kind == "i"
    # Every value reads back as the very float32 gRPC returned (shortest round-trip digits).
    np.testing.assert_array_equal(np.float32(by_column["probability"]), expected["probability"])
    # A pinned version and a bare value for a single-input signature (TF Serving's shorthand).
    sketch = predict(server, {"signature_name": "memory_snapshot"},
                     "/v1/models/reloop2/versions/1:predict")["outputs"]["sketch"]
    np.testing.assert_array_equal(np.float32(sketch), client.snapshot())


def test_rest_writes_change_the_memory_as_grpc_writes_do(served):
    server, client = served
    rng = np.random.default_rng(8)
    x, labels, weights = writes(25, rng)

    client.restore(ZEROS)
    client.update_memory(x, labels, weights)
    by_grpc = client.snapshot()

    client.restore(ZEROS)
    body = {"signature_name": "update_memory",
            "inputs": {**columns(x), "label": labels.tolist(), "sample_weight": weights.tolist(),
                       "write_id": "rest-1"}}
    out = predict(server, body)["outputs"]
    np.testing.assert_allclose(out["weight_written"], weights.sum(), rtol=1e-6)
    np.testing.assert_array_equal(client.snapshot(), by_grpc)
    # A retried REST write with the same id writes nothing.
    again = predict(server, body)["outputs"]
    assert again["weight_written"] == 0.0
    np.testing.assert_array_equal(client.snapshot(), by_grpc)

    # The other writing signatures: by keys, restore and merge (bare value: one input each).
    keys = client.predict(take(x, slice(0, 5)))
    client.restore(ZEROS)
    client.update_memory_by_keys(keys["memory_keys"], keys["base_probability"], labels[:5],
                                 weights[:5])
    by_keys_grpc = client.snapshot()
    client.restore(ZEROS)
    predict(server, {"signature_name": "update_memory_by_keys", "inputs": {
        "memory_keys": keys["memory_keys"].tolist(),
        "base_probability": keys["base_probability"].tolist(),
        "label": labels[:5].tolist(), "sample_weight": weights[:5].tolist(), "write_id": ""}})
    np.testing.assert_array_equal(client.snapshot(), by_keys_grpc)

    out = predict(server, {"signature_name": "memory_restore", "inputs": by_grpc.tolist()})
    assert out["outputs"] == pytest.approx(float(weights.sum()), rel=1e-6)
    np.testing.assert_array_equal(client.snapshot(), by_grpc)
    predict(server, {"signature_name": "memory_merge",
                     "inputs": {"sketch": by_grpc.tolist(), "write_id": ""}})
    np.testing.assert_allclose(client.snapshot(), 2 * by_grpc, rtol=1e-6)
    # A row-format merge (a plain list of rows) cannot carry the scalar write_id: refused
    # before it runs, so the memory is untouched.
    status, raw = http(server, "POST", "/v1/models/reloop2:predict",
                       {"signature_name": "memory_merge", "instances": by_grpc.tolist()})
    assert status == 400 and b"expecting list of objects" in raw
    np.testing.assert_allclose(client.snapshot(), 2 * by_grpc, rtol=1e-6)


def _bad_requests(x):
    good = {**columns(x), "label": [1.0] * 3, "sample_weight": [1.0] * 3, "write_id": ""}

    def update(**change):
        return {"signature_name": "update_memory", "inputs": {**good, **change}}

    missing = {k: v for k, v in good.items() if k != "price"}
    return [
        ("malformed JSON", b'{"signature_name": "update_memory", "inputs": {', "JSON Parse error"),
        ("empty body", b"", "The document is empty"),
        ("not an object", b"[1, 2]", "Is not object"),
        ("unknown signature", {**update(), "signature_name": "update"},
         'Serving signature name: "update" not found'),
        ("signature not a string", {**update(), "signature_name": 3}, "must be a string value"),
        ("missing input", {"signature_name": "update_memory", "inputs": missing},
         "Missing named input: price"),
        ("unexpected input", update(sample_weigth=[1.0] * 3), "Unexpected named input(s): "
                                                              "['sample_weigth']"),
        ("bad label", update(label=[1.0, 2.0, 0.0]), "`label` must be in [0, 1]"),
        ("NaN label", b'{"signature_name": "update_memory", "inputs": ' + json.dumps(
            {**good, "label": [1.0, float("nan"), 0.0]}).encode() + b"}",
         "`label` contains NaN"),
        ("negative weight", update(sample_weight=[1.0, -1.0, 1.0]), "`sample_weight` must be >= 0"),
        ("string as float", update(price=["1.0", "2", "3"]), 'JSON Value: "1.0" Type: String is '
                                                             "not of expected type: DT_FLOAT"),
        ("number as string id", update(user_id=[1, 2, 3]), "is not of expected type: DT_STRING"),
        ("bad b64", update(user_id=[{"b64": "@@@"}, "u1", "u2"]), "Unable to base64 decode"),
        ("ragged", update(price=[[1.0], 2.0, 3.0]), "found at incorrect level"),
        ("rows differ", update(label=[1.0, 0.0]), "`label` must have as many rows"),
        ("both formats", {**update(), "instances": [{}]}, "expecting only one of 'inputs' or "
                                                          "'instances'"),
        ("no tensors", {"signature_name": "update_memory"}, "Missing 'inputs' or 'instances' key"),
        ("row update has scalar outputs", {"signature_name": "update_memory", "instances": [
            {**{k: v[0] if isinstance(v, list) else v for k, v in good.items()}}]},
         "Tensor name: memory_weight has no shape"),
        ("row keys differ", {"instances": [{"user_id": "u1", "item_id": "i1"}]},
         "keys must be equal to: item_id,price,user_id"),
        ("sketch shape", {"signature_name": "memory_merge",
                          "inputs": {"sketch": [[1.0, 2.0, 3.0]], "write_id": ""}},
         "must have shape"),
        ("merge without a write_id", {"signature_name": "memory_merge",
                                      "inputs": [[1.0, 2.0, 3.0]]},
         "expecting an object as multiple input tensors required as per tensorinfo_map: "
         "['sketch', 'write_id']"),
        ("negative sketch", {"signature_name": "memory_merge", "inputs": {
            "sketch": np.full([STATE_ROWS, 3], -1.0).tolist(), "write_id": ""}}, "negative"),
    ]


def test_bad_requests_are_400_naming_the_problem_and_leave_memory_unchanged(served):
    server, client = served
    client.restore(ZEROS)
    rng = np.random.default_rng(5)
    x, labels, weights = writes(40, rng)
    client.update_memory(x, labels, weights)
    before = checksum(client)
    for name, body, message in _bad_requests(make_features(3, rng)):
        status, raw = http(server, "POST", "/v1/models/reloop2:predict", body)
        error = json.loads(raw)
        assert status == 400 and set(error) == {"error"}, (name, status, raw)
        assert message in error["error"], (name, error["error"])
        assert "[[{{node" not in error["error"], name
        assert checksum(client) == before, name
    assert client.memory_weight() == pytest.approx(float(weights.sum()), rel=1e-6)


@pytest.mark.parametrize("method,path,status,message", [
    ("GET", "/v1/models/other", 404, "Servable not found for request: Latest(other)"),
    ("POST", "/v1/models/other:predict", 404, "Latest(other)"),
    ("GET", "/v1/models/reloop2/versions/9/metadata", 404, "Specific(reloop2, 9)"),
    ("POST", "/v1/models/reloop2/versions/9:predict", 404, "Specific(reloop2, 9)"),
    ("POST", "/v1/models/reloop2/labels/stable:predict", 404, "unknown version label 'stable'"),
    ("GET", "/v1/models", 400, "Missing model name in request."),
    ("GET", "/v1/models/reloop2:predict", 400, "Malformed request: GET"),
    ("POST", "/v1/models/reloop2/metadata", 400, "Malformed request: POST"),
    ("DELETE", "/v1/models/reloop2", 400, "Malformed request: DELETE"),
    ("POST", "/v1/models/reloop2:classify", 501, ":predict only"),
    ("GET", "/healthz", 404, "no REST endpoint at /healthz"),
])
def test_unknown_models_versions_and_paths(served, method, path, status, message):
    server, _ = served
    code, raw = http(server, method, path, {"instances": [1.0]} if method == "POST" else None)
    assert code == status, raw
    assert message in json.loads(raw)["error"]


def test_curl_gets_the_same_bytes_as_urllib(served, tmp_path):
    curl = shutil.which("curl")
    assert curl, "curl is on Debian 12 and on CI; install it (apt-get install curl)"
    server, client = served
    client.restore(ZEROS)
    rng = np.random.default_rng(13)
    x, labels, weights = writes(30, rng)
    client.update_memory(x, labels, weights)
    body = json.dumps({"signature_name": "predict", "instances": rows(make_features(4, rng))})
    calls = [("GET", "/v1/models/reloop2", None),
             ("GET", "/v1/models/reloop2/metadata", None),
             ("POST", "/v1/models/reloop2:predict", body),
             ("POST", "/v1/models/reloop2:predict", '{"signature_name": "nope", "inputs": {}}')]
    for method, path, data in calls:
        command = [curl, "-sS", "-X", method, "-w", "\n%{http_code}", server.rest_url + path]
        if data is not None:
            (tmp_path / "body.json").write_text(data)
            command += ["-H", "Content-Type: application/json", "--data-binary",
                        f"@{tmp_path / 'body.json'}"]
        out = subprocess.run(command, capture_output=True, check=True, timeout=60).stdout
        answer, _, code = out.rpartition(b"\n")
        assert (int(code), answer) == http(server, method, path,
                                           None if data is None else data.encode()), path


def test_serve_rejects_a_bad_rest_port(tmp_path, capsys):
    (tmp_path / "saved_model.pb").touch()  # the port is checked before anything is loaded
    args = dev_server.build_parser().parse_args(["--model-dir", str(tmp_path),
                                                 "--rest-port", "70000"])
    assert args.rest_host == "127.0.0.1"
    assert dev_server.run(args) == 2
    assert "--rest-port must be in [0, 65535], got 70000" in capsys.readouterr().err
