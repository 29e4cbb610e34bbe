"""benchmarks/loader_benchmark.py: the C++ loader's figures are real calls (no speed asserted)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import loader_benchmark as lb  # noqa: E402

pytestmark = pytest.mark.e2e
CFG = {"rounds": 1, "predict_calls": {1: 6, 256: 2}, "write_calls": 4, "feature_write_calls": 2,
       "threads": [1, 2], "warmup": 2}


def test_quick_run_times_every_signature_and_every_timed_write_writes(tmp_path, capsys):
    out = tmp_path / "loader.json"
    lb.main(["--quick", "--output", str(out)])
    results = json.loads(out.read_text())
    assert results == json.loads(json.dumps(results))  # plain JSON
    for batch in ("1", "256"):
        row = results["predict"][batch]
        assert row["base_ms"] > 0 and row["memory_ms"] > 0
        assert row["ratio"] == pytest.approx(row["memory_ms"] / row["base_ms"])
        assert row["overhead_ms"] == pytest.approx(row["memory_ms"] - row["base_ms"])
    assert set(results["writes"]) == set(lb.WRITES)
    for kind in lb.WRITES:
        for threads in ("1", "2"):
            cell = results["writes"][kind][threads]
            # One round: the rows per second are the batch over the time per call.
            assert cell["rows_per_s"] == pytest.approx(256 / cell["ms_per_call"] * 1e3)
    printed = capsys.readouterr().out
    assert "predict in the C++ loader" in printed and "by keys, fresh write_id" in printed


def test_a_step_whose_writes_are_deduplicated_fails_instead_of_timing_nothing(monkeypatch):
    # One fixed write_id in the warm-up and the timed steps: the timed writes write nothing, and
    # the benchmark must say so rather than report their speed.
    inputs = lb._inputs

    def fixed_ids(path, rng):
        return {kind: ({**value, "write_id": np.array(b"same", dtype=object)}
                       if isinstance(value.get("write_id"), lb.c_api.FreshIds) else value)
                for kind, value in inputs(path, rng).items()}

    monkeypatch.setattr(lb, "_inputs", fixed_ids)
    with pytest.raises(RuntimeError, match="a timed write wrote"):
        lb.run(CFG)
