"""The TFX pipeline end to end on real MovieLens rows: push, serve, refuse bad data and bad models.

One local run (module fixture) trains on the first 4,000 time-ordered ML-100K rows and pushes a
model; later tests run the same pipeline root again on corrupted data and with an unreachable
AUC threshold, and check that nothing new reaches the serving directory.
"""

import argparse
import csv
import json
import os
import tempfile

import numpy as np
import pytest

from reloop2_tf._keras import tf
from serving_helpers import Session
from reloop2_tf.data import load_prepared, prepare
from reloop2_tf.data.errors import DataError
from reloop2_tfx import cli, examples, local_runner, metadata_report, schema_utils
from reloop2_tfx.data_split import split_csv
from reloop2_tfx.pipeline import COMPONENT_IDS

TRAIN_STEPS = 50
FIRST_ROWS = 4000
TRAIN_ROWS = 3200  # the time split's first 80 %: all of them warm-start the memory
EXPORT_SIGNATURES = {"serving_default", "predict", "update_memory", "update_memory_by_keys",
                     "memory_snapshot",
                     "memory_restore", "memory_merge", "memory_layout"}


def test_the_trainer_builds_the_librarys_default_memory():
    # A pipeline run deploys what docs/benchmarks.md measured: the library's defaults, not a
    # copy of them that drifts when the library's change.
    import inspect

    from reloop2_tf import ErrorCompensation, LSHErrorMemory
    from reloop2_tfx.trainer_module import TrainerSettings

    memory = inspect.signature(LSHErrorMemory.__init__).parameters
    compensation = inspect.signature(ErrorCompensation.__init__).parameters
    settings = TrainerSettings()
    for name in ("num_tables", "num_bits", "half_life"):
        assert getattr(settings, name) == memory[name].default, name
    # The id tables are sized to the training rows' keys, as `reloop2 bench` sizes them.
    assert settings.id_bits == "auto"
    assert settings.compensation_weight == compensation["compensation_weight"].default


def test_create_pipeline_rejects_a_bad_id_tables_size(tmp_path):
    from reloop2_tfx.pipeline import create_pipeline

    for bad in (0, 25, "big", True):
        with pytest.raises(ValueError, match="id_bits"):
            create_pipeline("p", str(tmp_path), str(tmp_path), str(tmp_path), id_bits=bad)


def _versions(serving_dir):
    return sorted(name for name in os.listdir(serving_dir)) if os.path.isdir(serving_dir) else []


def _parser():
    parser = argparse.ArgumentParser(prog="reloop2")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.fixture(scope="module")
def movielens(tmp_path_factory):
    """Canonical ML-100K rows (time-sorted) and two small CSV windows cut from them."""
    root = tmp_path_factory.mktemp("movielens")
    frame = load_prepared(prepare("ml-100k", root / "prepared"))
    first = root / "first.csv"
    frame.iloc[:FIRST_ROWS].to_csv(first, index=False)
    later = root / "later.csv"
    frame.iloc[FIRST_ROWS:2 * FIRST_ROWS].to_csv(later, index=False)
    return {"first": str(first), "later": str(later), "frame": frame}


@pytest.fixture(scope="module")
def first_run(movielens, tmp_path_factory):
    root = tmp_path_factory.mktemp("tfx")
    scratch = tmp_path_factory.mktemp("scratch")
    with pytest.MonkeyPatch.context() as patch:  # what the run leaves in the temp dir
        patch.setattr(tempfile, "tempdir", str(scratch))
        result = local_runner.run(movielens["first"], str(root / "serving"),
                                  pipeline_root=str(root / "pipeline"), train_steps=TRAIN_STEPS,
                                  min_auc=0.5)
    result.scratch = scratch
    return result


def _tf_examples(rows, columns):
    """Rows as CsvExampleGen writes them: label/timestamp int64, the rest bytes, "" missing."""
    serialized = []
    for _, row in rows.iterrows():
        feature = {}
        for name in columns:
            value = row[name]
            if name in ("label", "timestamp"):
                feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
            elif str(value) != "":
                feature[name] = tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[str(value).encode()]))
        serialized.append(tf.train.Example(
            features=tf.train.Features(feature=feature)).SerializeToString())
    return np.array(serialized, dtype=object)


@pytest.mark.e2e
def test_local_run_validates_trains_evaluates_and_pushes(first_run):
    assert first_run.pushed_version is not None
    # No repackaged TFX (tfx_ephemeral sdist, ~52 MB per Beam component) left behind.
    assert not list(first_run.scratch.glob("*/build/tfx")), sorted(first_run.scratch.iterdir())
    assert _versions(first_run.serving_dir) == [first_run.pushed_version]
    assert os.path.isfile(os.path.join(first_run.pushed_path, "saved_model.pb"))
    assert first_run.evaluation["validation_ok"] is True
    assert first_run.evaluation["auc"] > 0.55
    assert first_run.evaluation["baseline_auc"] is None  # the first model has no baseline
    assert first_run.evaluation["example_count"] == FIRST_ROWS // 5  # the time split's eval part
    blessing = first_run.outputs["Evaluator"]["blessing"][0]
    assert os.path.isfile(os.path.join(blessing, "BLESSED"))
    # The first run inferred the schema and left a curated copy for the next runs.
    assert first_run.schema_path is None
    reference = schema_utils.read_schema(local_runner.reference_schema_path(
        first_run.pipeline_root))
    types = examples.column_types(reference)
    assert types["label"] == "INT" and types["timestamp"] == "INT"
    assert {types[c] for c in types if c not in ("label", "timestamp")} == {"BYTES"}


@pytest.mark.e2e
def test_ml_metadata_records_every_component(first_run):
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = first_run.metadata_path
    store = metadata_store.MetadataStore(config)
    # Later tests add runs to this store; the first one is the fixture's.
    run = min(store.get_contexts_by_type("pipeline_run"), key=lambda c: c.create_time_since_epoch)
    states, trainer = {}, None
    for execution in store.get_executions_by_context(run.id):
        for context in store.get_contexts_by_execution(execution.id):
            if context.name.startswith("reloop2-ctr."):
                component = context.name.split(".", 1)[1]
                states[component] = execution.last_known_state
                trainer = execution if component == "Trainer" else trainer
    assert set(states) == set(COMPONENT_IDS)
    assert set(states.values()) == {metadata_store_pb2.Execution.COMPLETE}
    # Lineage: the Trainer's execution has an OUTPUT event to the model that was pushed.
    events = store.get_events_by_execution_ids([trainer.id])
    outputs = store.get_artifacts_by_id(
        [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT])
    assert first_run.outputs["Trainer"]["model"][0] in {a.uri for a in outputs}


@pytest.mark.e2e
def test_pushed_model_serves_in_tf1_session_and_update_memory_changes_predictions(
        first_run, movielens):
    frame = movielens["frame"]
    rows = frame.iloc[FIRST_ROWS - 200:FIRST_ROWS - 136]  # 64 eval rows of the first run
    session = Session(first_run.pushed_path)
    assert EXPORT_SIGNATURES | {"predict_examples"} <= set(session.sigs)
    names = set(session.sigs["predict"].inputs)
    assert names == {"user_id", "item_id", "age", "gender", "occupation", "genre",
                     "release_year", "history"}
    # Raw string ids, as a serving client sends them.
    features = {name: rows[name].astype(str).to_numpy(dtype=object) for name in names}
    before = session("predict", **features)

    # The Evaluator's signature parses tf.Examples the way the Trainer does and only reads.
    serialized = _tf_examples(rows, list(frame.columns))
    from_examples = session("predict_examples", examples=serialized)
    np.testing.assert_allclose(from_examples["probability"], before["probability"], rtol=1e-5)
    snapshot = session("memory_snapshot")["sketch"]
    session("predict_examples", examples=serialized)
    np.testing.assert_array_equal(session("memory_snapshot")["sketch"], snapshot)

    # These rows turn out to be clicks, again and again: the memory (its tables, and the trust it
    # learns from each round, read before it is written) should pull their predictions up.
    labels = np.ones(len(rows), np.float32)
    for _ in range(10):
        written = session("update_memory", **features, label=labels,
                          sample_weight=np.ones(len(rows), np.float32))
        assert written["weight_written"] == pytest.approx(len(rows))
    # The memory forgets at a half-life of 100,000 rows: 3,840 rows written lose < 2 %.
    assert written["memory_weight"] == pytest.approx(TRAIN_ROWS + 10 * len(rows), rel=0.02)
    after = session("predict", **features)
    np.testing.assert_allclose(after["base_probability"], before["base_probability"], rtol=1e-6)
    change = after["probability"] - before["probability"]
    assert change.mean() > 1e-2
    assert np.mean(-np.log(after["probability"])) < np.mean(-np.log(before["probability"])) - 0.01
    # Most rise; every group reads its rows against the stream's own shift (every row written
    # here is a click), so a few rows already predicted high may not.
    assert (change > 0).mean() > 0.7


@pytest.mark.e2e
def test_warm_started_memory_is_in_the_pushed_model(first_run, movielens):
    session = Session(first_run.pushed_path)
    # Every one of the 3,200 training rows (configs.WARM_START_ROWS is more), weight 1 each less
    # what a half-life of 100,000 rows takes (< 2 %): a fresh deployment starts with a memory.
    snapshot = session("memory_snapshot")
    assert float(snapshot["memory_weight"]) == pytest.approx(TRAIN_ROWS, rel=0.02)
    # Its id tables are sized to the keys of those rows, each to its own (configs.ID_BITS
    # "auto"): the 861 items get 2^20 buckets (a single feature's table, at 0.1 %), item x age's
    # 3,030 keys 2^18 (a cross's, at 2 %), the 38 users the floor 2^16. The snapshot holds
    # exactly that memory's cells.
    from reloop2_tf import LSHErrorMemory
    from reloop2_tf.data import id_bits_for_frame, id_groups_for_frame

    train = movielens["frame"].iloc[:TRAIN_ROWS].drop(columns=["label", "timestamp", "history"])
    groups = id_groups_for_frame(train)
    bits = id_bits_for_frame(train, groups)
    assert (bits["item_id"], bits["item_id*age"], bits["user_id"]) == (20, 18, 16)
    sized = LSHErrorMemory(id_groups=groups, id_bits=bits, srp_centre="user_id")
    assert snapshot["sketch"].shape[0] == sized.num_state_rows


@pytest.mark.e2e
def test_corrupted_input_stops_the_pipeline_before_training(first_run, movielens, tmp_path,
                                                            capsys):
    with open(movielens["first"], newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[0]
    label, timestamp = header.index("label"), header.index("timestamp")
    corrupted = [header + ["device"]]  # a new column
    for i, row in enumerate(rows[1:]):
        row = list(row)
        if i % 10 == 0:
            row[timestamp] = "1997-09-20T03:05:10Z"  # wrong type
        if i % 20 == 1:
            row[label] = "2"  # out of the label's domain
        corrupted.append(row + ["mobile"])
    path = tmp_path / "corrupted.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(corrupted)
    before = _versions(first_run.serving_dir)

    args = _parser().parse_args([
        "pipeline", "run", "--data", str(path), "--serving-dir", first_run.serving_dir,
        "--pipeline-root", first_run.pipeline_root, "--train-steps", str(TRAIN_STEPS)])
    assert args.func(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("reloop2 pipeline run: error: ExampleValidator found")
    assert "train: device: New column" in err and "eval: device: New column" in err
    assert "timestamp: Expected data of type: INT but got STRING" in err
    assert "label: Unexpectedly large value: 2" in err
    assert _versions(first_run.serving_dir) == before
    states = {row["component"]: row["state"] for row in
              metadata_report.component_executions(first_run.metadata_path, "reloop2-ctr")}
    assert states["ValidationGate"] == "FAILED"
    assert "Trainer" not in states and "Pusher" not in states


@pytest.mark.e2e
def test_model_below_the_auc_threshold_is_not_pushed(first_run, movielens):
    before = _versions(first_run.serving_dir)
    result = local_runner.run(movielens["later"], first_run.serving_dir,
                              pipeline_root=first_run.pipeline_root, train_steps=TRAIN_STEPS,
                              min_auc=0.99, max_auc_drop=1.0)
    assert result.pushed_version is None
    assert _versions(first_run.serving_dir) == before
    # A newer window passed validation against the first run's schema ...
    assert result.schema_path == local_runner.reference_schema_path(first_run.pipeline_root)
    # ... and was compared with the last blessed model, but only the AUC floor failed.
    evaluation = result.evaluation
    assert evaluation["baseline_auc"] is not None
    assert evaluation["validation_ok"] is False
    assert evaluation["failures"] == [f"auc = {evaluation['auc']:.4f}, needs >= 0.99"]
    blessing = result.outputs["Evaluator"]["blessing"][0]
    assert os.path.isfile(os.path.join(blessing, "NOT_BLESSED"))
    states = {row["component"]: row["state"] for row in result.components}
    assert states["Pusher"] == "COMPLETE"  # it ran, and declined to push


@pytest.mark.e2e
def test_kubeflow_v2_compile_writes_a_spec_with_every_component(tmp_path, capsys):
    output = tmp_path / "kfp" / "pipeline.json"
    args = _parser().parse_args(["pipeline", "compile", "--output", str(output),
                                 "--image", "example.com/reloop2-tfx:test"])
    assert args.func(args) == 0
    spec = json.loads(output.read_text())["pipelineSpec"]
    tasks = set(spec["root"]["dag"]["tasks"])
    # The Resolver compiles to two KFP resolver tasks (model, blessing).
    expected = (set(COMPONENT_IDS) - {"latest_blessed_model_resolver"}) | {
        "latest_blessed_model_resolver-model-resolver",
        "latest_blessed_model_resolver-model-blessing-resolver"}
    assert tasks == expected
    executors = spec["deploymentSpec"]["executors"]
    images = {v["container"]["image"] for v in executors.values() if "container" in v}
    assert images == {"example.com/reloop2-tfx:test"}
    trainer = executors["Trainer_executor"]["container"]["args"]
    assert "tfx.components.trainer.executor.GenericExecutor" in trainer
    assert spec["pipelineInfo"]["name"] == "reloop2-ctr"
    assert "pipeline.json" in capsys.readouterr().out


def test_time_split_puts_eval_rows_after_train_rows(movielens, tmp_path):
    result = split_csv(movielens["first"], tmp_path / "input", train_fraction=0.8)
    assert (result.train_rows, result.eval_rows) == (3200, 800)
    train = load_prepared(tmp_path / "input" / "train" / "data.csv")
    evaluation = load_prepared(tmp_path / "input" / "eval" / "data.csv")
    assert train["timestamp"].max() <= evaluation["timestamp"].min()
    assert list(train.columns) == list(evaluation.columns)
    assert (train["history"] == "").any()  # empty histories survive as empty cells


def test_time_split_refuses_unsorted_rows(movielens, tmp_path):
    frame = movielens["frame"].iloc[:100].iloc[::-1]
    path = tmp_path / "unsorted.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="sorted by timestamp"):
        split_csv(path, tmp_path / "input")


def test_cli_rejects_bad_arguments_in_one_line(tmp_path, capsys):
    parser = _parser()
    args = parser.parse_args(["pipeline", "run", "--data", str(tmp_path / "missing.csv"),
                              "--serving-dir", str(tmp_path / "serving")])
    assert args.func(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reloop2 pipeline run: error: --data") and "\n" not in err
    args = parser.parse_args(["pipeline", "compile", "--output", str(tmp_path / "x.json"),
                              "--min-auc", "1.5"])
    assert args.func(args) == 2
    assert "--min-auc" in capsys.readouterr().err


def test_command_line_runs_keep_tfx_progress_and_drop_its_noise(caplog):
    import logging
    import warnings

    absl, beam, root = (logging.getLogger(n) for n in ("absl", "apache_beam", None))
    levels, filters = [(x, x.level) for x in (absl, beam, root)], list(absl.filters)
    absl.setLevel(logging.NOTSET)
    root.setLevel(logging.WARNING)  # the command line's root level
    # An in-process `reloop2 pipeline run` of an earlier test may have filtered absl already.
    absl.filters[:] = [f for f in filters if not isinstance(f, local_runner._ProgressOnly)]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            local_runner.quiet_logs()
            local_runner.quiet_logs()  # idempotent: one filter
            warnings.warn("grpcio < 1.83.0 does not support Post-Quantum Cryptography (PQC).",
                          FutureWarning)
            warnings.warn("something else", FutureWarning)
        assert [str(w.message) for w in caught] == ["something else"]
        assert sum(isinstance(f, local_runner._ProgressOnly) for f in absl.filters) == 1
        absl.info("Component Trainer is running.")
        absl.info("pipeline_info { id: 'reloop2' } nodes { ... }")
        absl.warning("ArtifactQuery.property_predicate is not supported.")
        absl.warning("Artifact Model has no uri")
        beam.warning("Couldn't find python-snappy")
        assert [r.getMessage() for r in caplog.records] == [
            "Component Trainer is running.", "Artifact Model has no uri"]
    finally:
        absl.filters[:] = filters
        for logger, level in levels:
            logger.setLevel(level)
