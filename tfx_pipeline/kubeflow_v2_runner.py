"""Compiles the same pipeline to a Kubeflow Pipelines v2 / Vertex AI Pipelines JSON spec.

Nothing runs and no cluster is contacted: the JSON is what you upload (KFP UI, ``kfp`` client)
or submit (``google.cloud.aiplatform.PipelineJob``); see docs/pipeline.md. Every step runs in
``configs.PIPELINE_IMAGE``, which must contain this project and set ``TF_USE_LEGACY_KERAS=1``
(tfx_pipeline/Dockerfile). ML Metadata is the cluster's, so no connection config is given.

Usage: ``reloop2 pipeline compile --output pipeline.json`` or
``python -m reloop2_tfx.kubeflow_v2_runner --output pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from reloop2_tfx import configs, flags

logger = logging.getLogger(__name__)


def compile_pipeline(output: str, pipeline_root: str = configs.KUBEFLOW_PIPELINE_ROOT,
                     data_root: str = configs.KUBEFLOW_DATA_ROOT,
                     serving_dir: str = configs.KUBEFLOW_SERVING_DIR,
                     image: str = configs.PIPELINE_IMAGE,
                     pipeline_name: str = configs.PIPELINE_NAME,
                     beam_pipeline_args: list[str] | None = None,
                     **pipeline_kwargs: Any) -> dict[str, Any]:
    """Writes the KFP v2 pipeline spec to ``output`` and returns it as a dict.

    Args:
        output: str. The JSON file to write (its folder is created).
        pipeline_root, data_root, serving_dir: storage every step can reach (gs://...).
            ``data_root`` holds ``train/`` and ``eval/`` from ``reloop2_tfx.data_split``.
        image: str. The container image of every step.
        pipeline_kwargs: more ``create_pipeline`` arguments (``model_name``, ``schema_path``,
            ``train_steps``, ``min_auc``, ...).
    """
    from tfx import v1 as tfx

    from reloop2_tfx.pipeline import create_pipeline

    pipeline = create_pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root, data_root=data_root,
        serving_dir=serving_dir,
        beam_pipeline_args=(configs.KUBEFLOW_BEAM_PIPELINE_ARGS if beam_pipeline_args is None
                            else beam_pipeline_args),
        **pipeline_kwargs)
    output = os.path.abspath(output) if "://" not in output else output
    folder, filename = os.path.split(output)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=folder, output_filename=filename)
    runner.run(pipeline, write_out=True)
    with tfx.dsl.io.fileio.open(output, "r") as fh:
        spec = json.load(fh)
    logger.info("wrote the Kubeflow v2 pipeline spec of %s to %s", pipeline_name, output)
    return spec


def component_names(spec: dict[str, Any]) -> list[str]:
    """The task names of a compiled spec's root DAG (the component ids)."""
    spec = spec.get("pipelineSpec", spec)
    return sorted(spec["root"]["dag"]["tasks"])


def compile_command(args: argparse.Namespace) -> int:
    """Runs ``reloop2 pipeline compile``; returns the exit code."""
    problem = flags.check_common(args)
    if problem:
        return flags.fail("compile", problem)
    try:
        spec = compile_pipeline(
            args.output, pipeline_root=args.pipeline_root, data_root=args.data_root,
            serving_dir=args.serving_dir, image=args.image, model_name=args.model,
            schema_path=args.schema, train_steps=args.train_steps, min_auc=args.min_auc,
            max_auc_drop=args.max_auc_drop)
    except (OSError, ValueError) as err:
        return flags.fail("compile", flags.one_line(err))
    names = component_names(spec)
    print(f"wrote {args.output}: {len(names)} components ({', '.join(names)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m reloop2_tfx.kubeflow_v2_runner``: the flags of ``reloop2 pipeline compile``."""
    parser = argparse.ArgumentParser(prog="python -m reloop2_tfx.kubeflow_v2_runner")
    flags.add_compile_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return compile_command(args)


if __name__ == "__main__":
    sys.exit(main())
