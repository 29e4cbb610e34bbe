"""The ReLoop2 TFX pipeline: validate the data, train a zoo model with its error memory, evaluate
it against the last blessed model, and push it to a directory TF Serving watches.

``create_pipeline`` only builds components; the runners (``local_runner.py``,
``kubeflow_v2_runner.py``) decide where it runs. Component ids:

    CsvExampleGen (TypedCsvExampleGen) -> StatisticsGen -> SchemaGen | ImportSchemaGen
      -> ExampleValidator -> ValidationGate -> Trainer
      -> Evaluator (+ latest_blessed_model_resolver) -> Pusher

There is no Transform. The zoo models hash raw ids inside the graph, split the history string
themselves, and take no dense feature that would need scaling, so the exported SavedModel
already accepts what a TF Serving client sends (raw ids as strings); Transform would add a
Beam pass and a second graph that serving clients would have to mirror, for nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

from reloop2_tfx import configs
from reloop2_tfx.components import AtomicPusher, ValidationGate
from reloop2_tfx.data_split import EVAL_SPLIT, TRAIN_SPLIT
from reloop2_tfx.example_gen import TypedCsvExampleGen

TRAINER_RUN_FN = "reloop2_tfx.trainer_module.run_fn"
# The read-only signature the Evaluator calls: serialized tf.Examples in, the same outputs as
# `predict` out (see trainer_module).
EVAL_SIGNATURE = "predict_examples"  # eval_signature.EXAMPLES_SIGNATURE
LABEL_KEY = "label"
PREDICTION_KEY = "probability"

COMPONENT_IDS = ("CsvExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
                 "ValidationGate", "Trainer", "latest_blessed_model_resolver", "Evaluator",
                 "Pusher")


def eval_config(min_auc: float, max_auc_drop: float) -> tfma.EvalConfig:
    """AUC of the compensated ``probability`` on the eval split, with both blessing gates.

    The value threshold asks ``AUC >= min_auc``; the change threshold asks that the candidate
    lose at most ``max_auc_drop`` against the baseline (TFX drops it when there is none yet).
    """
    if not 0.0 <= min_auc <= 1.0:
        raise ValueError(f"`min_auc` should be in [0, 1]. Received: min_auc={min_auc!r}")
    if not max_auc_drop >= 0.0:
        raise ValueError(f"`max_auc_drop` should be >= 0. Received: max_auc_drop={max_auc_drop!r}")
    auc_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_auc}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -max_auc_drop}))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            # A generic SavedModel (not Keras, not an estimator): TFMA then skips its attempt
            # to load the directory with Keras and calls the named signature.
            model_type=tfma.TF_GENERIC,
            signature_name=EVAL_SIGNATURE,
            label_key=LABEL_KEY,
            prediction_key=PREDICTION_KEY)],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="AUC", threshold=auc_threshold),
            tfma.MetricConfig(class_name="BinaryCrossentropy"),
            tfma.MetricConfig(class_name="MeanLabel"),
            tfma.MetricConfig(class_name="MeanPrediction"),
        ])])


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    serving_dir: str,
    *,
    schema_path: str | None = None,
    model_name: str = configs.MODEL_NAME,
    train_steps: int = configs.TRAIN_STEPS,
    batch_size: int = configs.BATCH_SIZE,
    learning_rate: float = configs.LEARNING_RATE,
    history_length: int = configs.HISTORY_LENGTH,
    warm_start_rows: int = configs.WARM_START_ROWS,
    center_rows: int = configs.CENTER_ROWS,
    num_tables: int = configs.NUM_TABLES,
    num_bits: int = configs.NUM_BITS,
    id_groups: str | list = configs.ID_GROUPS,
    id_bits: str | int = configs.ID_BITS,
    compensation_weight: float = configs.COMPENSATION_WEIGHT,
    half_life: float | None = configs.HALF_LIFE,
    min_auc: float = configs.MIN_AUC,
    max_auc_drop: float = configs.MAX_AUC_DROP,
    beam_pipeline_args: Sequence[str] | None = None,
    metadata_connection_config=None,
    enable_cache: bool = False,
) -> tfx.dsl.Pipeline:
    """Builds the pipeline; runs nothing.

    Args:
        pipeline_name: str matching ``[a-z0-9][a-z0-9-]*``.
        pipeline_root: str. Where components write their artifacts.
        data_root: str. Holds ``train/*.csv`` and ``eval/*.csv`` (``data_split.split_csv``):
            eval rows are newer than every train row.
        serving_dir: str. TF-Serving base directory the Pusher adds numbered versions to.
        schema_path: optional ``schema.pbtxt`` to validate against (ImportSchemaGen). `None`
            infers the schema from this run's statistics (SchemaGen), which cannot catch a
            change that affects every row; pass the curated schema of an earlier run.
        model_name: str. A zoo model (``reloop2_tf.models.MODELS``). Defaults to `"deepfm"`.
        train_steps: int. Training steps (batches). Defaults to `configs.TRAIN_STEPS`.
        min_auc, max_auc_drop: float. The Evaluator's blessing gates (see ``eval_config``).
        beam_pipeline_args: Beam flags for the data components (see ``configs``).
        metadata_connection_config: ML Metadata connection; `None` for Kubeflow, which brings
            its own.
        enable_cache: bool. Reuse outputs of unchanged components. Defaults to `False`.
        The other arguments go to the Trainer's ``custom_config`` (see ``trainer_module``).
    """
    if id_bits != "auto" and (not isinstance(id_bits, int) or isinstance(id_bits, bool)
                              or not 1 <= id_bits <= 24):
        raise ValueError("`id_bits` should be 'auto' or an int in [1, 24]. "
                         f"Received: id_bits={id_bits!r}")
    if not isinstance(train_steps, int) or isinstance(train_steps, bool) or train_steps < 1:
        raise ValueError("`train_steps` should be an int >= 1. "
                         f"Received: train_steps={train_steps!r}")

    example_gen = TypedCsvExampleGen(
        input_base=data_root,
        # Two input folders instead of a hash split, so eval rows always follow train rows
        # in time (a hash split would train on the future).
        input_config=tfx.proto.Input(splits=[
            tfx.proto.Input.Split(name=TRAIN_SPLIT, pattern=f"{TRAIN_SPLIT}/*.csv"),
            tfx.proto.Input.Split(name=EVAL_SPLIT, pattern=f"{EVAL_SPLIT}/*.csv"),
        ])).with_id("CsvExampleGen")
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    if schema_path is None:
        schema_gen = tfx.components.SchemaGen(
            statistics=statistics_gen.outputs["statistics"],
            # No fixed shapes: a column may be missing in some rows (an empty history) without
            # that being an anomaly in later data.
            infer_feature_shape=False)
    else:
        schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_path).with_id("SchemaGen")
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    gate = ValidationGate(anomalies=example_validator.outputs["anomalies"],
                          schema=schema_gen.outputs["schema"])

    trainer = tfx.components.Trainer(
        # A module path, not module_file: the project is installed wherever the pipeline runs
        # (the pipeline image on Kubeflow), so TFX need not build and ship a wheel per run.
        run_fn=TRAINER_RUN_FN,
        examples=example_gen.outputs["examples"],
        schema=gate.outputs["validated_schema"],
        train_args=tfx.proto.TrainArgs(splits=[TRAIN_SPLIT], num_steps=train_steps),
        eval_args=tfx.proto.EvalArgs(splits=[EVAL_SPLIT]),
        custom_config={
            "model_name": model_name,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "history_length": history_length,
            "warm_start_rows": warm_start_rows,
            "center_rows": center_rows,
            "num_tables": num_tables,
            "num_bits": num_bits,
            "id_groups": id_groups,
            "id_bits": id_bits,
            "compensation_weight": compensation_weight,
            "half_life": half_life,
        })

    model_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        schema=gate.outputs["validated_schema"],
        eval_config=eval_config(min_auc, max_auc_drop))

    pusher = AtomicPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_dir)),
    ).with_id("Pusher")

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, gate, trainer,
                    model_resolver, evaluator, pusher],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_pipeline_args or []),
    )


def schema_output_dir(pipeline_root: str) -> str:
    """Where ``local_runner`` keeps the curated schema that later runs validate against."""
    return os.path.join(pipeline_root, "schema")
