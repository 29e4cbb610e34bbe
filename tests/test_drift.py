"""The drift testbed end to end on a real ML-100K slice: layout, protocol and the lambda = 0 check."""

import json
from dataclasses import replace

import pytest

from reloop2_tf.cli import main as cli
from reloop2_tf.data import load_dataset
from reloop2_tf.evaluation import drift_bench
from reloop2_tf.evaluation.benchmark import BenchConfig
from reloop2_tf.evaluation.scenarios import SCENARIOS, get_scenario

ROWS = 20_000


@pytest.fixture(scope="module")
def log():
    return load_dataset("ml-100k").iloc[:ROWS].reset_index(drop=True)


def _config(scenario: str, **kwargs) -> drift_bench.DriftConfig:
    config = drift_bench.quick_config(drift_bench.DriftConfig(
        scenario=scenario, bench=BenchConfig(dataset="ml-100k", seed=1)))
    config.window = 400
    for key, value in kwargs.items():
        setattr(config, key, value)
    return config


@pytest.fixture(scope="module")
def flip_run(log, tmp_path_factory):
    out = tmp_path_factory.mktemp("drift")
    results = drift_bench.run_drift(log, _config("flip-sudden"), out, progress=False)
    return results, out


@pytest.mark.slow
def test_results_carry_recovery_metrics_for_every_method(flip_run):
    results, out = flip_run
    assert json.loads((out / "results.json").read_text())["scenario"]["name"] == "flip-sudden"
    assert (out / "windows.png").stat().st_size > 20_000
    assert set(results["methods"]) == set(drift_bench.METHODS + drift_bench.ABLATIONS)
    test_rows = ROWS - int(ROWS * 0.8)
    for name, m in results["methods"].items():
        assert sum(s["rows"] for s in m["slots"]) == test_rows, name
        assert len(m["windows"]["auc"]) == len(results["windows"]["edges"]) - 1
        for key in ("auc", "gauc", "logloss"):
            r = m["recovery"][key]
            assert {"level", "drop", "recovery_rows", "regret", "low_window"} <= set(r)
        assert {"auc", "gauc", "logloss", "rows"} <= set(m["steady_state"])
        assert m["steady_state"]["rows"] == sum(s["rows"] for s in m["slots"][-2:])
        assert set(m["won_back"]) == {"auc", "gauc", "logloss"}
    # Won-back shares are recomputed the same from the saved file (benchmarks/drift_table.py).
    saved = json.loads((out / "results.json").read_text())
    again = drift_bench.add_won_back(json.loads((out / "results.json").read_text()))
    assert json.dumps(again, sort_keys=True) == json.dumps(saved, sort_keys=True)
    assert saved["methods"]["static"]["won_back"]["auc"]["steady_state"] in (0.0, None)


@pytest.mark.slow
def test_shift_starts_at_t0_and_metrics_see_it(flip_run, log):
    results, _ = flip_run
    sizes = results["split"]["slot_rows"]
    t0 = results["scenario"]["t0_row"]
    assert t0 == sum(sizes[:1])  # quick runs shift from test slot 1
    assert t0 in results["windows"]["edges"]
    onset = results["windows"]["onset_windows"][0]
    assert results["windows"]["edges"][onset] == t0
    cut = results["split"]["train_rows"]
    shifted, _ = get_scenario("flip-sudden", seed=1).apply(log, cut + t0)
    changed = (shifted["label"] != log["label"]).to_numpy()
    assert results["scenario"]["labels_changed_after_t0"] == changed.sum() > 0
    assert not changed[:cut + t0].any()
    # Inverting 80 % of the Drama labels must hurt the static model after t0.
    static = results["methods"]["static"]
    assert static["recovery"]["auc"]["drop"] > 0.02
    assert static["slots"][0]["auc"] > static["slots"][1]["auc"]


@pytest.mark.slow
def test_model_updating_methods_equal_static_until_they_update(flip_run):
    methods = flip_run[0]["methods"]
    static = methods["static"]["slots"]
    for name in ("incremental", "incremental-hot"):
        assert methods[name]["slots"][0] == static[0], name  # no update before slot 0 is revealed
        assert methods[name]["slots"][1] != static[1], name
    retrain = methods["periodic-retrain"]["slots"]
    assert retrain[:3] == static[:3]  # retrains every 3 slots in quick runs
    assert retrain[3] != static[3]


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lambda_zero_equals_static_in_every_scenario(log, tmp_path, scenario):
    config = _config(scenario, methods=("static", "reloop2", "reloop2-paper", "reloop2 no-ids",
                                        "item-bias", "user-bias"))
    config.memory = replace(config.memory, compensation_weight=0.0)
    config.paper = replace(config.paper, compensation_weight=0.0)  # the bias memories' lambda
    results = drift_bench.run_drift(log, config, tmp_path, progress=False)
    static = json.dumps(results["methods"]["static"], sort_keys=True)  # NaN-aware equality
    for name, m in results["methods"].items():
        assert json.dumps(m, sort_keys=True) == static, name


def test_bad_drift_arguments_fail_before_training(tmp_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("training started before the arguments were checked")

    monkeypatch.setattr(drift_bench, "_train", no_training)
    for flags, message in ((["--t0-slot", "0"], "t0-slot"), (["--window", "5"], "window"),
                           (["--window", "0"], "window"), (["--methods", "static,magic"], "magic"),
                           (["--cohort", "genre=Opera"], "Opera")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["bench", "--dataset", "ml-100k", "--scenario", "flip-sudden", "--quick",
                      "--output", str(tmp_path), *flags])
        assert exit_info.value.code == 2, flags
        assert message in capsys.readouterr().err, flags
    with pytest.raises(SystemExit):
        cli.main(["bench", "--dataset", "ml-100k", "--scenario", "meteor", "--output", str(tmp_path)])


def test_cli_warm_start_rows_flag_reaches_the_drift_testbed(tmp_path, monkeypatch):
    seen = []

    def record(df, config, output, **kwargs):
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(drift_bench, "run_drift", record)
    for flags, rows in (([], 20_000), (["--quick"], 20_000), (["--warm-start-rows", "3000"], 3_000),
                        (["--quick", "--warm-start-rows", "0"], 0)):
        with pytest.raises(SystemExit):
            cli.main(["bench", "--dataset", "ml-100k", "--scenario", "cold-start",
                      "--output", str(tmp_path), *flags])
        assert seen.pop().bench.warm_start_rows == rows, flags
