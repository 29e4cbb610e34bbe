"""The Trainer's ``run_fn``: a zoo model plus its error memory, exported for TF Serving.

Steps: parse the train split per the validated schema, build the zoo model named in
``custom_config``, train it for ``train_steps`` batches, wrap it in ``ReLoop2Model``, centre the
memory on training rows, warm-start the memory with the newest training rows' labels (a fresh
deployment then compensates from its first request), export it with ``export_serving_model``,
and add the serialized-Example signature the Evaluator calls.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from typing import Any

# Before TensorFlow: the zoo is tf-keras (Keras 2). The package sets it too; this module may be
# imported by a launcher that imports nothing else of ours first.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import pandas as pd

from reloop2_tf import ErrorCompensation, LSHErrorMemory, ReLoop2Model, default_srp_centre
from reloop2_tf.data import id_bits_for_frame, id_groups_for_frame
from reloop2_tf.export import export_serving_model
from reloop2_tf.models import HIDDEN_LAYER, build_model
from reloop2_tf.training import compile_model
from reloop2_tfx import configs, examples
from reloop2_tfx.eval_signature import add_examples_signature

logger = logging.getLogger(__name__)

# Warm-start writes in chunks of this many rows, as feedback would arrive: the memory's trust
# learns from each chunk read before it is written.
_WRITE_BATCH = 1000


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """The Trainer's ``custom_config`` (see ``pipeline.create_pipeline``)."""

    model_name: str = configs.MODEL_NAME
    batch_size: int = configs.BATCH_SIZE
    learning_rate: float = configs.LEARNING_RATE
    history_length: int = configs.HISTORY_LENGTH
    warm_start_rows: int = configs.WARM_START_ROWS
    center_rows: int = configs.CENTER_ROWS
    num_tables: int = configs.NUM_TABLES
    num_bits: int = configs.NUM_BITS
    id_groups: str | list = configs.ID_GROUPS
    id_bits: str | int = configs.ID_BITS
    compensation_weight: float = configs.COMPENSATION_WEIGHT
    half_life: float | None = configs.HALF_LIFE

    @classmethod
    def from_custom_config(cls, config: dict[str, Any] | None) -> TrainerSettings:
        """Unknown keys are an error: a typo must not silently train with a default."""
        config = dict(config or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown Trainer custom_config key(s) {unknown}; "
                             f"known: {sorted(known)}")
        return cls(**config)


def _frame(rows: dict[str, np.ndarray], spec) -> pd.DataFrame:
    """The one-value-per-row features of ``rows`` as a frame, in the rows' order."""
    return pd.DataFrame({name: rows[name] for name in spec.names if np.ndim(rows[name]) == 1})


def _batches(arrays: dict[str, np.ndarray], size: int):
    n = len(next(iter(arrays.values())))
    for start in range(0, n, size):
        yield {k: v[start:start + size] for k, v in arrays.items()}


def run_fn(fn_args) -> None:
    """TFX Trainer entry point (``Trainer(run_fn="reloop2_tfx.trainer_module.run_fn")``)."""
    settings = TrainerSettings.from_custom_config(fn_args.custom_config)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[phase] = round(now - clock, 1)
        clock = now

    types = examples.column_types(examples.read_schema(fn_args.schema_path))
    spec = examples.feature_spec_from_columns(types, settings.history_length)
    logger.info("training %s on features %s for %d steps", settings.model_name, spec.names,
                fn_args.train_steps)

    train = examples.examples_dataset(
        fn_args.train_files, types, spec, settings.batch_size,
        shuffle_buffer=50 * settings.batch_size, repeat=True).map(examples.split_label)
    base = build_model(settings.model_name, spec)
    compile_model(base, settings.learning_rate)
    history = base.fit(train, steps_per_epoch=fn_args.train_steps, epochs=1, verbose=2)
    logger.info("training: %s", {k: float(v[-1]) for k, v in history.history.items()})
    lap("build+fit")

    ordered = examples.examples_dataset(fn_args.train_files, types, spec, 4096, with_time=True)
    center = examples.first_rows(ordered, settings.center_rows)
    id_groups = settings.id_groups
    if id_groups == "auto":  # the sides of the columns, read off the centring rows
        id_groups = id_groups_for_frame(_frame(center, spec))
    newest = examples.newest_rows(ordered, settings.warm_start_rows)
    id_bits = settings.id_bits
    if id_bits == "auto":  # the id tables sized to the keys of the newest training rows
        id_bits = id_bits_for_frame(_frame(newest, spec), id_groups)
    logger.info("memory id groups: %s, id tables' bits: %s", id_groups, id_bits)
    model = ReLoop2Model(base, hidden_layer=HIDDEN_LAYER, compensation=ErrorCompensation(
        LSHErrorMemory(num_tables=settings.num_tables, num_bits=settings.num_bits,
                       half_life=settings.half_life, id_groups=id_groups, id_bits=id_bits,
                       srp_centre=default_srp_centre(id_groups) if settings.num_tables else None),
        compensation_weight=settings.compensation_weight))
    model.set_center({name: center[name] for name in spec.names})
    lap("center")

    written = 0.0
    for batch in _batches(newest, _WRITE_BATCH):
        # Training rows fill the tables but do not teach the combiner (ReLoop2Model.update_memory).
        written += float(model.update_memory({name: batch[name] for name in spec.names},
                                             batch[examples.LABEL_KEY].astype(np.float32),
                                             learn_trust=False))
    logger.info("memory warm-started with the %d newest training rows (timestamps %d..%d), "
                "weight %.0f", len(newest[examples.LABEL_KEY]), newest[examples.TIME_KEY][0],
                newest[examples.TIME_KEY][-1], written)
    lap("warm start")

    warmup = {name: newest[name][-4:] for name in spec.names}
    # export_serving_model writes with local renames, so export to local disk first; the final
    # save may go to remote storage.
    with tempfile.TemporaryDirectory(prefix="reloop2-export-") as tmp:
        exported = export_serving_model(model, os.path.join(tmp, "model"),
                                        warmup_features=warmup)
        lap("export_serving_model")
        add_examples_signature(exported, fn_args.serving_model_dir, types, spec)
        lap("eval signature")
    logger.info("serving model written to %s; seconds per phase: %s",
                fn_args.serving_model_dir, seconds)
