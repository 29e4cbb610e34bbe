"""The main job's steps on a small real slice, through the same code path as `make demo`."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from reloop2_tf.cli import demo


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is gone once reaped, which stop() does.
    with open(f"/proc/{pid}/status") as status:
        return "zombie" in status.read().lower()


@pytest.mark.e2e
def test_demo_end_to_end_on_a_slice(tmp_path):
    report = demo.run_demo(tmp_path, dataset="ml-100k", max_rows=5000, num_slots=3,
                           batch_size=200, progress=False)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "slots.png").stat().st_size > 10_000
    assert on_disk["split"] == report["split"]
    holdout = on_disk["split"]["holdout_rows"]
    assert holdout == 1000 and on_disk["split"]["pipeline_rows"] == 4000
    base = on_disk["methods"][demo.METHOD_NAMES["base"]]
    comp = on_disk["methods"][demo.METHOD_NAMES["reloop2"]]
    # Compensated and base metrics are computed over the very same rows.
    assert base["rows"] == comp["rows"] == holdout
    assert [s["rows"] for s in base["slots"]] == [s["rows"] for s in comp["slots"]]
    assert [s["first_timestamp"] for s in base["slots"]] == [
        s["first_timestamp"] for s in comp["slots"]]
    assert sum(s["rows"] for s in comp["slots"]) == holdout
    # The feedback reached the served memory: every held-out row was written once.
    assert on_disk["serving"]["memory_weight"] >= holdout
    assert on_disk["serving"]["batches"] == int(np.ceil(holdout / 200))
    # Held-out rows come after the pipeline's rows in time.
    pipeline_rows = pd.read_csv(tmp_path / "pipeline_input.csv")
    holdout_rows = pd.read_csv(tmp_path / "holdout.csv")
    assert pipeline_rows["timestamp"].max() <= holdout_rows["timestamp"].min()
    assert on_disk["split"]["holdout_start_timestamp"] == holdout_rows["timestamp"].iloc[0]
    assert on_disk["pipeline"]["pushed_version"] is not None
    # The development server was shut down cleanly and its process is gone.
    assert on_disk["serving"]["server_exit_code"] == 0
    assert _process_gone(on_disk["serving"]["server_pid"])
    assert 0.5 < base["auc"] < 1 and 0.5 < comp["auc"] < 1
