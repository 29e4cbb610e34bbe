"""benchmarks/combiner_features.py: the docs quote memories with combiner features switched off,
so the switch must name the features right and remove exactly them."""

import sys
from pathlib import Path

import numpy as np
import pytest

import reloop2_tf as r2
from reloop2_tf._keras import tf
from reloop2_tf.layers import combiner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import combiner_features  # noqa: E402

GROUPS = ["item", "user", ("user", "genre")]


@pytest.mark.parametrize("kwargs", [
    dict(num_tables=2, num_bits=3, id_groups=GROUPS),
    dict(num_tables=0, id_groups=[("user", "genre")], recent_groups=()),
    dict(num_tables=3, num_bits=2),
])
def test_one_name_per_combiner_feature(kwargs):
    memory = r2.LSHErrorMemory(**kwargs)
    names = combiner_features.feature_names(memory)
    assert len(names) == memory.num_trust_features
    assert names[-2:] == ["temper", "bias"]
    # The order is the read layout's: the pooling features are those that read the row's base
    # probability (the first row after the read-outs), the tempering the one that reads its logit.
    memory.build(tf.TensorShape([None, 4]))
    layout = memory._read_layout
    readouts = layout.shape[1]
    pooling = [n.startswith("base:") for n in names]
    assert (layout.parts[2] == readouts).tolist() == pooling
    assert (layout.parts[0] == readouts + 1).tolist() == [n == "temper" for n in names]


def _written(rng):
    comp = r2.ErrorCompensation(r2.LSHErrorMemory(num_tables=2, num_bits=3, id_groups=GROUPS))
    for _ in range(6):
        n = 128
        ids = {"item": rng.integers(0, 9, n).astype(str), "user": rng.integers(0, 5, n).astype(str),
               "genre": rng.integers(0, 3, n).astype(str)}
        labels = (rng.random(n) < np.linspace(0.1, 0.9, 9)[ids["item"].astype(int)]).astype(np.float32)
        comp.update_memory(rng.normal(size=n).astype(np.float32),
                           rng.normal(size=(n, 4)).astype(np.float32), labels, ids=ids)
    return comp, ids


def test_switched_off_features_read_zero_and_get_no_trust(monkeypatch):
    full, ids = _written(np.random.default_rng(0))
    for name in ("__init__", "features"):  # the patch is undone after the test
        monkeypatch.setattr(combiner.ReadLayout, name, getattr(combiner.ReadLayout, name))
    combiner_features.switch_off({"base:item", "temper"})
    part, _ = _written(np.random.default_rng(0))
    names = combiner_features.feature_names(part.memory)
    off = np.array([n in ("base:item", "temper") for n in names])
    assert off.sum() == 3  # the item's pooling at both shrinkages, and the base logit

    mem_full, mem_part = full.memory, part.memory
    np.testing.assert_array_equal(mem_part.snapshot()[:mem_part.num_cells],
                                  mem_full.snapshot()[:mem_full.num_cells])
    keys = mem_full.keys(np.ones((128, 4), np.float32), ids)
    base = np.full(128, 0.3, np.float32)
    want = mem_full.trust_features(keys, base, 2.0).numpy()
    got = mem_part.trust_features(keys, base, 2.0).numpy()
    assert np.abs(want[:, off]).max() > 0  # there was something to switch off
    np.testing.assert_array_equal(got[:, off], 0.0)
    np.testing.assert_array_equal(got[:, ~off], want[:, ~off])
    trust = part.trust().numpy()
    np.testing.assert_array_equal(trust[off], 0.0)
    assert np.abs(trust[~off]).max() > 0.1
