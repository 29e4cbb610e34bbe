import numpy as np
import pytest

import reloop2_tf as r2
from reloop2_tf._keras import tf


def test_estimate_matches_numpy_softmax_over_top_k(rng):
    mem = r2.KNNErrorMemory(capacity=100, top_k=5)
    h = rng.normal(size=(60, 4)).astype(np.float32)
    y = (rng.random(60) < 0.5).astype(np.float32)
    b = rng.random(60).astype(np.float32)
    mem.update(h, y, b)
    q = rng.normal(size=(3, 4)).astype(np.float32)
    keys = h / np.linalg.norm(h, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    sims = qn @ keys.T
    est = mem.estimate(q, temperature=0.1)
    for i in range(3):
        top = np.argsort(-sims[i])[:5]
        a = np.exp((sims[i, top] - sims[i, top].max()) / 0.1)
        a /= a.sum()
        np.testing.assert_allclose(est["label_mean"].numpy()[i], (a * y[top]).sum(), rtol=1e-4)
        np.testing.assert_allclose(est["base_mean"].numpy()[i], (a * b[top]).sum(), rtol=1e-4)
    np.testing.assert_array_equal(est["support"].numpy(), [5, 5, 5])


def test_ring_buffer_keeps_the_newest_rows_and_skips_zero_weights():
    mem = r2.KNNErrorMemory(capacity=4, top_k=4)
    h = np.eye(6, 3, dtype=np.float32) + 0.01
    mem.update(h[:3], [1, 1, 1], [0.5] * 3)
    mem.update(h[3:], [0, 0, 0], [0.5] * 3, sample_weight=[1.0, 0.0, 1.0])
    # 5 weighted rows into capacity 4: the oldest is gone; the zero-weight row took no slot.
    assert float(mem.total_weight()) == 4.0
    np.testing.assert_array_equal(np.sort(mem.labels.numpy()), [0, 0, 1, 1])
    est = mem.estimate(h[:1], temperature=1.0)
    assert est["support"].numpy()[0] == 4


def test_batch_larger_than_capacity_keeps_its_last_rows():
    mem = r2.KNNErrorMemory(capacity=3, top_k=3)
    h = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    mem.update(h, np.arange(10) >= 7, np.full(10, 0.5))
    assert float(mem.total_weight()) == 3.0
    assert mem.labels.numpy().sum() == 3.0


def test_bad_input_leaves_buffer_untouched(rng):
    mem = r2.KNNErrorMemory(capacity=10, top_k=2)
    h = rng.normal(size=(3, 4)).astype(np.float32)
    mem.update(h, [1, 0, 1], [0.5] * 3)
    before = [v.numpy().copy() for v in mem.weights]
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="`labels`"):
        mem.update(h, [1, 2, 1], [0.5] * 3)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="`hidden`"):
        mem.update(np.full((3, 4), np.nan, np.float32), [1, 0, 1], [0.5] * 3)
    for var, old in zip(mem.weights, before):
        np.testing.assert_array_equal(var.numpy(), old)


@pytest.mark.parametrize("kwargs,name", [
    (dict(capacity=0), "capacity"), (dict(capacity=4, top_k=5), "top_k"),
])
def test_bad_config(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        r2.KNNErrorMemory(**kwargs)


def test_concurrent_writers_each_get_their_own_slots(rng):
    # A write takes the next slots of the ring, a read-modify-write of its position: eight
    # threads writing at once must fill every slot once, none overwriting another's rows.
    from concurrent import futures

    writers, batches, rows = 8, 40, 4
    mem = r2.KNNErrorMemory(capacity=writers * batches * rows, top_k=4)
    mem.build([None, 6])
    write = tf.function(mem.update)
    hidden = tf.constant(rng.normal(size=(rows, 6)).astype(np.float32))
    ones = tf.ones([rows])
    write(hidden, ones, tf.fill([rows], 0.5), tf.zeros([rows]))  # traced once, writes nothing

    def run(k):
        mark = tf.fill([rows], (k + 1) / 10)  # the writer, as the rows' base probability
        for _ in range(batches):
            write(hidden, ones, mark, ones)

    with futures.ThreadPoolExecutor(writers) as pool:
        list(pool.map(run, range(writers)))
    assert int(mem.position.numpy()) == 0  # every slot taken once: the ring came round
    assert (mem.row_weights.numpy() == 1.0).all()
    marks = np.round(mem.base_probs.numpy() * 10).astype(int) - 1
    np.testing.assert_array_equal(np.bincount(marks, minlength=writers), [batches * rows] * writers)
