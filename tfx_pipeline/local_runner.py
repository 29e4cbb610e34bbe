"""Runs the pipeline on this machine: LocalDagRunner, SQLite ML Metadata, Beam's DirectRunner.

No service is needed. Layout under ``pipeline_root``::

    input/{train,eval}/data.csv    the time split of the canonical CSV (data_split)
    metadata.sqlite                ML Metadata: every execution, artifact and lineage
    schema/schema.pbtxt            the curated reference schema (after the first good run)
    <Component>/<output>/<id>/     artifacts

The first run infers the schema (SchemaGen) and, once it has passed, stores a curated copy
(``schema_utils``); later runs import it (ImportSchemaGen), so ExampleValidator compares new
data with the data the first model was built for. Edit ``schema/schema.pbtxt`` to curate it
further, or delete it to infer again.

Usage: ``reloop2 pipeline run --data DIR_OR_CSV --serving-dir DIR`` or
``python -m reloop2_tfx.local_runner --data ... --serving-dir ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import warnings
from typing import Any

# Before TensorFlow, and inherited by anything this process starts.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from reloop2_tfx import configs, flags

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.sqlite"
INPUT_DIR = "input"
SCHEMA_FILE = "schema.pbtxt"


@dataclasses.dataclass
class RunResult:
    """What one local run did."""

    pipeline_root: str
    metadata_path: str
    serving_dir: str
    schema_path: str | None  # the reference schema validated against, None if inferred
    pushed_version: str | None  # the new version directory, or None if nothing was pushed
    wall_seconds: float
    components: list[dict[str, Any]]  # per component: id, state, seconds (from MLMD)
    evaluation: dict[str, Any] | None  # metadata_report.evaluation_summary of the Evaluator
    outputs: dict[str, dict[str, list[str]]]  # component -> output key -> artifact URIs

    @property
    def pushed_path(self) -> str | None:
        """The SavedModel the Pusher added to the serving directory, if any."""
        if self.pushed_version is None:
            return None
        return os.path.join(self.serving_dir, self.pushed_version)


def reference_schema_path(pipeline_root: str) -> str:
    """Where the curated reference schema of ``pipeline_root`` lives."""
    return os.path.join(pipeline_root, "schema", SCHEMA_FILE)


def metadata_path(pipeline_root: str) -> str:
    """The SQLite ML Metadata file of ``pipeline_root``."""
    return os.path.join(pipeline_root, METADATA_FILE)


def _versions(serving_dir: str) -> set[str]:
    if not os.path.isdir(serving_dir):
        return set()
    return {name for name in os.listdir(serving_dir) if name.isdigit()}


def run(data: str, serving_dir: str, pipeline_root: str = configs.LOCAL_PIPELINE_ROOT,
        model_name: str = configs.MODEL_NAME, schema_path: str | None = None,
        pipeline_name: str = configs.PIPELINE_NAME,
        train_fraction: float = configs.TRAIN_FRACTION,
        beam_pipeline_args: list[str] | None = None, **pipeline_kwargs: Any) -> RunResult:
    """Splits ``data`` by time, runs the pipeline once, and stores the reference schema.

    Args:
        data: a prepared directory (``data.csv``) or a canonical CSV file.
        serving_dir: TF-Serving base directory; a blessed model becomes a new version in it.
        pipeline_root: artifacts, ML Metadata and the reference schema. Defaults to `runs/tfx`.
        model_name: a zoo model. Defaults to `configs.MODEL_NAME`.
        schema_path: the schema to validate against; `None` uses the pipeline root's reference
            schema if there is one, otherwise infers it.
        pipeline_kwargs: more ``create_pipeline`` arguments (``train_steps``, ``min_auc``, ...).

    Raises:
        DataError: bad input CSV (missing file or column, unsorted rows).
        RuntimeError: a component failed; with anomalies the message starts with the
            ValidationGate's report. Nothing is pushed then.
    """
    from tfx import v1 as tfx

    from reloop2_tfx import metadata_report
    from reloop2_tfx.data_split import split_csv
    from reloop2_tfx.pipeline import create_pipeline

    start = time.perf_counter()
    pipeline_root = os.path.abspath(pipeline_root)
    serving_dir = os.path.abspath(serving_dir)
    input_dir = os.path.join(pipeline_root, INPUT_DIR)
    split = split_csv(data, input_dir, train_fraction)
    reference = reference_schema_path(pipeline_root)
    if schema_path is None and os.path.isfile(reference):
        schema_path = reference
    schema_path = os.path.abspath(schema_path) if schema_path else None
    logger.info("validating against %s", schema_path or "a schema inferred from this run")

    mlmd = metadata_path(pipeline_root)
    pipeline = create_pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root, data_root=split.input_dir,
        serving_dir=serving_dir, schema_path=schema_path, model_name=model_name,
        beam_pipeline_args=beam_pipeline_args or configs.LOCAL_BEAM_PIPELINE_ARGS,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            mlmd),
        **pipeline_kwargs)
    before = _versions(serving_dir)
    tfx.orchestration.LocalDagRunner().run(pipeline)
    new = sorted(_versions(serving_dir) - before, key=int)

    outputs = metadata_report.run_outputs(mlmd, pipeline_name)
    if schema_path is None:
        _store_reference_schema(outputs["ValidationGate"]["validated_schema"][0], reference)
    evaluation = None
    if "Evaluator" in outputs:
        evaluation = metadata_report.evaluation_summary(outputs["Evaluator"]["evaluation"][0])
    return RunResult(pipeline_root=pipeline_root, metadata_path=mlmd, serving_dir=serving_dir,
                     schema_path=schema_path, pushed_version=new[-1] if new else None,
                     wall_seconds=round(time.perf_counter() - start, 1),
                     components=metadata_report.component_executions(mlmd, pipeline_name),
                     evaluation=evaluation, outputs=outputs)


def _store_reference_schema(schema_dir: str, target: str) -> None:
    from reloop2_tfx import schema_utils

    schema = schema_utils.read_schema(os.path.join(schema_dir, SCHEMA_FILE))
    schema_utils.write_schema(schema_utils.curate_schema(schema), target)
    logger.info("stored the curated reference schema at %s; later runs validate against it",
                target)


class _ProgressOnly(logging.Filter):
    """Keeps TFX's 'Component X is running/finished' lines and warnings, drops its IR dumps and
    the resolver's "property_predicate is not supported" warning (one per input channel of
    every run: TFX's own queries, nothing a user set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.endswith("property_predicate is not supported."):
            return False
        return record.levelno >= logging.WARNING or message.startswith("Component ")


def quiet_logs() -> None:
    """What a command-line run of the pipeline shows: TFX's component progress and real
    warnings, not its INFO dumps (thousands of lines: pipeline IR, MLMD protos), not Beam's
    notes on optional accelerators (python-snappy), not google-auth's notice about grpcio's
    post-quantum support. Library calls of ``run`` leave logging alone."""
    absl_logger = logging.getLogger("absl")
    absl_logger.setLevel(logging.INFO)  # the progress lines, whatever the root logger's level
    if not any(isinstance(f, _ProgressOnly) for f in absl_logger.filters):
        absl_logger.addFilter(_ProgressOnly())
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r"grpcio < .* does not support Post-Quantum",
                            category=FutureWarning)


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception: TFX wraps a component's error in its own."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = err.__cause__ or err.__context__
        if inner is None:
            break
        err = inner
    return err


def run_command(args: argparse.Namespace) -> int:
    """Runs ``reloop2 pipeline run``; returns the exit code (0 also when nothing is blessed)."""
    problem = flags.check_common(args)
    if problem is None and not 0.0 < args.train_fraction < 1.0:
        problem = f"--train-fraction must be in (0, 1), got {args.train_fraction}"
    if problem is None and args.schema is not None and not os.path.isfile(args.schema):
        problem = f"--schema {args.schema} does not exist"
    if problem is None and not os.path.exists(args.data):
        problem = f"--data {args.data} does not exist"
    if problem:
        return flags.fail("run", problem)
    if args.verbose:  # everything TFX and Beam log, whatever the command line's root level
        for name in ("absl", "apache_beam"):
            logging.getLogger(name).setLevel(logging.INFO)
    else:
        quiet_logs()

    from reloop2_tf.data.errors import DataError
    from reloop2_tfx.components import DataAnomaliesError

    try:
        result = run(
            args.data, args.serving_dir, pipeline_root=args.pipeline_root,
            model_name=args.model, schema_path=args.schema, train_fraction=args.train_fraction,
            train_steps=args.train_steps, min_auc=args.min_auc, max_auc_drop=args.max_auc_drop)
    except DataError as err:
        return flags.fail("run", str(err))
    except Exception as err:  # noqa: BLE001  (a failed component: report it in one line)
        cause = _root_cause(err)
        if isinstance(cause, DataAnomaliesError):
            reference = reference_schema_path(os.path.abspath(args.pipeline_root))
            hint = (f" (if the change is intended, edit or delete {reference})"
                    if args.schema is None and os.path.isfile(reference) else "")
            # Every anomaly is listed: the user needs all of them to fix the data.
            return flags.fail("run", f"{flags.one_line(cause, 4000)}; nothing was trained or "
                                     f"pushed{hint}", code=1)
        return flags.fail("run", f"the pipeline failed: {type(cause).__name__}: "
                                 f"{flags.one_line(cause)}", code=1)
    print(format_result(result))
    return 0


def format_result(result) -> str:
    """A short human-readable report of a ``local_runner.RunResult``."""
    lines = [f"{'component':32s} {'state':9s} {'seconds':>8s}"]
    for row in result.components:
        lines.append(f"{row['component']:32s} {row['state']:9s} {row['seconds']:8.1f}")
    evaluation = result.evaluation or {}
    if evaluation:
        baseline = evaluation.get("baseline_auc")
        lines.append(f"eval AUC {evaluation.get('auc')} on {evaluation.get('example_count')} rows"
                     + (f" (last blessed model: {baseline})" if baseline is not None else
                        " (no earlier blessed model)"))
        for failure in evaluation.get("failures", []):
            lines.append(f"not blessed: {flags.one_line(failure, 300)}")
    if result.pushed_path:
        lines.append(f"pushed: {result.pushed_path}")
    else:
        lines.append(f"nothing pushed; {result.serving_dir} is unchanged")
    lines.append(f"schema: {result.schema_path or 'inferred by this run'}; ML Metadata: "
                 f"{result.metadata_path}; wall time {result.wall_seconds} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m reloop2_tfx.local_runner``: the same flags as ``reloop2 pipeline run``."""
    parser = argparse.ArgumentParser(prog="python -m reloop2_tfx.local_runner")
    flags.add_run_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
