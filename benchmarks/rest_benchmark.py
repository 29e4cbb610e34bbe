"""REST vs gRPC on the development server: predict latency per call, same model, same process.

Exports a zoo DCN on the MovieLens feature spec with an LSH sketch, serves it with one
``reloop2_serving.dev_server`` subprocess (``--rest-port 0``), and calls ``predict`` over loopback
gRPC (``ReLoop2Client``) and over REST (urllib, row and columnar JSON), interleaved so that
machine noise hits all three alike. Latency is client-side, after 5 warm-up calls.

    TF_USE_LEGACY_KERAS=1 python benchmarks/rest_benchmark.py [--calls 200] [--output FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

import reloop2_tf as r2
from reloop2_tf import export as ex
from reloop2_tf.features import FeatureSpec
from reloop2_tf.models import build_model
from reloop2_serving.client import ReLoop2Client
from reloop2_serving.process import DevServerProcess
from random_rows import report  # noqa: E402  (benchmarks/)


def make_features(spec: FeatureSpec, n: int, rng: np.random.Generator) -> dict[str, list[str]]:
    out = {}
    for name in spec.names:
        if name == "history":
            out[name] = [" ".join(str(i) for i in rng.integers(1, 3700, 20)) for _ in range(n)]
        else:
            out[name] = [str(v) for v in rng.integers(1, 3000, n)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="timed calls per batch size")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    spec = FeatureSpec.movielens(history_length=20)
    model = r2.ReLoop2Model(build_model("dcn", spec), compensation=r2.ErrorCompensation(
        r2.LSHErrorMemory(num_tables=64, num_bits=12), compensation_weight=1.0))
    rng = np.random.default_rng(0)
    results: dict = {"calls": args.calls}
    with tempfile.TemporaryDirectory() as tmp:
        ex.export_serving_model(model, Path(tmp) / "m", version=1)
        with DevServerProcess(Path(tmp) / "m", extra_args=["--rest-port", "0"]) as server:
            client = ReLoop2Client(server.target, timeout=60)
            url = f"{server.rest_url}/v1/models/reloop2:predict"

            def rest(body: bytes) -> dict:
                with urllib.request.urlopen(url, body, timeout=60) as response:
                    return json.load(response)

            for batch in (1, 256):
                x = make_features(spec, batch, rng)
                row = json.dumps({"instances": [{k: v[i] for k, v in x.items()}
                                                for i in range(batch)]}).encode()
                col = json.dumps({"inputs": x}).encode()
                arrays = {k: np.array(v, dtype=object) for k, v in x.items()}
                calls = {"grpc": lambda: client.predict(arrays), "rest_row": lambda: rest(row),
                         "rest_columnar": lambda: rest(col)}
                got = rest(col)["outputs"]["probability"]
                np.testing.assert_allclose(got, client.predict(arrays)["probability"], atol=1e-6)
                seconds = {name: [] for name in calls}
                for i in range(5 + args.calls):
                    for name, call in calls.items():
                        start = time.perf_counter()
                        call()
                        if i >= 5:
                            seconds[name].append(time.perf_counter() - start)
                results[f"batch_{batch}"] = {
                    name: {"p50_ms": round(1e3 * float(np.percentile(s, 50)), 2),
                           "p99_ms": round(1e3 * float(np.percentile(s, 99)), 2)}
                    for name, s in seconds.items()}
                results[f"batch_{batch}"]["request_bytes"] = {"rest_row": len(row),
                                                              "rest_columnar": len(col)}
            client.close()
    results["load_average_1min"] = os.getloadavg()[0]
    report(results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
