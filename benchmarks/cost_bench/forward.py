"""Forward overhead of the default memory (part a) and multiply-adds (part d) on zoo models."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from cost_bench import macs, stats
from random_rows import make_features

# The default memory's groups on MovieLens (`reloop2_tf.data.id_groups_for_frame`).
MOVIELENS_GROUPS = [["item_id"], ["user_id", "genre"], ["user_id", "release_year"],
                    ["item_id", "age"], ["item_id", "gender"], ["item_id", "occupation"],
                    ["user_id", "item_id:popularity"]]


def default_model(name: str, **memory):
    """A zoo model with the default memory keyed by the MovieLens id groups (``memory``:
    other ``LSHErrorMemory`` arguments, for A/B runs)."""
    import reloop2_tf as r2

    base = r2.build_model(name, r2.FeatureSpec.movielens())
    memory = {"srp_centre": r2.default_srp_centre(MOVIELENS_GROUPS), **memory}
    return r2.ReLoop2Model(base, compensation=r2.ErrorCompensation(
        r2.LSHErrorMemory(id_groups=MOVIELENS_GROUPS, **memory)))


def _export_base(model, path: str) -> None:
    from reloop2_tf import export as ex
    from reloop2_tf._keras import tf

    module = tf.Module()
    module.model = model.base_model

    @tf.function(input_signature=[ex.feature_specs(model)])
    def predict(features):
        return {"base_probability": tf.sigmoid(tf.reshape(module.model(features, training=False),
                                                          [-1]))}

    tf.saved_model.save(module, path, signatures={"predict": predict})


def bench_model(name: str, batches, rounds: int, calls: int, rng, savedmodel: bool = True) -> dict:
    """Medians (ms) of base vs base + default memory, tf.function and SavedModel ``predict``."""
    from reloop2_tf import export as ex
    from reloop2_tf._keras import keras, tf

    keras.utils.set_random_seed(0)
    model = default_model(name)
    base = model.base_model
    specs = ex.feature_specs(model)
    # A few writes so that reads see filled buckets and a solved (non-zero) trust.
    warm = make_features(_spec(), 2048, rng)
    model.update_memory(warm, rng.integers(0, 2, 2048).astype(np.float32))
    fns = {"base tf.function": tf.function(lambda f: base(f, training=False),
                                           input_signature=[specs]),
           "memory tf.function": tf.function(lambda f: model.compensate(f)["probability"],
                                             input_signature=[specs])}
    if savedmodel:
        # Loaded into this process, the SavedModels need their files no more.
        with tempfile.TemporaryDirectory(prefix=f"reloop2-cost-{name}-") as tmp:
            _export_base(model, str(Path(tmp) / "base"))
            ex.export_serving_model(model, Path(tmp) / "reloop2")
            fns["base SavedModel"] = tf.saved_model.load(
                str(Path(tmp) / "base")).signatures["predict"]
            fns["memory SavedModel"] = tf.saved_model.load(
                str(Path(tmp) / "reloop2")).signatures["predict"]
    out = {"macs_per_row_batch_1": {}, "batches": {}}
    one = {k: tf.constant(v) for k, v in make_features(_spec(), 1, rng).items()}
    model_macs = macs.model_macs(base, one)
    memory_macs = macs.memory_macs_of(model, batch=1)
    out["macs_per_row_batch_1"] = {"model": model_macs, "memory": memory_macs,
                                   "memory_over_model": memory_macs["total"] / model_macs["total"]}
    for batch in batches:
        x = {k: tf.constant(v) for k, v in make_features(_spec(), batch, rng).items()}
        for fn in fns.values():
            fn(**x) if _is_signature(fn) else fn(x)
        calls_of = {n: (lambda f=fn: f(**x)) if _is_signature(fn) else (lambda f=fn: f(x))
                    for n, fn in fns.items()}
        medians = stats.interleaved_medians(calls_of, rounds, calls)
        row = {n: {"ms": s * 1e3} for n, s in medians.items()}
        for path in ("tf.function", "SavedModel"):
            if f"base {path}" in medians:
                row[f"memory {path}"]["ratio"] = stats.ratio(medians[f"memory {path}"],
                                                             medians[f"base {path}"])
        out["batches"][batch] = row
        logging.info("%s batch %d: %s", name, batch, row)
    return out


def _spec():
    import reloop2_tf as r2

    return r2.FeatureSpec.movielens()


def _is_signature(fn) -> bool:
    return hasattr(fn, "structured_input_signature") and not hasattr(fn, "get_concrete_function")
