"""The flags of ``reloop2 pipeline run|compile`` and of the runners' ``python -m`` entry points.

They live apart from the command line and the runners so that a runner never imports the command
line: ``cli`` imports the runners, and both import this module. No TFX import here, so
``reloop2 --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from reloop2_tfx import configs

# The zoo's names (reloop2_tf.models.MODELS), repeated so that --help needs no TensorFlow import;
# the run checks them against the zoo.
MODEL_NAMES = ("bst", "dcn", "dcnv2", "deepfm", "dien", "din")


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


def add_compile_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``reloop2 pipeline compile``."""
    parser.add_argument("--output", required=True, help="the JSON file to write")
    parser.add_argument("--pipeline-root", default=configs.KUBEFLOW_PIPELINE_ROOT,
                        help="storage every step can reach (default: %(default)s)")
    parser.add_argument("--data-root", default=configs.KUBEFLOW_DATA_ROOT,
                        help="train/ and eval/ CSV folders from `python -m "
                             "reloop2_tfx.data_split` (default: %(default)s)")
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


def fail(command: str, message: str, code: int = 2) -> int:
    """Prints ``reloop2 pipeline COMMAND: error: MESSAGE`` to stderr; returns the exit code."""
    print(f"reloop2 pipeline {command}: error: {message}", file=sys.stderr)
    return code


def check_common(args: argparse.Namespace) -> str | None:
    """The first problem with the flags that ``run`` and ``compile`` share, or None."""
    if args.train_steps < 1:
        return f"--train-steps must be >= 1, got {args.train_steps}"
    if not 0.0 <= args.min_auc <= 1.0:
        return f"--min-auc must be in [0, 1], got {args.min_auc}"
    if not args.max_auc_drop >= 0.0:
        return f"--max-auc-drop must be >= 0, got {args.max_auc_drop}"
    return None


def one_line(text: str, limit: int = 600) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
