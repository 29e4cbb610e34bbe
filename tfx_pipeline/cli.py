"""``reloop2 pipeline run`` and ``reloop2 pipeline compile`` (SPEC section 6).

The command line imports the runners (``local_runner``, ``kubeflow_v2_runner``), never the
reverse; the flags live in ``flags``. TFX is imported only when a command runs, so
``reloop2 --help`` stays fast.
"""

from __future__ import annotations

from reloop2_tfx.flags import MODEL_NAMES, add_compile_arguments, add_run_arguments
from reloop2_tfx.kubeflow_v2_runner import compile_command
from reloop2_tfx.local_runner import format_result, run_command

__all__ = ["MODEL_NAMES", "add_compile_arguments", "add_run_arguments", "compile_command",
           "format_result", "register", "run_command"]


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
