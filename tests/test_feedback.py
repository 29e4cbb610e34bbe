"""``reloop2 feedback run``: the Beam pipeline that merges each window's exact delta into every
replica once (serving/feedback*.py).

Three development servers on loopback serve one small model over MovieLens-100K's columns; the
pipeline runs on the DirectRunner in this process. A replica's memory is compared with one
in-process copy of the SavedModel fed the same rows, window by window.
"""

import argparse
import contextlib
import io
import json
import threading

import numpy as np
import pytest
from serving_helpers import DevServer

import reloop2_tf as r2
from reloop2_tf import export as ex
from reloop2_tf._keras import keras, tf
from reloop2_tf.data import prepare
from reloop2_serving import feedback_cli
from reloop2_serving.client import ReLoop2Client
from reloop2_serving.feedback import feedback_pipeline, model_schema, run_feedback
from reloop2_serving.feedback_rows import (
    RowError,
    WindowBatchFn,
    parse_json,
    parse_row,
    row_digest,
    write_id,
)

FEATURES = ("user_id", "item_id", "genre")
NUM_TABLES, NUM_BITS = 6, 6
HALF_LIFE = 40_000.0
SCHEMA3 = dict.fromkeys(FEATURES, "string")  # the delta must carry the decay of what the memory held before


def build_model(seed: int = 3) -> r2.ReLoop2Model:
    """String ids of the canonical CSV, hashed and embedded inside the model; the memory forgets
    (half-life) so that deltas carry decay, and learns its trust (self-tuning)."""
    keras.utils.set_random_seed(seed)
    inputs = {name: keras.Input(shape=(), dtype=tf.string, name=name) for name in FEATURES}
    embed = keras.layers.Embedding(1000, 8, embeddings_initializer=keras.initializers.RandomNormal(
        stddev=1.0))
    x = keras.layers.Concatenate()([embed(keras.layers.Hashing(1000)(v)) for v in inputs.values()])
    hidden = keras.layers.Dense(16, activation="tanh", name="hidden")(x)
    base = keras.Model(inputs, keras.layers.Dense(1, name="logit")(hidden))
    memory = r2.LSHErrorMemory(num_tables=NUM_TABLES, num_bits=NUM_BITS, seed=seed,
                               half_life=HALF_LIFE, id_groups=["item_id", ("user_id", "genre")],
                               id_bits=10)
    return r2.ReLoop2Model(base, compensation=r2.ErrorCompensation(memory))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The exported model, the ML-100K canonical CSV, and three replicas serving the model."""
    root = tmp_path_factory.mktemp("feedback")
    base = root / "reloop2"
    path = ex.export_serving_model(build_model(), base, version=1)
    csv = prepare("ml-100k", root / "ml100k")
    servers = [None] * 3

    def start(k):
        servers[k] = DevServer(base)

    threads = [threading.Thread(target=start, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert all(servers), "a replica did not start"
        yield {"base": base, "path": path, "csv": csv, "servers": servers, "root": root}
    finally:
        for server in servers:
            if server is not None:
                server.stop()


def targets(served):
    return [s.target for s in served["servers"]]


def snapshots(served):
    out = []
    for target in targets(served):
        with ReLoop2Client(target, timeout=60) as client:
            out.append(client.snapshot())
    return out


def reset(served):
    zeros = np.zeros_like(snapshots(served)[0])
    for target in targets(served):
        with ReLoop2Client(target, timeout=60) as client:
            assert client.restore(zeros) == 0.0


class Reference:
    """One in-process copy of the SavedModel, fed window by window (``batch`` rows per call)."""

    def __init__(self, path):
        self.sigs = tf.saved_model.load(str(path)).signatures

    def write(self, signature, batch, **inputs):
        n = len(inputs["label"])
        for start in range(0, n, batch):
            chunk = {k: tf.constant(v[start:start + batch]) for k, v in inputs.items()}
            self.sigs[signature](write_id=tf.constant(""), **chunk)

    def snapshot(self):
        return self.sigs["memory_snapshot"]()["sketch"].numpy()


def assert_close(replica, reference):
    """Relative 1e-5 of each column's scale (the sums are float32; cells near 0 are compared to
    the column's largest value)."""
    scale = np.abs(reference).max(axis=0, keepdims=True) + 1e-12
    err = np.abs(replica - reference) / scale
    where = np.unravel_index(err.argmax(), err.shape)
    assert err.max() <= 1e-5, f"max relative error {err.max():.3g} at {where}"


# -- rows, windows, write ids (no servers) ---------------------------------------------------------
SCHEMA = {"user_id": "string", "item_id": "string", "price": "float32"}


def test_rows_parse_from_csv_and_json_and_bad_rows_are_refused():
    row = parse_row({"user_id": "7", "item_id": "9", "price": "1.5", "label": "1",
                     "timestamp": "100"}, SCHEMA, 3, order=(4, ""))
    assert row["features"] == {"user_id": "7", "item_id": "9", "price": 1.5}
    assert (row["label"], row["sample_weight"], row["timestamp"], row["order"]) == (1.0, 1.0, 100.0,
                                                                                    (4, ""))
    keyed = parse_json('{"memory_keys": [1, 2, 3], "base_probability": 0.25, "label": 0,'
                       ' "sample_weight": 2}', SCHEMA, 3)
    assert keyed["memory_keys"] == [1, 2, 3] and keyed["features"] is None
    assert keyed["sample_weight"] == 2.0
    assert parse_row({"memory_keys": "4 5 6", "base_probability": "0.5", "label": "1"}, SCHEMA,
                     3)["memory_keys"] == [4, 5, 6]
    bad = [({"user_id": "7", "item_id": "9", "price": "1"}, "no `label`"),
           ({"user_id": "7", "item_id": "9", "price": "1", "label": "2"}, r"\[0, 1\]"),
           ({"user_id": "7", "item_id": "9", "price": "x", "label": "1"}, "number"),
           ({"user_id": "7", "item_id": "9", "price": "1", "label": "1", "sample_weight": "-1"},
            ">= 0"),
           ({"user_id": "7", "label": "1"}, "neither"),
           ({"memory_keys": [1, 2], "base_probability": 0.5, "label": 1}, "3 keys"),
           ({"memory_keys": [1, 2, 3], "label": 1}, "needs `base_probability`"),
           ({"user_id": 1.5, "item_id": "9", "price": 1, "label": 1}, "string id")]
    for record, message in bad:
        with pytest.raises(RowError, match=message):
            parse_row(record, SCHEMA, 3)
    with pytest.raises(RowError, match="JSON"):
        parse_json("[1, 2]", SCHEMA, 3)


def _rows(n, rng):
    rows = []
    for k in range(n):
        if k % 3 == 0:
            record = {"memory_keys": rng.integers(0, 50, 3).tolist(),
                      "base_probability": float(rng.uniform()), "label": int(rng.integers(0, 2))}
        else:
            record = {"user_id": f"u{rng.integers(9)}", "item_id": f"i{rng.integers(9)}",
                      "price": float(rng.uniform(0, 3)), "label": int(rng.integers(0, 2)),
                      "sample_weight": float(rng.integers(1, 4))}
        rows.append(parse_row(record, SCHEMA, 3, order=(k, "")))
    return rows


def test_window_batch_is_columnar_and_independent_of_arrival_and_merge_order(rng):
    fn = WindowBatchFn(SCHEMA, 3)
    rows = _rows(40, rng)

    def combine(order, parts):
        accs = [fn.create_accumulator() for _ in range(parts)]
        for k, i in enumerate(order):
            fn.add_input(accs[k % parts], rows[i])
        return fn.extract_output(fn.merge_accumulators(accs[::-1]))

    a = combine(range(40), 1)
    b = combine(rng.permutation(40), 4)
    assert a["rows"] == 40 and a["digest"] == b["digest"]
    for key in ("label", "sample_weight", "keyed", "memory_keys", "base_probability"):
        np.testing.assert_array_equal(a[key], b[key])
    keyed = [r for r in rows if r["memory_keys"] is not None]
    raw = [r for r in rows if r["memory_keys"] is None]
    np.testing.assert_array_equal(a["memory_keys"], [r["memory_keys"] for r in keyed])
    np.testing.assert_array_equal(a["features"]["user_id"], [r["features"]["user_id"] for r in raw])
    assert a["features"]["price"].dtype == np.float32 and a["memory_keys"].dtype == np.int32
    np.testing.assert_array_equal(a["keyed"], [r["memory_keys"] is not None for r in rows])
    # The digest sees every row: one changed label changes it (and the window's write id).
    rows[7]["label"] = 1.0 - rows[7]["label"]
    c = combine(range(40), 2)
    assert c["digest"] != a["digest"]
    ids = {write_id("src", "rows=40", 0, a["digest"]), write_id("src", "rows=40", 1, a["digest"]),
           write_id("other", "rows=40", 0, a["digest"]), write_id("src", "rows=40", 0, c["digest"]),
           write_id("src", "rows=20", 0, a["digest"])}
    assert len(ids) == 5
    assert write_id("src", "rows=40", 0, a["digest"]) == write_id("src", "rows=40", 0,
                                                                  b["digest"])


# -- end to end on three replicas --------------------------------------------------------------------
def feed_reference(served, frame, window_rows, batch):
    reference = Reference(served["path"])
    labels = frame["label"].to_numpy().astype(np.float32)
    for start in range(0, len(frame), window_rows):
        rows = slice(start, start + window_rows)
        reference.write("update_memory", batch,
                        **{n: frame[n].to_numpy()[rows].astype(object) for n in FEATURES},
                        label=labels[rows], sample_weight=np.ones_like(labels[rows]))
    return reference.snapshot()


def test_100k_rows_reach_three_replicas_exactly_once_and_a_rerun_adds_nothing(served):
    from reloop2_tf.data import load_prepared

    reset(served)
    frame = load_prepared(served["csv"])
    assert len(frame) == 100_000
    summary = run_feedback(str(served["base"]), str(served["csv"]), ",".join(targets(served)),
                           window_rows=10_000, batch_size=2048)
    assert (summary["rows"], summary["windows"], summary["rows_rejected"]) == (100_000, 10, 0)
    for target in targets(served):
        assert summary["targets"][target]["merged"] == 10, summary
        assert summary["targets"][target]["failed"] == 0
    assert summary["unhealed"] == [] and summary["duplicate_windows"] == 0
    # One merge carries the whole state as float32 plus the request's framing.
    state_rows = snapshots(served)[0].shape[0]
    assert state_rows * 12 < summary["merge_bytes"] < state_rows * 12 + 400
    expected = feed_reference(served, frame, 10_000, 2048)
    assert expected[:, 0].sum() > 1000  # decayed, but written
    first = snapshots(served)
    for replica in first:
        assert_close(replica, expected)

    again = run_feedback(str(served["base"]), str(served["csv"]), targets(served),
                         window_rows=10_000, batch_size=2048)
    assert again["duplicate_windows"] == 10
    for target in targets(served):
        assert again["targets"][target]["duplicate"] == 10, again
        assert again["targets"][target]["merged"] == 0
    for before, after in zip(first, snapshots(served)):
        np.testing.assert_array_equal(before, after)


def test_rows_by_keys_from_json_lines_mixed_with_raw_rows(served):
    reset(served)
    rng = np.random.default_rng(5)
    n = 3000
    features = {"user_id": rng.integers(1, 900, n).astype(str).astype(object),
                "item_id": rng.integers(1, 1600, n).astype(str).astype(object),
                "genre": rng.choice(["Drama", "Comedy", "Action"], n).astype(object)}
    labels = rng.integers(0, 2, n).astype(np.float32)
    weights = rng.integers(1, 4, n).astype(np.float32)
    with ReLoop2Client(targets(served)[0]) as client:
        scored = client.predict(features)  # what a server returned when it scored the rows
    keyed = np.arange(n) % 4 != 0  # every 4th row carries its raw features instead
    path = served["root"] / "feedback.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            row = {"label": int(labels[i]), "sample_weight": float(weights[i])}
            if keyed[i]:
                row.update(memory_keys=scored["memory_keys"][i].tolist(),
                           base_probability=float(scored["base_probability"][i]))
            else:
                row.update({k: v[i] for k, v in features.items()})
            fh.write(json.dumps(row) + "\n")
        fh.write('{"label": 3, "memory_keys": [1]}\n')  # rejected, counted, never sent
    summary = run_feedback(str(served["path"]), str(path), targets(served), window_rows=700,
                           batch_size=256)
    assert (summary["rows"], summary["windows"], summary["rows_rejected"]) == (n, 5, 1)
    # The reference writes the same runs: keyed rows by keys, raw rows by features, in order.
    reference = Reference(served["path"])
    for start in range(0, n, 700):
        stop = min(start + 700, n)
        k = start
        while k < stop:
            end = k + 1
            while end < stop and keyed[end] == keyed[k] and end - k < 256:
                end += 1
            rows = slice(k, end)
            common = {"label": labels[rows], "sample_weight": weights[rows]}
            if keyed[k]:
                reference.write("update_memory_by_keys", 256,
                                memory_keys=scored["memory_keys"][rows],
                                base_probability=scored["base_probability"][rows], **common)
            else:
                reference.write("update_memory", 256,
                                **{f: v[rows] for f, v in features.items()}, **common)
            k = end
    expected = reference.snapshot()
    for replica in snapshots(served):
        assert_close(replica, expected)


# The fault test's hook runs inside the pipeline (same process on the DirectRunner): it stops the
# third replica before window 2 and starts it again, on the same port, before window 4.
FAULT = {}


def kill_and_restart(window):
    if window == 2:
        FAULT["port"] = FAULT["server"].target.rsplit(":", 1)[1]
        FAULT["server"].stop()
    elif window == 4:
        FAULT["server"] = DevServer(FAULT["base"], extra_args=["--port", FAULT["port"]])


def test_a_replica_killed_for_windows_is_reported_and_healed(served):
    reset(served)
    path = served["root"] / "fault.csv"
    with open(served["csv"], encoding="utf-8") as src, open(path, "w", encoding="utf-8") as dst:
        for k, line in enumerate(src):
            if k > 6 * 2000:
                break
            dst.write(line)
    victim = served["servers"][2]
    FAULT.update(server=victim, base=served["base"])
    try:
        summary = run_feedback(str(served["base"]), str(path), targets(served), window_rows=2000,
                               retries=1, timeout=10, on_window=kill_and_restart)
    finally:
        served["servers"][2] = FAULT["server"]  # the restarted one is stopped by the fixture
    assert served["servers"][2].target == victim.target
    lost = summary["targets"][victim.target]
    assert lost["missed_windows"] == [2, 3] and lost["healed_at"] == [4], summary
    assert (lost["merged"], lost["failed"], lost["heal_failed"], lost["healed"]) == (3, 1, 1, 1)
    assert summary["unhealed"] == []
    for other in targets(served)[:2]:
        assert summary["targets"][other]["merged"] == 6
    a, b, c = snapshots(served)
    assert_close(c, a)
    assert_close(b, a)
    assert a[:, 0].sum() > 0

    # A re-run: the restarted replica lost its dedup window (it knows window 5's id only), so it
    # writes windows 0-4 again while the others drop them; each time it is healed at the next
    # window, and it ends equal to the others, which did not change at all.
    again = run_feedback(str(served["base"]), str(path), targets(served), window_rows=2000)
    assert again["duplicate_windows"] == 6 and again["unhealed"] == []
    for other in targets(served)[:2]:
        assert again["targets"][other]["duplicate"] == 6, again
    lost = again["targets"][victim.target]
    assert (lost["merged"], lost["duplicate"], lost["healed_at"]) == (3, 0, [1, 3, 5]), again
    a2, b2, c2 = snapshots(served)
    np.testing.assert_array_equal(a2, a)
    np.testing.assert_array_equal(b2, b)
    assert_close(c2, a)


STREAM_REPORTS = []


def keep_report(report):
    STREAM_REPORTS.append(report)  # a module function: pickled by name, runs in this process


def test_a_stream_in_fixed_windows_reaches_every_replica(served):
    """The unbounded path (FixedWindows, the stateful DoFn that applies windows as they fire) on
    the DirectRunner in streaming mode, with a TestStream standing in for Pub/Sub."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.transforms.window import TimestampedValue

    from reloop2_serving.feedback import build_feedback

    reset(served)
    rng = np.random.default_rng(9)
    n, seconds, windows = 360, 60, 3
    times = np.sort(rng.choice(np.arange(windows * seconds * 10), n, replace=False)) / 10.0
    rows = [{"user_id": str(rng.integers(1, 900)), "item_id": str(rng.integers(1, 1600)),
             "genre": str(rng.choice(["Drama", "Comedy"])), "label": int(rng.integers(0, 2))}
            for _ in range(n)]
    # Messages of one or two rows (a message's rows share its timestamp), sent out of order
    # within each window: the window's batch restores the order (event time, row digest).
    messages = [[k] if k % 3 else [k, k + 1] for k in range(n) if k % 3 != 1]
    stream = TestStream().advance_watermark_to(0)
    for w in range(windows):
        here = [m for m in messages if w * seconds <= times[m[0]] < (w + 1) * seconds]
        stream = stream.add_elements([TimestampedValue(
            "\n".join(json.dumps(rows[k]) for k in m), times[m[0]]) for m in here[::-1]])
        stream = stream.advance_watermark_to((w + 1) * seconds)
    stream = stream.advance_watermark_to_infinity()
    order = {k: (times[m[0]], row_digest(parse_json(json.dumps(rows[k]), SCHEMA3, NUM_TABLES)))
             for m in messages for k in m}
    window_of = {k: int(order[k][0] // seconds) for k in order}
    path, features, num_tables = model_schema(str(served["base"]))
    pipeline = beam.Pipeline(options=PipelineOptions(["--streaming"]))
    reports = build_feedback(pipeline, model_path=path, features=features, num_tables=num_tables,
                             source="test-stream", targets=targets(served), window_seconds=seconds,
                             batch_size=64, source_id="test-stream",
                             messages=pipeline | stream)
    _ = reports | beam.Map(keep_report)
    STREAM_REPORTS.clear()
    pipeline.run().wait_until_finish()
    assert [(r["window"], r["rows"]) for r in STREAM_REPORTS] == [
        (w, sum(v == w for v in window_of.values())) for w in range(windows)]
    assert all(set(r["targets"].values()) == {"merged"} for r in STREAM_REPORTS)
    reference = Reference(served["path"])
    for w in range(windows):
        part = sorted((k for k in order if window_of[k] == w), key=order.__getitem__)
        reference.write("update_memory", 64,
                        **{f: np.array([rows[k][f] for k in part], object) for f in FEATURES},
                        label=np.array([rows[k]["label"] for k in part], np.float32),
                        sample_weight=np.ones(len(part), np.float32))
    expected = reference.snapshot()
    for replica in snapshots(served):
        assert_close(replica, expected)


# -- construction under other runners, and the command line ------------------------------------------
@pytest.mark.parametrize("runner, extra", [
    ("DataflowRunner", ["--project", "reloop2-demo", "--region", "europe-west1",
                        "--temp_location", "gs://reloop2-feedback/tmp"]),
    ("FlinkRunner", ["--flink_master", "localhost:8081", "--environment_type", "LOOPBACK"]),
    ("SparkRunner", ["--spark_master_url", "spark://localhost:7077"]),
])
def test_the_pipeline_constructs_under_remote_runners(served, runner, extra, monkeypatch, tmp_path):
    import tempfile

    from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

    # A Beam pipeline makes its local temp dir when it is built and removes it only after a run:
    # these are never run, so their dirs go to the test's own tmp_path, not to /tmp.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    # Dataflow's option check asks GCS whether the temp bucket has a soft-delete policy (only to
    # log a billing warning): no network here, and it would wait ~2 min for credentials first.
    monkeypatch.setattr(GoogleCloudOptions, "_warn_if_soft_delete_policy_enabled",
                        lambda self, arg_name: None)

    for source, window in ((str(served["csv"]), {"window_rows": 1000}),
                           ("pubsub:projects/reloop2-demo/subscriptions/labels", {"window_seconds": 60})):
        pipeline, info = feedback_pipeline(str(served["base"]), source, "a:1,b:2",
                                           beam_args=["--runner", runner, *extra],
                                           report="gs://reloop2-feedback/report.jsonl", **window)
        assert pipeline.options.view_as(StandardOptions).runner == runner
        assert info["streaming"] == source.startswith("pubsub:")
        proto = pipeline.to_runner_api()  # the whole graph, DoFns pickled, nothing run
        names = {t.unique_name for t in proto.components.transforms.values()}
        assert "WindowBatch" in names
        assert ("ApplyAsTheyFire" if info["streaming"] else "ApplyInOrder") in names
        assert ("ReadFromPubSub" if info["streaming"] else "Match") in names


def test_the_command_line_passes_beam_options_and_prints_the_summary(served):
    parser = argparse.ArgumentParser(prog="reloop2")
    feedback_cli.register_feedback(parser.add_subparsers(dest="command", required=True))
    path = served["root"] / "cli.csv"
    with open(served["csv"], encoding="utf-8") as src, open(path, "w", encoding="utf-8") as dst:
        dst.writelines(line for k, line in zip(range(1001), src))
    # Daily event-time windows over the file's timestamp column.
    args = parser.parse_args(["feedback", "run", "--model", str(served["base"]), "--input",
                              str(path), "--runner", "DirectRunner", "--targets",
                              ",".join(targets(served)), "--window-seconds", "86400",
                              "--direct_num_workers=1"])
    assert args.beam_args == ["--runner", "DirectRunner", "--direct_num_workers=1"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.func(args) == 0
    summary = json.loads(out.getvalue())
    days = {int(line.split(",")[2]) // 86400 for line in open(path, encoding="utf-8").readlines()[1:]}
    assert (summary["rows"], summary["windows"]) == (1000, len(days)) and len(days) > 1
    with pytest.raises(SystemExit):
        with contextlib.redirect_stderr(io.StringIO()):
            parser.parse_args(["feedback", "run", "--model", "m", "--input", "i", "--targets",
                               "t", "--window-rows", "5", "--window-seconds", "5"])
    assert model_schema(str(served["base"]))[1] == dict.fromkeys(FEATURES, "string")
