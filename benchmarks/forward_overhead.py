"""Forward-pass overhead of the memory on a zoo model: base vs base + memory, interleaved.

For each batch size, one traced ``tf.function`` per variant (the base model's logits; the
``ReLoop2Model.compensate`` of the default memory with the MovieLens id groups; the paper's
64 x 12-bit sketch), called in interleaved rounds on the same inputs; prints the median
milliseconds per call and the ratio to the base, and writes them as JSON.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/forward_overhead.py --output runs/forward.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MOVIELENS_GROUPS = [["item_id"], ["user_id", "genre"], ["user_id", "release_year"],
                    ["item_id", "age"], ["item_id", "gender"], ["item_id", "occupation"]]


def features(spec, batch: int, rng) -> dict:
    out = {}
    for feature in spec.features:
        if hasattr(feature, "max_length"):
            out[feature.name] = np.array([" ".join(map(str, rng.integers(1, 3000, 20)))
                                          for _ in range(batch)], dtype=object)
        else:
            out[feature.name] = rng.integers(1, 3000, batch).astype(str).astype(object)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dcn")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=10, help="calls per variant per round")
    parser.add_argument("--output")
    args = parser.parse_args(argv)

    import reloop2_tf as r2
    from reloop2_tf._keras import keras, tf
    from reloop2_tf.export import feature_specs

    keras.utils.set_random_seed(0)
    spec = r2.FeatureSpec.movielens()
    base = r2.build_model(args.model, spec)
    variants = {
        "reloop2 (default memory)": r2.ReLoop2Model(base, compensation=r2.ErrorCompensation(
            r2.LSHErrorMemory(id_groups=MOVIELENS_GROUPS))),
        "reloop2-paper (64 x 12 SRP)": r2.ReLoop2Model(base, compensation=r2.ErrorCompensation.paper()),
    }
    specs = feature_specs(next(iter(variants.values())))
    fns = {"base": tf.function(lambda f: base(f, training=False), input_signature=[specs])}
    for name, model in variants.items():
        fns[name] = tf.function(lambda f, m=model: m.compensate(f)["probability"],
                                input_signature=[specs])
    rng = np.random.default_rng(0)
    results = {}
    for batch in args.batches:
        x = {k: tf.constant(v) for k, v in features(spec, batch, rng).items()}
        for fn in fns.values():
            fn(x)  # trace
        times = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                start = time.perf_counter()
                for _ in range(args.calls):
                    fn(x)
                times[name].append((time.perf_counter() - start) / args.calls * 1e3)
        medians = {name: float(np.median(t)) for name, t in times.items()}
        results[batch] = {name: {"ms": ms, "ratio": ms / medians["base"]}
                          for name, ms in medians.items()}
        for name, r in results[batch].items():
            print(f"batch {batch:>5}  {name:<30} {r['ms']:8.3f} ms  x{r['ratio']:.2f}")
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} (other jobs on the machine distort absolute times)")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"model": args.model, "load_average": load, "batches": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
