"""Serving benchmark: predict latency with and without ReLoop2, update_memory rows/s, footprint.

Exports a zoo DCN on the MovieLens feature spec twice, in the same run:

* ``reloop2``: the ``ReLoop2Model`` (DCN + LSH sketch), as ``export_serving_model`` writes it;
* ``base``: the same DCN alone, whose ``serving_default`` returns only the base probability.

Both are served by ``reloop2_serving.dev_server`` subprocesses (the real ``tensorflow_model_server``
cannot be installed here) and called over loopback gRPC by ``reloop2_serving.client``. Requests to the
two servers are interleaved so that machine noise hits both alike.

    TF_USE_LEGACY_KERAS=1 python benchmarks/serving_benchmark.py [--quick] [--output FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

import reloop2_tf as r2
from reloop2_tf import export as ex
from reloop2_tf._keras import keras, tf
from reloop2_tf.features import FeatureSpec
from reloop2_tf.models import build_model
from reloop2_serving.client import ReLoop2Client
from random_rows import make_features  # noqa: E402  (benchmarks/)


def export_base(base: r2.ReLoop2Model, path: str) -> None:
    """The base model alone: ``serving_default`` returns ``base_probability`` only."""
    specs = ex.feature_specs(base)
    module = tf.Module()
    module.model = base.base_model

    @tf.function(input_signature=[specs])
    def predict(features):
        logits = tf.reshape(module.model(features, training=False), [-1])
        return {"base_probability": tf.sigmoid(logits)}

    tf.saved_model.save(module, path, signatures={"serving_default": predict})


class Server:
    def __init__(self, model_dir: str):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reloop2_serving.dev_server", "--model-dir", model_dir, "--port", "0"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in self.proc.stdout:
            match = re.search(r" on (127\.0\.0\.1:\d+)", line)
            if match:
                self.target = match.group(1)
                return
        raise RuntimeError("dev server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "calls": len(ms)}


def latency(clients: dict[str, ReLoop2Client], batches: list[dict], warmup: int = 5) -> dict:
    """Per-call latency of predict on each server, calls interleaved server by server."""
    times = {name: [] for name in clients}
    for i, batch in enumerate(batches):
        for name, client in clients.items():
            started = time.perf_counter()
            client.call("serving_default", batch)
            if i >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: percentiles(t) for name, t in times.items()}


def update_rate(client: ReLoop2Client, batches: list[dict], labels: list[np.ndarray],
                threads: int) -> float:
    ones = [np.ones(len(y), np.float32) for y in labels]
    started = time.perf_counter()
    with futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: client.update_memory(batches[i], labels[i], ones[i]),
                      range(len(batches))))
    return sum(len(y) for y in labels) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (CI smoke run)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    parser.add_argument("--num-tables", type=int, default=64)
    parser.add_argument("--num-bits", type=int, default=12)
    args = parser.parse_args(argv)
    calls = {1: 60, 256: 20} if args.quick else {1: 1000, 256: 200}

    rng = np.random.default_rng(0)
    spec = FeatureSpec.movielens()
    keras.utils.set_random_seed(0)
    model = r2.ReLoop2Model(build_model("dcn", spec), compensation=r2.ErrorCompensation(
        r2.LSHErrorMemory(num_tables=args.num_tables, num_bits=args.num_bits),
        compensation_weight=0.5))
    model.update_memory(make_features(spec, 2048, rng), rng.integers(0, 2, 2048))
    tmp = Path(tempfile.mkdtemp(prefix="reloop2-serving-bench-"))
    ex.export_serving_model(model, tmp / "reloop2", version=1)
    export_base(model, str(tmp / "base"))
    footprint = {
        "memory_variables_bytes": ex.memory_footprint_bytes(model),
        "sketch_bytes": int(np.prod(model.memory.sketch.shape)) * 4,
        "model_variables_bytes": int(sum(np.prod(v.shape) * v.dtype.size
                                         for v in model.base_model.variables)),
        "saved_model_bytes": {name: sum(f.stat().st_size for f in (tmp / name).rglob("*")
                                        if f.is_file()) for name in ("reloop2", "base")},
    }

    servers = {"reloop2": Server(str(tmp / "reloop2")), "base": Server(str(tmp / "base"))}
    clients = {name: ReLoop2Client(s.target, timeout=120) for name, s in servers.items()}
    try:
        results = {"predict_latency": {}, "update_memory_rows_per_s": {}}
        for batch_size, n in calls.items():
            batches = [make_features(spec, batch_size, rng) for _ in range(n)]
            results["predict_latency"][f"batch_{batch_size}"] = latency(clients, batches)
        update_batches = [make_features(spec, 256, rng) for _ in range(calls[256])]
        labels = [rng.integers(0, 2, 256).astype(np.float32) for _ in update_batches]
        # The first run of a signature in a Session pays for its graph optimisation.
        update_rate(clients["reloop2"], update_batches[:3], labels[:3], 1)
        clients["reloop2"].snapshot()
        for threads in (1, 4):
            results["update_memory_rows_per_s"][f"batch_256_threads_{threads}"] = round(
                update_rate(clients["reloop2"], update_batches, labels, threads))
        snap = []
        for _ in range(10):
            started = time.perf_counter()
            clients["reloop2"].snapshot()
            snap.append(time.perf_counter() - started)
        results["memory_snapshot_latency"] = percentiles(snap)
    finally:
        for client in clients.values():
            client.close()
        for server in servers.values():
            server.stop()

    results.update(
        footprint=footprint,
        config={"model": "dcn", "spec": "movielens", "num_tables": args.num_tables,
                "num_bits": args.num_bits, "calls": calls, "quick": args.quick},
        machine={"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
                 "python": platform.python_version(), "tensorflow": tf.__version__},
    )
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
