import numpy as np

from reloop2_tf.evaluation.baselines import BiasMemory


def test_bias_memory_by_hand():
    mem = BiasMemory(compensation_weight=0.5, gamma=0.0, prior_count=1.0)
    keys = np.array(["a", "a", "b", "a"])
    base = np.array([0.2, 0.4, 0.5, 0.3])
    labels = np.array([1.0, 0.0, 1.0, 1.0])
    out = mem.replay(keys, base, labels, slot_sizes=[4], feedback_every=2)
    # Rows 0-1: empty memory -> base. Row 2 ("b"): still empty -> base.
    np.testing.assert_allclose(out[:3], base[:3])
    # Row 3 ("a"): n=2, label mean 0.5, base mean 0.3, rho=2/3 -> 0.3 + 0.5*(2/3)*0.2
    np.testing.assert_allclose(out[3], 0.3 + 0.5 * (2 / 3) * 0.2)


def test_zero_weight_is_static_and_warm_start_counts():
    keys = np.array(["a", "b"])
    base = np.array([0.4, 0.6])
    zero = BiasMemory(compensation_weight=0.0).replay(keys, base, [1, 0], [2])
    np.testing.assert_array_equal(zero, base)
    warm = BiasMemory(compensation_weight=1.0, gamma=1.0, prior_count=0.0).replay(
        keys, base, [1, 0], [2], warm_keys=np.array(["a"]), warm_base=np.array([0.5]),
        warm_labels=np.array([0.0]))
    np.testing.assert_allclose(warm, [0.0, 0.6])
