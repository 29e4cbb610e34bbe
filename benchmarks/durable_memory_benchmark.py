"""Durable memory: rows lost on SIGKILL against --snapshot-seconds, snapshot time and size.

A zoo DCN on the MovieLens feature spec with an LSH sketch (K=64, L=12, no half-life, so the
memory's total weight counts rows) is served by ``reloop2_serving.dev_server --memory-store``. One
client writes ``update_memory`` batches at a fixed rate; the server is SIGKILLed at a random
moment, restarted on the same store, and the rows acknowledged but not restored are the loss.
Each restarted server is the next trial's server.

    TF_USE_LEGACY_KERAS=1 python benchmarks/durable_memory_benchmark.py \\
        [--snapshot-seconds 1 2 5] [--trials 3] [--rows-per-second 2000] [--output FILE.json]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc
import numpy as np

import reloop2_tf as r2
from reloop2_tf import export as ex
from reloop2_tf._keras import keras
from reloop2_tf.features import FeatureSpec
from reloop2_tf.models import build_model
from reloop2_serving.client import ReLoop2Client
from random_rows import make_features, report  # noqa: E402  (benchmarks/)
from reloop2_serving.process import DevServerProcess
from reloop2_serving.store import MemoryStore

_WROTE = re.compile(r"wrote memory snapshot \S+ \(version \d+, memory_weight \S+, (\d+) bytes "
                    r"of state, ([\d.]+) ms\)")


class Writer(threading.Thread):
    """``update_memory`` at a fixed rate until stopped or the server dies; counts acked rows."""

    def __init__(self, target: str, batches, labels, rows_per_second: float):
        super().__init__(daemon=True)
        self.client = ReLoop2Client(target, timeout=30)
        self.batches, self.labels = batches, labels
        self.period = len(labels[0]) / rows_per_second
        self.acked_rows = 0
        self.stopped = threading.Event()

    def run(self):
        start = time.perf_counter()
        try:
            for i in range(10**9):
                if self.stopped.is_set():
                    return
                k = i % len(self.batches)
                self.client.update_memory(self.batches[k], self.labels[k])
                self.acked_rows += len(self.labels[k])
                delay = start + (i + 1) * self.period - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
        except grpc.RpcError:
            return

    def finish(self) -> int:
        self.stopped.set()
        self.join(timeout=30)
        self.client.close()
        return self.acked_rows


def trial_series(base: Path, store: Path, seconds: float, trials: int, rows_per_second: float,
                 batches, labels, rng) -> dict:
    args = ["--memory-store", str(store), "--snapshot-seconds", str(seconds)]
    server = DevServerProcess(base, extra_args=args)
    losses, snapshot_ms, state_bytes, restore_ms = [], [], [], []
    try:
        for _ in range(trials):
            with ReLoop2Client(server.target, timeout=60) as client:
                before = client.memory_weight()
            writer = Writer(server.target, batches, labels, rows_per_second)
            writer.start()
            time.sleep(seconds * (2 + rng.uniform()))      # a random phase of the snapshot clock
            server.stop(signal.SIGKILL)
            acked = writer.finish()
            for m in map(_WROTE.search, list(server.lines)):
                if m:
                    state_bytes.append(int(m.group(1)))
                    snapshot_ms.append(float(m.group(2)))
            server = DevServerProcess(base, extra_args=args)
            with ReLoop2Client(server.target, timeout=60) as client:
                restored = client.memory_weight() - before
                sketch = client.snapshot()
                started = time.perf_counter()
                client.restore(sketch)                     # the restore a sidecar does, over gRPC
                restore_ms.append(1e3 * (time.perf_counter() - started))
            losses.append(int(acked - restored))
            print(f"snapshot every {seconds:g} s: {acked} rows acked, {int(restored)} restored, "
                  f"{losses[-1]} lost", flush=True)
    finally:
        server.stop()
    files = MemoryStore(store).snapshots()
    return {"snapshot_seconds": seconds, "rows_per_second": rows_per_second, "lost_rows": losses,
            "mean_lost_rows": float(np.mean(losses)),
            "expected_mean_lost_rows": rows_per_second * seconds / 2,
            "snapshot_ms_p50": float(np.median(snapshot_ms)) if snapshot_ms else None,
            "snapshot_ms_max": float(np.max(snapshot_ms)) if snapshot_ms else None,
            "state_bytes": state_bytes[0] if state_bytes else None,
            "file_bytes": os.path.getsize(files[0]) if files else None,
            "grpc_restore_ms_p50": float(np.median(restore_ms))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshot-seconds", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--rows-per-second", type=float, default=2000.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    spec = FeatureSpec.movielens()
    keras.utils.set_random_seed(0)
    model = r2.ReLoop2Model(build_model("dcn", spec), compensation=r2.ErrorCompensation(
        r2.LSHErrorMemory(num_tables=64, num_bits=12, half_life=None), compensation_weight=0.5))
    tmp = Path(tempfile.mkdtemp(prefix="reloop2-durable-bench-"))
    ex.export_serving_model(model, tmp / "models", version=1)
    batches = [make_features(spec, args.batch_size, rng) for _ in range(50)]
    labels = [rng.integers(0, 2, args.batch_size).astype(np.float32) for _ in range(50)]
    results = [trial_series(tmp / "models", tmp / f"store-{s:g}", s, args.trials,
                            args.rows_per_second, batches, labels, rng)
               for s in args.snapshot_seconds]
    report(results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
