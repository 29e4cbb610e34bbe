"""Writes by keys from one client thread to one development server, timed call by call.

The serving benchmark reports each burst's rows/s and the calls' p50/p99; this shows every
burst's slowest calls and where in the burst they fall, which is how periodic stalls show up
(docs/performance.md: the recent clock's fold). It exports dcn with the default memory (the
serving benchmark's export), or serves ``--model DIR`` (a SavedModel directory).

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/write_bursts.py --bursts 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a SavedModel directory (default: export the default memory)")
    p.add_argument("--bursts", type=int, default=8)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--slow-ms", type=float, default=2.0, help="list calls slower than this")
    args = p.parse_args()

    import reloop2_tf as r2
    from random_rows import make_features
    from reloop2_serving.client import ReLoop2Client
    from reloop2_serving.process import DevServerProcess

    root = Path(tempfile.mkdtemp(prefix="reloop2-write-bursts-"))
    if args.model:
        model = args.model  # a SavedModel or a TF-Serving base dir: the server resolves either
    else:
        from serving_bench.servers import build_exports

        model = build_exports(np.random.default_rng(0), root=root)["dirs"]["memory"]
    rng = np.random.default_rng(1)
    server = DevServerProcess(model)
    try:
        client = ReLoop2Client(server.target)
        # Distinct rows for every call of a burst (as the serving benchmark's bursts), served
        # once up front: a write touches the cells of its own rows, not the same ones again.
        batches = []
        for _ in range(args.calls):
            served = client.predict(make_features(r2.FeatureSpec.movielens(), args.batch, rng),
                                    output_filter=["memory_keys", "base_probability"])
            batches.append((served["memory_keys"], served["base_probability"],
                            rng.integers(0, 2, args.batch).astype(np.float32)))
        for keys, base, labels in batches[:100]:
            client.update_memory_by_keys(keys, base, labels)
        for burst in range(args.bursts):
            ms = []
            start = time.perf_counter()
            for keys, base, labels in batches:
                t = time.perf_counter()
                client.update_memory_by_keys(keys, base, labels)
                ms.append(1e3 * (time.perf_counter() - t))
            wall = time.perf_counter() - start
            ms = np.array(ms)
            slow = np.flatnonzero(ms > args.slow_ms)
            print(f"burst {burst}: {args.batch * args.calls / wall:9,.0f} rows/s; per call p50 "
                  f"{np.median(ms):.3f} p99 {np.percentile(ms, 99):.3f} max {ms.max():6.2f} ms; "
                  f"calls over {args.slow_ms:g} ms: {slow.tolist()}", flush=True)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
