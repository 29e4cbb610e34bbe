"""Every exported SavedModel kind, loaded by TensorFlow's C API as ``tensorflow_model_server`` does.

``TF_LoadSessionFromSavedModel`` in the wheel's ``libtensorflow_cc.so.2`` is the C++
``LoadSavedModel`` that TF Serving links. ``benchmarks/serving_bench/saved_model_runner.c`` is
built here with gcc against the installed ``tensorflow`` package (nothing else is needed), and
runs predict from several threads, update_memory with string features, memory_snapshot and
memory_merge by the SignatureDef tensor names this test resolves; the answers must equal the TF1
Session's.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import Session, build_model

import reloop2_tf as r2
from reloop2_tf import export as ex
from reloop2_tf._keras import tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from serving_bench.c_api import FreshIds, Plan, build_runner, results  # noqa: E402

pytestmark = pytest.mark.e2e
ROWS = 6


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return build_runner(tmp_path_factory.mktemp("c_api") / "saved_model_runner")


def _features(model, n, rng):
    """Raw features for every input of ``model``, by the dtype its signature declares."""
    out = {}
    for name, spec in ex.feature_specs(model).items():
        if spec.dtype == tf.string:
            ids = rng.integers(0, 12, n)
            if name == "history":
                values = [" ".join(f"item_id{k}" for k in rng.integers(0, 12, k % 4)) for k in ids]
            else:  # non-ASCII too: the C side copies raw bytes into TF_TStrings
                values = [f"{name}{k}é" for k in ids]
            out[name] = np.array(values, dtype=object)
        else:
            out[name] = rng.uniform(0, 3, n).astype(spec.dtype.as_numpy_dtype)
    return out


def _zoo(name, **memory):
    from reloop2_tf import models
    from reloop2_tf.features import FeatureSpec

    base = models.build_model(name, FeatureSpec.movielens(history_length=5))
    return r2.ReLoop2Model(base, compensation=r2.ErrorCompensation(
        r2.LSHErrorMemory(num_tables=4, num_bits=4, seed=1, **memory), compensation_weight=1.0))


KINDS = {  # the model, and the export options
    "id_groups": (lambda: build_model(seed=3), {}),
    "dcn": (lambda: _zoo("dcn", half_life=None), {}),
    "din": (lambda: _zoo("din"), {}),  # the default decay (half_life) too
    # In-graph batching (6-row requests padded to 8) and a warm-up file, in one export.
    "batching_warmup": (lambda: build_model(seed=1), {"warmup_features": True,
                                                      "batching": ex.PredictBatching(
        max_batch_size=8, batch_timeout_micros=100, allowed_batch_sizes=(4, 8))}),
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def exported(request, tmp_path_factory):
    make, options = KINDS[request.param]
    model = make()
    rng = np.random.default_rng(0)
    x = _features(model, 10, rng)
    model.update_memory(x, rng.integers(0, 2, 10))  # a non-empty exported memory
    if options.get("warmup_features"):
        options = {**options, "warmup_features": _features(model, 3, rng)}
    path = ex.export_serving_model(model, tmp_path_factory.mktemp(request.param) / "m", **options)
    return request.param, model, Path(path)


def assert_outputs_equal(got, expected, atol=1e-6):
    assert set(got) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=0, atol=atol, err_msg=key)


def test_c_api_loader_matches_tf1_session(runner, exported, tmp_path):
    kind, model, path = exported
    sess = Session(path)
    rng = np.random.default_rng(42)
    x = _features(model, ROWS, rng)
    write = {**x, "label": rng.integers(0, 2, ROWS).astype(np.float32),
             "sample_weight": rng.integers(1, 8, ROWS).astype(np.float32) * 0.25,
             "write_id": np.array("", dtype=object)}  # "": no deduplication
    merge = {"sketch": None, "write_id": np.array("", dtype=object)}
    plan = Plan(tmp_path, sess.sigs)

    warmup = None
    if (path / ex.WARMUP_FILE).is_file():  # replayed as TF Serving does at load; it must not write
        from tensorflow_serving.apis import prediction_log_pb2

        record = next(iter(tf.data.TFRecordDataset(str(path / ex.WARMUP_FILE))))
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        warmup_inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        (warmup,) = plan.step(("serving_default", warmup_inputs, 2, 2))
    (start,) = plan.step(("memory_snapshot", {}, 1, 1))
    (pred0,) = plan.step(("predict", x, 4, 3))  # 4 threads at once (and into the batcher)
    (upd,) = plan.step(("update_memory", write, 1, 2))  # the same rows, twice, in order
    (pred1,) = plan.step(("serving_default", x, 2, 1))
    (snap1,) = plan.step(("memory_snapshot", {}, 1, 1))
    delta = sess("memory_snapshot")["sketch"]  # a valid sketch: the exported memory
    merge["sketch"] = delta
    (merged,) = plan.step(("memory_merge", merge, 1, 1))
    (snap2,) = plan.step(("memory_snapshot", {}, 1, 1))
    # Writers, mergers and readers at the same time.
    busy = plan.step(("update_memory", write, 4, 3), ("memory_merge", merge, 2, 2),
                     ("predict", x, 2, 4))
    (snap3,) = plan.step(("memory_snapshot", {}, 1, 1))
    # One write id sent twice by each of three threads at once: the C++ loader's session writes
    # it once (the id is claimed in the memory's lock).
    (once,) = plan.step(("update_memory", {**write, "write_id": np.array("c-api", object)}, 3, 2))
    (snap4,) = plan.step(("memory_snapshot", {}, 1, 1))
    # A new write id on every run ("id" in the plan): two threads' three writes each all land.
    (fresh,) = plan.step(("update_memory", {**write, "write_id": FreshIds("c-api")}, 2, 3))
    (snap5,) = plan.step(("memory_snapshot", {}, 1, 1))
    seconds = plan.run(runner, path)
    assert len(seconds) == len([line for line in plan.lines if line == "end"])
    assert all(s > 0 for s in seconds)

    # The Python (TF1 Session) side, the same calls in order.
    exported_memory = sess("memory_snapshot")
    assert_outputs_equal(results(start)[0], exported_memory, atol=0)
    if warmup is not None:
        for out in results(warmup):
            assert_outputs_equal(out, sess("serving_default", **warmup_inputs))
    expected = sess("predict", **x)
    for out in results(pred0):
        assert_outputs_equal(out, expected)
    sess("update_memory", **write)
    assert_outputs_equal(results(upd)[0], sess("update_memory", **write))
    assert_outputs_equal(results(pred1)[0], sess("serving_default", **x))
    assert_outputs_equal(results(pred1)[1], results(pred1)[0], atol=0)
    assert_outputs_equal(results(snap1)[0], sess("memory_snapshot"), atol=1e-5)
    assert_outputs_equal(results(merged)[0], sess("memory_merge", sketch=delta), atol=1e-5)
    after_merge = sess("memory_snapshot")
    assert_outputs_equal(results(snap2)[0], after_merge, atol=1e-5)
    assert float(after_merge["memory_weight"]) > float(exported_memory["memory_weight"])

    for _ in range(12):
        sess("update_memory", **write)
    for _ in range(4):
        sess("memory_merge", sketch=delta)
    final, sequential = results(snap3)[0], sess("memory_snapshot")
    assert np.isfinite(final["sketch"]).all()
    sizes = model.memory.table_sizes
    cells = sum(sizes)
    offsets = np.cumsum([0, *sizes[:-1]])
    if model.memory.half_life is None:
        # Concurrent writes lose nothing: quarter-integer weights add up exactly in any order.
        expected_weight = (float(after_merge["memory_weight"]) + 12 * write["sample_weight"].sum()
                           + 4 * float(exported_memory["memory_weight"]))
        assert float(final["memory_weight"]) == expected_weight
        np.testing.assert_array_equal(
            [final["sketch"][a:a + n, 0].sum() for a, n in zip(offsets, sizes)],
            np.float32(expected_weight))
        # Table cells do not depend on the order of the writes. The trust sums read the memory
        # between writes, so they depend on the interleaving and are not compared.
        np.testing.assert_allclose(final["sketch"][:cells], sequential["sketch"][:cells],
                                   rtol=1e-5, atol=1e-4)
    else:
        # With decay the weights depend on when each write lands, and concurrent writers may
        # drop a decay step (docs/serving.md section 4): close to the sequential memory.
        np.testing.assert_allclose(final["memory_weight"], sequential["memory_weight"], rtol=1e-3)
    for out in results(busy[2]):
        assert ((out["probability"] >= 0) & (out["probability"] <= 1)).all()
    assert [float(r["weight_written"]) for r in results(once)] == [0.0] * 3  # second sends
    np.testing.assert_allclose(float(results(snap4)[0]["memory_weight"]),
                               float(final["memory_weight"]) + write["sample_weight"].sum(),
                               rtol=1e-3)
    for out in results(fresh):
        assert float(out["weight_written"]) == write["sample_weight"].sum()
    np.testing.assert_allclose(float(results(snap5)[0]["memory_weight"]),
                               float(results(snap4)[0]["memory_weight"])
                               + 6 * write["sample_weight"].sum(), rtol=1e-3)
    sess.close()
