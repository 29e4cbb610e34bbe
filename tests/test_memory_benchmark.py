"""The memory benchmark's --quick mode: JSON layout, and ratios derived from the measured times.

Timings themselves are not asserted (the machine is shared); only that every reported ratio is
the quotient of the medians reported beside it, and that no traced function was retraced.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_run_writes_consistent_json(tmp_path):
    out = tmp_path / "memory.json"
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "memory_benchmark.py"), "--quick",
         "--output", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    config = result["config"]

    assert len(result["load_average"]["start"]) == 3 and len(result["load_average"]["end"]) == 3
    assert result["machine"]["cpu_count"] >= 1
    assert [block["dim"] for block in result["memories"]] == config["dims"]
    for block in result["memories"]:
        dim = block["dim"]
        assert [cell["rows"] for cell in block["cells"]] == sorted(config["rows"])
        # Sketch (its tables, the totals row, then the combiner's sums: F = 4 features (SRP at
        # two shrinkages, base logit, bias), F * (F + 1) values in rows of 3), P, centre, the two
        # scales and the written weight, the trust solved from those sums (F values), and the
        # read's weights: the 64
        # tables' cells to U = 5 read-outs (SRP residual and count, mean weight, level, zero),
        # plus U offsets.
        sum_rows = -(-4 * 5 // 3)
        sketch_bytes = ((64 * 2**12 + 1 + sum_rows) * 3 * 4 + 64 * dim * 12 * 4 + dim * 4 + 3 * 4
                        + 4 * 4 + (3 * 64 * 5 + 5) * 4)
        for cell in block["cells"]:
            assert cell["state_bytes"]["sketch"] == sketch_bytes
            assert cell["state_bytes"]["knn"] == cell["rows"] * (dim + 3) * 4 + 8 + dim * 4
            assert set(cell["tracing_counts"].values()) == {1}
            acc = cell["accuracy"]
            for name in ("faiss_ivf", "faiss_ivf_diffuse"):
                assert 0.0 <= acc[name]["recall_at_k"] <= 1.0
                assert 1 <= acc[name]["nprobe"] <= acc[name]["nlist"]
                assert acc[name]["recall_at_k"] == acc[name]["nprobe_sweep"][-1]["recall"]
            assert acc["numpy_formula_vs_knn_memory_max_abs_diff"] < 1e-4
            assert sorted(cell["read"], key=int) == [str(b) for b in config["batches"]]
            reads = [(t, ("sketch", "knn", "faiss_flat", "faiss_ivf", "faiss_ivf_diffuse",
                          "tf_call_floor")) for t in cell["read"].values()]
            writes = [(t, ("sketch", "knn", "faiss_flat", "faiss_ivf")) for t in cell["write"].values()]
            for timings, names in reads + writes:
                ref = timings["sketch"]["median_s"]
                for name in names:
                    t = timings[name]
                    assert t["samples"] >= 3 and t["min_s"] <= t["median_s"] <= t["max_s"]
                    assert t["ratio_to_sketch"] == pytest.approx(t["median_s"] / ref, rel=1e-9)
                    assert t["median_ms"] == pytest.approx(t["median_s"] * 1e3, rel=1e-9)
            for t in cell["write"][str(config["write_batch"])].values():
                if isinstance(t, dict):
                    assert t["rows_per_s"] == pytest.approx(config["write_batch"] / t["median_s"])
        across = block["sketch_across_rows"]
        # Restored snapshots hold exactly the rows written up to each N (unit weights).
        assert across["total_weight_by_rows"] == {str(n): float(n) for n in config["rows"]}
        assert across["state_bytes"] == sketch_bytes
        for timings in [*across["read"].values(), *across["write"].values()]:
            ref = timings[str(min(config["rows"]))]["median_s"]
            for t in timings.values():
                assert t["ratio_to_smallest"] == pytest.approx(t["median_s"] / ref, rel=1e-9)

    dcn = result["dcn"]
    tfn = dcn["tf_function"]
    assert dcn["default_sketch"] == "sketch_k64_l12" and {"base", "encode", "knn"} <= set(tfn)
    for name, t in tfn.items():
        assert t["overhead_vs_base"] == pytest.approx(
            t["median_s"] / tfn["base"]["median_s"] - 1.0, rel=1e-9, abs=1e-12)
    targets = result["targets"]
    assert targets["dcn_overhead"]["tf_function"] == tfn["sketch_k64_l12"]["overhead_vs_base"]
    top = str(max(config["rows"]))
    last = {b["dim"]: next(c for c in b["cells"] if c["rows"] == int(top))
            for b in result["memories"]}
    for dim, measured in targets["reads_at_largest_rows"]["measured_ratios_to_sketch"].items():
        for batch in config["batches"]:
            assert measured[str(batch)]["faiss_ivf"] == (
                last[int(dim)]["read"][str(batch)]["faiss_ivf"]["ratio_to_sketch"])
    assert targets["footprint"]["met"] is True  # a few MB, whatever the rows written
    assert set(targets) >= {"flat_in_rows", "reads_at_largest_rows", "dcn_overhead",
                            "footprint", "gauc_lift_share"}
