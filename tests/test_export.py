"""export_serving_model: the signature contract, eager + TF1-Session loading, atomic versions."""

import os
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import ID_GROUPS, ROOT, TABLE_SIZES, Session, build_model, make_features, take

import reloop2_tf as r2
from reloop2_tf import export as ex
from reloop2_tf._keras import tf

FEATURES = {"item_id", "price", "user_id"}
PREDICT = {"inputs": FEATURES, "outputs": {"probability", "base_probability", "estimated_error",
                                           "memory_support", "memory_keys"}}
CONTRACT = {
    "serving_default": PREDICT,
    "predict": PREDICT,
    "update_memory": {"inputs": FEATURES | {"label", "sample_weight", "write_id"},
                      "outputs": {"weight_written", "memory_weight"}},
    "update_memory_by_keys": {"inputs": {"memory_keys", "base_probability", "label", "sample_weight",
                                         "write_id"},
                              "outputs": {"weight_written", "memory_weight"}},
    "memory_snapshot": {"inputs": set(), "outputs": {"sketch", "memory_weight"}},
    "memory_restore": {"inputs": {"sketch"}, "outputs": {"memory_weight"}},
    "memory_merge": {"inputs": {"sketch", "write_id"}, "outputs": {"weight_written", "memory_weight"}},
    "memory_layout": {"inputs": set(), "outputs": {"fingerprint", "memory_weight", "trust_layout",
                                                   "trust_rows"}},
}


def _default_memory_model(seed: int):
    """The helpers' model with the default memory for its ids: a recent item table included."""
    return build_model(seed=seed, memory=r2.LSHErrorMemory(
        num_tables=8, num_bits=5, seed=seed, half_life=None, id_groups=ID_GROUPS, id_bits=10))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One model exported once (exports cost seconds), with a few rows already in memory."""
    model = _default_memory_model(seed=3)
    assert model.memory.recent_groups == (("item_id",),)
    rng = np.random.default_rng(0)
    model.update_memory(make_features(20, rng), rng.integers(0, 2, 20))
    path = ex.export_serving_model(model, tmp_path_factory.mktemp("export") / "model")
    return model, path


def test_signature_contract_exact_names_and_dtypes(exported):
    model, path = exported
    sess = Session(path)
    got = {name: {"inputs": set(sig.inputs), "outputs": set(sig.outputs)}
           for name, sig in sess.sigs.items()}
    assert got == CONTRACT
    assert {k: {"inputs": set(v["inputs"]), "outputs": set(v["outputs"])}
            for k, v in ex.signature_contract(model).items()} == CONTRACT
    dtypes = {k: tf.dtypes.as_dtype(v.dtype) for k, v in sess.sigs["update_memory"].inputs.items()}
    assert dtypes == {"user_id": tf.string, "item_id": tf.string, "price": tf.float32,
                      "label": tf.float32, "sample_weight": tf.float32, "write_id": tf.string}
    assert [d.size for d in sess.sigs["update_memory"].inputs["write_id"].tensor_shape.dim] == []
    sketch = sess.sigs["memory_snapshot"].outputs["sketch"].tensor_shape
    assert [d.size for d in sketch.dim] == [model.memory.num_state_rows, 3]
    keys = sess.sigs["predict"].outputs["memory_keys"]
    assert tf.dtypes.as_dtype(keys.dtype) == tf.int32
    assert [d.size for d in keys.tensor_shape.dim] == [-1, model.memory.num_key_columns]
    for name in ("serving_default", "update_memory"):
        assert all(len(t.tensor_shape.dim) == 1 and t.tensor_shape.dim[0].size == -1
                   for k, t in sess.sigs[name].inputs.items() if k != "write_id")
    sess.close()


def test_tf1_session_and_eager_agree_with_keras_through_an_update(exported, rng):
    model, path = exported
    x = make_features(12, rng)
    labels = rng.integers(0, 2, 12).astype(np.float32)
    weights = rng.integers(1, 4, 12).astype(np.float32)
    sess = Session(path)
    # Every variable came back from the checkpoint: memory included.
    np.testing.assert_array_equal(sess("memory_snapshot")["sketch"], model.memory.snapshot().numpy())
    before = sess("predict", **x)
    np.testing.assert_allclose(before["probability"], model.compensate(x)["probability"].numpy(),
                               atol=1e-6)
    written = sess("update_memory", **x, label=labels, sample_weight=weights)
    assert float(written["weight_written"]) == weights.sum()
    assert float(written["memory_weight"]) == 20 + weights.sum()

    eager = tf.saved_model.load(str(path))
    out = eager.signatures["update_memory"](**{k: tf.constant(v) for k, v in x.items()},
                                            label=tf.constant(labels), sample_weight=tf.constant(weights),
                                            write_id=tf.constant(""))
    assert float(out["memory_weight"]) == 20 + weights.sum()
    eager_after = eager.signatures["serving_default"](**{k: tf.constant(v) for k, v in x.items()})

    # In-process reference: the exported Keras model, given the same update (then put back).
    saved = model.memory.snapshot()
    model.update_memory(x, labels, weights)
    expected = model.compensate(x)
    model.memory.restore(saved)
    after = sess("serving_default", **x)
    for key in ex.PREDICT_OUTPUTS:
        np.testing.assert_allclose(after[key], expected[key].numpy(), atol=1e-5)
        np.testing.assert_allclose(eager_after[key].numpy(), after[key], atol=1e-6)
    assert not np.allclose(after["probability"], before["probability"])
    sess.close()


@pytest.mark.parametrize("bad", [
    "nan_price", "label_2", "nan_label", "negative_weight", "short_label", "short_feature",
    "empty", "wrong_sketch"])
def test_invalid_input_fails_before_any_write(exported, rng, bad):
    model, path = exported
    sess = Session(path)
    x = make_features(4, rng)
    inputs = {**x, "label": np.ones(4, np.float32), "sample_weight": np.ones(4, np.float32)}
    signature, match = "update_memory", None
    if bad == "nan_price":
        inputs["price"] = np.array([1, np.nan, 2, 3], np.float32)
        match = "`price` contains NaN"
    elif bad == "label_2":
        inputs["label"] = np.array([1, 2, 0, 1], np.float32)
        match = r"`label` must be in \[0, 1\]"
    elif bad == "nan_label":
        inputs["label"] = np.array([1, np.nan, 0, 1], np.float32)
        match = "`label` contains NaN"
    elif bad == "negative_weight":
        inputs["sample_weight"] = np.array([1, -1, 1, 1], np.float32)
        match = "`sample_weight` must be >= 0"
    elif bad == "short_label":
        inputs["label"] = np.ones(3, np.float32)
        match = "`label` must have as many rows"
    elif bad == "short_feature":
        inputs["user_id"] = inputs["user_id"][:2]
        match = "`user_id` must have as many rows"
    elif bad == "empty":
        inputs = {k: v[:0] for k, v in inputs.items()}
        match = "the batch is empty"
    else:
        signature, match = "memory_merge", "`state` would leave negative weights"
        sketch = np.zeros([model.memory.num_state_rows, 3], np.float32)
        sketch[0, 0] = -1e6
        inputs = {"sketch": sketch}
    checksum = sess.checksum()
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        sess(signature, **inputs)
    assert sess.checksum() == checksum
    if bad in ("empty", "short_feature"):  # predict validates its batch the same way
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            sess("predict", **{k: v for k, v in inputs.items() if k in FEATURES})
    sess.close()


def test_writes_by_keys_equal_writes_by_features_in_session(exported, rng):
    _, path = exported
    by_features, by_keys = Session(path), Session(path)
    for _ in range(3):
        x, y = make_features(40, rng), rng.integers(0, 2, 40).astype(np.float32)
        w = rng.integers(0, 3, 40).astype(np.float32)
        served = by_keys("predict", **x)
        np.testing.assert_array_equal(served["probability"], by_features("predict", **x)["probability"])
        a = by_features("update_memory", **x, label=y, sample_weight=w)
        b = by_keys("update_memory_by_keys", memory_keys=served["memory_keys"],
                    base_probability=served["base_probability"], label=y, sample_weight=w)
        assert float(a["weight_written"]) == float(b["weight_written"]) == w.sum()
    np.testing.assert_array_equal(by_keys("memory_snapshot")["sketch"],
                                  by_features("memory_snapshot")["sketch"])
    before = by_keys("memory_snapshot")["sketch"]
    keys = served["memory_keys"].copy()
    keys[0, -1] = 1 << 20  # beyond its table
    with pytest.raises(tf.errors.InvalidArgumentError, match="`memory_keys`"):
        by_keys("update_memory_by_keys", memory_keys=keys, base_probability=served["base_probability"],
                label=y, sample_weight=w)
    np.testing.assert_array_equal(by_keys("memory_snapshot")["sketch"], before)
    by_features.close()
    by_keys.close()


@pytest.mark.parametrize("id_bits", [10, {"item_id": 9, "user_id*item_id:each": 11, "user_id": 7}],
                         ids=["one size", "each table its own"])
def test_a_multi_valued_cross_serves_and_writes_in_session_as_in_keras(tmp_path, rng, id_bits):
    # ("user_id", "item_id:each"): the request's item_id lists tokens ("i3|i7"); the Session
    # keys, reads and writes them as the Keras model does, by features and by keys, with every
    # id table of one size or each of its own.
    model = build_model(seed=1, memory=r2.LSHErrorMemory(
        num_tables=2, num_bits=4, half_life=None, id_bits=id_bits, recent_groups=(),
        id_groups=["item_id", ("user_id", "item_id:each")]))
    assert model.memory.table_sizes[2:] == ((2**10,) * 3 if id_bits == 10 else (2**9, 2**11, 2**7))

    def rows(n):
        x = make_features(n, rng)
        x["item_id"] = np.array(["|".join(rng.choice(["i1", "i2", "i3", "i4", "i5"],
                                                     rng.integers(1, 6), replace=False))
                                 for _ in range(n)], dtype=object)
        return x, rng.integers(0, 2, n).astype(np.float32)

    model.update_memory(*rows(60))
    path = ex.export_serving_model(model, tmp_path / "model")
    sess, twin = Session(path), Session(path)
    for _ in range(3):
        x, y = rows(30)
        served = sess("predict", **x)
        np.testing.assert_allclose(served["probability"],
                                   model.compensate(x)["probability"].numpy(), atol=1e-5)
        np.testing.assert_array_equal(served["memory_keys"], model.memory_keys(x).numpy())
        model.update_memory(x, y)
        sess("update_memory_by_keys", memory_keys=served["memory_keys"],
             base_probability=served["base_probability"], label=y,
             sample_weight=np.ones(30, np.float32))
        twin("update_memory", **x, label=y, sample_weight=np.ones(30, np.float32))
    np.testing.assert_array_equal(sess("memory_snapshot")["sketch"], twin("memory_snapshot")["sketch"])
    np.testing.assert_allclose(sess("memory_snapshot")["sketch"], model.memory.snapshot().numpy(),
                               rtol=1e-5, atol=1e-4)
    sess.close()
    twin.close()


def test_snapshot_restore_merge_semantics_in_session(exported, rng):
    _, path = exported
    a, b = Session(path), Session(path)
    start = a("memory_snapshot")["sketch"]
    x, y = make_features(30, rng), rng.integers(0, 2, 30).astype(np.float32)
    ones = np.ones(30, np.float32)
    a("update_memory", **take(x, slice(0, 15)), label=y[:15], sample_weight=ones[:15])
    b("update_memory", **take(x, slice(15, 30)), label=y[15:], sample_weight=ones[15:])
    delta_a = a("memory_snapshot")["sketch"] - start
    delta_b = b("memory_snapshot")["sketch"] - start
    # A fresh replica, restored to the export, plus both deltas = one memory that saw both halves.
    c = Session(path)
    c("memory_merge", sketch=delta_a)
    merged = c("memory_merge", sketch=delta_b)
    assert float(merged["memory_weight"]) == 20 + 30
    whole = Session(path)
    whole("update_memory", **x, label=y, sample_weight=ones)
    # Equal up to the recent table's forgetting: each replica forgot the old rows over its own 15
    # rows, the whole memory over 30 (factors 2f - 1 vs f**2, f = 0.5 ** (15 / 5000): 4e-6).
    np.testing.assert_allclose(c("memory_snapshot")["sketch"], whole("memory_snapshot")["sketch"],
                               rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(c("predict", **x)["probability"],
                               whole("predict", **x)["probability"], atol=1e-6)
    restored = c("memory_restore", sketch=start)
    assert float(restored["memory_weight"]) == 20
    np.testing.assert_array_equal(c("memory_snapshot")["sketch"], start)
    for s in (a, b, c, whole):
        s.close()


def test_a_repeated_write_id_writes_nothing_in_session_and_eagerly(exported, rng):
    _, path = exported
    x, y = make_features(25, rng), rng.integers(0, 2, 25).astype(np.float32)
    w = np.ones(25, np.float32)
    sess, reference = Session(path), Session(path)
    served = sess("predict", **x)
    by_keys = dict(memory_keys=served["memory_keys"], base_probability=served["base_probability"],
                   label=y, sample_weight=w)
    first = sess("update_memory", **x, label=y, sample_weight=w, write_id="a")
    assert float(first["weight_written"]) == 25
    after = sess("memory_snapshot")["sketch"]
    served_after = sess("predict", **x)
    # The same id again, on every writing signature: nothing is written, 0 is returned.
    for name, inputs in (("update_memory", {**x, "label": y, "sample_weight": w}),
                         ("update_memory_by_keys", by_keys)):
        again = sess(name, **inputs, write_id="a")
        assert float(again["weight_written"]) == 0.0
        assert float(again["memory_weight"]) == float(first["memory_weight"])
    np.testing.assert_array_equal(sess("memory_snapshot")["sketch"], after)
    # What is read from the state (the trust, the read weights) is as it was, bit for bit.
    served_again = sess("predict", **x)
    for name in ("probability", "estimated_error", "memory_keys"):
        np.testing.assert_array_equal(served_again[name], served_after[name])
    # Fresh ids and empty ids write; an empty id is never remembered.
    assert float(sess("update_memory_by_keys", **by_keys, write_id="b")["weight_written"]) == 25
    for _ in range(2):
        assert float(sess("update_memory_by_keys", **by_keys, write_id="")["weight_written"]) == 25
    reference("update_memory", **x, label=y, sample_weight=w)
    for _ in range(3):
        reference("update_memory_by_keys", **by_keys)
    np.testing.assert_allclose(sess("memory_snapshot")["sketch"],
                               reference("memory_snapshot")["sketch"], rtol=1e-6)
    # Merges: a delta under one id is added once.
    delta = sess("memory_snapshot")["sketch"] - after
    merged = reference("memory_merge", sketch=delta, write_id="m")
    assert float(merged["weight_written"]) == pytest.approx(75)
    state = reference("memory_snapshot")["sketch"]
    assert float(reference("memory_merge", sketch=delta, write_id="m")["weight_written"]) == 0
    np.testing.assert_array_equal(reference("memory_snapshot")["sketch"], state)
    # A bad request with a known id is still rejected by name (checks come first).
    with pytest.raises(tf.errors.InvalidArgumentError, match="`label` must be in"):
        sess("update_memory", **x, label=y * 3, sample_weight=w, write_id="a")
    sess.close()
    reference.close()
    # Eagerly, after tf.saved_model.load, the same.
    loaded = tf.saved_model.load(path)
    upd = loaded.signatures["update_memory_by_keys"]
    args = {k: tf.constant(v) for k, v in by_keys.items()}
    assert float(upd(**args, write_id=tf.constant("e"))["weight_written"]) == 25
    assert float(upd(**args, write_id=tf.constant("e"))["weight_written"]) == 0


def test_the_write_id_window_forgets_the_oldest_id(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(ex, "WRITE_ID_WINDOW", 4)
    model = build_model(seed=1)
    path = ex.export_serving_model(model, tmp_path / "m")
    sess = Session(path)
    x, y = make_features(3, rng), np.ones(3, np.float32)
    w = np.ones(3, np.float32)

    def write(write_id):
        return float(sess("update_memory", **x, label=y, sample_weight=w,
                          write_id=write_id)["weight_written"])

    assert [write(i) for i in "abcd"] == [3.0] * 4
    assert [write(i) for i in "abcd"] == [0.0] * 4  # all four remembered
    assert write("e") == 3.0                           # pushes "a" out of the window
    assert [write("b"), write("a")] == [0.0, 3.0]
    sess.close()


def test_a_merge_may_forget_but_not_leave_negative_weights(exported, rng):
    _, path = exported
    sess = Session(path)
    state = sess("memory_snapshot")["sketch"]
    # A delta that halves every bucket (what half-life decay between two snapshots looks like).
    out = sess("memory_merge", sketch=-0.5 * state, write_id="halve")
    np.testing.assert_allclose(sess("memory_snapshot")["sketch"], 0.5 * state, rtol=1e-6)
    assert float(out["weight_written"]) == pytest.approx(-0.5 * state[:TABLE_SIZES[0], 0].sum(), rel=1e-5)
    before = sess("memory_snapshot")["sketch"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="negative weights"):
        sess("memory_merge", sketch=-2.0 * state, write_id="too-much")
    np.testing.assert_array_equal(sess("memory_snapshot")["sketch"], before)
    # The rejected id was not remembered: the same id with a valid delta is written.
    assert float(sess("memory_merge", sketch=0.5 * state, write_id="too-much")["weight_written"]) > 0
    sess.close()


def test_memory_layout_reads_the_weight_without_the_state(exported, rng):
    model, path = exported
    sess = Session(path)
    before = float(sess("memory_layout")["memory_weight"])
    assert before == float(sess("memory_snapshot")["memory_weight"]) > 0
    features = make_features(7, rng)
    sess("update_memory", **features, label=np.ones(7, np.float32),
         sample_weight=np.full(7, 2.0, np.float32))
    after = float(sess("memory_layout")["memory_weight"])
    assert after == float(sess("memory_snapshot")["memory_weight"])
    kept = 0.5 ** (7 / model.memory.half_life) if model.memory.half_life else 1.0
    assert after == pytest.approx(before * kept + 14.0, rel=1e-5)
    sess.close()


def test_memory_layout_fingerprint_names_the_projections_not_the_state(exported, tmp_path, rng):
    model, path = exported
    sess = Session(path)
    served = sess("memory_layout")["fingerprint"].decode()
    sess.close()
    assert served == ex.memory_fingerprint(model.memory) and served.startswith("sha256:")
    # The same seed and layout in a model built again: the same fingerprint, and writes
    # change the state, never the layout.
    twin, other = _default_memory_model(seed=3), _default_memory_model(seed=4)
    for m in (twin, other):
        m(make_features(1, rng))
    twin.update_memory(make_features(5, rng), np.ones(5))
    assert ex.memory_fingerprint(twin.memory) == served
    assert ex.memory_fingerprint(other.memory) != served   # other projections
    twin.memory.set_center(np.full([twin.memory.dim], 0.5, np.float32))
    assert ex.memory_fingerprint(twin.memory) != served    # other buckets for the same hidden
    with pytest.raises(ValueError, match="built LSHErrorMemory"):
        ex.memory_fingerprint(r2.KNNErrorMemory(capacity=4, top_k=2))


def test_trust_layout_names_what_the_combiner_means_not_the_projections(exported, rng):
    model, path = exported
    sess = Session(path)
    out = sess("memory_layout")
    sess.close()
    served = out["trust_layout"].decode()
    assert served == ex.trust_fingerprint(model) and served.startswith("sha256:")
    assert int(out["trust_rows"]) == model.memory.num_trust_rows > 0
    twin, other = _default_memory_model(seed=3), _default_memory_model(seed=4)
    for m in (twin, other):
        m(make_features(1, rng))
    # A model trained again (other projections): another fingerprint, the same combiner.
    assert ex.memory_fingerprint(other.memory) != ex.memory_fingerprint(twin.memory)
    assert ex.trust_fingerprint(other) == ex.trust_fingerprint(twin) == served
    fewer = build_model(seed=3, memory=r2.LSHErrorMemory(num_tables=2, num_bits=4,
                                                         id_groups=["item_id"]))
    shrunk = build_model(seed=3)
    shrunk.compensation.prior_count = 7.0
    for m in (fewer, shrunk):
        m(make_features(1, rng))
        assert ex.trust_fingerprint(m) != ex.trust_fingerprint(build_model(seed=3))
    fixed = build_model(seed=3, memory=r2.KNNErrorMemory(capacity=4, top_k=2))
    assert ex.trust_fingerprint(fixed) == ""


def test_resaved_model_keeps_updated_memory_and_old_version_does_not(tmp_path, rng):
    model = build_model(seed=5)
    base = tmp_path / "models"
    v1 = ex.export_serving_model(model, base, version="auto")
    x = make_features(10, rng)
    model.update_memory(x, np.ones(10))
    v2 = ex.export_serving_model(model, base, version="auto")
    assert (Path(v1).name, Path(v2).name) == ("1", "2")
    old, new = Session(v1), Session(v2)
    assert float(old("memory_snapshot")["memory_weight"]) == 0.0
    np.testing.assert_array_equal(new("memory_snapshot")["sketch"], model.memory.snapshot().numpy())
    np.testing.assert_allclose(new("predict", **x)["probability"],
                               model.compensate(x)["probability"].numpy(), atol=1e-6)
    old.close()
    new.close()


def test_versioned_publish_is_atomic(tmp_path, monkeypatch):
    model = build_model(seed=0)
    base = tmp_path / "base"
    (base / "7").mkdir(parents=True)  # an unfinished dir another tool left: never overwritten
    assert Path(ex.export_serving_model(model, base, version="auto")).name == "8"
    with pytest.raises(FileExistsError):
        ex.export_serving_model(model, base, version=8)
    assert Path(ex.export_serving_model(model, base, version=10)).name == "10"
    assert sorted(ex.numbered_versions(base)) == [8, 10]
    path, version = ex.resolve_model_dir(base)
    assert version == 10 and path == base / "10"

    def fail_midway(model, path, batching, warmup):
        Path(path, "variables").mkdir(parents=True)
        Path(path, "saved_model.pb").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ex, "_save", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        ex.export_serving_model(model, base, version="auto")
    # Nothing half-written is visible: no version 11, no temporary dir left behind.
    assert sorted(os.listdir(base)) == ["10", "7", "8"]
    with pytest.raises(FileExistsError):
        ex.export_serving_model(model, base / "10")  # plain path mode refuses a non-empty dir
    with pytest.raises(ValueError, match="`version`"):
        ex.export_serving_model(model, base, version=-1)


def test_knn_memory_exports_predict_and_update_only(tmp_path, rng):
    model = build_model(memory=r2.KNNErrorMemory(capacity=32, top_k=4))
    path = ex.export_serving_model(model, tmp_path / "knn")
    sess = Session(path)
    assert set(sess.sigs) == {"serving_default", "predict", "update_memory"}
    x = make_features(5, rng)
    out = sess("update_memory", **x, label=np.ones(5, np.float32),
               sample_weight=np.ones(5, np.float32))
    assert float(out["memory_weight"]) == 5.0
    assert (sess("predict", **x)["memory_support"] > 0).all()
    sess.close()


def test_in_graph_predict_batching_and_warmup(tmp_path, rng):
    batching = ex.PredictBatching.from_file(ROOT / "serving" / "batching_parameters.txt")
    assert batching.max_batch_size >= 1
    model = build_model(seed=1)
    model.update_memory(make_features(8, rng), np.ones(8))
    batched = ex.PredictBatching(max_batch_size=8, batch_timeout_micros=100,
                                 allowed_batch_sizes=(4, 8))
    warm = make_features(2, rng)
    path = ex.export_serving_model(model, tmp_path / "m", batching=batched, warmup_features=warm)
    sess = Session(path)
    for n in (1, 3, 8):  # padded to 4 and 8 inside the batch op; padding never reaches memory
        x = make_features(n, rng)
        np.testing.assert_allclose(sess("predict", **x)["probability"],
                                   model.compensate(x)["probability"].numpy(), atol=1e-6)
    assert float(sess("memory_snapshot")["memory_weight"]) == 8.0
    sess.close()
    assert (Path(path) / ex.WARMUP_FILE).is_file()
    with pytest.raises(ValueError, match="must not write"):
        ex.write_warmup_requests(path, warm, signature_name="update_memory")


def test_zoo_model_exports(tmp_path, rng):
    models = pytest.importorskip("reloop2_tf.models")
    from reloop2_tf.features import FeatureSpec

    spec = FeatureSpec.movielens(history_length=5)
    base = models.build_model("dcn", spec)
    model = r2.ReLoop2Model(base, compensation=r2.ErrorCompensation(
        r2.LSHErrorMemory(num_tables=4, num_bits=4), compensation_weight=1.0))
    path = ex.export_serving_model(model, tmp_path / "dcn")
    sess = Session(path)
    assert set(sess.sigs["predict"].inputs) == set(spec.names)
    n = 3
    x = {name: np.array([f"{name}{k}" for k in range(n)], dtype=object) for name in spec.names}
    x["history"] = np.array(["item_id1 item_id2", "", "item_id0"], dtype=object)
    out = sess("update_memory", **x, label=np.array([1, 0, 1], np.float32),
               sample_weight=np.ones(n, np.float32))
    assert float(out["memory_weight"]) == 3.0
    model.update_memory(x, [1, 0, 1])
    np.testing.assert_allclose(sess("predict", **x)["probability"],
                               model.compensate(x)["probability"].numpy(), atol=1e-5)
    sess.close()


def test_real_server_configs_parse():
    """models.config is a valid ModelServerConfig; k8s runs the official image without batching."""
    import yaml
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse((ROOT / "serving" / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == "reloop2" and model.model_platform == "tensorflow"
    assert model.model_version_policy.latest.num_versions == 1
    docs = list(yaml.safe_load_all((ROOT / "serving" / "k8s.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "Service"]
    pod = docs[0]["spec"]["template"]["spec"]
    container, keeper = pod["containers"]
    assert container["image"].startswith("tensorflow/serving:")
    assert "--model_config_file=/config/models.config" in container["args"]
    assert not any(a.startswith("--enable_batching") for a in container["args"])
    # The memory sidecar: `reloop2 memory keep` on the server's port, its /ready gates the pod,
    # and its store is a mounted volume; the flags it is given are flags it has.
    from reloop2_tf.cli.main import build_parser

    args = build_parser().parse_args([*keeper["command"][1:], *keeper["args"]])
    assert keeper["command"][0] == "reloop2" and args.func.__name__ == "_keep"
    assert args.target == "127.0.0.1:8500" and args.http_host == "0.0.0.0"
    assert keeper["readinessProbe"]["httpGet"] == {"path": "/ready", "port": args.http_port}
    mounts = {m["mountPath"]: m["name"] for m in keeper["volumeMounts"]}
    assert args.store.startswith("/memory/") and mounts["/memory"] in {
        v["name"] for v in pod["volumes"]}
    assert ex.PredictBatching.from_file(ROOT / "serving" / "batching_parameters.txt") == \
        ex.PredictBatching(max_batch_size=256, batch_timeout_micros=1000,
                           max_enqueued_batches=100, num_batch_threads=2)
