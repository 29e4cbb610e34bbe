"""What a multi-valued cross costs: the default memory on a zoo DCN with ``user x genre`` against
the same memory with ``user x genre:each`` (the genre values list 1 to 3 tokens, ``"a|b"``),
interleaved in one process (docs/history/performance.md, "Multi-valued crosses").

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/each_cost.py --output runs/each_cost.json

Prints, per batch size, the median ms of the base model, of ``compensate`` with each memory
(``tf.function``), and of a write by keys of 256 rows with each.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from cost_bench import stats  # noqa: E402
from cost_bench.forward import MOVIELENS_GROUPS  # noqa: E402
from random_rows import make_features, report  # noqa: E402

EACH_GROUPS = [["user_id", "genre:each"] if g == ["user_id", "genre"] else g
               for g in MOVIELENS_GROUPS]


def _rows(spec, n: int, rng) -> dict:
    """Random MovieLens rows whose genre lists 1 to 3 of 18 genres."""
    rows = make_features(spec, n, rng)
    rows["genre"] = np.array(["|".join(f"g{g}" for g in rng.choice(18, rng.integers(1, 4),
                                                                    replace=False))
                              for _ in range(n)], dtype=object)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="1,1024")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    import reloop2_tf as r2
    from reloop2_tf import export as ex
    from reloop2_tf._keras import keras, tf

    rng = np.random.default_rng(0)
    spec = r2.FeatureSpec.movielens()
    keras.utils.set_random_seed(0)
    base = r2.build_model("dcn", spec)
    models = {name: r2.ReLoop2Model(base, compensation=r2.ErrorCompensation(
        r2.LSHErrorMemory(id_groups=groups))) for name, groups in (
            ("user x genre", MOVIELENS_GROUPS), ("user x genre:each", EACH_GROUPS))}
    specs = ex.feature_specs(models["user x genre"])
    warm = _rows(spec, 2048, rng)
    labels = rng.integers(0, 2, 2048).astype(np.float32)
    for model in models.values():
        model.update_memory(warm, labels)
    results = {"key_columns": {n: m.memory.num_key_columns for n, m in models.items()},
               "batches": {}}
    for batch in map(int, args.batches.split(",")):
        x = {k: tf.constant(v) for k, v in _rows(spec, batch, rng).items()}
        fns = {"base": tf.function(lambda f: base(f, training=False), input_signature=[specs])}
        for name, model in models.items():
            fns[name] = tf.function(lambda f, m=model: m.compensate(f)["probability"],
                                    input_signature=[specs])
        for fn in fns.values():
            fn(x)
        medians = stats.interleaved_medians({n: (lambda f=f: f(x)) for n, f in fns.items()},
                                            args.rounds, args.calls)
        results["batches"][batch] = {n: {"ms": s * 1e3, "ratio": s / medians["base"]}
                                     for n, s in medians.items()}
    writes = {}
    x = _rows(spec, 256, rng)
    y = tf.constant(rng.integers(0, 2, 256).astype(np.float32))
    for name, model in models.items():
        out = model.compensate(x)
        keys, probs = out["memory_keys"], out["base_probability"]
        write = tf.function(lambda k, p, m=model: m.update_memory_by_keys(k, p, y))
        write(keys, probs)
        writes[name] = lambda w=write, k=keys, p=probs: w(k, p)
    results["write_by_keys_256_ms"] = {n: s * 1e3 for n, s in stats.interleaved_medians(
        writes, args.rounds, args.calls).items()}
    report(results, args.output)


if __name__ == "__main__":
    main()
