"""``reloop2 feedback run`` on the DirectRunner: throughput, bytes per merge, staleness, replicas.

Exports a small model over MovieLens-100K's ids (user, item, genre embedded in the model) with
the default memory layout (8 SRP tables of 2**10 buckets, id tables of 2**18 buckets for item,
user and user x genre, half-life 100,000 rows), serves it with up to ``--replicas`` development
servers on loopback, and runs ``run_feedback`` over the 100,000-row canonical CSV
(``--dataset ml-1m``: 1,000,209 rows) for each replica count and window size, then once more over
the same input (every merge a duplicate). Each measurement has its own ``source_id``, so its
write ids are new to the replicas.
Wall-clock times include Beam's start-up and loading the model in the pipeline.

    TF_USE_LEGACY_KERAS=1 python benchmarks/feedback_benchmark.py [--replicas 1,2,4]
        [--window-rows 10000,2000] [--dataset ml-100k|ml-1m] [--output FILE.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

import reloop2_tf as r2
from reloop2_tf import export as ex
from reloop2_tf._keras import keras, tf
from reloop2_tf.data import prepare
from reloop2_serving.client import ReLoop2Client
from reloop2_serving.feedback import run_feedback
from reloop2_serving.process import DevServerProcess
from random_rows import report  # noqa: E402  (benchmarks/)

FEATURES = ("user_id", "item_id", "genre")


def build_model(**memory) -> r2.ReLoop2Model:
    keras.utils.set_random_seed(0)
    inputs = {name: keras.Input(shape=(), dtype=tf.string, name=name) for name in FEATURES}
    embed = keras.layers.Embedding(5000, 16)
    x = keras.layers.Concatenate()([embed(keras.layers.Hashing(5000)(v)) for v in inputs.values()])
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(x)
    base = keras.Model(inputs, keras.layers.Dense(1, name="logit")(hidden))
    return r2.ReLoop2Model(base, compensation=r2.ErrorCompensation(r2.LSHErrorMemory(
        id_groups=["item_id", ("user_id", "genre")], **memory)))


def state_rows(**memory) -> int:
    return r2.LSHErrorMemory(**memory).num_state_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", default="1,2,4", help="replica counts to measure")
    parser.add_argument("--window-rows", default="10000,2000", help="window sizes to measure")
    parser.add_argument("--dataset", default="ml-100k", choices=("ml-100k", "ml-1m"),
                        help="the canonical CSV to feed (ml-1m: 1,000,209 rows)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    counts = sorted(int(v) for v in args.replicas.split(","))
    windows = [int(v) for v in args.window_rows.split(",")]

    results: dict = {"dataset": args.dataset, "rows": None, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model()
        base = Path(tmp) / "reloop2"
        ex.export_serving_model(model, base, version=1)
        results["state_rows"] = model.compensation.memory.num_state_rows
        csv = str(prepare(args.dataset, Path(tmp) / "data"))
        servers: list = [None] * max(counts)

        def start(k):
            servers[k] = DevServerProcess(base)

        threads = [threading.Thread(target=start, args=(k,)) for k in range(len(servers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            zeros = np.zeros([results["state_rows"], 3], np.float32)
            for window_rows in windows:
                for n in counts:
                    targets = [s.target for s in servers[:n]]
                    for target in targets:
                        with ReLoop2Client(target) as client:
                            client.restore(zeros)
                    runs = {}
                    for label in ("first", "rerun"):
                        started = time.perf_counter()
                        # Ids unique to this measurement (the replicas remember earlier ones);
                        # the re-run reuses them.
                        summary = run_feedback(str(base), csv, targets, window_rows=window_rows,
                                               source_id=f"bench-{n}-{window_rows}")
                        runs[label] = {k: summary[k] for k in (
                            "rows", "windows", "seconds", "rows_per_second", "merge_bytes",
                            "duplicate_windows", "local_seconds_per_window",
                            "send_seconds_per_window")}
                        runs[label]["wall_seconds"] = round(time.perf_counter() - started, 2)
                    results["rows"] = runs["first"]["rows"]
                    results["runs"].append({"replicas": n, "window_rows": window_rows, **runs})
                    print(f"replicas {n} window {window_rows}: {runs['first']['rows_per_second']}"
                          f" rows/s, send {runs['first']['send_seconds_per_window']} s/window, "
                          f"rerun {runs['rerun']['rows_per_second']} rows/s", flush=True)
        finally:
            for server in servers:
                if server is not None:
                    server.stop()
    # What one merge carries for other layouts: 12 bytes per state row (3 float32) plus framing.
    results["merge_bytes_by_layout"] = {
        "8x2^10 SRP + 3 id tables of 2^18 (this run; the default id_bits)":
            12 * results["state_rows"],
        "8x2^10 SRP + 3 id tables of 2^14":
            12 * state_rows(id_groups=["item_id", ("user_id", "genre")], id_bits=14),
        "8x2^10 SRP only (no id tables)": 12 * state_rows(),
    }
    report(results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
