"""The gRPC serving benchmark (benchmarks/serving_benchmark.py): its pure helpers (interleaving
schedules, overheads, rows/s, target verdicts, the report's consistency check) and one --quick
run whose JSON must be consistent and whose replay by keys must equal the replay by features.
No speed is asserted."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from serving_bench import timing  # noqa: E402


class FakeClock:
    """A clock the arms advance by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_schedules_rotate_and_keep_pairs_in_order():
    rot = timing.rotation(["a", "b", "c"])
    assert [rot(i) for i in range(4)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"],
                                         ["a", "b", "c"]]
    pairs = timing.paired([("k1", "f1"), ("k2", "f2")])
    assert pairs(0) == ["k1", "f1", "k2", "f2"] and pairs(1) == ["f1", "k1", "f2", "k2"]
    # Every server (k*, f*) gets its two batches in the same order on every iteration.
    for i in range(4):
        order = pairs(i)
        assert [n for n in order if n.startswith("k")] == ["k1", "k2"]
        assert [n for n in order if n.startswith("f")] == ["f1", "f2"]
    with pytest.raises(ValueError, match="pairs"):
        timing.paired([("a", "b", "c")])
    with pytest.raises(ValueError, match="at least one"):
        timing.rotation([])


def test_time_interleaved_times_each_call_and_skips_warmup():
    clock, calls = FakeClock(), []

    def arm(name, cost):
        def call(i):
            calls.append((name, i))
            clock.now += cost * (i + 1)
        return call

    seconds = timing.time_interleaved({"a": arm("a", 1.0), "b": arm("b", 10.0)}, n=3, warmup=1,
                                      clock=clock)
    assert calls == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2), ("b", 3), ("a", 3)]
    assert seconds == {"a": [2.0, 3.0, 4.0], "b": [20.0, 30.0, 40.0]}
    with pytest.raises(ValueError, match="every arm once"):
        timing.time_interleaved({"a": arm("a", 1), "b": arm("b", 1)}, 1, schedule=lambda i: ["a"])
    with pytest.raises(ValueError, match="n=0"):
        timing.time_interleaved({"a": arm("a", 1)}, 0)


def test_time_blocks_runs_each_arm_in_warm_runs():
    clock, calls = FakeClock(), []

    def arm(name):
        def call(j):
            calls.append((name, j))
            clock.now += 1.0 if name == "a" else 2.0
        return call

    seconds = timing.time_blocks({"a": arm("a"), "b": arm("b")}, n=5, block=2, warmup=1, clock=clock)
    # Rounds of (1 warm-up + 2) calls per arm, the arms' order rotating; the last block is short.
    assert calls == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2),
                     ("b", 3), ("b", 4), ("b", 5), ("a", 3), ("a", 4), ("a", 5),
                     ("a", 6), ("a", 7), ("b", 6), ("b", 7)]
    assert seconds == {"a": [1.0] * 5, "b": [2.0] * 5}
    with pytest.raises(ValueError, match="block=0"):
        timing.time_blocks({"a": arm("a")}, 1, 0)


def test_overheads_and_rates():
    base = timing.latency([0.001] * 99 + [0.005])
    memory = timing.latency([0.0012] * 99 + [0.006])
    assert base["p50_ms"] == 1.0 and base["calls"] == 100
    assert base["total_s"] == pytest.approx(0.104)
    o = timing.predict_overhead(base, memory)
    assert o["p50_ms"] == pytest.approx(0.2) and o["p50_percent"] == pytest.approx(20.0)
    assert timing.rows_per_second(256, [0.001, 0.003]) == pytest.approx(256 * 2 / 0.004)
    with pytest.raises(ValueError, match="positive"):
        timing.rows_per_second(256, [])


def _report(p50_1=(1.0, 1.1), p50_256=(10.0, 10.5), keys_s=0.001, equal=True):
    """A report built with the benchmark's own helpers from made-up durations."""
    calls = {"1": 4, "256": 4, "writes": 4}
    predict = {}
    for key, (b, m) in (("batch_1", p50_1), ("batch_256", p50_256)):
        block = {}
        for mode in timing.PREDICT_MODES:
            lb = timing.latency([b / 1e3] * 4)
            lm = timing.latency([m / 1e3] * 4)
            block[mode] = {"base": lb, "memory": lm, "overhead": timing.predict_overhead(lb, lm)}
        predict[key] = block
    one = {}
    for mode in ("prebuilt", "client"):
        cell = {}
        for kind, s in (("by_keys", keys_s), ("by_features", 0.01)):
            cell[kind] = {**timing.latency([s] * 4), "rows_per_s": timing.rows_per_second(256, [s] * 4)}
        cell["keys_over_features"] = round(cell["by_keys"]["rows_per_s"]
                                           / cell["by_features"]["rows_per_s"], 3)
        one[mode] = cell
    results = {
        "config": {"calls": calls},
        "predict": predict,
        "writes": {"batch": 256, "one_thread": one, "threads": {
            str(n): {k: {"threads": n, "calls": 4, "runs_rows_per_s": [3.0 * r, 1.0 * r, 2.0 * r],
                         "rows_per_s": 2.0 * r}
                     for k, r in (("by_keys", 256 / keys_s / 2), ("by_features", 1000.0))}
            for n in (1, 4)}, "in_flight": {"4": {
                k: {"threads": 1, "in_flight": 4, "calls": 4,
                    "runs_rows_per_s": [2.0 * r, 1.0 * r, 3.0 * r], "rows_per_s": 2.0 * r}
                for k, r in (("by_keys", 256 / keys_s), ("by_features", 2000.0))}}},
        "replay": {"batches": 8, "rows": 2048, "weight_written_by_keys": 2048.0,
                   "weight_written_by_features": 2048.0, "shape_by_keys": [10, 3],
                   "shape_by_features": [10, 3], "snapshots_equal": equal,
                   "max_abs_diff": 0.0 if equal else 1e-7, "predictions_equal_after": equal},
        "reads": {"rows": [10, 100], "batches": {"256": {
            "median_ms": {"10": 2.0, "100": 2.2}, "ratio_to_fewest": {"10": 1.0, "100": 1.1}}},
            "footprint_bytes": {"10": 500, "100": 500},
            "tracing_counts": {"read 10": 1, "read 100": 1, "write 10": 0, "write 100": 1}},
    }
    results["verdicts"] = timing.verdicts(results)
    return json.loads(json.dumps(results))


def test_verdicts_follow_the_targets():
    met = {v["target"]: v["met"] for v in _report()["verdicts"]}
    assert list(met.values()) == [True] * 7
    assert len(met) == 7
    missed = _report(p50_1=(1.0, 1.3), p50_256=(10.0, 11.5), keys_s=0.002, equal=False)
    assert [v["met"] for v in missed["verdicts"]] == [False, False, False, True, False, True, True]
    writes = [v for v in missed["verdicts"] if v["target"].startswith("update_memory_by_keys")]
    assert [w["measured"] for w in writes] == [pytest.approx(128_000), pytest.approx(256_000)]
    assert "in flight" in writes[1]["target"] and "in flight" not in writes[0]["target"]
    slow = _report(keys_s=0.004)
    assert [w["met"] for w in slow["verdicts"] if w["target"].startswith("update_memory_by")] == [
        False, False]


@pytest.mark.parametrize("tamper, message", [
    (lambda r: r["predict"]["batch_1"]["prebuilt"]["overhead"].update(p50_ms=0.01), "overhead p50_ms"),
    (lambda r: r["predict"]["batch_256"]["client"]["memory"].update(calls=3), "3 calls"),
    (lambda r: r["writes"]["one_thread"]["client"]["by_keys"].update(rows_per_s=1e6), "recomputed"),
    (lambda r: r["writes"]["one_thread"]["prebuilt"].update(keys_over_features=1.0), "quotient"),
    (lambda r: r["writes"]["threads"]["4"]["by_keys"].update(rows_per_s=3.0), "median"),
    (lambda r: r["writes"]["threads"]["1"]["by_features"].update(threads=4), "median"),
    (lambda r: r["writes"]["in_flight"]["4"]["by_keys"].update(rows_per_s=1.0), "median"),
    (lambda r: r["writes"]["in_flight"]["4"]["by_features"].update(in_flight=1), "median"),
    (lambda r: r["replay"].update(max_abs_diff=1e-7), "snapshots_equal=True"),
    (lambda r: r["replay"].update(weight_written_by_keys=1.0), "different weights"),
    (lambda r: r["reads"]["batches"]["256"]["ratio_to_fewest"].update({"100": 1.0}), "ratio"),
    (lambda r: r["reads"]["tracing_counts"].update({"read 100": 2}), "retraced"),
    (lambda r: r["verdicts"][0].update(met=False), "verdicts differ"),
])
def test_check_report_finds_every_inconsistency(tamper, message):
    report = _report()
    assert timing.check_report(report) == []
    bad = copy.deepcopy(report)
    tamper(bad)
    problems = timing.check_report(bad)
    assert problems and any(message in p for p in problems), problems


@pytest.mark.slow
@pytest.mark.e2e
def test_quick_run_is_consistent_and_replays_equal(tmp_path):
    out = tmp_path / "serving.json"
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serving_benchmark.py"),
                           "--quick", "--output", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["consistency_problems"] == []
    assert timing.check_report(result) == []
    # The default memory, as the library builds it.
    memory = result["memory"]
    assert memory["class"] == "LSHErrorMemory" and memory["num_key_columns"] == (
        memory["num_tables"] + len(memory["id_tables"]))
    assert result["predict"]["batch_1"]["outputs"]["base"] == ["base_probability"]
    assert "memory_keys" in result["predict"]["batch_1"]["outputs"]["memory"]
    replay = result["replay"]
    assert replay["snapshots_equal"] and replay["predictions_equal_after"]
    assert replay["weight_written_by_keys"] > 0
    assert result["writes"]["in_flight"]["2"]["by_keys"]["rows_per_s"] > 0
    assert replay["shape_by_keys"] == [memory["num_state_rows"], 3]
    assert len(set(result["reads"]["footprint_bytes"].values())) == 1
    assert set(result["session_ms"]["256"]) == {"predict base", "predict memory", "update_memory",
                                                "predict memory, probability only",
                                                "update_memory_by_keys",
                                                'update_memory_by_keys, write_id ""'}
    assert "| target (issue 15) |" in proc.stdout
