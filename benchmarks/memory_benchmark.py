"""Speed and footprint of the error memories: LSH sketch vs exact k-NN vs FAISS (issue 7).

Everything is measured in one process and one run, and every speed figure is reported as a ratio
to the sketch measured beside it: the machine this runs on is shared (2 cores, other jobs), so
absolute times drift with the load while ratios of interleaved measurements hold. For each
memory width ``d`` and number of stored rows ``N`` the script

* fills ``LSHErrorMemory`` (K=64, L=12), ``KNNErrorMemory`` (capacity N, top-32 cosine), FAISS's
  exact ``IndexFlatIP`` and two FAISS ``IndexIVFFlat`` (inner product on L2-normalised rows,
  nlist = sqrt(N), nprobe = the smallest power of two whose recall@32 against exact search on
  held-out queries is >= 0.9), one on clustered and one on diffuse synthetic rows;
* times read + compensate (``ErrorCompensation.compensate`` through a traced ``tf.function``;
  for FAISS, ``search`` plus the same formula in NumPy) at batch 1, 256 and 4096, and writes;
  the variants of one cell are interleaved round by round and the medians are compared;
* times the sketch holding each N's rows in one interleaved group (is its cost flat in N?);
* reports state sizes, peak RSS (one child process per structure at the largest N), the
  overhead of compensation on a DCN forward pass at batch 1024 (``tf.function`` and SavedModel
  signature, with the sketch's time split into its parts) and the accuracy that goes with the
  speed (FAISS recall, distance of each memory's neighbour-label estimate from exact k-NN's).

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/memory_benchmark.py \\
        --output runs/bench/memory.json          # ~8 min on 2 busy cores; `make bench`
    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/memory_benchmark.py --quick \\
        --output /tmp/memory_quick.json          # < 1 min, small sizes: checks the plumbing

``--before FILE...`` instead compares the current memories with older copies of their source
(before/after of a speed change); ``--dcn-only`` runs the DCN section alone. The JSON has a
``.md`` sibling with the tables of docs/performance.md, which explains the results.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

# The parts, by concern (benchmarks/memory_bench/; this folder is first on sys.path).
from memory_bench.before_after import before_after
from memory_bench.cells import bench_dim
from memory_bench.dcn import bench_dcn
from memory_bench.report import markdown, print_tables, targets
from memory_bench.rss import peak_rss, rss_child
from memory_bench.structures import COMPENSATION_WEIGHT, KNN_TEMPERATURE, NUM_CLUSTERS, TOP_K
from memory_bench.timing import load_average, peak_rss_mb

FULL = dict(dims=[64, 256], rows=[10_000, 100_000, 1_000_000], batches=[1, 256, 4096],
            write_batch=4096, queries=500, rounds=7, budget=4.0, dcn_batch=1024,
            dcn_knn_capacity=100_000, dcn_sketches=((64, 12), (128, 14), (16, 8)),
            savedmodel=True, rss=True)
QUICK = dict(dims=[32], rows=[2_000, 20_000], batches=[1, 256], write_batch=256, queries=200,
             rounds=5, budget=0.3, dcn_batch=1024, dcn_knn_capacity=1_024,
             dcn_sketches=((64, 12),), savedmodel=False, rss=False)


# -- main ------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="runs/bench/memory.json", help="JSON file to write")
    p.add_argument("--quick", action="store_true", help="small sizes, < 1 minute")
    p.add_argument("--dims", type=int, nargs="+", help="memory widths d")
    p.add_argument("--rows", type=int, nargs="+", help="stored rows N")
    p.add_argument("--batches", type=int, nargs="+", help="read batch sizes")
    p.add_argument("--write-batch", type=int, help="rows per write call")
    p.add_argument("--queries", type=int, help="held-out queries for recall and accuracy")
    p.add_argument("--rounds", type=int, help="max timed samples per variant")
    p.add_argument("--budget", type=float, help="seconds of timing per variant and group")
    p.add_argument("--max-sims-gb", type=float, default=2.0,
                   help="skip exact k-NN reads whose two similarity matrices exceed this (GiB)")
    p.add_argument("--max-flat-pairs", type=float, default=256 * 100_000,
                   help="skip FAISS flat reads above this batch x N")
    p.add_argument("--no-dcn", action="store_true", help="skip the DCN forward-pass section")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child processes")
    p.add_argument("--dcn-only", action="store_true",
                   help="only the DCN section (no memory sizes, no peak RSS)")
    p.add_argument("--before", metavar="FILE", nargs="+",
                   help="only compare the memories with older copies of lsh_memory.py / "
                        "knn_memory.py (before/after), e.g. from `git show REV:path > FILE`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rss-child", help=argparse.SUPPRESS)
    p.add_argument("--rss-dim", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rss-rows", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.no_rss or args.dcn_only:
        args.rss = False
    for name in ("dims", "rows", "batches"):
        if any(v < 1 for v in getattr(args, name)):
            p.error(f"--{name} must be positive")
    return args


def write_json(path: str, results: dict) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float))
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child, args.rss_dim, args.rss_rows, args.seed, 256)))
        return {}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.perf_counter()

    import faiss

    from reloop2_tf._keras import tf

    if args.before:
        results = {"load_average": {"start": load_average()},
                   "before_after": before_after(args, args.before)}
        results["load_average"]["end"] = load_average()
        results["wall_seconds"] = round(time.perf_counter() - start, 1)
        out = write_json(args.output, results)
        for name, dims in results["before_after"]["layers"].items():
            for dim, block in dims.items():
                for kind in ("read", "write"):
                    for batch, t in block[kind].items():
                        print(f"{name} d={dim} {kind:5} batch {batch:>5}: before "
                              f"{t['before_ms']:9.3f} ms, after {t['after_ms']:9.3f} ms, speed-up "
                              f"{t['speedup']:.2f}x (fastest samples "
                              f"{t['speedup_of_fastest_samples']:.2f}x)")
        print(f"wrote {out}")
        return results

    results: dict = {
        "config": {k: getattr(args, k) for k in (
            "quick", "dims", "rows", "batches", "write_batch", "queries", "rounds", "budget",
            "max_sims_gb", "max_flat_pairs", "dcn_batch", "dcn_knn_capacity", "dcn_sketches", "seed")} | {
            "sketch": {"num_tables": 64, "num_bits": 12}, "top_k": TOP_K,
            "knn_temperature": KNN_TEMPERATURE, "compensation_weight": COMPENSATION_WEIGHT,
            "faiss_ivf": "IndexIVFFlat, METRIC_INNER_PRODUCT, nlist=round(sqrt(N)), trained on "
                         "min(N, 64*nlist) rows, nprobe = smallest power of 2 with recall@k >= 0.9",
            "faiss_flat": "IndexFlatIP (exact)",
            "data": {"clustered": f"{NUM_CLUSTERS} Gaussian clusters, L2-normalised, cosine ~0.5 "
                                  "within a cluster (sketch, k-NN, faiss_flat, faiss_ivf)",
                     "diffuse": "Gaussian with variances 1/i, L2-normalised (faiss_ivf_diffuse)"},
        },
        "machine": {
            "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "tensorflow": tf.__version__,
            "faiss": faiss.__version__, "numpy": np.__version__,
            "faiss_omp_threads": faiss.omp_get_max_threads(),
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        },
        "load_average": {"start": load_average()},
        "ratio_definition": "ratio_to_sketch = median seconds per call / the sketch's median "
                            "seconds per call in the same interleaved group (> 1: sketch faster)",
        "memories": [],
    }
    for dim in ([] if args.dcn_only else args.dims):
        results["memories"].append(bench_dim(args, dim))
    if not args.no_dcn:
        results["dcn"] = bench_dcn(args)
    results["peak_rss"] = peak_rss(args) if args.rss else {"skipped": "--quick or --no-rss"}
    results["main_process_peak_rss_mb"] = peak_rss_mb()
    results["load_average"]["end"] = load_average()
    results["targets"] = targets(results) if results["memories"] else {}
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    out = write_json(args.output, results)
    out.with_suffix(".md").write_text(markdown(results))
    print_tables(results)
    print(f"\nwrote {out} and {out.with_suffix('.md')} in {results['wall_seconds']} s")
    return results


if __name__ == "__main__":
    main()
