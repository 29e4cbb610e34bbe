import numpy as np
import pytest

import reloop2_tf as r2
from reloop2_tf._keras import tf

H3 = np.array([[0.5, -1.0, 2.0, 0.1],
               [-0.3, 0.8, -1.2, 1.5],
               [0.5, -1.0, 2.0, 0.1]], dtype=np.float32)  # row 3 duplicates row 1
Y3 = np.array([1.0, 0.0, 0.0], dtype=np.float32)
B3 = np.array([0.2, 0.6, 0.4], dtype=np.float32)


def numpy_buckets(h, projections, center):
    proj = np.einsum("bd,kdl->bkl", h - center, projections)
    return ((proj > 0).astype(np.int64) * (2 ** np.arange(projections.shape[2]))).sum(-1)


def numpy_sketch(h, y, b, w, projections, center, num_buckets):
    k = projections.shape[0]
    sketch = np.zeros((k, num_buckets, 3))
    for row, bucket_row in enumerate(numpy_buckets(h, projections, center)):
        for table, bucket in enumerate(bucket_row):
            sketch[table, bucket] += (w[row], w[row] * y[row], w[row] * b[row])
    return sketch


def tables(mem):
    """The SRP tables of a memory without id tables, as ``[K, 2**L, 3]``."""
    return mem.sketch.numpy()[:mem.num_cells].reshape(mem.num_tables, mem.num_buckets, 3)


def test_golden_bucket_ids_and_sketch():
    mem = r2.LSHErrorMemory(num_tables=3, num_bits=2, seed=7, half_life=None)
    written = mem.update(H3, Y3, B3)
    assert float(written) == 3.0
    assert mem.projections.shape == (4, 3 * 2)  # stored fused: [d, K*L]
    projections = mem.projection_matrices.numpy()
    assert projections.shape == (3, 4, 2)
    expected_projections = np.random.default_rng(7).standard_normal((3, 4, 2)).astype(np.float32)
    np.testing.assert_array_equal(projections, expected_projections)
    buckets = numpy_buckets(H3, projections, np.zeros(4))
    np.testing.assert_array_equal(mem.bucket_ids(H3).numpy(), buckets)
    assert mem.bucket_ids(H3).dtype == tf.int32
    expected = numpy_sketch(H3, Y3, B3, np.ones(3), projections, np.zeros(4), 4)
    np.testing.assert_allclose(tables(mem), expected, rtol=1e-6)
    # Rows 1 and 3 are identical: every table holds weight 2 in their bucket.
    for table, bucket in enumerate(buckets[0]):
        np.testing.assert_allclose(tables(mem)[table, bucket], [2.0, 1.0, 0.6], rtol=1e-6)


def test_center_is_subtracted_before_hashing():
    mem = r2.LSHErrorMemory(num_tables=8, num_bits=4, seed=3, half_life=None)
    mem.update(H3[:1], [1.0], [0.5])
    center = np.array([0.4, -0.5, 1.0, 0.0], np.float32)
    mem.set_center(center)
    expected = numpy_buckets(H3, mem.projection_matrices.numpy(), center)
    np.testing.assert_array_equal(mem.bucket_ids(H3).numpy(), expected)
    assert not np.array_equal(expected, numpy_buckets(H3, mem.projection_matrices.numpy(), np.zeros(4)))


def test_zero_weight_row_changes_nothing():
    mem = r2.LSHErrorMemory(num_tables=4, num_bits=3, half_life=None)
    mem.update(H3, Y3, B3)
    before = tables(mem).copy()
    written = mem.update(H3[:2], [1.0, 1.0], [0.1, 0.1], sample_weight=[0.0, 0.0])
    assert float(written) == 0.0
    np.testing.assert_array_equal(tables(mem), before)


def test_lookup_and_estimate_match_numpy(rng):
    mem = r2.LSHErrorMemory(num_tables=16, num_bits=3, seed=1, half_life=None)
    h = rng.normal(size=(200, 6)).astype(np.float32)
    y = (rng.random(200) < 0.3).astype(np.float32)
    b = rng.random(200).astype(np.float32)
    w = rng.random(200).astype(np.float32)
    mem.update(h, y, b, w)
    q = rng.normal(size=(5, 6)).astype(np.float32)
    sketch = numpy_sketch(h, y, b, w, mem.projection_matrices.numpy(), np.zeros(6), 8)
    qb = numpy_buckets(q, mem.projection_matrices.numpy(), np.zeros(6))
    stats = sketch[np.arange(16)[None, :], qb]  # [5, 16, 3]
    got = mem.lookup(q)
    np.testing.assert_allclose(got["weight"].numpy(), stats[..., 0], rtol=1e-5)
    np.testing.assert_allclose(got["label_mean"].numpy(), stats[..., 1] / stats[..., 0], rtol=1e-5)
    # tau = 1 pools all tables: sum of label sums over sum of weights.
    est = mem.estimate(q, temperature=1.0)
    np.testing.assert_allclose(est["label_mean"].numpy(),
                               stats[..., 1].sum(1) / stats[..., 0].sum(1), rtol=1e-5)
    np.testing.assert_allclose(est["support"].numpy(), stats[..., 0].sum(1) / 16, rtol=1e-5)
    # tau = inf weighs every non-empty table the same.
    est_inf = mem.estimate(q, temperature=float("inf"))
    np.testing.assert_allclose(est_inf["base_mean"].numpy(),
                               (stats[..., 2] / stats[..., 0]).mean(1), rtol=1e-5)
    # tau -> 0 keeps the densest table.
    est_0 = mem.estimate(q, temperature=1e-3)
    densest = stats[..., 0].argmax(1)
    np.testing.assert_allclose(est_0["label_mean"].numpy(),
                               stats[np.arange(5), densest, 1] / stats[np.arange(5), densest, 0],
                               rtol=1e-4)


BAD_UPDATES = [
    ("hidden", dict(hidden=np.where(np.eye(3, 4) > 0, np.nan, H3)), "hidden"),
    ("hidden_inf", dict(hidden=np.where(np.eye(3, 4) > 0, np.inf, H3)), "hidden"),
    ("labels_high", dict(labels=[1.0, 2.0, 0.0]), "labels"),
    ("labels_low", dict(labels=[1.0, -0.5, 0.0]), "labels"),
    ("labels_nan", dict(labels=[1.0, np.nan, 0.0]), "labels"),
    ("base_high", dict(base_probs=[1.5, 0.2, 0.1]), "base_probs"),
    ("weights", dict(sample_weight=[1.0, -1.0, 1.0]), "sample_weight"),
    ("rank", dict(hidden=H3[None]), "hidden"),
    ("width", dict(hidden=H3[:, :3]), "hidden"),
    ("label_rows", dict(labels=[1.0, 0.0]), "labels"),
    ("label_rank", dict(labels=np.ones((3, 2))), "labels"),
]


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("case,bad,name", BAD_UPDATES, ids=[c[0] for c in BAD_UPDATES])
def test_bad_update_names_argument_and_leaves_sketch_untouched(case, bad, name, graph):
    mem = r2.LSHErrorMemory(num_tables=4, num_bits=3, half_life=None)
    mem.update(H3, Y3, B3)
    before = mem.snapshot().numpy().copy()
    args = dict(hidden=H3, labels=Y3, base_probs=B3, sample_weight=np.ones(3, np.float32))
    args.update(bad)
    fn = tf.function(mem.update) if graph else mem.update
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)) as err:
        fn(**{k: tf.constant(v, tf.float32) for k, v in args.items()})
    assert f"`{name}`" in str(err.value)
    np.testing.assert_array_equal(mem.snapshot().numpy(), before)


def test_half_life_halves_old_rows_at_constant_cost():
    mem = r2.LSHErrorMemory(num_tables=2, num_bits=2, half_life=10)
    mem.update(H3[:1], [1.0], [0.5])
    before = tables(mem).copy()
    other = np.tile(H3[1:2], (10, 1))
    mem.update(other, np.zeros(10), np.zeros(10))
    old = mem.lookup(H3[:1])["weight"].numpy()
    new = mem.lookup(H3[1:2])["weight"].numpy()
    np.testing.assert_allclose(old, 0.5, rtol=1e-5)  # one half-life of rows later
    np.testing.assert_allclose(new, 10.0, rtol=1e-5)
    # O(1) per write: the old row's stored value was not rewritten, only the global scale moved.
    bucket = mem.bucket_ids(H3[:1]).numpy()[0]
    for table, b in enumerate(bucket):
        if b not in mem.bucket_ids(H3[1:2]).numpy()[0][table:table + 1]:
            assert tables(mem)[table, b, 0] == before[table, b, 0]
    np.testing.assert_allclose(float(mem.total_weight()), 10.5, rtol=1e-5)


def test_half_life_folds_scale_without_losing_weight():
    mem = r2.LSHErrorMemory(num_tables=2, num_bits=2, half_life=1)
    total = 0.0
    for _ in range(30):  # 0.5**30 < 1e-6: the scale is folded back into the sketch
        mem.update(H3[:1], [1.0], [0.5])
        total = total * 0.5 + 1.0
    assert float(mem.scale.numpy()) > 1e-6
    np.testing.assert_allclose(float(mem.total_weight()), total, rtol=1e-4)
    np.testing.assert_allclose(mem.lookup(H3[:1])["label_mean"].numpy(), 1.0, rtol=1e-5)


def test_reset_and_decay():
    mem = r2.LSHErrorMemory(num_tables=4, num_bits=3, half_life=None)
    mem.update(H3, Y3, B3)
    mem.decay(0.25)
    np.testing.assert_allclose(float(mem.total_weight()), 0.75, rtol=1e-6)
    np.testing.assert_allclose(mem.lookup(H3)["label_mean"].numpy()[1], 0.0)
    with pytest.raises(ValueError, match="`factor`"):
        mem.decay(1.5)
    mem.reset()
    assert float(mem.total_weight()) == 0.0
    assert not mem.snapshot().numpy().any()


def test_merge_equals_memory_that_saw_both_streams(rng):
    h1, h2 = rng.normal(size=(50, 5)), rng.normal(size=(70, 5))
    y1, y2 = rng.random(50) < 0.5, rng.random(70) < 0.5
    b1, b2 = rng.random(50), rng.random(70)
    a, b, both = (r2.LSHErrorMemory(num_tables=8, num_bits=4, seed=5, half_life=None) for _ in range(3))
    a.update(h1, y1, b1)
    b.update(h2, y2, b2)
    both.update(h1, y1, b1)
    both.update(h2, y2, b2)
    a.merge(b)
    np.testing.assert_allclose(a.snapshot().numpy(), both.snapshot().numpy(), rtol=1e-5)
    c = r2.LSHErrorMemory(num_tables=8, num_bits=4, seed=6, half_life=None)
    c.update(h1, y1, b1)
    with pytest.raises(ValueError, match="projections"):
        a.merge(c)


def test_snapshot_restore_round_trip_and_bad_state(rng):
    a = r2.LSHErrorMemory(num_tables=4, num_bits=3, half_life=7)
    a.update(rng.normal(size=(20, 5)), rng.random(20) < 0.5, rng.random(20))
    b = r2.LSHErrorMemory(num_tables=4, num_bits=3, half_life=7)
    b.update(np.zeros((1, 5)), [0.0], [0.0], sample_weight=[0.0])
    b.restore(a.snapshot())
    q = rng.normal(size=(4, 5))
    for key in ("weight", "label_mean", "base_mean"):
        np.testing.assert_allclose(b.lookup(q)[key].numpy(), a.lookup(q)[key].numpy(), rtol=1e-5)
    before = b.snapshot().numpy().copy()
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="`state`"):
        b.restore(np.zeros((4 * 9 + 1, 3)))
    bad = before.copy()
    bad[0, 0] = np.nan
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="`state`"):
        b.restore(bad)
    np.testing.assert_array_equal(b.snapshot().numpy(), before)


def test_footprint_is_constant_in_rows_written(rng):
    mem = r2.LSHErrorMemory(num_tables=8, num_bits=6, half_life=None)
    mem.update(rng.normal(size=(10, 4)), np.ones(10), np.ones(10) * 0.5)
    sizes = [v.numpy().nbytes for v in mem.weights]
    mem.update(rng.normal(size=(5000, 4)), np.ones(5000), np.ones(5000) * 0.5)
    assert [v.numpy().nbytes for v in mem.weights] == sizes
    assert mem.num_cells == 8 * 64 and mem.sketch.shape == (mem.num_state_rows, 3)


@pytest.mark.parametrize("kwargs,name", [
    (dict(num_tables=-1), "num_tables"), (dict(num_bits=0), "num_bits"),
    (dict(num_tables=0), "num_tables"), (dict(id_bits=0), "id_bits"),
    (dict(id_groups="item_id"), "id_groups"), (dict(id_groups=["a", "a"]), "id_groups"),
    (dict(num_bits=40), "num_bits"), (dict(half_life=-1.0), "half_life"),
])
def test_bad_config(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        r2.LSHErrorMemory(**kwargs)


def test_each_id_table_can_have_its_own_size(rng):
    groups = ["item", ("user", "genre"), ("user", "item:popularity")]
    bits = {"item": 9, "user*genre": 12, "user*item:popularity": 7, "user": 6}
    mem = r2.LSHErrorMemory(num_tables=2, num_bits=3, id_groups=groups, id_bits=bits)
    # SRP tables, the listed groups, the cross's first feature, the item's recent table.
    assert mem.table_sizes == (8, 8, 2**9, 2**12, 2**7, 2**6, 2**9)
    assert mem.id_bits == bits and mem.layout()["id_bits"] == bits
    hidden = rng.normal(size=(300, 4)).astype(np.float32)
    ids = {"item": rng.integers(0, 50, 300), "user": rng.integers(0, 400, 300),
           "genre": rng.choice(["x", "y", "z"], 300)}
    keys = mem.keys(hidden, ids).numpy()
    assert (keys[:, 2:].max(axis=0) < np.array(mem.table_sizes[2:])).all()
    # A table's bucket is the top bits of the same key: the one-size memory's bucket, shifted.
    wide = r2.LSHErrorMemory(num_tables=2, num_bits=3, id_groups=groups, id_bits=12)
    wide_keys = wide.keys(hidden, ids).numpy()
    for column, b in zip(range(2, 7), (9, 12, 7, 6, 9)):
        if column != 4:  # the popularity bucket reads the item table's counts (both empty: 0)
            np.testing.assert_array_equal(keys[:, column], wide_keys[:, column] >> (12 - b))
    # Writes by keys and by features land in the same cells; the config round-trips.
    labels, base = rng.integers(0, 2, 300).astype(np.float32), np.full(300, 0.4, np.float32)
    mem.update(hidden, labels, base, ids=ids)
    twin = r2.LSHErrorMemory.from_config(mem.get_config())
    twin.build(tf.TensorShape([None, 4]))
    twin.update_by_keys(keys, labels, base)
    np.testing.assert_array_equal(twin.snapshot().numpy(), mem.snapshot().numpy())
    # The same size everywhere is the one-int layout of earlier releases.
    same = r2.LSHErrorMemory(num_tables=2, num_bits=3, id_groups=groups,
                             id_bits=dict.fromkeys(bits, 12))
    assert same.id_bits == 12 and same.layout() == wide.layout()
    # Memories of other sizes do not merge.
    wide.build(tf.TensorShape([None, 4]))
    with pytest.raises(ValueError, match="id_bits"):
        mem.merge(wide)
    with pytest.raises(ValueError, match=r"missing \['user'\], unknown \['users'\]"):
        r2.LSHErrorMemory(id_groups=groups, id_bits={
            "item": 9, "user*genre": 12, "user*item:popularity": 7, "users": 6})
    with pytest.raises(ValueError, match="`id_bits`"):
        r2.LSHErrorMemory(id_groups=groups, id_bits={**bits, "item": 25})


def test_id_tables_key_rows_by_identity_and_crosses_get_their_first_feature(rng):
    mem = r2.LSHErrorMemory(num_tables=2, num_bits=3, id_groups=["item", ("user", "genre")],
                            id_bits=10, half_life=None)
    # The cross's first feature gets a table of its own: it is what the cross is centred on;
    # the single-feature group gets a recent table too (last), keyed like its own.
    assert mem.id_tables == (("item",), ("user", "genre"), ("user",), ("item",))
    assert mem.recent_groups == (("item",),)
    assert mem.id_features == ("genre", "item", "user")
    hidden = rng.normal(size=(6, 4)).astype(np.float32)
    ids = {"item": ["a", "b", "a", "c", "a", "b"], "user": [1, 2, 1, 2, 3, 3],
           "genre": ["x", "x", "x", "y", "y", "x"]}
    keys = mem.keys(hidden, ids).numpy()
    assert keys.shape == (6, 6) and keys.dtype == np.int32
    np.testing.assert_array_equal(keys[:, 5], keys[:, 2])
    assert keys[0, 2] == keys[2, 2] == keys[4, 2] and keys[0, 2] != keys[1, 2]  # item "a"
    assert keys[0, 3] == keys[2, 3] and keys[0, 3] != keys[4, 3]             # (1, x) vs (3, y)
    np.testing.assert_array_equal(keys[:, :2], mem.bucket_ids(hidden).numpy())  # SRP first
    # Integer ids hash like their decimal strings; the seed changes every id bucket.
    same = mem.keys(hidden, {**ids, "user": ["1", "2", "1", "2", "3", "3"]}).numpy()
    np.testing.assert_array_equal(same, keys)
    other = r2.LSHErrorMemory(num_tables=2, num_bits=3, id_groups=["item", ("user", "genre")],
                              id_bits=10, seed=1)
    assert (other.keys(hidden, ids).numpy()[:, 2:] != keys[:, 2:]).any()
    # A write lands in every table; by keys it is the same write.
    mem.update(hidden, np.ones(6), np.full(6, 0.5), ids=ids)
    twin = r2.LSHErrorMemory.from_config(mem.get_config())
    twin.build(tf.TensorShape([None, 4]))
    twin.update_by_keys(keys, np.ones(6), np.full(6, 0.5))
    np.testing.assert_array_equal(twin.snapshot().numpy(), mem.snapshot().numpy())
    weights = mem.lookup(hidden, ids)["weight"].numpy()
    np.testing.assert_array_equal(weights[:, 2], [3, 2, 3, 1, 3, 2])  # rows per item
    with pytest.raises(ValueError, match="genre"):
        mem.keys(hidden, {"item": ids["item"], "user": ids["user"]})
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="memory_keys"):
        twin.update_by_keys(np.full((1, 6), 1024), [1.0], [0.5])  # beyond a 2**10 table
    np.testing.assert_array_equal(twin.snapshot().numpy(), mem.snapshot().numpy())


def test_a_popularity_cross_keys_rows_by_the_items_count_when_they_are_read(rng):
    mem = r2.LSHErrorMemory(num_tables=1, num_bits=2, id_bits=12, half_life=None,
                            id_groups=["item", ("user", "item:popularity")])
    assert mem.id_features == ("item", "user")  # the bucket is read off the memory, not sent
    assert mem.id_tables[:3] == (("item",), ("user", "item:popularity"), ("user",))
    hidden = np.zeros((1, 2), np.float32)
    # Item counts 0, 1, 2, 3, 6, 7 -> buckets floor(log2(1 + c)) = 0, 1, 1, 2, 2, 3.
    counts = {"i0": 0, "i1": 1, "i2": 2, "i3": 3, "i6": 6, "i7": 7}
    items = [i for i, c in counts.items() for _ in range(c)]
    mem.update(np.zeros((len(items), 2), np.float32), np.zeros(len(items)), np.zeros(len(items)),
               ids={"item": np.array(items), "user": np.full(len(items), "someone")})
    probe = {"item": np.array(list(counts)), "user": np.full(6, "u")}
    cross = mem.keys(np.zeros((6, 2), np.float32), probe).numpy()[:, 2]
    assert cross[1] == cross[2] and cross[3] == cross[4]
    assert len({cross[0], cross[1], cross[3], cross[5]}) == 4
    # Another user's cells are another user's; a write lands in the bucket it was read from.
    other = mem.keys(np.zeros((6, 2), np.float32), {**probe, "user": np.full(6, "v")}).numpy()
    assert not set(other[:, 2]) & set(cross)
    keys = mem.keys(hidden, {"item": np.array(["i1"]), "user": np.array(["u"])})
    mem.update_by_keys(keys, [1.0], [0.5])
    stats = mem.lookup_keys(keys).numpy()[0]
    np.testing.assert_allclose(stats[2], [1.0, 1.0, 0.5])  # the (u, bucket 1) cell
    # By features the same row now reads count 2 for i1: still bucket 1, the same cell.
    np.testing.assert_array_equal(mem.keys(hidden, {"item": np.array(["i1"]),
                                                    "user": np.array(["u"])}).numpy(), keys)
    # Past 2**16 rows the bucket stops at 15.
    mem.update(np.zeros((70_000, 2), np.float32), np.zeros(70_000), np.zeros(70_000),
               ids={"item": np.full(70_000, "hot"), "user": np.full(70_000, "x")})
    big = mem.keys(np.zeros((2, 2), np.float32),
                   {"item": np.array(["hot", "i7"]), "user": np.array(["u", "u"])}).numpy()
    mem.update(np.zeros((70_000, 2), np.float32), np.zeros(70_000), np.zeros(70_000),
               ids={"item": np.full(70_000, "hot"), "user": np.full(70_000, "x")})
    again = mem.keys(np.zeros((1, 2), np.float32),
                     {"item": np.array(["hot"]), "user": np.array(["u"])}).numpy()
    assert again[0, 2] == big[0, 2] != big[1, 2]
    twin = r2.LSHErrorMemory.from_config(mem.get_config())
    assert twin.id_tables == mem.id_tables and twin.layout() == mem.layout()


@pytest.mark.parametrize("groups,match", [
    ([("item:popularity", "user"), "item"], "cannot be the first feature"),
    (["user", ("user", "item:popularity")], "list it in `id_groups`"),
])
def test_a_popularity_cross_needs_its_group_and_a_first_feature(groups, match):
    with pytest.raises(ValueError, match=match):
        r2.LSHErrorMemory(id_groups=groups)


def test_combiner_sums_forget_at_their_own_half_life_and_tables_at_theirs(rng):
    mem = r2.LSHErrorMemory(num_tables=2, num_bits=4, id_groups=["item"], half_life=1000.0,
                            trust_half_life=250.0)
    comp = r2.ErrorCompensation(mem)
    ids = {"item": rng.integers(0, 20, 300).astype(str)}
    hidden = rng.normal(size=(300, 3)).astype(np.float32)
    comp.update_memory(rng.normal(size=300).astype(np.float32), hidden,
                       (rng.random(300) < 0.5).astype(np.float32), ids=ids)
    curvature, moment = (t.numpy() for t in mem.trust_sums())
    weight, trust = float(mem.total_weight()), comp.trust().numpy()
    assert np.abs(moment).sum() > 0
    # 500 more rows that write the tables only: tables keep 0.5 ** (500 / 1000), sums 0.5 ** 2.
    more = {"item": rng.integers(0, 20, 500).astype(str)}
    comp.update_memory(np.zeros(500, np.float32), rng.normal(size=(500, 3)).astype(np.float32),
                       np.ones(500, np.float32), ids=more, learn_trust=False)
    np.testing.assert_allclose(float(mem.total_weight()), weight * 0.5 ** 0.5 + 500, rtol=1e-5)
    after_c, after_m = (t.numpy() for t in mem.trust_sums())
    np.testing.assert_allclose(after_c, curvature * 0.25, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(after_m, moment * 0.25, rtol=1e-5, atol=1e-7)
    assert not np.allclose(comp.trust().numpy(), trust)  # less evidence: solved again, smaller
    same = r2.LSHErrorMemory(id_groups=["item"], half_life=1000.0, trust_half_life=None)
    assert same.get_config()["trust_half_life"] is None
    assert r2.LSHErrorMemory.from_config(mem.get_config()).trust_half_life == 250.0
    for bad in (0.0, -1.0, float("inf"), "20k", True):
        with pytest.raises(ValueError, match="trust_half_life"):
            r2.LSHErrorMemory(trust_half_life=bad)


def test_totals_row_sums_every_write_and_moves_with_snapshot_merge_and_forgetting(rng):
    # No SRP tables: the level used to be summed from the first 2**id_bits id table per read.
    mem = r2.LSHErrorMemory(num_tables=0, id_groups=["item"], id_bits=12, half_life=None)
    hidden = rng.normal(size=(300, 4)).astype(np.float32)
    ids = {"item": rng.integers(0, 50, 300).astype(str)}
    labels = rng.integers(0, 2, 300).astype(np.float32)
    base = rng.uniform(0.1, 0.9, 300).astype(np.float32)
    weights = rng.choice([0.0, 1.0, 2.5], 300).astype(np.float32)
    mem.update(hidden, labels, base, weights, ids=ids)
    expected = [weights.sum(), (weights * labels).sum(), (weights * base).sum()]
    np.testing.assert_allclose(mem.totals().numpy(), expected, rtol=1e-5)
    state = mem.snapshot().numpy()
    np.testing.assert_allclose(state[mem.totals_row], expected, rtol=1e-5)
    np.testing.assert_allclose(state[:2**12].sum(0), expected, rtol=1e-4)  # the item table
    mem.merge(state)
    np.testing.assert_allclose(mem.totals().numpy(), 2 * np.array(expected), rtol=1e-5)
    mem.decay(0.25)
    np.testing.assert_allclose(mem.totals().numpy(), 0.5 * np.array(expected), rtol=1e-5)
    mem.restore(state)
    np.testing.assert_allclose(mem.totals().numpy(), expected, rtol=1e-5)
    # A state whose totals row holds a negative weight is rejected, and nothing changes.
    bad = state.copy()
    bad[mem.totals_row, 0] = -1.0
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="negative"):
        mem.restore(bad)
    np.testing.assert_array_equal(mem.snapshot().numpy(), state)


def _features_by_hand(mem, stats, totals, recent_totals, base, n):
    """``trust_features`` written out from the docstring, in NumPy: ``stats`` ``[B, T, 3]`` true
    units (``lookup_keys``), the totals rows, base probabilities ``[B]``, ``prior_count``."""
    w, y, b = (stats[..., i].astype(np.float64) for i in range(3))
    level = (totals[2] + 0.5) / (totals[0] + 1.0)
    scale = 1.0 / (4.0 * level * (1.0 - level))  # residuals in logit units at the level,
    n = n * scale  # their shrinkage n rows' worth of information there
    rho = [(t[1] - t[2]) / (t[2] + 1.0) for t in (totals, recent_totals)]
    clock = np.array([0] * mem._first_recent + [1] * len(mem.recent_groups))
    r = y - b * (1.0 + np.array(rho)[clock])
    k, cols = mem.num_tables, []
    singles = [k + i for i, p in enumerate(mem._parents) if p < 0]
    for m in (n, 10 * n):
        if k:
            cols.append(r[:, :k].sum(1) / (w[:, :k].sum(1) + k * m + 1e-12))
        for i, p in enumerate(mem._parents):
            g = k + i
            pc, pr = (w[:, k + p], r[:, k + p]) if p >= 0 else (0.0, 0.0)
            cols.append((r[:, g] - w[:, g] * pr / (pc + m + 1e-12)) / (w[:, g] + m + 1e-12))
        cols += [(b[:, g] - w[:, g] * base) / (w[:, g] + m + 1e-12) for g in singles]
    for j in range(len(mem.recent_groups)):
        t = mem._first_recent + j
        cols.append(r[:, t] / (w[:, t] + n + 1e-12))
    cols = [col * scale for col in cols]
    cols.append(np.log(base) - np.log1p(-base) - np.log(level / (1 - level)))
    cols.append(np.ones_like(base))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("bits", [3, 24])
def test_the_fused_read_equals_the_features_written_out(rng, bits):
    # Crosses, a recent table, both clocks away from 1 and a shifted stream: every part of
    # `read_weights` is exercised, against the features computed from the cells by hand.
    mem = r2.LSHErrorMemory(num_tables=3, num_bits=min(bits, 8), id_bits=bits,
                            id_groups=["item", ("user", "genre"), ("item", "genre"),
                                       ("user", "item:popularity")],
                            half_life=500.0, recent_half_life=40.0)
    for step in range(6):
        hidden = rng.normal(size=(64, 4)).astype(np.float32)
        ids = {"item": rng.integers(0, 9, 64).astype(str), "user": rng.integers(0, 5, 64),
               "genre": rng.choice(["x", "y"], 64)}
        rate = 0.2 if step < 3 else 0.6  # the stream's rate moves: rho is not 0
        mem.update(hidden, (rng.random(64) < rate).astype(np.float32), np.full(64, 0.3), ids=ids)
    assert 0.0 < mem.recent_scale.numpy() < mem.scale.numpy() < 1.0
    keys = mem.keys(hidden, ids).numpy()
    assert keys.max() > 2**20 if bits == 24 else keys.max() < 2**3  # float32-exact up to 2**24
    big = np.array([[2**24 - 1, 0, 7], [1, 2**24 - 2, 2**23 + 1]], np.int32)
    np.testing.assert_array_equal(r2.layers.id_keys.transpose_keys(big).numpy(), big.T)
    base = rng.uniform(0.05, 0.95, 64).astype(np.float32)
    stats = mem.lookup_keys(keys).numpy()
    for n in (2.0, 0.0):
        expected = _features_by_hand(mem, stats, mem.totals().numpy(), mem.recent_totals().numpy(),
                                     base.astype(np.float64), n)
        got = mem.trust_features(keys, base, n).numpy()
        assert got.shape == (64, mem.num_trust_features)
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)
    support = mem.read(keys, base, 2.0)[1].numpy()
    np.testing.assert_allclose(support, stats[..., 0].mean(1), rtol=1e-5)
    # A served read is the trust times these features, by keys and by hidden vectors and ids
    # (whose id tables are read apart from the SRP tables: `serve`).
    trust = rng.normal(size=mem.num_trust_features).astype(np.float32)
    mem.trust_solution.assign(trust)
    expected = _features_by_hand(mem, stats, mem.totals().numpy(), mem.recent_totals().numpy(),
                                 base.astype(np.float64), 2.0) @ trust
    correction, by_keys_support = (t.numpy() for t in mem.correction(keys, base, 2.0))
    np.testing.assert_allclose(correction, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(by_keys_support, support, rtol=1e-6)
    served = {n: t.numpy() for n, t in mem.serve(hidden, mem.read_ids(ids), base, 2.0).items()}
    np.testing.assert_array_equal(served["memory_keys"], keys)
    # The same sums, added in another order (the id tables' read-outs first).
    np.testing.assert_allclose(served["correction"], correction, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(served["support"], support, rtol=1e-6)
    # An emptied memory reads as an empty one: no stale scale, shift or level.
    mem.reset()
    empty = mem.trust_features(keys, base, 2.0).numpy()
    np.testing.assert_array_equal(empty[:, :-2], 0.0)
    np.testing.assert_allclose(empty[:, -2], np.log(base) - np.log1p(-base), rtol=1e-5)  # level 0


def test_recent_tables_forget_at_their_own_half_life_through_snapshot_merge_and_folds(rng):
    mem = r2.LSHErrorMemory(num_tables=1, num_bits=2, id_groups=["item"], id_bits=4,
                            half_life=1000.0, recent_half_life=10.0)
    assert mem.recent_groups == (("item",),) and mem.layout()["recent_tables"] == 1
    hidden = np.zeros((1, 3), np.float32)
    ids = {"item": ["a"]}
    # One row per write: after n further rows a row weighs 0.5 ** (n / half-life) in its table.
    # 400 rows take the recent scale through 0.5 ** 40 < 1e-6: the state is folded meanwhile.
    labels = (np.arange(400) >= 390).astype(np.float32)  # the last 10 rows are positive
    for y in labels:
        mem.update(hidden, [y], [0.5], ids=ids)
    ages = np.arange(399, -1, -1)
    weight = mem.lookup(hidden, ids)["weight"].numpy()[0]
    long_w, recent_w = (0.5 ** (ages / h) for h in (1000.0, 10.0))
    np.testing.assert_allclose(weight[1:], [long_w.sum(), recent_w.sum()], rtol=1e-4)
    label_mean = mem.lookup(hidden, ids)["label_mean"].numpy()[0]
    np.testing.assert_allclose(label_mean[1:], [(long_w * labels).sum() / long_w.sum(),
                                                (recent_w * labels).sum() / recent_w.sum()],
                               rtol=1e-4)
    assert label_mean[2] > 0.5 > label_mean[1]  # the recent table has seen the shift
    # The recent clock came due and folded its own rows only: the tables' clock kept running.
    np.testing.assert_allclose(mem.scale.numpy(), 0.5 ** (400 / 1000.0), rtol=1e-5)
    assert 1.0 >= mem.recent_scale.numpy() >= 1e-6  # unfolded it would be 0.5 ** 40
    # Snapshot and restore keep true units at both scales; merge adds in true units.
    state = mem.snapshot().numpy()
    twin = r2.LSHErrorMemory.from_config(mem.get_config())
    assert twin.recent_half_life == 10.0 and twin.recent_groups == (("item",),)
    twin.build(tf.TensorShape([None, 3]))
    twin.restore(state)
    np.testing.assert_allclose(twin.snapshot().numpy(), state, rtol=1e-6)
    mem.merge(state)
    np.testing.assert_allclose(mem.snapshot().numpy(), 2 * state, rtol=1e-5, atol=1e-30)
    mem.decay(0.5)
    np.testing.assert_allclose(mem.snapshot().numpy(), state, rtol=1e-5, atol=1e-30)
    # The totals row and the combiner's sums stay at the tables' scale.
    np.testing.assert_allclose(mem.totals().numpy()[0], long_w.sum(), rtol=1e-4)
    none = r2.LSHErrorMemory(id_groups=["item"], recent_groups=())
    assert none.id_tables == (("item",),) and none.layout()["recent_tables"] == 0
    with pytest.raises(ValueError, match="`recent_half_life`"):
        r2.LSHErrorMemory(id_groups=["item"], recent_half_life=0.0)
    with pytest.raises(ValueError, match="`recent_half_life`"):
        r2.LSHErrorMemory(id_groups=["item"], recent_half_life=None)


def test_pooled_groups_name_which_groups_pool_the_base_and_nothing_else_changes(rng):
    # Two single-feature groups and a cross; the user alone is pooled. Its reads are the
    # default memory's reads less the item's two pooling columns, every other value equal.
    groups = ["item", "user", ("user", "genre")]
    full = r2.LSHErrorMemory(num_tables=2, num_bits=3, id_bits=6, id_groups=groups)
    part = r2.LSHErrorMemory(num_tables=2, num_bits=3, id_bits=6, id_groups=groups,
                             pooled_groups=["user"])
    assert full.pooled_groups == (("item",), ("user",)) and part.pooled_groups == (("user",),)
    assert full.num_trust_features == part.num_trust_features + 2
    for step in range(3):
        hidden = rng.normal(size=(32, 4)).astype(np.float32)
        ids = {"item": rng.integers(0, 5, 32).astype(str), "user": rng.integers(0, 4, 32),
               "genre": rng.choice(["x", "y"], 32)}
        labels = (rng.random(32) < 0.4).astype(np.float32)
        base = rng.uniform(0.1, 0.9, 32).astype(np.float32)
        for mem in (full, part):
            mem.update(hidden, labels, base, ids=ids)
    keys = full.keys(hidden, ids)
    np.testing.assert_array_equal(keys.numpy(), part.keys(hidden, ids).numpy())
    got, want = (m.trust_features(keys, base, 2.0).numpy() for m in (part, full))
    # Per shrinkage: srp, 3 groups, then the pooling of item and user; the item's is left out.
    item_pooling = [1 + 3, 6 + 1 + 3]
    np.testing.assert_array_equal(got, np.delete(want, item_pooling, axis=1))
    assert np.abs(want[:, item_pooling]).max() > 0  # what was left out is not nothing
    # The setting is kept by the config and in the layout: a memory that pools otherwise
    # has other combiner sums, so neither a merge nor a restore takes them.
    twin = r2.LSHErrorMemory.from_config(part.get_config())
    assert twin.pooled_groups == (("user",),) and twin.layout() == part.layout()
    assert part.layout()["pooled_groups"] == [["user"]] != full.layout()["pooled_groups"]
    before = part.snapshot().numpy()
    with pytest.raises(ValueError, match="same num_tables"):
        part.merge(full)
    with pytest.raises(ValueError):
        part.restore(full.snapshot())
    np.testing.assert_array_equal(part.snapshot().numpy(), before)
    none = r2.LSHErrorMemory(id_groups=groups, pooled_groups=())
    assert none.num_trust_features == full.num_trust_features - 4
    for bad in (["genre"], [("user", "genre")]):
        with pytest.raises(ValueError, match="`pooled_groups` should name single-feature"):
            r2.LSHErrorMemory(id_groups=groups, pooled_groups=bad)


def test_every_group_reads_an_items_shift_net_of_the_whole_streams(rng):
    mem = r2.LSHErrorMemory(num_tables=0, id_groups=["item"], id_bits=8, half_life=None,
                            recent_half_life=1e6)
    n = 6000
    items = rng.integers(0, 20, n).astype(str)
    base = rng.uniform(0.2, 0.8, n).astype(np.float32)
    # Every label thinned alike (a base-rate shift): the rate is half the base model's.
    thinned = (rng.random(n) < 0.5 * base).astype(np.float32)
    mem.update(np.zeros((n, 1), np.float32), thinned, base, ids={"item": items})
    stream = mem.recent_totals().numpy()
    np.testing.assert_allclose(stream, [n, thinned.sum(), base.sum()], rtol=1e-4)
    np.testing.assert_allclose(mem.totals().numpy(), stream, rtol=1e-4)  # no forgetting yet
    probe = {"item": np.array([str(i) for i in range(20)])}
    keys = mem.keys(np.zeros((20, 1), np.float32), probe)
    features = mem.trust_features(keys, tf.fill([20], 0.5), 2.0).numpy()
    recent = features[:, mem.num_trust_features - 3]  # then the base logit and the bias
    item = features[:, 0]  # the item's long residual, at the first shrinkage
    raw = [((thinned - base)[items == str(i)].sum() / ((items == str(i)).sum() + 2.0))
           for i in range(20)]
    assert np.mean(raw) < -0.2  # every item's raw residual looks worse ...
    assert np.abs(item).max() < 0.06  # ... but not against the stream's shift, in the long table
    assert np.abs(recent).max() < 0.06  # and in the recent one
    # A shift that hits one item moves its columns, and only its.
    hit = np.full(300, "3")
    mem.update(np.zeros((300, 1), np.float32), np.ones(300, np.float32), np.full(300, 0.3, np.float32),
               ids={"item": hit})
    features = mem.trust_features(keys, tf.fill([20], 0.5), 2.0).numpy()
    for column in (features[:, 0], features[:, mem.num_trust_features - 3]):
        assert column[3] > 0.3 and np.abs(np.delete(column, 3)).max() < 0.1, column


def test_a_large_write_adds_up_to_the_same_sketch_every_time(rng):
    # 24,000 rows, some in a few hot buckets (and every row in the totals row): TensorFlow's by-row
    # ResourceScatterAdd spreads an update this large over threads, and a cell's sum then
    # changes from run to run. The memory's sums must not: replays by keys and by features are
    # compared bit for bit, and a snapshot must not depend on thread timing.
    n = 24000
    ids = {name: rng.integers(0, 20 if name == "a" else 10**6, n).astype(str) for name in "abcdef"}
    hidden = rng.normal(size=(n, 4)).astype(np.float32)
    labels = (rng.random(n) < 0.3).astype(np.float32)
    base = rng.random(n).astype(np.float32)
    snapshots = []
    for _ in range(3):
        mem = r2.LSHErrorMemory(num_tables=1, num_bits=4, id_groups=list("abcdef"), id_bits=20,
                                recent_groups=())
        mem.update(hidden, labels, base, ids=ids)  # below the dense-add batch: one scatter
        snapshots.append(mem.snapshot().numpy())
    for snapshot in snapshots[1:]:
        np.testing.assert_array_equal(snapshot, snapshots[0])


def test_a_scattered_write_and_a_dense_one_add_up_to_the_same_bits(rng):
    # Small batches scatter, large ones add a dense per-cell sum; which one runs depends on the
    # batch size alone, so a replay cut into other batches must not change a bit. Both sum a
    # cell's rows in row order and add the sum once.
    mem = r2.LSHErrorMemory(num_tables=2, num_bits=4, id_groups=["a"], id_bits=6, half_life=None,
                            recent_groups=())
    mem.update(rng.normal(size=(64, 4)).astype(np.float32), (rng.random(64) < 0.3).astype(
        np.float32), rng.random(64).astype(np.float32), ids={"a": rng.integers(0, 9, 64)})
    before = mem.snapshot().numpy()
    cells = tf.constant(rng.integers(0, 40, 3000).astype(np.int32))  # ~75 rows per cell
    scales = rng.choice([1e-3, 1.0, 1e3], (3000, 1))  # sums whose order shows in their bits
    values = tf.constant((rng.random((3000, 3)) * scales).astype(np.float32))
    mem._scatter(cells, values)
    scattered = mem.snapshot().numpy()
    mem.restore(before)
    np.testing.assert_array_equal(mem.snapshot().numpy(), before)
    mem._add_dense(cells, values)
    np.testing.assert_array_equal(mem.snapshot().numpy(), scattered)
    assert not np.array_equal(scattered, before)


@pytest.mark.parametrize("tables,groups", [(2, []), (0, ["item"]), (2, ["item", ("user", "item")])])
def test_a_served_read_is_the_trust_times_the_features(rng, tables, groups):
    # SRP tables only, id tables only, both: `serve` joins the two parts, or has only one.
    mem = r2.LSHErrorMemory(num_tables=tables, num_bits=3, id_groups=groups, id_bits=4)
    hidden = rng.normal(size=(16, 4)).astype(np.float32)
    ids = {"item": rng.integers(0, 5, 16), "user": rng.integers(0, 3, 16)} if groups else None
    mem.update(hidden, (rng.random(16) < 0.4).astype(np.float32), np.full(16, 0.3), ids=ids)
    trust = rng.normal(size=mem.num_trust_features).astype(np.float32)
    mem.trust_solution.assign(trust)
    base = rng.uniform(0.05, 0.95, 16).astype(np.float32)
    served = tf.function(lambda h, b: mem.serve(h, mem.read_ids(ids), b, 2.0))(hidden, base)
    keys = mem.keys(hidden, ids)
    np.testing.assert_array_equal(served["memory_keys"].numpy(), keys.numpy())
    np.testing.assert_allclose(served["correction"].numpy(),
                               mem.trust_features(keys, base, 2.0).numpy() @ trust,
                               rtol=1e-5, atol=1e-6)


def test_a_served_read_rejects_ids_for_other_rows_than_hidden(rng):
    mem = r2.LSHErrorMemory(num_tables=2, num_bits=3, id_groups=["item"], id_bits=4)
    mem.update(np.zeros((2, 4), np.float32), [1.0, 0.0], [0.5, 0.5], ids={"item": ["a", "b"]})
    # Unknown row counts, so that the check runs in the graph, after the id tables' read.
    serve = tf.function(lambda h, i, b: mem.serve(h, mem.read_ids({"item": i}), b, 2.0),
                        input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None], tf.string),
                                         tf.TensorSpec([None])])
    with pytest.raises(tf.errors.InvalidArgumentError, match="`ids` must have one id per row"):
        serve(np.zeros((3, 4), np.float32), tf.constant(["a", "b"]), np.full(3, 0.5, np.float32))


def test_a_multi_valued_cross_keys_a_cell_per_token_and_reads_them_pooled():
    # ("user", "genres:each"): one cell per (user, token), the first 4 tokens of "a|b|...",
    # spaces stripped; the group reads (sum (y - b) - (sum c) r_user) / (sum c + n) over them.
    mem = r2.LSHErrorMemory(num_tables=1, num_bits=2, id_bits=10, half_life=None,
                            recent_groups=(), id_groups=[("user", "genres:each")])
    assert mem.id_features == ("genres", "user") and mem.num_key_columns == 1 + 4 + 1
    ids = {"user": np.array(["u", "u", "u", "v"]),
           "genres": np.array(["a|b", "b", " a| b |c|d|e", "a"])}
    hidden = np.zeros((4, 2), np.float32)
    labels, base = np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.5, 0.2, 0.4, 0.3])
    mem.update(hidden, labels, base, ids=ids)
    keys = mem.keys(hidden, ids).numpy()
    cross = keys[:, 1:5]
    # u x a, u x b are the same cells in every row of u; v x a is another; empty slots key 0.
    assert cross[0, 0] == cross[2, 0] and cross[0, 1] == cross[1, 0] == cross[2, 1]
    assert cross[3, 0] != cross[0, 0] and len({*cross[2]}) == 4 and 0 not in cross[2]
    np.testing.assert_array_equal(cross[1, 1:], 0)
    np.testing.assert_array_equal(cross[3, 1:], 0)
    # "e", the fifth token, keys nothing: the row equals "a|b|c|d" written alone.
    short = mem.keys(hidden[:1], {"user": np.array(["u"]), "genres": np.array(["a|b|c|d"])})
    np.testing.assert_array_equal(short.numpy()[0], keys[2])
    stats = mem.lookup_keys(keys).numpy()  # [B, T, 3]
    np.testing.assert_allclose(stats[0, 2], [3.0, 2.0, 1.1])  # u x b: rows 0, 1 and 2
    np.testing.assert_allclose(stats[0, 1], [2.0, 2.0, 0.9])  # u x a: rows 0 and 2
    np.testing.assert_allclose(mem.snapshot().numpy()[mem.table_sizes[0]], 0.0)  # bucket 0
    np.testing.assert_allclose(mem.totals().numpy(), [4.0, 3.0, 1.4])  # every row once
    # The read, by hand: the cross pooled over the row's tokens, net of the stream's shift,
    # centred on the user's own residual, at n = 2 (and 20) rows' worth of information, in
    # logit units at the level.
    rho = (3.0 - 1.4) / (1.4 + 1.0)
    level = (1.4 + 0.5) / (4.0 + 1.0)
    scale = 1.0 / (4 * level * (1 - level))
    features = mem.trust_features(keys, base, 2.0).numpy() / scale
    for row in range(4):
        c, y, b = stats[row, 1:5].sum(0)
        cu, yu, bu = stats[row, 5]
        for column, n in ((1, 2.0 * scale), (3, 20.0 * scale)):
            r_user = (yu - (1 + rho) * bu) / (cu + n)
            np.testing.assert_allclose(features[row, column],
                                       (y - (1 + rho) * b - c * r_user) / (c + n), rtol=1e-5)


def test_an_empty_token_slot_is_never_written_and_bad_groups_are_refused(rng):
    mem = r2.LSHErrorMemory(num_tables=2, num_bits=3, id_bits=8, half_life=None,
                            recent_groups=(), id_groups=["item", ("user", "tags:each")])
    n = 500
    ids = {"item": rng.integers(0, 30, n).astype(str), "user": rng.integers(0, 9, n).astype(str),
           "tags": rng.choice(["x", "y|z", "", "x||y"], n)}
    hidden = rng.normal(size=(n, 4)).astype(np.float32)
    mem.update(hidden, rng.random(n) < 0.3, np.full(n, 0.3), ids=ids)
    keys = mem.keys(hidden, ids).numpy()
    start = mem.table_sizes[0] * 2 + mem.table_sizes[2]  # the (user, tags) table's cells
    assert mem.id_tables[1] == ("user", "tags:each")
    np.testing.assert_array_equal(mem.snapshot().numpy()[start], 0.0)
    # A write by keys whose token slots are empty (0) adds nothing there either.
    before = mem.snapshot().numpy()
    row = keys[:1].copy()
    row[:, 3:7] = 0  # columns: 2 SRP tables, the item, 4 token slots, the user
    mem.update_by_keys(row, [1.0], [0.5])
    after = mem.snapshot().numpy()
    np.testing.assert_array_equal(after[start], 0.0)
    changed = np.flatnonzero(after[:mem.num_cells + 1, 0] != before[:mem.num_cells + 1, 0])
    assert len(changed) == 2 + 1 + 1 + 1  # its SRP, item and user cells, and the totals row
    # Rows whose tags are empty key the (user, tags) table nowhere.
    empty = ids["tags"] == ""
    np.testing.assert_array_equal(keys[empty][:, 3:7], 0)
    twin = r2.LSHErrorMemory.from_config(mem.get_config())
    assert twin.layout() == mem.layout() and mem.layout()["each"] == {"slots": 4, "separator": "|"}
    assert "each" not in r2.LSHErrorMemory(id_groups=["item"]).layout()


@pytest.mark.parametrize("groups,match", [
    ([("tags:each", "user")], "cannot be the first feature"),
    ([("user", "tags:each", "genres:each")], "one multi-valued feature"),
    (["item", ("user", "item:popularity:each")], "popularity bucket holds one value"),
])
def test_a_multi_valued_feature_is_refused_where_it_has_no_meaning(groups, match):
    with pytest.raises(ValueError, match=match):
        r2.LSHErrorMemory(id_groups=groups)


def test_a_memory_starts_its_combiner_from_the_sums_another_one_learnt(rng):
    def fresh():
        mem = r2.LSHErrorMemory(num_tables=2, num_bits=4, id_groups=["item"], half_life=400.0)
        mem.build([None, 3])
        return r2.ErrorCompensation(mem)

    def stream(n):
        return (rng.normal(size=n).astype(np.float32), rng.normal(size=(n, 3)).astype(np.float32),
                (rng.random(n) < 0.7).astype(np.float32), {"item": rng.integers(0, 9, n).astype(str)})

    teacher, pupil = fresh(), fresh()
    for _ in range(3):
        logits, hidden, labels, ids = stream(200)
        teacher.update_memory(logits, hidden, labels, ids=ids)
    # The pupil has tables of its own (a warm start) and, at 600 rows, a scale below 1.
    logits, hidden, labels, ids = stream(600)
    pupil.update_memory(logits, hidden, labels, ids=ids, learn_trust=False)
    assert float(pupil.memory.scale) < 1.0 and not pupil.trust().numpy().any()
    tables = pupil.memory.snapshot().numpy()[:pupil.memory.totals_row + 1]
    served_cold = pupil.compensate(logits[:50], hidden[:50], {"item": ids["item"][:50]})
    np.testing.assert_array_equal(served_cold["probability"], served_cold["base_probability"])

    curvature, moment = (t.numpy() for t in teacher.memory.trust_sums())
    pupil.memory.set_trust_sums(curvature, moment)
    got_c, got_m = (t.numpy() for t in pupil.memory.trust_sums())
    np.testing.assert_allclose(got_c, curvature, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_m, moment, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pupil.trust().numpy(), teacher.trust().numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(teacher.trust().numpy()).sum() > 0.1
    np.testing.assert_array_equal(pupil.memory.snapshot().numpy()[:len(tables)], tables)
    served = pupil.compensate(logits[:50], hidden[:50], {"item": ids["item"][:50]})
    assert not np.allclose(served["probability"], served["base_probability"])

    f = pupil.memory.num_trust_features
    state = pupil.memory.snapshot().numpy()
    bad_sums = [
        ((np.zeros((f - 1, f - 1)), np.zeros(f - 1)), f"{f} features"),
        ((curvature, moment[:-1]), f"{f} features"),
        ((np.where(np.eye(f) > 0, np.nan, curvature), moment), "finite"),
        ((curvature + np.triu(np.ones((f, f)), 1), moment), "symmetric"),
    ]
    for (c, m), match in bad_sums:
        with pytest.raises(ValueError, match=match):
            pupil.memory.set_trust_sums(c, m)
        np.testing.assert_array_equal(pupil.memory.snapshot().numpy(), state)
    unbuilt = r2.LSHErrorMemory(id_groups=["item"])
    with pytest.raises(ValueError, match="built"):
        unbuilt.set_trust_sums(curvature, moment)


def test_srp_centre_writes_srp_rows_net_of_the_users_residual_and_nothing_else(rng):
    # The same rows into a plain memory and one centred on the user: the id tables, the totals
    # and the SRP tables' weights and base sums are equal bit for bit; each SRP cell's label
    # sum is the plain one less the residual r = (y - (1 + rho) b) / (c + 5) of every written
    # row's user, read from the user's cell and the totals just before that row's batch.
    groups = ["item", ("user", "genre")]
    kwargs = dict(num_tables=2, num_bits=3, id_bits=8, id_groups=groups, half_life=None)
    plain = r2.LSHErrorMemory(**kwargs)
    centred = r2.LSHErrorMemory(**kwargs, srp_centre="user")
    by_keys = r2.LSHErrorMemory(**kwargs, srp_centre="user")
    assert centred.srp_centre == "user" and plain.srp_centre is None
    for mem in (plain, centred, by_keys):
        mem.build([None, 4])
    users = np.array(["u0", "u1", "u2", "u3"])
    sums = {u: np.zeros(3) for u in users}  # the user's (c, y, b) so far, by hand
    totals = np.zeros(3)
    netted = None
    for _ in range(3):
        hidden = rng.normal(size=(40, 4)).astype(np.float32)
        ids = {"item": rng.integers(0, 6, 40).astype(str), "user": rng.choice(users, 40),
               "genre": rng.choice(["x", "y"], 40)}
        labels = (rng.random(40) < 0.5).astype(np.float32)
        base = rng.uniform(0.1, 0.9, 40).astype(np.float32)
        rho = (totals[1] - totals[2]) / (totals[2] + 1.0)
        residual = np.array([(sums[u][1] - (1 + rho) * sums[u][2]) / (sums[u][0] + 5.0)
                             for u in ids["user"]])
        for u, y, b in zip(ids["user"], labels, base):
            sums[u] += (1.0, y, b)
        totals += (40, labels.sum(), base.sum())
        keys = centred.keys(hidden, ids).numpy()
        srp_cells = keys[:, :2] + np.array([0, centred.num_buckets])
        netted = np.zeros(centred.num_cells) if netted is None else netted
        np.add.at(netted, srp_cells.ravel(), np.repeat(residual, 2))
        for mem in (plain, centred):
            mem.update(hidden, labels, base, ids=ids)
        by_keys.update_by_keys(keys, labels, base)
    # The four users have cells of their own (else the hand sums above would not be the
    # table's): key columns 2 SRP, item, user x genre, then the user's own table.
    assert centred.id_tables[2] == ("user",)
    probe = {"item": ids["item"][:4], "genre": ids["genre"][:4], "user": users}
    assert len(set(centred.keys(hidden[:4], probe).numpy()[:, 4])) == 4
    got, want = centred.sketch.numpy(), plain.sketch.numpy()
    srp = 2 * centred.num_buckets
    np.testing.assert_array_equal(got[srp:], want[srp:])
    np.testing.assert_array_equal(got[:srp, [0, 2]], want[:srp, [0, 2]])
    np.testing.assert_allclose(got[:srp, 1], want[:srp, 1] - netted[:srp], atol=1e-5)
    assert np.abs(netted[:srp]).max() > 0.05  # the centring moved something
    np.testing.assert_array_equal(by_keys.sketch.numpy(), got)  # by keys = by features
    # Kept by the config and in the layout: memories centred otherwise hold other sums.
    twin = r2.LSHErrorMemory.from_config(centred.get_config())
    assert twin.srp_centre == "user" and twin.layout() == centred.layout() != plain.layout()
    before = centred.snapshot().numpy()
    with pytest.raises(ValueError, match="same num_tables"):
        centred.merge(plain)
    np.testing.assert_array_equal(centred.snapshot().numpy(), before)
    with pytest.raises(ValueError, match="`srp_centre` should name a feature whose table"):
        r2.LSHErrorMemory(id_groups=groups, srp_centre="genre")
    with pytest.raises(ValueError, match="`srp_centre` should name a feature whose table"):
        r2.LSHErrorMemory(id_groups=["item"], recent_groups=["user"], srp_centre="user")
    with pytest.raises(ValueError, match="with num_tables=0 there are none"):
        r2.LSHErrorMemory(num_tables=0, id_groups=groups, srp_centre="user")


def test_a_heavy_users_offset_does_not_leak_through_the_srp_tables_when_centred(rng):
    # One user with an offset (labels 0.9 where the base says 0.5) fills an SRP bucket; another
    # user's row in the same bucket reads that offset as "similar rows' error" from a plain
    # memory, and close to nothing from a memory centred on the user, which read the first
    # user's level from the user's own table (all but the first batch's, written before the
    # user's table knew them).
    groups = [("user", "genre")]
    mems = {c: r2.LSHErrorMemory(num_tables=1, num_bits=2, id_bits=14, id_groups=groups,
                                 half_life=None, srp_centre=c) for c in (None, "user")}
    hidden = np.ones((100, 3), np.float32)
    for _ in range(20):
        ids = {"user": np.full(100, "heavy"), "genre": rng.choice(["x", "y"], 100)}
        labels = (rng.random(100) < 0.9).astype(np.float32)
        # ... among 2,000 rows of 1,000 other users whom the base scores right, elsewhere.
        crowd = {"user": rng.integers(0, 1000, 2000).astype(str),
                 "genre": rng.choice(["x", "y"], 2000)}
        crowd_labels = (rng.random(2000) < 0.5).astype(np.float32)
        for mem in mems.values():
            mem.update(-np.ones((2000, 3), np.float32), crowd_labels,
                       np.full(2000, 0.5, np.float32), ids=crowd)
            mem.update(hidden, labels, np.full(100, 0.5, np.float32), ids=ids)
    other = {"user": np.array(["new"]), "genre": np.array(["x"])}
    srp = {c: float(m.trust_features(m.keys(hidden[:1], other), [0.5], 2.0)[0, 0])
           for c, m in mems.items()}
    assert srp[None] > 0.3  # the heavy user's offset, read as similarity
    assert abs(srp["user"]) < 0.05


def _counting_guard(answer: bool):
    """A write guard that counts its calls in a variable and answers ``answer``."""
    calls = tf.Variable(0, dtype=tf.int64, trainable=False)

    def guard():
        with tf.control_dependencies([calls.assign_add(1)]):
            return tf.constant(answer)

    return guard, calls


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
def test_a_guard_decides_in_the_lock_whether_a_write_or_merge_lands(graph):
    mem = r2.LSHErrorMemory(num_tables=2, num_bits=3, half_life=None, id_groups=["item"],
                            recent_groups=())
    ids = {"item": np.array(["a", "b", "a"])}
    mem.update(H3, Y3, B3, ids=ids)
    keys = mem.keys(H3, ids)
    before = mem.snapshot().numpy().copy()
    run = tf.function if graph else (lambda f: f)
    no, no_calls = _counting_guard(False)
    assert float(run(lambda: mem.update(H3, Y3, B3, ids=ids, guard=no))()) == 0.0
    assert float(run(lambda: mem.update_by_keys(keys, Y3, B3, guard=no))()) == 0.0
    assert float(run(lambda: mem.merge(before, guard=no))()) == 0.0
    np.testing.assert_array_equal(mem.snapshot().numpy(), before)
    assert int(no_calls.numpy()) == 3
    yes, yes_calls = _counting_guard(True)
    assert float(run(lambda: mem.update_by_keys(keys, Y3, B3, guard=yes))()) == 3.0
    twin = r2.LSHErrorMemory.from_config(mem.get_config())
    twin.build([None, 4])
    twin.restore(before)
    twin.update_by_keys(keys, Y3, B3)
    np.testing.assert_array_equal(mem.snapshot().numpy(), twin.snapshot().numpy())
    assert float(run(lambda: mem.merge(before, guard=yes))()) == pytest.approx(3.0)
    assert int(yes_calls.numpy()) == 2


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
def test_a_rejected_write_never_calls_its_guard(graph):
    mem = r2.LSHErrorMemory(num_tables=2, num_bits=3, half_life=None)
    mem.update(H3, Y3, B3)
    keys = mem.keys(H3)
    guard, calls = _counting_guard(True)
    run = tf.function if graph else (lambda f: f)
    bad_keys = keys.numpy().copy()
    bad_keys[0, 0] = 1 << 20
    for write in (lambda: mem.update(H3, [1.0, 2.0, 0.0], B3, guard=guard),
                  lambda: mem.update_by_keys(bad_keys, Y3, B3, guard=guard),
                  lambda: mem.merge(-10 * mem.snapshot(), guard=guard)):
        with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
            run(write)()
    assert int(calls.numpy()) == 0
