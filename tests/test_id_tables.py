"""Id tables beside the SRP tables: IdCode, LSHErrorMemory(num_id_tables, id_dims), the wrapper, export."""

import numpy as np
import pytest
from serving_helpers import Session, build_model, make_features

import reloop2_tf as r2
from reloop2_tf import export as ex
from reloop2_tf._keras import keras, tf

K, J, BITS, DIMS = 6, 4, 5, 12


def test_id_code_is_a_fixed_function_of_the_id():
    code = r2.IdCode(dims=DIMS, seed=1)
    a = code(tf.constant(["7", "8", "7"])).numpy()
    assert a.shape == (3, DIMS) and a.dtype == np.float32
    np.testing.assert_array_equal(a[0], a[2])
    assert not np.allclose(a[0], a[1])
    assert (a >= -1).all() and (a < 1).all()
    np.testing.assert_array_equal(code(tf.constant([[7], [8], [7]], tf.int64)).numpy(), a)  # int ids
    np.testing.assert_array_equal(r2.IdCode(dims=DIMS, seed=1)(tf.constant(["7"])).numpy(), a[:1])
    assert not np.allclose(r2.IdCode(dims=DIMS, seed=2)(tf.constant(["7"])).numpy(), a[:1])
    clone = r2.IdCode.from_config(code.get_config())
    np.testing.assert_array_equal(clone(tf.constant(["8"])).numpy(), a[1:2])
    with pytest.raises(ValueError, match="strings or integers"):
        code(tf.constant([1.5]))
    with pytest.raises(ValueError, match="dims"):
        r2.IdCode(dims=0)


def _memory(**kwargs):
    return r2.LSHErrorMemory(num_tables=K, num_bits=BITS, seed=0, num_id_tables=J, id_dims=DIMS,
                             **kwargs)


def test_srp_tables_ignore_the_code_and_id_tables_see_only_the_code(rng):
    mem = _memory()
    hidden = rng.standard_normal((50, 8)).astype(np.float32)
    codes = r2.IdCode(DIMS)(tf.constant([f"i{k % 5}" for k in range(50)])).numpy()
    buckets = mem.bucket_ids(np.concatenate([hidden, codes], 1)).numpy()
    assert mem.sketch.shape == (K + J, 2**BITS, 3)
    other_codes = np.roll(codes, 1, axis=0)
    other_hidden = rng.standard_normal((50, 8)).astype(np.float32)
    np.testing.assert_array_equal(  # new ids, same hidden: SRP buckets unchanged
        mem.bucket_ids(np.concatenate([hidden, other_codes], 1)).numpy()[:, :K], buckets[:, :K])
    np.testing.assert_array_equal(  # same ids, new hidden: id buckets unchanged
        mem.bucket_ids(np.concatenate([other_hidden, codes], 1)).numpy()[:, K:], buckets[:, K:])
    same_id = buckets[0::5, K:]  # rows 0, 5, 10, ... are all "i0"
    assert (same_id == same_id[0]).all()
    # With no id tables the projections are exactly the plain sketch's (golden tests hold).
    plain = r2.LSHErrorMemory(num_tables=K, num_bits=BITS, seed=0)
    plain.build(tf.TensorShape([None, 8 + DIMS]))
    np.testing.assert_array_equal(mem.projections.numpy()[:K, :8], plain.projections.numpy()[:, :8])


def test_id_tables_tell_apart_ids_that_share_a_hidden_vector():
    # Two items with the same hidden vector: one always clicked, one never. Only the id tables
    # can tell them apart.
    hidden = np.ones((40, 8), np.float32)
    ids = tf.constant(["a", "b"] * 20)
    labels = np.array([1.0, 0.0] * 20, np.float32)
    codes = r2.IdCode(DIMS)(ids).numpy()
    for num_id_tables, expect_apart in ((J, True), (0, False)):
        mem = r2.LSHErrorMemory(num_tables=K, num_bits=BITS, seed=0, num_id_tables=num_id_tables,
                                id_dims=DIMS if num_id_tables else 0)
        comp = r2.ErrorCompensation(mem, compensation_weight=1.0, gamma=1.0)
        x = np.concatenate([hidden, codes], 1) if num_id_tables else hidden
        comp.update_memory(np.zeros(40, np.float32), x, labels)
        probs = comp.compensate(np.zeros(2, np.float32), x[:2])["probability"].numpy()
        if expect_apart:  # id buckets: 1.0 for "a", 0.0 for "b", mixed with the shared 0.5
            assert probs[0] - probs[1] > 0.15
        else:
            assert probs[0] == probs[1]


def test_bad_id_table_arguments():
    with pytest.raises(ValueError, match="go together"):
        r2.LSHErrorMemory(num_id_tables=2)
    with pytest.raises(ValueError, match="go together"):
        r2.LSHErrorMemory(id_dims=4)
    with pytest.raises(ValueError, match="num_id_tables"):
        r2.LSHErrorMemory(num_id_tables=-1, id_dims=4)
    with pytest.raises(ValueError, match="wider than `id_dims`"):
        _memory().build(tf.TensorShape([None, DIMS]))
    with pytest.raises(ValueError, match="id_feature"):
        build_model(memory=_memory())  # id tables but no id_feature
    base = build_model().base_model
    with pytest.raises(ValueError, match="not an input"):
        r2.ReLoop2Model(base, compensation=r2.ErrorCompensation(_memory()), id_feature="shop_id")
    with pytest.raises(ValueError, match="id_feature"):
        r2.ReLoop2Model(base, id_feature="item_id")  # a plain memory has no id tables
    cfg = _memory().get_config()
    assert (cfg["num_id_tables"], cfg["id_dims"]) == (J, DIMS)
    assert r2.LSHErrorMemory.from_config(cfg).total_tables == K + J


def test_wrapper_with_id_tables_exports_and_serves_the_same(tmp_path, rng):
    keras.utils.set_random_seed(0)
    base = build_model().base_model
    model = r2.ReLoop2Model(base, compensation=r2.ErrorCompensation(_memory(), compensation_weight=1.0),
                            id_feature="item_id")
    x = make_features(64, rng)
    model.set_center(x)
    logits, hidden = model.encode(x)
    assert hidden.shape[1] == 16 + DIMS
    np.testing.assert_array_equal(hidden[:, 16:].numpy(),
                                  r2.IdCode(DIMS)(tf.constant(x["item_id"].astype(str))).numpy())
    model.update_memory(x, rng.integers(0, 2, 64).astype(np.float32))
    path = ex.export_serving_model(model, tmp_path / "model")
    sess = Session(path)
    assert sess("memory_snapshot")["sketch"].shape == (K + J, 2**BITS, 3)
    y = make_features(16, rng)
    labels = rng.integers(0, 2, 16).astype(np.float32)
    sess("update_memory", **y, label=labels, sample_weight=np.ones(16, np.float32))
    model.update_memory(y, labels)
    expected = model.compensate(y)["probability"].numpy()
    np.testing.assert_allclose(sess("predict", **y)["probability"], expected, atol=1e-5)
    eager = tf.saved_model.load(str(path))
    eager.signatures["update_memory"](**{k: tf.constant(v) for k, v in y.items()},
                                      label=tf.constant(labels),
                                      sample_weight=tf.constant(np.ones(16, np.float32)))
    np.testing.assert_allclose(
        eager.signatures["predict"](**{k: tf.constant(v) for k, v in y.items()})["probability"].numpy(),
        expected, atol=1e-5)
    sess.close()
    clone = r2.ReLoop2Model.from_config(model.get_config())
    assert clone.id_feature == "item_id" and clone.memory.total_tables == K + J
    np.testing.assert_array_equal(clone.encode(y)[1].numpy()[:, 16:], model.encode(y)[1].numpy()[:, 16:])
