"""The serving-cost benchmark's pure parts (benchmarks/cost_bench): multiply-add counts and the
percentile, ratio and interleaving helpers. No speed is asserted."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from cost_bench import macs, stats  # noqa: E402


def test_model_macs_counts_every_dense_call_by_its_input_rows():
    from reloop2_tf._keras import keras, tf

    x = keras.Input((3,), name="x")
    seq = keras.Input((5, 3), name="seq")
    shared = keras.layers.Dense(4, name="shared")
    h = shared(x)                                   # 1 row x 3 x 4 = 12
    s = shared(seq)                                 # 5 rows x 3 x 4 = 60 (same layer, 2nd call)
    pooled = keras.layers.GlobalAveragePooling1D()(s)
    out = keras.layers.Dense(2, name="out")(keras.layers.Concatenate()([h, pooled]))  # 8 x 2
    model = keras.Model({"x": x, "seq": seq}, out)
    counted = macs.model_macs(model, {"x": tf.ones([1, 3]), "seq": tf.ones([1, 5, 3])})
    assert counted["per_layer"] == {"shared": 72, "out": 16}
    assert counted["total"] == 88
    # The hooks are gone: a second count gives the same, not double.
    assert macs.model_macs(model, {"x": tf.ones([1, 3]), "seq": tf.ones([1, 5, 3])}) == counted


def test_memory_macs_by_hand():
    parts = macs.memory_macs(dim=64, num_tables=8, num_bits=10, num_trust_features=6, batch=2,
                             readouts=3 * 8 * 4)
    assert parts["srp_projections"] == 64 * 8 * 10
    assert parts["srp_bit_packing"] == 80 * 8
    assert parts["combiner_readouts"] == 96
    assert parts["combiner_dot"] == 6
    assert parts["trust_solve_per_write"] == 72 + 36  # made on writes, not in the read's total
    assert parts["total"] == 5120 + 640 + 96 + 6
    paper = macs.memory_macs(dim=64, num_tables=8, num_bits=10, num_trust_features=6,
                             self_tuning=False, readouts=96)
    assert paper["total"] == 5120 + 640
    with pytest.raises(ValueError, match="batch=0"):
        macs.memory_macs(64, 8, 10, 6, batch=0)


def test_percentiles_ratios_and_flatness():
    seconds = np.arange(1, 101) / 1e3  # 1 .. 100 ms
    p = stats.percentiles_ms(seconds)
    assert p == {"p50_ms": 50.5, "p99_ms": 99.01, "calls": 100}
    with pytest.raises(ValueError, match="empty"):
        stats.percentiles_ms([])
    assert stats.ratio(3.0, 2.0) == 1.5
    with pytest.raises(ValueError, match="reference=0"):
        stats.ratio(1.0, 0)
    o = stats.overhead(1.1, 1.0)
    assert o["delta"] == pytest.approx(0.1) and o["percent"] == pytest.approx(10.0)
    assert stats.flatness({10**6: 3.0, 10**4: 2.0, 10**5: 2.0}) == {10**4: 1.0, 10**5: 1.0,
                                                                     10**6: 1.5}


def test_interleaved_medians_alternates_and_takes_medians():
    order, now = [], [0.0]

    def clock():
        return now[0]

    def make(name, cost):
        def fn():
            order.append(name)
            now[0] += cost
        return fn

    medians = stats.interleaved_medians({"a": make("a", 1.0), "b": make("b", 3.0)},
                                        rounds=3, calls=2, clock=clock)
    assert medians == {"a": 1.0, "b": 3.0}
    assert order == ["a", "a", "b", "b"] * 3
    with pytest.raises(ValueError, match="rounds=0"):
        stats.interleaved_medians({"a": make("a", 1.0)}, rounds=0, calls=1)


def test_session_profile_sums_op_time_by_op_type():
    from tensorflow.core.framework import step_stats_pb2

    from session_ab import op_times

    stats = step_stats_pb2.StepStats()
    device = stats.dev_stats.add(device="/cpu:0")
    for name, label, start, end in [("a", "a = MatMul(x, w)", 10, 40),
                                    ("b", "b = MatMul(a, v)", 45, 55),
                                    ("c", "c = StridedSlice(b, s, e, t)", 60, 61),
                                    ("_SOURCE", "", 0, 2)]:
        device.node_stats.add(node_name=name, timeline_label=label, op_start_rel_micros=start,
                              op_end_rel_micros=end)
    other = stats.dev_stats.add(device="/cpu:1")
    other.node_stats.add(node_name="d", timeline_label="d = MatMul(c, u)", op_start_rel_micros=5,
                         op_end_rel_micros=9)
    assert op_times(stats) == {"MatMul": (3, 44.0), "StridedSlice": (1, 1.0), "_SOURCE": (1, 2.0)}
