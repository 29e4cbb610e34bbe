"""The cost of compensation on a DCN forward pass (``tf.function`` and SavedModel signature)."""

from __future__ import annotations

import logging
import tempfile

import numpy as np

from memory_bench.structures import COMPENSATION_WEIGHT, KNN_TEMPERATURE, TOP_K
from memory_bench.timing import interleaved, load_average

logger = logging.getLogger("memory_benchmark")


def random_features(spec, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from reloop2_tf.features import DenseFeature, SequenceFeature

    out = {}
    for feature in spec.features:
        if isinstance(feature, DenseFeature):
            out[feature.name] = rng.standard_normal(batch).astype(np.float32)
        elif isinstance(feature, SequenceFeature):
            out[feature.name] = np.array([" ".join(map(str, rng.integers(1, 4000, 20)))
                                          for _ in range(batch)], dtype=object)
        else:
            out[feature.name] = rng.integers(1, 5000, batch).astype(str).astype(object)
    return out


def bench_dcn(args) -> dict:
    from reloop2_tf._keras import tf
    from reloop2_tf.export import export_serving_model, feature_specs
    from reloop2_tf.features import FeatureSpec
    from reloop2_tf.layers.compensation import ErrorCompensation
    from reloop2_tf.layers.knn_memory import KNNErrorMemory
    from reloop2_tf.layers.lsh_memory import LSHErrorMemory
    from reloop2_tf.models import build_model
    from reloop2_tf.wrapper import ReLoop2Model

    rng = np.random.default_rng(args.seed)
    spec = FeatureSpec.movielens()
    base = build_model("dcn", spec)
    models = {
        f"sketch_k{k}_l{l}": ReLoop2Model(base, hidden_layer="hidden", compensation=ErrorCompensation(
            LSHErrorMemory(num_tables=k, num_bits=l, half_life=None),
            compensation_weight=COMPENSATION_WEIGHT, self_tuning=False))
        for k, l in args.dcn_sketches}  # the default first; ML-1M DCN's validated pick; small
    models["knn"] = ReLoop2Model(base, hidden_layer="hidden", compensation=ErrorCompensation(
        KNNErrorMemory(capacity=args.dcn_knn_capacity, top_k=TOP_K),
        compensation_weight=COMPENSATION_WEIGHT, temperature=KNN_TEMPERATURE,
        self_tuning=False))
    default = f"sketch_k{args.dcn_sketches[0][0]}_l{args.dcn_sketches[0][1]}"
    specs = feature_specs(models[default])
    features = {k: tf.constant(v) for k, v in random_features(spec, args.dcn_batch, rng).items()}
    encode_fn = tf.function(models[default].encode, input_signature=[specs])
    hidden_width = int(encode_fn(features)[1].shape[-1])

    label_spec = tf.TensorSpec([None])
    writes = {name: tf.function(m.update_memory, input_signature=[specs, label_spec])
              for name, m in models.items()}
    written = 0
    while written < args.dcn_knn_capacity:  # fill every memory with the DCN's own hiddens
        batch = {k: tf.constant(v) for k, v in random_features(spec, 1024, rng).items()}
        labels = tf.constant((rng.random(1024) < 0.3).astype(np.float32))
        for write in writes.values():
            write(batch, labels)
        written += 1024

    base_fn = tf.function(lambda f: base(f, training=False), input_signature=[specs])
    reads = {name: tf.function(m.compensate, input_signature=[specs]) for name, m in models.items()}
    # Where the default sketch's time goes, on the hidden vectors of this batch.
    memory = models[default].memory
    logits, hidden = encode_fn(features)
    hid = tf.TensorSpec([None, hidden_width])
    parts = {
        f"{default}:projection_matmul": tf.function(lambda h: tf.matmul(h, memory.projections),
                                                    input_signature=[hid]),
        f"{default}:bucket_ids": tf.function(memory.bucket_ids, input_signature=[hid]),
        f"{default}:lookup": tf.function(memory.lookup, input_signature=[hid]),
    }
    on_hidden = tf.function(models[default].compensation.compensate,
                            input_signature=[tf.TensorSpec([None]), hid])
    variants = {"base": lambda: base_fn(features).numpy(),
                "encode": lambda: encode_fn(features)[0].numpy(),
                **{name: (lambda r=read: r(features)["probability"].numpy())
                   for name, read in reads.items()},
                **{name: (lambda f=fn: tf.nest.map_structure(lambda x: x.numpy(), f(hidden)))
                   for name, fn in parts.items()},
                f"{default}:compensate_on_hidden":
                    lambda: on_hidden(logits, hidden)["probability"].numpy()}
    logger.info("DCN at batch %d: tf.function", args.dcn_batch)
    # Fast variants get many samples: run-to-run noise on a busy machine is ~10% of the base.
    timings = interleaved(variants, args.rounds * 6, args.budget * 2)
    base_s = timings["base"]["median_s"]
    result: dict = {
        "batch": args.dcn_batch, "hidden_width": hidden_width,
        "knn_capacity": args.dcn_knn_capacity, "default_sketch": default,
        "tf_function": {name: dict(t, median_ms=t["median_s"] * 1e3,
                                   ratio_to_sketch=t["median_s"] / timings[default]["median_s"],
                                   overhead_vs_base=t["median_s"] / base_s - 1.0)
                        for name, t in timings.items()},
        "load_average": load_average(),
    }
    if args.savedmodel:
        logger.info("DCN at batch %d: SavedModel signatures", args.dcn_batch)
        with tempfile.TemporaryDirectory() as tmp:
            module = tf.Module()
            module.base = base
            module.predict = tf.function(lambda f: {"logit": base(f, training=False)},
                                         input_signature=[specs])
            tf.saved_model.save(module, f"{tmp}/base", signatures={"serving_default": module.predict})
            export_serving_model(models[default], f"{tmp}/reloop2")
            base_sig = tf.saved_model.load(f"{tmp}/base").signatures["serving_default"]
            comp_sig = tf.saved_model.load(f"{tmp}/reloop2").signatures["predict"]
            variants = {"base": lambda: base_sig(**features)["logit"].numpy(),
                        default: lambda: comp_sig(**features)["probability"].numpy()}
            timings = interleaved(variants, args.rounds * 6, args.budget * 2)
        result["saved_model_signature"] = {
            name: dict(t, median_ms=t["median_s"] * 1e3,
                       overhead_vs_base=t["median_s"] / timings["base"]["median_s"] - 1.0)
            for name, t in timings.items()}
        result["saved_model_signature"]["load_average"] = load_average()
    return result
