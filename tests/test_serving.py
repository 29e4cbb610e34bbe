"""Real gRPC over loopback against the development server, started in a subprocess.

One server (``served``) is shared by the tests; each test first resets its memory with
``memory_restore``. The restart and replica tests start further server processes.
"""

import argparse
import hashlib
import json
import signal
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pandas as pd
import pytest
from serving_helpers import (
    NUM_BITS,
    NUM_TABLES,
    STATE_ROWS,
    TABLE_SIZES,
    TOTALS_ROW,
    DevServer,
    build_model,
    make_features,
    take,
)

from reloop2_tf import export as ex
from reloop2_tf._keras import tf
from reloop2_serving import cli
from reloop2_serving.client import FanOutClient, ReLoop2Client

pytestmark = pytest.mark.e2e
ZEROS = np.zeros([STATE_ROWS, 3], np.float32)
TABLE_OFFSETS = np.cumsum([0, *TABLE_SIZES[:-1]])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = build_model(seed=7, compensation_weight=1.0)
    base = tmp_path_factory.mktemp("serving") / "reloop2"
    ex.export_serving_model(model, base, version="auto")
    server = DevServer(base)
    client = ReLoop2Client(server.target, timeout=60)
    yield model, base, server, client
    client.close()
    assert server.stop() == 0, "".join(server.lines)  # SIGTERM: clean shutdown


def checksum(client):
    return hashlib.sha256(client.snapshot().tobytes()).hexdigest()


def reset(model, client):
    model.reset_memory()
    assert client.restore(ZEROS) == 0.0


def test_predict_update_predict_over_grpc_matches_keras(served):
    model, _, _, client = served
    reset(model, client)
    rng = np.random.default_rng(11)
    pairs = make_features(6, rng)
    # 60 labelled rows: six (user, item, price) pairs seen ten times; pairs 0-2 click, 3-5 not.
    stream = take(pairs, np.repeat(np.arange(6), 10))
    labels = (np.repeat(np.arange(6), 10) < 3).astype(np.float32)
    before = client.predict(pairs)
    assert set(before) == set(ex.PREDICT_OUTPUTS) | {"memory_keys"}
    np.testing.assert_array_equal(before["probability"], before["base_probability"])  # empty memory
    # Ten rounds of feedback: each round is read before it is written, so the trust learns
    # from rounds 2-10 which groups predict the labels.
    for round_ in range(10):
        rows = slice(6 * round_, 6 * round_ + 6)
        out = client.update_memory(take(stream, np.arange(60)[rows]), labels[rows])
        assert float(out["weight_written"]) == 6.0
    assert float(out["memory_weight"]) == 60.0
    after = client.predict(pairs)
    # Identical rows share every bucket: the clicked pairs move up, the others down, and the
    # pairs' logloss falls. (Row by row the learnt base-logit weight may pull one row against
    # its own residual; docs/core.md.)
    assert after["probability"][:3].mean() > before["probability"][:3].mean()
    assert after["probability"][3:].mean() < before["probability"][3:].mean()
    pair_labels = (np.arange(6) < 3).astype(np.float64)

    def logloss(p):
        return -np.mean(pair_labels * np.log(p) + (1 - pair_labels) * np.log(1 - p))

    assert logloss(after["probability"]) < logloss(before["probability"]) - 0.05
    assert (after["memory_support"] > 0).all()

    for round_ in range(10):
        rows = np.arange(60)[6 * round_:6 * round_ + 6]
        model.update_memory(take(stream, rows), labels[rows])
    expected = model.compensate(pairs)
    for key in (*ex.PREDICT_OUTPUTS, "memory_keys"):
        np.testing.assert_allclose(after[key], expected[key].numpy(), atol=1e-5)
    np.testing.assert_allclose(client.snapshot(), model.memory.snapshot().numpy(), atol=1e-5)
    only = client.predict(pairs, output_filter=["probability"])
    assert set(only) == {"probability"}
    np.testing.assert_array_equal(only["probability"], after["probability"])
    meta = client.metadata()
    assert set(meta) == {"serving_default", "predict", "update_memory", "update_memory_by_keys",
                         "memory_snapshot", "memory_restore", "memory_merge", "memory_layout"}
    assert meta["update_memory"]["outputs"] == {"weight_written": ("float32", []),
                                                "memory_weight": ("float32", [])}
    assert client.status() == {1: "AVAILABLE"}


def test_concurrent_updates_lose_no_weight_and_predicts_never_fail(served):
    model, _, server, client = served
    reset(model, client)
    writers, batches, rows, readers = 8, 40, 128, 4
    sent = np.zeros(writers + 1)
    start = threading.Barrier(writers + 1 + readers)
    done = threading.Event()
    predict_errors, predicts = [], [0]

    def write(k):
        rng = np.random.default_rng(100 + k)
        with ReLoop2Client(server.target) as c:
            start.wait()
            for _ in range(batches):
                # Quarter weights: every partial sum is exact in float32, in any order.
                w = rng.integers(1, 8, rows) * 0.25
                c.update_memory(make_features(rows, rng), rng.integers(0, 2, rows), w)
                sent[k] += w.sum()

    def merge():
        # memory_merge runs alongside the writers: an add of the whole table must not undo them.
        delta = ZEROS.copy()
        delta[3 + TABLE_OFFSETS, 0] = 2.5  # bucket 3 of every table
        delta[TOTALS_ROW, 0] = 2.5  # and the sums of every row, as a snapshot difference has
        with ReLoop2Client(server.target) as c:
            start.wait()
            for _ in range(10):
                c.merge(delta)
                sent[writers] += 2.5

    def read(k):
        rng = np.random.default_rng(200 + k)
        with ReLoop2Client(server.target) as c:
            start.wait()
            while not done.is_set():
                try:
                    out = c.predict(make_features(32, rng))
                    assert np.isfinite(out["probability"]).all()
                    predicts[0] += 1
                except Exception as err:  # noqa: BLE001  (any failure is the finding)
                    predict_errors.append(err)

    with futures.ThreadPoolExecutor(writers + 1 + readers) as pool:
        reading = [pool.submit(read, k) for k in range(readers)]
        writing = [pool.submit(write, k) for k in range(writers)] + [pool.submit(merge)]
        for f in writing:
            f.result()
        done.set()
        for f in reading:
            f.result()
    assert not predict_errors
    assert predicts[0] > 0
    # Every table holds every row once, so each table's weights add up to the total.
    assert client.memory_weight() == sent.sum()
    weights = client.snapshot()[:, 0]
    np.testing.assert_array_equal(
        [weights[a:a + n].sum() for a, n in zip(TABLE_OFFSETS, TABLE_SIZES)], sent.sum())


def _bad_cases(features):
    n = len(features["price"])
    good = {**features, "label": np.ones(n, np.float32), "sample_weight": np.ones(n, np.float32),
            "write_id": np.array(b"", object)}
    drop = {k: v for k, v in good.items() if k != "price"}
    return [
        ("missing feature", "update_memory", drop, "missing: ['price']"),
        ("wrong dtype", "update_memory", {**good, "price": good["price"].astype(str).astype(object)},
         "must have dtype DT_FLOAT"),
        ("int ids", "update_memory", {**good, "user_id": np.arange(n)}, "must have dtype DT_STRING"),
        ("NaN", "update_memory", {**good, "price": np.full(n, np.nan, np.float32)},
         "`price` contains NaN"),
        ("label of 2", "update_memory", {**good, "label": np.full(n, 2, np.float32)},
         "`label` must be in [0, 1]"),
        ("negative weight", "update_memory", {**good, "sample_weight": -good["sample_weight"]},
         "`sample_weight` must be >= 0"),
        ("empty batch", "update_memory", {k: v if k == "write_id" else v[:0]
                                          for k, v in good.items()}, "the batch is empty"),
        ("mismatched batch", "update_memory", {**good, "label": good["label"][:-1]},
         "`label` must have as many rows"),
        ("unknown signature", "update", good, 'Serving signature name: "update" not found'),
        ("extra input", "predict", good, "unexpected: ['label', 'sample_weight', 'write_id']"),
        ("wrong rank", "update_memory", {**good, "price": good["price"][:, None]},
         "must have shape"),
        ("bad sketch", "memory_merge", {"sketch": np.full_like(ZEROS, -1),
                                        "write_id": np.array(b"", object)}, "negative weights"),
        ("write_id of rank 1", "update_memory", {**good, "write_id": np.array([b"a"], object)},
         "input 'write_id' must have shape ()"),
        ("sketch shape", "memory_restore", {"sketch": ZEROS[:1]}, "must have shape"),
    ]


def test_bad_requests_are_invalid_argument_and_leave_memory_unchanged(served):
    model, _, _, client = served
    reset(model, client)
    rng = np.random.default_rng(5)
    client.update_memory(make_features(40, rng), rng.integers(0, 2, 40))
    before = checksum(client)
    for name, signature, inputs, message in _bad_cases(make_features(4, rng)):
        with pytest.raises(grpc.RpcError) as info:
            client.call(signature, inputs)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert message in info.value.details(), (name, info.value.details())
        assert "[[{{node" not in info.value.details()  # readable: no graph dump
    assert checksum(client) == before
    with pytest.raises(grpc.RpcError) as info:
        ReLoop2Client(client.target, model_name="other").predict(make_features(2, rng))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def _corrupt(rng):
    """A request made invalid by 1-3 seeded random corruptions; each alone makes it invalid."""
    n = int(rng.integers(2, 9))
    signature = str(rng.choice(["update_memory"] * 7 + ["predict"] * 2 + ["memory_merge"]))
    if signature == "memory_merge":
        sketch = rng.uniform(0, 2, ZEROS.shape).astype(np.float32)
        kind = rng.integers(4)
        if kind == 0:
            sketch[rng.integers(NUM_TABLES * 2**NUM_BITS), 0] = -rng.uniform(0.1, 9)
        elif kind == 1:
            sketch.flat[rng.integers(sketch.size)] = rng.choice([np.nan, np.inf, -np.inf])
        elif kind == 2:
            sketch = sketch[: rng.integers(0, STATE_ROWS)]
        else:
            sketch = sketch.astype(np.float64)
        return signature, {"sketch": sketch}
    inputs = make_features(n, rng)
    if signature == "update_memory":
        inputs["label"] = rng.integers(0, 2, n).astype(np.float32)
        inputs["sample_weight"] = rng.uniform(0, 2, n).astype(np.float32)
    names = sorted(inputs)
    kinds = ["drop", "extra", "dtype", "nonfinite", "truncate", "empty", "rank", "bytes"]
    if signature == "update_memory":
        kinds += ["label", "weight"]
    for kind in rng.choice(kinds, size=rng.integers(1, 4), replace=False):
        present = [k for k in names if isinstance(inputs.get(k), np.ndarray) and len(inputs[k])]
        floats = [k for k in present if inputs[k].dtype == np.float32]
        if kind == "extra":
            inputs[f"junk{rng.integers(100)}"] = np.ones(n, np.float32)
        elif kind == "empty":
            inputs = {k: v[:0] if isinstance(v, np.ndarray) else v for k, v in inputs.items()}
        elif kind == "label" and "label" in floats:
            inputs["label"] = inputs["label"].copy()
            inputs["label"][rng.integers(len(inputs["label"]))] = rng.choice([2.0, -0.5, 1.01, 7e9])
        elif kind == "weight" and "sample_weight" in floats:
            weight = inputs["sample_weight"].copy()
            weight[rng.integers(len(weight))] = -rng.uniform(0.01, 3)
            inputs["sample_weight"] = weight
        elif kind == "nonfinite" and floats:
            key = str(rng.choice(floats))
            inputs[key] = inputs[key].copy()
            inputs[key][rng.integers(len(inputs[key]))] = rng.choice([np.nan, np.inf, -np.inf])
        elif kind == "bytes" and floats:
            key = str(rng.choice(floats))
            proto = tf.make_tensor_proto(inputs[key])
            proto.tensor_content = proto.tensor_content[: -int(rng.integers(1, 4))]
            inputs[key] = proto
        elif kind in ("dtype", "truncate", "rank") and present:
            key = str(rng.choice(present))
            value = inputs[key]
            if kind == "truncate":
                inputs[key] = value[: rng.integers(0, len(value))]
            elif kind == "rank":
                inputs[key] = value[:, None]
            elif value.dtype == object:  # string ids sent as numbers
                inputs[key] = np.arange(len(value)).astype(rng.choice([np.int64, np.float32]))
            else:  # floats sent as float64, int32 or strings
                with np.errstate(invalid="ignore"):  # NaN -> int32 is fine: it is rejected
                    inputs[key] = [value.astype(np.float64), value.astype(np.int32),
                                   value.astype(str).astype(object)][rng.integers(3)]
        else:  # "drop", or a corruption that no longer applies: a required input goes missing
            inputs.pop(str(rng.choice(names)), None)
    return signature, inputs


def test_fuzz_malformed_requests(served):
    model, _, _, client = served
    reset(model, client)
    rng = np.random.default_rng(2024)
    client.update_memory(make_features(50, rng), rng.integers(0, 2, 50))
    before, weight = checksum(client), client.memory_weight()
    requests = [_corrupt(rng) for _ in range(1200)]
    assert len({repr(sorted((k, getattr(v, "shape", None), str(getattr(v, "dtype", "proto")))
                            for k, v in r.items())) for _, r in requests}) > 200  # varied

    def send(request):
        signature, inputs = request
        try:
            client.call(signature, inputs)
        except grpc.RpcError as err:
            return err.code(), err.details()
        return "accepted", repr({k: getattr(v, "shape", None) for k, v in inputs.items()})

    with futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(send, requests))
    wrong = [(r, req) for r, req in zip(results, requests)
             if r[0] != grpc.StatusCode.INVALID_ARGUMENT or not r[1]]
    assert not wrong, wrong[:3]
    assert checksum(client) == before and client.memory_weight() == weight


def _start(*args, **kwargs):
    with futures.ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(lambda a: DevServer(*a, **kwargs), args))


def test_restart_restore_and_merge_of_replica_deltas(served):
    model, base, _, client = served
    reset(model, client)
    rng = np.random.default_rng(9)
    stream = make_features(120, rng, users=10, items=10)
    labels = rng.integers(0, 2, 120).astype(np.float32)
    query = make_features(40, rng, users=10, items=10)
    client.update_memory(stream, labels)
    full = client.snapshot()
    expected = client.predict(query)

    second, third = _start((base,), (base, "reloop2", ["--poll-seconds", "0.3"]))
    try:
        c2, c3 = ReLoop2Client(second.target), ReLoop2Client(third.target)
        # Restart: a new process starts from the exported (empty) memory; restore brings it back.
        assert c2.memory_weight() == 0.0
        c2.restore(full)
        for key, value in c2.predict(query).items():
            np.testing.assert_array_equal(value, expected[key])

        # Two replicas each see half of the stream; their deltas merged into a fresh third
        # replica equal one memory that saw both halves.
        c2.restore(ZEROS)
        c2.update_memory(take(stream, slice(0, 60)), labels[:60])
        c3.update_memory(take(stream, slice(60, 120)), labels[60:])
        delta2, delta3 = c2.snapshot(), c3.snapshot()
        assert not np.array_equal(delta2, full)
        client.restore(ZEROS)
        client.merge(delta2)
        assert float(client.merge(delta3)["memory_weight"]) == 120.0
        np.testing.assert_allclose(client.snapshot(), full, rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(client.predict(query)["probability"], expected["probability"],
                                   atol=1e-6)

        # Fan-out keeps replicas equal and reports the dead one without failing the others.
        with FanOutClient([second.target, third.target, "127.0.0.1:1"], timeout=5) as fan:
            result = fan.update_memory(take(stream, slice(0, 30)), labels[:30])
        assert set(result.results) == {second.target, third.target}
        assert set(result.errors) == {"127.0.0.1:1"} and not result.ok
        assert result.errors["127.0.0.1:1"].code() == grpc.StatusCode.UNAVAILABLE
        # The same rows add the same to every table; the trust sums read each replica's own
        # memory, so they differ between replicas that held different rows.
        cells = sum(TABLE_SIZES)
        np.testing.assert_allclose((c2.snapshot() - delta2)[:cells], (c3.snapshot() - delta3)[:cells],
                                   atol=1e-5)

        # A new version replaces the memory with the one it was exported with: what the
        # replica learnt since is gone unless it was snapshotted and restored.
        model.reset_memory()
        model.update_memory(take(stream, slice(0, 10)), labels[:10])
        ex.export_serving_model(model, base, version="auto")
        deadline = time.monotonic() + 60
        while c3.status() != {2: "AVAILABLE"} and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c3.status() == {2: "AVAILABLE"}
        np.testing.assert_array_equal(c3.snapshot(), model.memory.snapshot().numpy())
        assert c2.status() == {1: "AVAILABLE"}  # no polling: keeps version 1 and its memory
        c2.close()
        c3.close()
    finally:
        codes = [second.stop(), third.stop(signal.SIGINT)]
    assert codes == [0, 0]


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="reloop2")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_replay_streams_csv_through_predict_then_update(served, tmp_path, capsys):
    model, _, server, client = served
    reset(model, client)
    rng = np.random.default_rng(3)
    n = 400
    users, items = rng.integers(0, 12, n), rng.integers(0, 8, n)
    x = {"user_id": np.array([f"u{k}" for k in users], dtype=object),
         "item_id": np.array([f"i{k}" for k in items], dtype=object),
         "price": rng.uniform(0, 3, 8).astype(np.float32)[items]}  # one price per item
    # Labels depend on the (user, item) pair, which the untrained base model cannot know.
    pair = rng.integers(0, 2, (12, 8))[users, items]
    labels = np.where(rng.random(n) < 0.9, pair, 1 - pair)
    frame = pd.DataFrame({"user_id": x["user_id"], "item_id": x["item_id"],
                          "timestamp": np.arange(n) + 1_000, "label": labels,
                          "price": x["price"], "history": ""})
    data = tmp_path / "prepared"
    data.mkdir()
    frame.to_csv(data / "data.csv", index=False)
    out = tmp_path / "replay.json"
    code = _run_cli(["replay", "--data", str(data), "--target", server.target,
                     "--batch-size", "50", "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "base" in printed and "reloop2" in printed
    results = json.loads(out.read_text())
    assert results["rows"] == n and results["batches"] == 8
    assert client.memory_weight() == float(n)
    # Measured +0.10 AUC (400 rows, 8 batches, the trust learnt from zero); a replay that wrote
    # nothing would leave the two equal.
    assert results["reloop2"]["auc"] > results["base"]["auc"] + 0.05
    assert results["reloop2"]["logloss"] < results["base"]["logloss"]

    frame.drop(columns=["price"]).to_csv(data / "data.csv", index=False)
    assert _run_cli(["replay", "--data", str(data), "--target", server.target]) == 2
    err = capsys.readouterr().err
    assert "lacks the model input column(s) ['price']" in err and len(err.strip().splitlines()) == 1
    assert _run_cli(["replay", "--data", str(data), "--target", server.target,
                     "--batch-size", "0"]) == 2
    assert _run_cli(["serve", "--model-dir", str(tmp_path / "nothing")]) == 2
    assert "neither a SavedModel" in capsys.readouterr().err


def test_dev_server_replays_read_only_warmup_and_refuses_writes(tmp_path):
    from tensorflow_serving.apis import prediction_log_pb2

    from reloop2_serving.dev_server import Servable

    model = build_model(seed=2)
    rng = np.random.default_rng(4)
    ex.export_serving_model(model, tmp_path / "m", warmup_features=make_features(3, rng))
    servable = Servable(tmp_path / "m", 1)
    assert servable.warm_up() == 1
    _, out = servable.run("memory_snapshot", {})
    assert float(out["memory_weight"]) == 0.0  # warm-up read, never wrote
    servable.close()

    # A hand-made warm-up record that writes memory: TF Serving would replay it at every load.
    x = make_features(2, rng)
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.signature_name = "update_memory"
    for k, v in {**x, "label": np.ones(2, np.float32),
                 "sample_weight": np.ones(2, np.float32)}.items():
        log.predict_log.request.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    with tf.io.TFRecordWriter(str(tmp_path / "m" / ex.WARMUP_FILE)) as writer:
        writer.write(log.SerializeToString())
    servable = Servable(tmp_path / "m", 1)
    with pytest.raises(ValueError, match="warm-up requests must be read-only"):
        servable.warm_up()
    servable.close()


def test_memory_weight_falls_back_to_the_snapshot_for_models_exported_before_it(monkeypatch):
    # A model exported before memory_layout returned memory_weight answers with the fingerprint
    # only; the client then asks memory_snapshot, as it did before.
    client = ReLoop2Client("127.0.0.1:1")
    calls = []

    def call(name, inputs, output_filter=()):
        calls.append((name, tuple(output_filter)))
        if name == "memory_layout":
            return {"fingerprint": np.array(b"sha256:00")}
        return {"memory_weight": np.array(3.5, np.float32)}

    monkeypatch.setattr(client, "call", call)
    assert client.memory_weight() == 3.5
    assert calls == [("memory_layout", ()), ("memory_snapshot", ("memory_weight",))]


@pytest.mark.parametrize("value", [
    np.float32(3.5), np.array(2.0), np.arange(6, dtype=np.int32).reshape(2, 3),
    np.zeros(0, np.float32), np.array([True, False]), np.arange(4, dtype=np.int64) - 2**40,
    np.ones((2, 3), np.float64)[:, ::2], np.array([b"a", b"bc"], dtype=object), [1.5, 2.5],
    np.array(b"write-7", dtype=object), np.array([["é", "b"], ["", "cd"]]),
    np.array(["x", "yz"], dtype=object), np.zeros((0, 2), dtype=object),
    np.array([b"a", "b"], dtype=object)],
    ids=["f32_scalar", "f64_0d", "i32_2d", "empty", "bool", "i64", "strided", "strings", "list",
         "bytes_0d", "unicode_2d", "str_objects", "empty_strings", "mixed_bytes_str"])
def test_tensor_protos_decode_to_the_same_array_as_make_tensor_proto(value):
    from reloop2_serving.tensor_proto import from_proto, to_proto

    reference = tf.make_ndarray(tf.make_tensor_proto(value))
    # Our encoding read by TF, TF's encoding (typed fields for scalars) read by us, and ours by us.
    for decoded in (tf.make_ndarray(to_proto(value)), from_proto(tf.make_tensor_proto(value)),
                    from_proto(to_proto(value))):
        assert decoded.dtype == reference.dtype and decoded.shape == reference.shape
        np.testing.assert_array_equal(decoded, reference)
    decoded[...] = decoded  # writable, like make_ndarray's


def test_a_tensor_proto_whose_content_does_not_fill_its_shape_is_refused():
    from reloop2_serving.tensor_proto import from_proto, to_proto

    with pytest.raises(TypeError, match="binary or unicode string"):  # as make_tensor_proto
        to_proto(np.array([1, b"a"], dtype=object))
    # A string_val shorter than its shape is padded with its last value, as make_ndarray does.
    short = to_proto(np.array([b"a", b"b"], dtype=object))
    short.tensor_shape.dim[0].size = 3
    np.testing.assert_array_equal(from_proto(short), [b"a", b"b", b"b"])

    proto = to_proto(np.arange(6, dtype=np.int32))
    proto.tensor_shape.dim[0].size = 7
    with pytest.raises(ValueError, match="6 values for shape"):
        from_proto(proto)
