"""Serving benchmark of the default memory over gRPC (issue 15): predict, writes, replay, reads.

A zoo dcn on ``FeatureSpec.movielens()`` with the default memory keyed by the MovieLens id groups
(``cost_bench.forward.default_model``), 2,048 random rows written, exported twice: the ReLoop2
SavedModel and the base model alone (same weights). Dev servers (``reloop2_serving.process``,
the PredictionService the tests use) serve the base once and the ReLoop2 model twice
(``keys`` and ``features``); one client process calls them over loopback gRPC.

1. Predict p50/p99 at batch 1 and 256, base server vs memory server, the same rows. ``blocks``
   (the targets' figures): prebuilt requests (TensorProtos built before timing), runs of 20
   calls per server, the servers alternating. Then call by call, the calls alternating between
   the servers: ``prebuilt``, ``client`` (``ReLoop2Client.predict`` on raw arrays) and
   ``probability_only`` (the memory's ``output_filter=["probability"]``). Overhead in ms and %.
2. Write rows/s at batch 256, one client thread: ``update_memory_by_keys`` (keys and base
   probability from a prior predict) to server ``keys`` and ``update_memory`` (features) to
   server ``features``, interleaved and in the same order on both; then bursts of calls from
   1 and 4 client threads (wall clock), by keys and by features in alternation.
3. Replay equality: after the one-thread writes of 2. (before the bursts), the two servers
   have seen the same rows in the same order, one by keys and one by features: their snapshots
   are compared with ``np.array_equal``, and their predictions on fresh rows.
4. In process, the dev server's own ``Servable`` (TF1 Session, no gRPC): the same predicts
   and writes, to split a call's time between the graph and the transport; and over gRPC
   ``memory_weight()`` (``memory_layout``; in process also through ``memory_snapshot``,
   which computes the whole state to return it).
5. In process: the default memory's read at batch 1 and 256 after 10^4, 10^5 and 10^6 rows
   written (flat?), and the bytes of its variables (constant?).

Prints the tables and the targets (met / missed) and writes ``runs/bench/serving.json``.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/serving_benchmark.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import numpy as np

from serving_bench import report, timing

log = logging.getLogger("serving_benchmark")

FULL = {"calls": {"1": 1000, "256": 300, "writes": 200}, "warmup": 10, "threads": 4,
        "thread_calls": 200, "thread_repeats": 5, "read_rows": [10**4, 10**5, 10**6],
        "read_batches": [1, 256], "read_rounds": 15, "read_calls": 20, "session_rounds": 15,
        "session_calls": 20}
QUICK = {"calls": {"1": 20, "256": 6, "writes": 6}, "warmup": 2, "threads": 2,
         "thread_calls": 6, "thread_repeats": 1, "read_rows": [5000, 10000],
         "read_batches": [256], "read_rounds": 2, "read_calls": 2, "session_rounds": 2,
         "session_calls": 2}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo", encoding="utf-8")
                if line.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    import tensorflow as tf

    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "tensorflow": tf.__version__, "numpy": np.__version__, "commit": git("rev-parse", "HEAD"),
            "uncommitted_code": git("status", "--porcelain", "--", "reloop2_tf", "serving",
                                    "benchmarks").splitlines()}


def run(cfg: dict, skip_reads: bool) -> dict:
    from serving_bench import inprocess, reads, servers

    rng = np.random.default_rng(0)
    results = {"config": {**cfg, "model": "dcn", "spec": "movielens",
                          "memory": "ErrorCompensation(LSHErrorMemory(id_groups=MOVIELENS_GROUPS, "
                                    "srp_centre='user_id'))"},
               "machine": machine(), "load_average": {"start": os.getloadavg()}}
    started = time.perf_counter()
    exports = servers.build_exports(rng)
    results["memory"], results["footprint"] = exports["memory"], exports["footprint"]
    log.info("exported %s; starting 3 dev servers", exports["dirs"])
    dirs = {"base": exports["dirs"]["base"], "keys": exports["dirs"]["memory"],
            "features": exports["dirs"]["memory"]}
    procs = servers.start_servers(dirs)
    from reloop2_serving.client import ReLoop2Client

    clients = {name: ReLoop2Client(p.target, timeout=120) for name, p in procs.items()}
    clients["memory"] = clients["keys"]  # predict runs before any write
    try:
        results["predict"] = {}
        for batch in (1, 256):
            log.info("predict, batch %d", batch)
            results["predict"][f"batch_{batch}"] = servers.predict_latency(
                clients, batch, cfg["calls"][str(batch)], cfg["warmup"], rng)
        results["memory_weight_rpc"] = inprocess.memory_weight_rpc(
            clients["features"], cfg["calls"]["1"], cfg["warmup"])
        results["load_average"]["after_predict"] = os.getloadavg()
        log.info("writes, one thread (and the replay)")
        results["writes"], results["replay"] = servers.writes_and_replay(
            clients, 256, cfg["calls"]["writes"], cfg["warmup"], rng)
        results["writes"]["threads"] = {}
        for threads in (1, cfg["threads"]):
            log.info("writes, %d threads", threads)
            results["writes"]["threads"][str(threads)] = servers.threaded_writes(
                clients, 256, cfg["thread_calls"], threads, cfg["thread_repeats"], rng)
        log.info("writes, one thread, %d in flight", cfg["threads"])
        results["writes"]["in_flight"] = {str(cfg["threads"]): servers.threaded_writes(
            clients, 256, cfg["thread_calls"], 1, cfg["thread_repeats"], rng,
            in_flight=cfg["threads"])}
        results["load_average"]["after_writes"] = os.getloadavg()
    finally:
        for name in ("base", "keys", "features"):
            clients[name].close()
        for proc in procs.values():
            proc.stop()
    log.info("in-process Session runs of the same signatures")
    try:
        results["session_ms"] = inprocess.session_costs(exports["dirs"], servers.spec(), rng,
                                                        cfg["session_rounds"], cfg["session_calls"])
    finally:
        shutil.rmtree(exports["root"], ignore_errors=True)
    if not skip_reads:
        log.info("in-process reads after %s rows", cfg["read_rows"])
        results["reads"] = reads.read_flatness(cfg["read_rows"], cfg["read_batches"],
                                               results["memory"]["hidden_dim"], cfg["read_rounds"],
                                               cfg["read_calls"])
    results["load_average"]["end"] = os.getloadavg()
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    results["verdicts"] = timing.verdicts(results)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few calls of each kind (a smoke run)")
    p.add_argument("--skip-reads", action="store_true", help="leave out part 4 (in process)")
    p.add_argument("--output", default=str(ROOT / "runs" / "bench" / "serving.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = dict(QUICK if args.quick else FULL, quick=args.quick)
    results = run(cfg, args.skip_reads)
    # JSON keys are strings: check the report as it will be read back.
    results = json.loads(json.dumps(results, default=float))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    problems = timing.check_report(results)
    results["consistency_problems"] = problems
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(report.tables(results))
    print(f"\nwrote {out} in {results['wall_seconds']} s; load average "
          f"{results['load_average']}")
    for problem in problems:
        print("INCONSISTENT:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
