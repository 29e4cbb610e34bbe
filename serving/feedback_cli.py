"""``reloop2 feedback run``: the command line of the Beam feedback pipeline (``feedback.py``).

Arguments this parser does not know are Beam pipeline options (``--runner DataflowRunner``,
``--project``, ``--temp_location``, ...) and are passed through to ``PipelineOptions``. Beam and
TensorFlow are imported only when the command runs, so ``reloop2 --help`` stays light.
"""

from __future__ import annotations

import argparse
import json
import sys


class _BeamArgsParser(argparse.ArgumentParser):
    """Keeps the arguments it does not know in ``beam_args`` instead of failing on them."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = super().parse_known_args(args, namespace)
        namespace.beam_args = [*(getattr(namespace, "beam_args", None) or []), *extra]
        return namespace, []


def register_feedback(subparsers) -> None:
    """Adds the ``feedback`` group with its ``run`` command to ``reloop2``'s subparsers."""
    group = subparsers.add_parser(
        "feedback", help="deliver labelled feedback to every serving replica (Apache Beam)",
        description="Feedback pipelines over the served memory.")
    commands = group.add_subparsers(dest="feedback_command", required=True)
    run = commands.add_parser(
        "run", allow_abbrev=False,
        help="window labelled rows, build each window's exact sketch delta, merge it into every "
             "target once",
        description="Read labelled rows (canonical CSV, JSON lines, Pub/Sub or Kafka), group them "
                    "in windows, compute each window's sketch delta with an in-process copy of "
                    "the served model, and send one memory_merge per window to every target with "
                    "a write id derived from the input, so that a re-run adds nothing. Unknown "
                    "arguments are Beam pipeline options (--runner DataflowRunner|FlinkRunner|"
                    "SparkRunner, --project, --temp_location, ...); the default runner is the "
                    "DirectRunner. See docs/feedback.md.",
        epilog="example: reloop2 feedback run --model /models/reloop2 --input data.csv "
               "--targets pod-0:8500,pod-1:8500 --window-rows 10000")
    run.__class__ = _BeamArgsParser
    run.add_argument("--model", required=True,
                     help="the served SavedModel, or its TF-Serving base dir (newest version)")
    run.add_argument("--input", required=True,
                     help="a file or glob (local or gs://), pubsub:projects/P/subscriptions/S, "
                          "pubsub:projects/P/topics/T, or kafka:BOOTSTRAP_SERVERS/TOPIC")
    run.add_argument("--targets", required=True, help="HOST:PORT,HOST:PORT,... of every replica")
    window = run.add_mutually_exclusive_group()
    window.add_argument("--window-rows", type=int, default=None,
                        help="rows per window, in file order (files; default 10000)")
    window.add_argument("--window-seconds", type=float, default=None,
                        help="fixed event-time windows (streams; files need a timestamp column)")
    run.add_argument("--format", choices=("csv", "jsonl"), default=None,
                     help="file format (default: jsonl for .jsonl/.json, else csv)")
    run.add_argument("--model-name", default="reloop2")
    run.add_argument("--batch-size", type=int, default=1024,
                     help="rows per write into the local copy of the model")
    run.add_argument("--retries", type=int, default=3,
                     help="retries of a call after UNAVAILABLE / DEADLINE_EXCEEDED")
    run.add_argument("--timeout", type=float, default=30.0, help="seconds per gRPC call")
    run.add_argument("--source-id", default=None,
                     help="name of the input in the write ids (default: its absolute path)")
    run.add_argument("--report", default=None,
                     help="also keep the per-window reports here (JSON lines; gs:// for remote "
                          "runners)")
    run.set_defaults(func=_run, beam_args=[])


def _run(args: argparse.Namespace) -> int:
    from reloop2_serving.feedback import run_feedback

    try:
        summary = run_feedback(
            args.model, args.input, args.targets, window_rows=args.window_rows,
            window_seconds=args.window_seconds, fmt=args.format, model_name=args.model_name,
            batch_size=args.batch_size, retries=args.retries, timeout=args.timeout,
            source_id=args.source_id, report=args.report, beam_args=args.beam_args)
    except RuntimeError as err:  # e.g. no target answered; Beam wraps a DoFn's error in it
        lines = str(err).strip().splitlines()
        print(f"reloop2 feedback run: error: {lines[-1] if lines else err!r}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    failed = summary.get("unhealed") or []
    if failed:
        print(f"reloop2 feedback run: {len(failed)} target(s) still miss windows: "
              f"{', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
