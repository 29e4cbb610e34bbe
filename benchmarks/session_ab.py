"""Interleaved A/B of exported SavedModels in TF1 Sessions, the way a server runs them.

Each SavedModel is loaded into its own ``tf.compat.v1.Session`` and its signatures are run
through callables made from ``CallableOptions`` (no Python feed or fetch handling per call):
``predict`` at batch 1 and 1024 (``--batches``), and, where the model has it,
``update_memory_by_keys`` at batch 256 with the keys and base probabilities its own
``predict`` returned and a fresh ``write_id`` per call. Rounds of 10 calls alternate between
the models; the median ms per call is printed with each model's ratio to the first. Use it to
compare two versions of the code (export with each, then compare), or a base model with its
ReLoop2 export (both are exported).

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/session_ab.py --export DIR   # this code
    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/session_ab.py DIR/base OLD/memory DIR/memory
    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/session_ab.py --export DIR2 --num-tables 2

``--profile`` traces ``predict`` at each batch size instead (``RunOptions.FULL_TRACE``) in
single-threaded Sessions and prints where the work goes: per op type, the nodes run and the
microseconds spent in them per call, each model against the first:

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/session_ab.py DIR/base DIR/memory \
        --profile --batches 256,1024
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from random_rows import make_features  # noqa: E402


def export(path: str, num_tables: int | None = None) -> None:
    """``path/memory`` and ``path/base``: the serving benchmark's two exports (dcn with the
    default memory after 2,048 random rows, and its base alone; ``serving_bench.servers``),
    the memory with ``num_tables`` SRP tables if given."""
    from serving_bench.servers import build_exports

    memory = {} if num_tables is None else {"num_tables": num_tables}
    build_exports(np.random.default_rng(0), root=Path(path), **memory)


class _Loaded:
    def __init__(self, path: str, threads: int | None = None):
        import tensorflow as tf

        self.graph = tf.Graph()
        config = None if threads is None else tf.compat.v1.ConfigProto(
            inter_op_parallelism_threads=threads, intra_op_parallelism_threads=threads)
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        with self.graph.as_default():
            self.signatures = tf.compat.v1.saved_model.load(self.session, ["serve"], path).signature_def

    def callable(self, name: str, inputs: dict, outputs=None):
        """``f(values=None) -> {output: ndarray}`` for signature ``name`` fed ``inputs``."""
        from tensorflow.core.protobuf import config_pb2

        sig = self.signatures[name]
        names, outs = list(inputs), list(outputs or sig.outputs)
        run = self.session._make_callable_from_options(config_pb2.CallableOptions(  # noqa: SLF001
            feed=[sig.inputs[n].name for n in names], fetch=[sig.outputs[o].name for o in outs]))
        return lambda values=None: dict(zip(outs, run(*((values or inputs)[n] for n in names))))


def _rows(batch: int, rng) -> dict:
    import reloop2_tf as r2

    return {k: v.astype(bytes) for k, v in make_features(r2.FeatureSpec.movielens(), batch, rng).items()}


def compare(paths: list[str], rounds: int, batches=(1, 1024)) -> dict:
    rng = np.random.default_rng(1)
    models = [_Loaded(p) for p in paths]
    calls = {}
    for batch in batches:
        x = _rows(batch, rng)
        calls[f"predict, batch {batch}"] = [
            m.callable("predict", {k: x[k] for k in m.signatures["predict"].inputs}) for m in models]
    x, ids = _rows(256, rng), itertools.count()
    writers = []
    for m in (m for m in models if "update_memory_by_keys" in m.signatures):
        served = m.callable("predict", {k: x[k] for k in m.signatures["predict"].inputs})()
        inputs = {"memory_keys": served["memory_keys"], "base_probability": served["base_probability"],
                  "label": rng.integers(0, 2, 256).astype(np.float32),
                  "sample_weight": np.ones(256, np.float32), "write_id": np.array(b"", dtype=object)}
        write = m.callable("update_memory_by_keys", inputs, ["weight_written"])
        writers.append(lambda write=write, inputs=inputs: write(
            {**inputs, "write_id": np.array(f"ab-{next(ids)}".encode(), dtype=object)}))
    if writers:
        calls["update_memory_by_keys, batch 256"] = writers
    out = {}
    for name, fns in calls.items():
        for fn in fns:
            for _ in range(30):
                fn()
        times = [[] for _ in fns]
        for _ in range(rounds):
            for i, fn in enumerate(fns):
                start = time.perf_counter()
                for _ in range(10):
                    fn()
                times[i].append((time.perf_counter() - start) / 10)
        medians = [float(np.median(t)) * 1e3 for t in times]
        out[name] = medians
        print(f"{name:36s}" + "  ".join(f"{m:.3f} ms" for m in medians)
              + "   ratio to the first: " + " ".join(f"{m / medians[0]:.3f}" for m in medians[1:]))
    return out


def op_times(step_stats) -> dict[str, tuple[int, float]]:
    """``{op type: (nodes run, microseconds)}`` of one traced run, from its ``StepStats``."""
    out: dict[str, tuple[int, float]] = {}
    for device in step_stats.dev_stats:
        for node in device.node_stats:
            label = node.timeline_label
            op = label.split(" = ", 1)[1].split("(", 1)[0] if " = " in label else node.node_name
            count, micros = out.get(op, (0, 0.0))
            out[op] = (count + 1, micros + node.op_end_rel_micros - node.op_start_rel_micros)
    return out


def profile(paths: list[str], rounds: int, batches=(1, 1024), top: int = 20,
            threads: int | None = 1) -> dict:
    """Per batch size, ``op_times`` of ``predict`` for each model, averaged over ``rounds``
    traced calls after 20 untimed ones; prints the op types that take the longest.

    One thread by default: where branches run in parallel on few cores, an op's traced time
    also counts the time it waited for a core (a small op beside the base model's matmuls
    shows tens of microseconds), so only a single-threaded trace measures the work."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    models = [_Loaded(p, threads) for p in paths]
    out = {}
    for batch in batches:
        x = _rows(batch, rng)
        per_model = []
        for m in models:
            sig = m.signatures["predict"]
            feeds = {sig.inputs[k].name: x[k] for k in sig.inputs}
            fetches = {k: t.name for k, t in sig.outputs.items()}
            for _ in range(20):
                m.session.run(fetches, feeds)
            total: dict[str, list[float]] = {}
            for _ in range(rounds):
                meta = tf.compat.v1.RunMetadata()
                m.session.run(fetches, feeds, run_metadata=meta, options=tf.compat.v1.RunOptions(
                    trace_level=tf.compat.v1.RunOptions.FULL_TRACE))
                for op, (count, micros) in op_times(meta.step_stats).items():
                    acc = total.setdefault(op, [0.0, 0.0])
                    acc[0], acc[1] = acc[0] + count / rounds, acc[1] + micros / rounds
            per_model.append(total)
        out[batch] = per_model
        sums = [sum(v[1] for v in t.values()) for t in per_model]
        print(f"predict, batch {batch}: op time per call " + "  ".join(f"{s:.0f} us" for s in sums))
        ops = sorted(set().union(*per_model), key=lambda op: -max(t.get(op, [0, 0])[1]
                                                                  for t in per_model))
        for op in ops[:top]:
            cells = [t.get(op, [0.0, 0.0]) for t in per_model]
            print(f"  {op:28s}" + "  ".join(f"{c[0]:4.0f} x {c[1]:8.1f} us" for c in cells)
                  + "   vs the first: " + " ".join(f"{c[1] - cells[0][1]:+8.1f}" for c in cells[1:]))
    return out


def _batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(b) for b in text.split(","))
    except ValueError:
        batches = ()
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(f"expected positive batch sizes such as 1,256,1024; got {text!r}")
    return batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", help="SavedModel directories to compare")
    p.add_argument("--export", help="export dcn + the default memory and its base alone with "
                                    "this code to DIR/memory and DIR/base")
    p.add_argument("--num-tables", type=int, default=None,
                   help="with --export: SRP tables of the memory (default: the default's)")
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--profile", action="store_true",
                   help="trace predict and print the time per op type instead of timing calls")
    p.add_argument("--batches", type=_batches, default=(1, 1024),
                   help="predict batch sizes, comma-separated (default: 1,1024)")
    args = p.parse_args()
    if args.export:
        export(args.export, args.num_tables)
    if args.paths:
        (profile if args.profile else compare)(args.paths, args.rounds, args.batches)


if __name__ == "__main__":
    main()
