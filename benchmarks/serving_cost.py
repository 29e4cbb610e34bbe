"""Serving cost of the default memory (issue 15): forward overhead and multiply-adds.

For dcn, dcnv2 and din on ``FeatureSpec.movielens()`` with the default memory keyed by the
MovieLens id groups: base vs base + memory through a traced ``tf.function`` and through the
SavedModel ``predict`` signature (``tf.saved_model.load``), at batch 1, 64 and 1024, in
interleaved rounds (median ms per call, ratio to the base); and the multiply-adds per row of
the memory's read against the model's Dense layers at batch 1 (method: cost_bench/macs.py).
Prints one table per part and writes ``runs/bench/serving_cost.json``.

Not in this script yet (issue 15 parts b, c, e): gRPC predict p50/p99 and write rows/s are in
``benchmarks/serving_benchmark.py``; sketch flatness in N is in ``benchmarks/memory_benchmark.py``
(paper sketch, no id groups).

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/serving_cost.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from cost_bench.forward import bench_model  # noqa: E402


def print_tables(results: dict) -> None:
    print("\n(a) forward ms per call (median), ratio = with memory / base")
    print(f"{'model':<7}{'batch':>6}  {'base tf.fn':>10} {'mem tf.fn':>10} {'ratio':>6}"
          f"  {'base SM':>9} {'mem SM':>9} {'ratio':>6}")
    for name, block in results["models"].items():
        for batch, row in block["batches"].items():
            sm = (f"  {row['base SavedModel']['ms']:9.3f} {row['memory SavedModel']['ms']:9.3f}"
                  f" {row['memory SavedModel']['ratio']:6.2f}" if "base SavedModel" in row else "")
            print(f"{name:<7}{batch:>6}  {row['base tf.function']['ms']:10.3f} "
                  f"{row['memory tf.function']['ms']:10.3f} "
                  f"{row['memory tf.function']['ratio']:6.2f}{sm}")
    print("\n(d) multiply-adds per row at batch 1")
    print(f"{'model':<7}{'model MACs':>11} {'memory MACs':>12} {'of which SRP':>13} "
          f"{'solve/write':>12} {'memory/model':>13}")
    for name, block in results["models"].items():
        m = block["macs_per_row_batch_1"]
        print(f"{name:<7}{m['model']['total']:>11} {m['memory']['total']:>12.0f} "
              f"{m['memory']['srp_projections']:>13} {m['memory']['trust_solve_per_write']:>12.0f} "
              f"{m['memory_over_model']:>13.3f}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds, dcn only, no SavedModel")
    p.add_argument("--models", nargs="+")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024])
    p.add_argument("--rounds", type=int)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--output", default="runs/bench/serving_cost.json")
    args = p.parse_args(argv)
    models = args.models or (["dcn"] if args.quick else ["dcn", "dcnv2", "din"])
    rounds = args.rounds or (3 if args.quick else 15)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    results = {"config": {"models": models, "batches": args.batches, "rounds": rounds,
                          "calls": args.calls, "quick": args.quick,
                          "memory": "LSHErrorMemory(id_groups=MOVIELENS_GROUPS, "
                                    "srp_centre='user_id'), defaults"},
               "load_average": {"start": os.getloadavg()}, "models": {}}
    for name in models:
        results["models"][name] = bench_model(name, args.batches, rounds, args.calls, rng,
                                              savedmodel=not args.quick)
    results["load_average"]["end"] = os.getloadavg()
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float))
    print_tables(results)
    print(f"\nwrote {out} in {results['wall_seconds']} s; load average {results['load_average']}")
    return results


if __name__ == "__main__":
    main()
