import numpy as np

from reloop2_tf.evaluation.baselines import BiasMemory, FTRLOffset
from reloop2_tf.evaluation.windows import feedback_windows


def test_bias_memory_by_hand():
    mem = BiasMemory(compensation_weight=0.5, gamma=0.0, prior_count=1.0)
    keys = np.array(["a", "a", "b", "a"])
    base = np.array([0.2, 0.4, 0.5, 0.3])
    labels = np.array([1.0, 0.0, 1.0, 1.0])
    out = mem.replay(keys, base, labels, feedback_windows([4], 2))
    # Rows 0-1: empty memory -> base. Row 2 ("b"): still empty -> base.
    np.testing.assert_allclose(out[:3], base[:3])
    # Row 3 ("a"): n=2, label mean 0.5, base mean 0.3, rho=2/3 -> 0.3 + 0.5*(2/3)*0.2
    np.testing.assert_allclose(out[3], 0.3 + 0.5 * (2 / 3) * 0.2)


def test_zero_weight_is_static_and_warm_start_counts():
    keys = np.array(["a", "b"])
    base = np.array([0.4, 0.6])
    zero = BiasMemory(compensation_weight=0.0).replay(keys, base, [1, 0], feedback_windows([2]))
    np.testing.assert_array_equal(zero, base)
    warm = BiasMemory(compensation_weight=1.0, gamma=1.0, prior_count=0.0).replay(
        keys, base, [1, 0], feedback_windows([2]), warm_keys=np.array(["a"]), warm_base=np.array([0.5]),
        warm_labels=np.array([0.0]))
    np.testing.assert_allclose(warm, [0.0, 0.6])


def test_ftrl_offset_first_step_by_hand():
    # One key column; feedback after each row. Row 0 predicts the base; after its label the
    # weights of key "a" and of the bias move by FTRL's first step: w = -alpha * g / (beta + |g|)
    # per coordinate (l1 = l2 = 0), with g = p - y.
    ftrl = FTRLOffset(alpha=0.5, beta=1.0, l1=0.0, l2=0.0)
    base = np.array([0.5, 0.5])
    out = ftrl.replay(np.array([["a"], ["a"]]), base, np.array([1.0, 1.0]), feedback_windows([2], 1))
    assert out[0] == 0.5
    w = -0.5 * (0.5 - 1.0) / (1.0 + 0.5)  # per coordinate: key "a" and the bias
    np.testing.assert_allclose(out[1], 1 / (1 + np.exp(-2 * w)))


def test_ftrl_offset_learns_an_id_effect_the_base_misses():
    rng = np.random.default_rng(0)
    n = 20_000
    item = rng.integers(0, 30, n)
    rate = np.linspace(0.1, 0.9, 30)[item]
    labels = (rng.random(n) < rate).astype(float)
    base = np.full(n, labels.mean())
    out = FTRLOffset(alpha=0.1).replay(item.astype(str)[:, None], base, labels, feedback_windows([n], 500))

    def logloss(p):
        y = labels[n // 2:]
        return -np.mean(y * np.log(p[n // 2:]) + (1 - y) * np.log(1 - p[n // 2:]))

    assert logloss(out) < logloss(base) - 0.05
    # A learning rate of ~0 is the base model.
    still = FTRLOffset(alpha=1e-12).replay(item.astype(str)[:, None], base, labels,
                                           feedback_windows([n], 500))
    np.testing.assert_allclose(still, base, rtol=1e-6)


def test_ftrl_offset_gives_no_weight_to_a_missing_feature():
    # A column of None (a row with fewer tokens than a multi-valued group keys) is "no
    # feature": the replay is the replay without that column.
    rng = np.random.default_rng(1)
    n = 3000
    item = rng.integers(0, 30, n).astype(str).astype(object)
    labels = (rng.random(n) < 0.4).astype(float)
    base = np.full(n, 0.4)
    tag = np.where(rng.random(n) < 0.5, None, "t")
    alone = FTRLOffset(alpha=0.1).replay(item[:, None], base, labels, feedback_windows([n], 250))
    with_gap = FTRLOffset(alpha=0.1).replay(np.stack([item, np.full(n, None)], 1), base, labels,
                                            feedback_windows([n], 250))
    np.testing.assert_array_equal(with_gap, alone)
    with_tag = FTRLOffset(alpha=0.1).replay(np.stack([item, tag], 1), base, labels,
                                            feedback_windows([n], 250))
    assert not np.array_equal(with_tag, alone)
