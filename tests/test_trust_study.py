"""The design study's within-user sums (benchmarks/trust_study/ranking.py), checked against the
direct computation: the docs quote the variant's figures, so its arithmetic must be right."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from trust_study.ranking import Variant  # noqa: E402


def test_running_within_user_sums_equal_the_pooled_within_user_scatter():
    rng = np.random.default_rng(0)
    n, f, users = 60, 4, 7
    u = rng.integers(0, users, n)
    x, y = rng.standard_normal((n, f)), rng.integers(0, 2, n).astype(float)
    p = rng.uniform(0.1, 0.9, n)
    v, w = p * (1 - p), rng.standard_normal(f)
    t = x @ w + (y - p) / v  # the working response
    state = Variant.__new__(Variant)
    state.user_w, state.user_x, state.user_t = np.zeros(users), None, np.zeros(users)
    h, m = np.zeros((f, f)), np.zeros(f)
    for rows in np.split(np.arange(n), [9, 10, 31, 44]):  # batches with repeated users
        dh, dm = state._running_within(u[rows], x[rows], v[rows], p[rows], y[rows], w, 1.0)
        h, m = h + dh, m + dm
    expect_h, expect_m = np.zeros((f, f)), np.zeros(f)
    for k in range(users):
        r = u == k
        if not r.any():
            continue
        xm = (v[r, None] * x[r]).sum(0) / v[r].sum()
        tm = (v[r] * t[r]).sum() / v[r].sum()
        expect_h += ((x[r] - xm) * v[r, None]).T @ (x[r] - xm)
        expect_m += ((x[r] - xm) * v[r, None]).T @ (t[r] - tm)
    np.testing.assert_allclose(h, expect_h, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(m, expect_m, rtol=1e-9, atol=1e-9)
    # users never seen hold no weight
    assert np.allclose(state.user_w[np.bincount(u, minlength=users) == 0], 0.0)


def _stream(tmp_path, warm=2000, test=3000, seed=0, unique_items=False):
    """A dumped stream (``trust_study.py dump``'s layout) of random rows: 40 users, 60 items
    with their own offsets, 5 genres; timestamps one second apart."""
    from trust_study.replica import Stream

    rng = np.random.default_rng(seed)
    n = warm + test
    items = np.arange(n) if unique_items else rng.integers(0, 60, n)
    users, genres = rng.integers(0, 40, n), rng.integers(0, 5, n)
    logits = rng.normal(0.0, 1.0, n)
    offset = 0.0 if unique_items else rng.normal(0.0, 1.0, 60)[items]
    labels = (rng.random(n) < 1 / (1 + np.exp(-(logits + offset)))).astype(float)
    cols = {"genre": genres, "item_id": items, "user_id": users}
    path = tmp_path / f"stream-{seed}.npz"
    np.savez(path, logits=logits[warm:], labels=labels[warm:], warm_logits=logits[:warm],
             warm_labels=labels[:warm], groups=np.array(["item_id", "user_id*genre"]),
             cols=np.array(sorted(cols)), times=np.arange(warm, n, dtype=float),
             warm_times=np.arange(warm, dtype=float),
             **{"t_" + c: v[warm:].astype(str) for c, v in cols.items()},
             **{"w_" + c: v[:warm].astype(str) for c, v in cols.items()})
    return Stream(path), np.arange(n, dtype=float)


def test_labels_delayed_by_nothing_write_as_the_row_chunks_do(tmp_path):
    """One row a second, no delay and micro-batches of 1,000 rows: every label is written
    before the next micro-batch, which is the replica's every-1,000-rows protocol (the warm
    rows are written in 1,000-row chunks by both), to rounding (the trust's moment is summed
    in another order)."""
    from trust_study.delay import Delayed
    from trust_study.replica import OnlinePopularity

    s, times = _stream(tmp_path, test=5000)
    by_rows = OnlinePopularity(s, every=1000).run()
    s, times = _stream(tmp_path, test=5000)
    by_time = Delayed(s, times, delay=0.0, micro=1000).run()
    np.testing.assert_allclose(by_time, by_rows, rtol=1e-12, atol=1e-14)
    # a delay of one micro-batch is not the same protocol: labels come one batch later
    s, times = _stream(tmp_path, test=5000)
    later = Delayed(s, times, delay=1000.0, micro=1000).run()
    assert np.abs(later - by_rows).max() > 1e-3


def test_labels_that_never_come_back_leave_the_base_model(tmp_path):
    """With a delay longer than the stream no test label is written, so the combiner never
    learns a trust and every row is served the base model's probability."""
    from trust_study.delay import Delayed
    from trust_study.replica import sigmoid

    s, times = _stream(tmp_path)
    out = Delayed(s, times, delay=1e9).run()
    np.testing.assert_allclose(out, sigmoid(s.z), rtol=0, atol=1e-15)


def test_the_hindsight_ceiling_does_not_read_a_rows_own_label(tmp_path):
    """Every test row with an item of its own and labels independent of everything: a row's
    own label is the only thing that could predict it, and the ceiling must not see it (read
    with it, every row's item residual would be its label minus its base and the AUC ~1)."""
    from reloop2_tf.evaluation import metrics
    from trust_study.delay import hindsight_ceiling
    from trust_study.replica import sigmoid

    s, _ = _stream(tmp_path, unique_items=True)
    ceiling = metrics.evaluate(s.y, hindsight_ceiling(s), s.users)
    base = metrics.evaluate(s.y, sigmoid(s.z), s.users)
    assert abs(ceiling["auc"] - base["auc"]) < 0.02
    # and where items repeat with their own offsets, the ceiling reads them
    s, _ = _stream(tmp_path, seed=1)
    ceiling = metrics.evaluate(s.y, hindsight_ceiling(s), s.users)
    base = metrics.evaluate(s.y, sigmoid(s.z), s.users)
    assert ceiling["auc"] > base["auc"] + 0.05


def test_same_window_share_counts_rows_whose_users_last_row_shares_their_window():
    from trust_study.delay import same_window_share

    users = np.array(["a", "b", "a", "a", "b", "c", "c", "a"])
    # windows of 3 rows: [a b a] [a b c] [c a]; after each user's first row:
    # a@2 (last a@0, same), a@3 (a@2, other), b@4 (b@1, other), c@6 (c@5, other), a@7 (a@3, other)
    assert same_window_share(users, 3) == 1 / 5
    assert same_window_share(users, 8) == 1.0


def test_hashed_tables_keep_keys_apart_when_big_enough_and_mix_them_when_not(tmp_path):
    from trust_study.collisions import Hashed
    from trust_study.replica import Replica

    s, _ = _stream(tmp_path)
    exact = Replica(s).run()
    # 2^20 buckets for 60 items and 200 user x genre keys: with this draw no two keys share one.
    apart = Hashed(s, lambda table: 20, seed=0)
    assert all(len(np.unique(c)) == len(np.unique(e)) for c, e in zip(apart.codes, Replica(s).codes))
    np.testing.assert_allclose(apart.run(), exact, rtol=1e-12)
    assert apart.sizes == [2**20] * 3
    # One bucket per table: every item reads every item's residual; the item offsets are lost.
    mixed = Hashed(s, lambda table: 0 if table == ("item_id",) else 20, seed=0)
    assert mixed.sizes == [1, 2**20, 2**20]
    assert np.abs(mixed.run() - exact).max() > 0.05
