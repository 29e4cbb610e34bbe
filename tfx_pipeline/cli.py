"""``reloop2 pipeline run`` and ``reloop2 pipeline compile`` (SPEC section 6).

TFX is imported only when a command runs, so ``reloop2 --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from tfx_pipeline import configs

logger = logging.getLogger(__name__)

# The zoo's names (reloop2_tf.models.MODELS), repeated so that --help needs no TensorFlow import;
# the run checks them against the zoo.
MODEL_NAMES = ("bst", "dcn", "dcnv2", "deepfm", "dien", "din")


def register(subparsers) -> None:
    """Adds ``pipeline run`` and ``pipeline compile`` to ``reloop2``'s subparsers."""
    pipeline = subparsers.add_parser(
        "pipeline", help="TFX pipeline: validate, train, evaluate and push a ReLoop2 model",
        description="The TFX pipeline: CsvExampleGen (time split), StatisticsGen, SchemaGen, "
                    "ExampleValidator, Trainer, Evaluator and Pusher. `run` runs it here; "
                    "`compile` writes the Kubeflow Pipelines v2 / Vertex spec.")
    commands = pipeline.add_subparsers(dest="pipeline_command", required=True)
    run = commands.add_parser(
        "run", help="run the pipeline locally (LocalDagRunner, SQLite ML Metadata, Beam "
                    "DirectRunner)",
        description="Split the canonical CSV by time, run the pipeline on this machine and push "
                    "a blessed model as a new numbered version of --serving-dir.")
    add_run_arguments(run)
    run.set_defaults(func=run_command)
    compile_ = commands.add_parser(
        "compile", help="compile the pipeline to a Kubeflow Pipelines v2 JSON spec",
        description="Compile the same pipeline for Kubeflow Pipelines v2 / Vertex AI Pipelines "
                    "(no cluster needed).")
    add_compile_arguments(compile_)
    compile_.set_defaults(func=compile_command)


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``reloop2 pipeline run``."""
    parser.add_argument("--data", required=True,
                        help="canonical CSV (reloop2 data prepare) or the directory holding it")
    parser.add_argument("--serving-dir", required=True,
                        help="TF-Serving base directory; a blessed model becomes a new version")
    parser.add_argument("--pipeline-root", default=configs.LOCAL_PIPELINE_ROOT,
                        help="artifacts, ML Metadata (metadata.sqlite) and the reference schema "
                             "(default: %(default)s)")
    parser.add_argument("--model", default=configs.MODEL_NAME, choices=MODEL_NAMES,
                        help="zoo model (default: %(default)s)")
    parser.add_argument("--schema", default=None,
                        help="schema.pbtxt to validate against (default: the pipeline root's "
                             "reference schema, inferred and stored by the first run)")
    parser.add_argument("--train-steps", type=int, default=configs.TRAIN_STEPS,
                        help="training batches (default: %(default)s)")
    parser.add_argument("--train-fraction", type=float, default=configs.TRAIN_FRACTION,
                        help="oldest share of rows used for training; the rest evaluates "
                             "(default: %(default)s)")
    parser.add_argument("--min-auc", type=float, default=configs.MIN_AUC,
                        help="bless only at eval AUC >= this (default: %(default)s)")
    parser.add_argument("--max-auc-drop", type=float, default=configs.MAX_AUC_DROP,
                        help="bless only if AUC drops at most this below the last blessed "
                             "model (default: %(default)s)")
    parser.add_argument("--verbose", action="store_true",
                        help="keep TFX's full INFO logs (launcher and ML Metadata dumps)")
    return parser


class _ProgressOnly(logging.Filter):
    """Keeps TFX's 'Component X is running/finished' lines and warnings, drops its IR dumps."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or str(record.msg).startswith("Component ")


def add_compile_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``reloop2 pipeline compile``."""
    parser.add_argument("--output", required=True, help="the JSON file to write")
    parser.add_argument("--pipeline-root", default=configs.KUBEFLOW_PIPELINE_ROOT,
                        help="storage every step can reach (default: %(default)s)")
    parser.add_argument("--data-root", default=configs.KUBEFLOW_DATA_ROOT,
                        help="train/ and eval/ CSV folders from `python -m "
                             "tfx_pipeline.data_split` (default: %(default)s)")
    parser.add_argument("--serving-dir", default=configs.KUBEFLOW_SERVING_DIR,
                        help="where the Pusher writes versions (default: %(default)s)")
    parser.add_argument("--image", default=configs.PIPELINE_IMAGE,
                        help="container image of every step (default: %(default)s)")
    parser.add_argument("--model", default=configs.MODEL_NAME, choices=MODEL_NAMES)
    parser.add_argument("--schema", default=None,
                        help="schema.pbtxt on shared storage to validate against (default: "
                             "infer with SchemaGen)")
    parser.add_argument("--train-steps", type=int, default=configs.TRAIN_STEPS)
    parser.add_argument("--min-auc", type=float, default=configs.MIN_AUC)
    parser.add_argument("--max-auc-drop", type=float, default=configs.MAX_AUC_DROP)
    return parser


def _fail(command: str, message: str, code: int = 2) -> int:
    print(f"reloop2 pipeline {command}: error: {message}", file=sys.stderr)
    return code


def _check_common(args: argparse.Namespace) -> str | None:
    if args.train_steps < 1:
        return f"--train-steps must be >= 1, got {args.train_steps}"
    if not 0.0 <= args.min_auc <= 1.0:
        return f"--min-auc must be in [0, 1], got {args.min_auc}"
    if not args.max_auc_drop >= 0.0:
        return f"--max-auc-drop must be >= 0, got {args.max_auc_drop}"
    return None


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


def _one_line(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def run_command(args: argparse.Namespace) -> int:
    """Runs ``reloop2 pipeline run``; returns the exit code (0 also when nothing is blessed)."""
    problem = _check_common(args)
    if problem is None and not 0.0 < args.train_fraction < 1.0:
        problem = f"--train-fraction must be in (0, 1), got {args.train_fraction}"
    if problem is None and args.schema is not None and not os.path.isfile(args.schema):
        problem = f"--schema {args.schema} does not exist"
    if problem is None and not os.path.exists(args.data):
        problem = f"--data {args.data} does not exist"
    if problem:
        return _fail("run", problem)
    if not args.verbose:
        # TFX logs thousands of lines per run (pipeline IR, MLMD protos) through absl at INFO.
        logging.getLogger("absl").addFilter(_ProgressOnly())
        logging.getLogger("apache_beam").setLevel(logging.WARNING)

    from reloop2_tf.data.errors import DataError
    from tfx_pipeline import local_runner
    from tfx_pipeline.components import DataAnomaliesError

    try:
        result = local_runner.run(
            args.data, args.serving_dir, pipeline_root=args.pipeline_root,
            model_name=args.model, schema_path=args.schema, train_fraction=args.train_fraction,
            train_steps=args.train_steps, min_auc=args.min_auc, max_auc_drop=args.max_auc_drop)
    except DataError as err:
        return _fail("run", str(err))
    except Exception as err:  # noqa: BLE001  (a failed component: report it in one line)
        cause = _root_cause(err)
        if isinstance(cause, DataAnomaliesError):
            reference = local_runner.reference_schema_path(os.path.abspath(args.pipeline_root))
            hint = (f" (if the change is intended, edit or delete {reference})"
                    if args.schema is None and os.path.isfile(reference) else "")
            # Every anomaly is listed: the user needs all of them to fix the data.
            return _fail("run", f"{_one_line(cause, 4000)}; nothing was trained or pushed{hint}",
                         code=1)
        return _fail("run", f"the pipeline failed: {type(cause).__name__}: {_one_line(cause)}",
                     code=1)
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
            lines.append(f"not blessed: {_one_line(failure, 300)}")
    if result.pushed_path:
        lines.append(f"pushed: {result.pushed_path}")
    else:
        lines.append(f"nothing pushed; {result.serving_dir} is unchanged")
    lines.append(f"schema: {result.schema_path or 'inferred by this run'}; ML Metadata: "
                 f"{result.metadata_path}; wall time {result.wall_seconds} s")
    return "\n".join(lines)


def compile_command(args: argparse.Namespace) -> int:
    """Runs ``reloop2 pipeline compile``; returns the exit code."""
    problem = _check_common(args)
    if problem:
        return _fail("compile", problem)
    from tfx_pipeline import kubeflow_v2_runner

    try:
        spec = kubeflow_v2_runner.compile_pipeline(
            args.output, pipeline_root=args.pipeline_root, data_root=args.data_root,
            serving_dir=args.serving_dir, image=args.image, model_name=args.model,
            schema_path=args.schema, train_steps=args.train_steps, min_auc=args.min_auc,
            max_auc_drop=args.max_auc_drop)
    except (OSError, ValueError) as err:
        return _fail("compile", _one_line(err))
    names = kubeflow_v2_runner.component_names(spec)
    print(f"wrote {args.output}: {len(names)} components ({', '.join(names)})")
    return 0
