"""Speed and footprint of the error memories: LSH sketch vs exact k-NN vs FAISS IVF-Flat (issue 7).

Everything is measured in one process and one run, and every speed figure is reported as a ratio
to the sketch measured beside it: the machine this runs on is shared (2 cores, other jobs), so
absolute times drift with the load while ratios of interleaved measurements hold. For each
memory width ``d`` and number of stored rows ``N`` the script

* fills ``LSHErrorMemory`` (K=64, L=12), ``KNNErrorMemory`` (capacity N, top-32 cosine) and a
  FAISS ``IndexIVFFlat`` (inner product on L2-normalised rows, nlist = sqrt(N), nprobe = the
  smallest power of two whose recall@32 against exact search on held-out queries is >= 0.9);
* times read + compensate (``ErrorCompensation.compensate`` through a traced ``tf.function``;
  for FAISS, ``search`` plus the same formula in NumPy) at batch 1, 256 and 4096, and writes;
  the variants of one cell are interleaved round by round and the medians are compared;
* times the sketch at every N in one interleaved group (is its cost flat in N?);
* reports state sizes, peak RSS (one child process per structure at the largest N), the
  overhead of compensation on a DCN forward pass at batch 1024 (``tf.function`` and SavedModel
  signature) and the accuracy figures that go with the speed (FAISS recall, distance of each
  memory's neighbour-label estimate from exact k-NN's).

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/memory_benchmark.py \\
        --output runs/bench/memory.json          # ~10 min on 2 busy cores; `make bench`
    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/memory_benchmark.py --quick \\
        --output /tmp/memory_quick.json          # < 1 min, small sizes: checks the plumbing

Results and their reading: docs/performance.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

logger = logging.getLogger("memory_benchmark")

TOP_K = 32
KNN_TEMPERATURE = 0.1  # SPEC section 3 default
COMPENSATION_WEIGHT = 0.5
RECALL_TARGET = 0.9
NUM_CLUSTERS = 1000
CHUNK_ROWS = 16_384
REPO = Path(__file__).resolve().parents[1]

FULL = dict(dims=[64, 256], rows=[10_000, 100_000, 1_000_000], batches=[1, 256, 4096],
            write_batch=4096, queries=1000, rounds=7, budget=4.0, dcn_batch=1024,
            dcn_knn_capacity=100_000, savedmodel=True, rss=True)
QUICK = dict(dims=[32], rows=[2_000, 20_000], batches=[1, 256], write_batch=256, queries=200,
             rounds=5, budget=0.3, dcn_batch=1024, dcn_knn_capacity=2_000, savedmodel=False,
             rss=False)


# -- measurement helpers -----------------------------------------------------------------------

def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # Linux /proc fallback
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, budget: float,
                min_sample_seconds: float = 0.02, max_inner: int = 200) -> dict[str, dict]:
    """Median seconds per call of each variant, measured round-robin.

    Each variant is called twice to warm up, then timed once to size its samples: a sample is
    ``inner`` back-to-back calls (so that a sample lasts >= ``min_sample_seconds``), and a variant
    gets ``rounds`` samples, fewer (at least 3) when that would take longer than ``budget``
    seconds. Round r times every variant still owed a sample, starting at a rotating offset, so
    that load changes hit all variants alike.
    """
    names = list(variants)
    plan = {}
    for name in names:
        fn = variants[name]
        fn()
        fn()
        start = time.perf_counter()
        fn()
        once = max(time.perf_counter() - start, 1e-7)
        inner = int(min(max_inner, max(1, math.ceil(min_sample_seconds / once))))
        reps = int(min(rounds, max(3, budget // (once * inner))))
        plan[name] = (inner, reps)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(max(reps for _, reps in plan.values())):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            inner, reps = plan[name]
            if r >= reps:
                continue
            fn = variants[name]
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: {"median_s": float(np.median(samples[name])),
                   "min_s": float(np.min(samples[name])),
                   "max_s": float(np.max(samples[name])),
                   "samples": len(samples[name]), "calls_per_sample": plan[name][0]}
            for name in names}


def with_ratios(timings: dict[str, dict], reference: str = "sketch", rows: int | None = None
                ) -> dict[str, dict]:
    """Adds ``ratio_to_sketch`` = median seconds / the sketch's median seconds (> 1: the
    sketch is faster) and, for writes, rows per second."""
    ref = timings[reference]["median_s"]
    out = {}
    for name, t in timings.items():
        entry = dict(t, median_ms=t["median_s"] * 1e3, ratio_to_sketch=t["median_s"] / ref)
        if rows is not None:
            entry["rows_per_s"] = rows / t["median_s"]
        out[name] = entry
    return out


# -- data ----------------------------------------------------------------------------------------

class Stream:
    """Clustered, L2-normalised synthetic hidden vectors with labels and base predictions.

    ``NUM_CLUSTERS`` Gaussian clusters (centres N(0, I), within-cluster noise N(0, I), so two rows
    of one cluster have cosine ~0.5). Every cluster has its own click rate and a base model that
    is off by N(0, 0.1) for it, so the neighbours' labels carry an error signal to estimate.
    Rows are made in fixed chunks from per-chunk seeds: a child process can regenerate any
    prefix without holding it.
    """

    def __init__(self, dim: int, seed: int = 0):
        rng = np.random.default_rng([seed, dim])
        self.dim = dim
        self.seed = seed
        self.centres = rng.standard_normal((NUM_CLUSTERS, dim)).astype(np.float32)
        self.ctr = rng.uniform(0.05, 0.6, NUM_CLUSTERS).astype(np.float32)
        self.base = np.clip(self.ctr + rng.normal(0, 0.1, NUM_CLUSTERS), 0.02, 0.98).astype(np.float32)

    def chunk(self, index: int, tag: int = 0, rows: int = CHUNK_ROWS) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.dim, tag, index])
        cluster = rng.integers(0, NUM_CLUSTERS, rows)
        h = self.centres[cluster] + rng.standard_normal((rows, self.dim), dtype=np.float32)
        h /= np.linalg.norm(h, axis=1, keepdims=True)
        labels = (rng.random(rows) < self.ctr[cluster]).astype(np.float32)
        base = self.base[cluster]
        return {"hidden": h, "labels": labels, "logits": np.log(base / (1 - base)).astype(np.float32)}

    def rows(self, start: int, stop: int):
        """Yields chunks covering rows [start, stop) (start and stop multiples of CHUNK_ROWS, or
        stop the end)."""
        index = start // CHUNK_ROWS
        while index * CHUNK_ROWS < stop:
            chunk = self.chunk(index)
            lo = max(start - index * CHUNK_ROWS, 0)
            hi = min(stop - index * CHUNK_ROWS, CHUNK_ROWS)
            yield {k: v[lo:hi] for k, v in chunk.items()}
            index += 1

    def held_out(self, rows: int, tag: int) -> dict[str, np.ndarray]:
        """Rows from the same clusters but other seeds: queries and write batches."""
        parts, index = [], 0
        while sum(len(p["labels"]) for p in parts) < rows:
            parts.append(self.chunk(index, tag))
            index += 1
        return {k: np.concatenate([p[k] for p in parts])[:rows] for k in parts[0]}


# -- the three structures ------------------------------------------------------------------------

def tf_memory(kind: str, dim: int, capacity: int):
    """An ErrorCompensation over a fresh memory, with its traced read and write functions."""
    from reloop2_tf._keras import tf
    from reloop2_tf.layers.compensation import ErrorCompensation
    from reloop2_tf.layers.knn_memory import KNNErrorMemory
    from reloop2_tf.layers.lsh_memory import LSHErrorMemory

    if kind == "sketch":
        comp = ErrorCompensation(LSHErrorMemory(num_tables=64, num_bits=12, seed=0),
                                 compensation_weight=COMPENSATION_WEIGHT)
    else:
        comp = ErrorCompensation(KNNErrorMemory(capacity=capacity, top_k=TOP_K),
                                 compensation_weight=COMPENSATION_WEIGHT,
                                 temperature=KNN_TEMPERATURE)
    comp.memory._ensure_built(tf.zeros([1, dim]))
    col = tf.TensorSpec([None], tf.float32)
    hid = tf.TensorSpec([None, dim], tf.float32)
    read = tf.function(comp.compensate, input_signature=[col, hid])
    write = tf.function(comp.update_memory, input_signature=[col, hid, col])
    return comp, read, write


class FaissIVF:
    """FAISS IndexIVFFlat doing the k-NN memory's job: cosine top-k, then the same formula."""

    def __init__(self, dim: int, rows: int, train: np.ndarray):
        import faiss

        self.faiss = faiss
        self.nlist = max(1, int(round(math.sqrt(rows))))
        self.quantizer = faiss.IndexFlatIP(dim)
        self.index = faiss.IndexIVFFlat(self.quantizer, dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        self.index.train(np.ascontiguousarray(train))
        self.labels = np.zeros(0, np.float32)
        self.base = np.zeros(0, np.float32)
        self.weights = np.zeros(0, np.float32)
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    @staticmethod
    def normalise(hidden: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(hidden, axis=1, keepdims=True)
        return hidden / np.maximum(norm, 1e-12)

    def write(self, logits: np.ndarray, hidden: np.ndarray, labels: np.ndarray) -> None:
        self.index.add(self.normalise(hidden))
        self.pending.append((labels, 1.0 / (1.0 + np.exp(-logits)), np.ones_like(labels)))

    def flush(self) -> None:
        """Moves written side columns into the arrays that reads index (amortised, untimed in
        the fill, timed in the write benchmark as part of ``write``'s append)."""
        if self.pending:
            lab, base, w = zip(*self.pending)
            self.labels = np.concatenate([self.labels, *lab])
            self.base = np.concatenate([self.base, *base])
            self.weights = np.concatenate([self.weights, *w])
            self.pending = []

    def search(self, hidden: np.ndarray, k: int = TOP_K):
        return self.index.search(self.normalise(hidden), k)

    def compensate(self, logits: np.ndarray, hidden: np.ndarray) -> dict[str, np.ndarray]:
        sims, idx = self.search(hidden)
        return estimate_from_neighbours(sims, idx, self.labels, self.base, self.weights, logits)

    def state_bytes(self) -> int:
        n, d = self.index.ntotal, self.index.d
        # inverted lists (vectors + int64 ids) + coarse centroids + the three side columns
        return int(n * d * 4 + n * 8 + self.nlist * d * 4 + n * 3 * 4)


def estimate_from_neighbours(sims, idx, labels, base_probs, weights, logits,
                             temperature: float = KNN_TEMPERATURE) -> dict[str, np.ndarray]:
    """``KNNErrorMemory.estimate`` + ``ErrorCompensation.compensate`` (gamma 1, prior 0) in NumPy."""
    valid = idx >= 0
    safe = np.where(valid, idx, 0)
    scores = np.where(valid, sims / temperature, -np.inf)
    scores = scores - np.max(np.where(valid, scores, 0.0), axis=1, keepdims=True)
    att = np.where(valid, np.exp(np.where(valid, scores, 0.0)) * weights[safe], 0.0)
    total = att.sum(1, keepdims=True)
    att = np.divide(att, total, out=np.zeros_like(att), where=total > 0)
    label_mean = (att * labels[safe]).sum(1)
    support = valid.sum(1).astype(np.float32)
    base = 1.0 / (1.0 + np.exp(-logits))
    error = (support > 0) * (label_mean - base)
    return {"probability": np.clip(base + COMPENSATION_WEIGHT * error, 0.0, 1.0),
            "label_mean": label_mean, "support": support}


def variable_bytes(layer) -> int:
    return int(sum(np.prod(v.shape) * v.dtype.size for v in layer.variables))


# -- one (d, N) cell --------------------------------------------------------------------------------

def fill_tf(write, stream: Stream, start: int, stop: int) -> float:
    from reloop2_tf._keras import tf

    begin = time.perf_counter()
    for chunk in stream.rows(start, stop):
        write(tf.constant(chunk["logits"]), tf.constant(chunk["hidden"]), tf.constant(chunk["labels"]))
    return time.perf_counter() - begin


def nprobe_for_recall(ivf: FaissIVF, queries: np.ndarray, exact: np.ndarray) -> tuple[int, list]:
    sweep = []
    probe = 1
    while True:
        ivf.index.nprobe = probe
        _, idx = ivf.search(queries)
        recall = float(np.mean([len(np.intersect1d(a, b)) / TOP_K for a, b in zip(idx, exact)]))
        sweep.append({"nprobe": probe, "recall": recall})
        if recall >= RECALL_TARGET or probe >= ivf.nlist:
            return probe, sweep
        probe = min(probe * 2, ivf.nlist)


def bench_cell(args, stream: Stream, data: dict, queries: dict, writes: dict, rows: int,
               sketch) -> dict:
    """Reads, writes, accuracy and size of the three structures holding ``rows`` rows."""
    import faiss

    from reloop2_tf._keras import tf

    dim = stream.dim
    comp_lsh, read_lsh, write_lsh = sketch
    cell: dict = {"dim": dim, "rows": rows, "load_average_start": load_average()}

    rss0 = rss_mb()
    comp_knn, read_knn, write_knn = tf_memory("knn", dim, rows)
    cell["knn_fill_seconds"] = fill_tf(write_knn, stream, 0, rows)
    rss1 = rss_mb()
    begin = time.perf_counter()
    train_rows = min(rows, 64 * max(1, int(round(math.sqrt(rows)))))
    ivf = FaissIVF(dim, rows, data["hidden"][:train_rows])
    for chunk in stream.rows(0, rows):
        ivf.write(chunk["logits"], chunk["hidden"], chunk["labels"])
    ivf.flush()
    cell["faiss_fill_seconds"] = time.perf_counter() - begin
    rss2 = rss_mb()

    # Accuracy: exact top-k on held-out queries, FAISS recall, estimates vs exact k-NN.
    q = queries["hidden"][:args.queries]
    q_logits = queries["logits"][:args.queries]
    sims_exact, idx_exact = faiss.knn(q, data["hidden"][:rows], TOP_K, faiss.METRIC_INNER_PRODUCT)
    nprobe, sweep = nprobe_for_recall(ivf, q, idx_exact)
    ivf.index.nprobe = nprobe
    exact = estimate_from_neighbours(sims_exact, idx_exact, ivf.labels, ivf.base, ivf.weights, q_logits)
    approx = ivf.compensate(q_logits, q)
    sketch_est = comp_lsh.memory.estimate(tf.constant(q), comp_lsh.temperature)
    check = min(64, len(q))  # the NumPy formula must be KNNErrorMemory's
    knn_est = comp_knn.memory.estimate(tf.constant(q[:check]), KNN_TEMPERATURE)
    cell["accuracy"] = {
        "queries": int(len(q)),
        "faiss_nlist": ivf.nlist,
        "faiss_nprobe": nprobe,
        "faiss_recall_at_k": sweep[-1]["recall"],
        "faiss_nprobe_sweep": sweep,
        "mean_abs_label_estimate_diff_vs_exact_knn": {
            "faiss_ivf": float(np.mean(np.abs(approx["label_mean"] - exact["label_mean"]))),
            "sketch": float(np.mean(np.abs(sketch_est["label_mean"].numpy() - exact["label_mean"]))),
        },
        "numpy_formula_vs_knn_memory_max_abs_diff": float(np.max(np.abs(
            knn_est["label_mean"].numpy() - exact["label_mean"][:check]))),
    }

    cell["state_bytes"] = {"sketch": variable_bytes(comp_lsh.memory),
                           "knn": variable_bytes(comp_knn.memory),
                           "faiss_ivf": ivf.state_bytes()}
    cell["rss_growth_mb"] = {"knn": rss1 - rss0, "faiss_ivf": rss2 - rss1}

    # Reads: all three structures interleaved, per batch size.
    cell["read"] = {}
    for batch in args.batches:
        qb = {k: v[:batch] for k, v in queries.items()}
        tl, th = tf.constant(qb["logits"]), tf.constant(qb["hidden"])
        variants = {
            "sketch": lambda: read_lsh(tl, th)["probability"].numpy(),
            "knn": lambda: read_knn(tl, th)["probability"].numpy(),
            "faiss_ivf": lambda: ivf.compensate(qb["logits"], qb["hidden"]),
        }
        sims_bytes = 2 * batch * rows * 4
        skipped = {}
        if sims_bytes > args.max_sims_gb * 2**30:
            skipped["knn"] = (f"KNNErrorMemory materialises two [batch, capacity] float32 "
                              f"matrices ({sims_bytes / 2**30:.1f} GB) > --max-sims-gb "
                              f"{args.max_sims_gb}")
            del variants["knn"]
        logger.info("d=%d N=%d read batch %d: %s", dim, rows, batch, ", ".join(variants))
        timings = with_ratios(interleaved(variants, args.rounds, args.budget))
        for name, reason in skipped.items():
            timings[name] = {"skipped": reason}
        timings["load_average"] = load_average()
        cell["read"][str(batch)] = timings

    # Writes (after reads; the sketch is restored afterwards, the others are dropped).
    before = comp_lsh.memory.snapshot()
    wl, wh, wy = (tf.constant(writes[k]) for k in ("logits", "hidden", "labels"))

    def faiss_write():
        ivf.write(writes["logits"], writes["hidden"], writes["labels"])

    variants = {
        "sketch": lambda: write_lsh(wl, wh, wy).numpy(),
        "knn": lambda: write_knn(wl, wh, wy).numpy(),
        "faiss_ivf": faiss_write,
    }
    logger.info("d=%d N=%d write batch %d", dim, rows, args.write_batch)
    timings = with_ratios(interleaved(variants, args.rounds, args.budget), rows=args.write_batch)
    timings["load_average"] = load_average()
    cell["write"] = {str(args.write_batch): timings}
    comp_lsh.memory.restore(before)
    cell["tracing_counts"] = {"sketch_read": read_lsh.experimental_get_tracing_count(),
                              "sketch_write": write_lsh.experimental_get_tracing_count(),
                              "knn_read": read_knn.experimental_get_tracing_count(),
                              "knn_write": write_knn.experimental_get_tracing_count()}
    cell["load_average_end"] = load_average()
    del ivf, comp_knn, read_knn, write_knn
    return cell


def sketch_flatness(args, dim: int, snapshots: dict[int, object], queries: dict,
                    writes: dict) -> dict:
    """The sketch at every N, read and written in one interleaved group."""
    from reloop2_tf._keras import tf

    mems = {}
    for rows, snap in snapshots.items():
        comp, read, write = tf_memory("sketch", dim, 0)
        comp.memory.restore(snap)
        mems[rows] = (comp, read, write)
    out: dict = {"read": {}, "write": {}}
    ref = min(snapshots)
    for batch in args.batches:
        tl, th = tf.constant(queries["logits"][:batch]), tf.constant(queries["hidden"][:batch])
        variants = {str(rows): (lambda r=read: r(tl, th)["probability"].numpy())
                    for rows, (_, read, _) in mems.items()}
        timings = interleaved(variants, args.rounds, args.budget)
        out["read"][str(batch)] = {
            rows: dict(t, median_ms=t["median_s"] * 1e3,
                       ratio_to_smallest=t["median_s"] / timings[str(ref)]["median_s"])
            for rows, t in timings.items()}
    wl, wh, wy = (tf.constant(writes[k]) for k in ("logits", "hidden", "labels"))
    variants = {str(rows): (lambda w=write: w(wl, wh, wy).numpy())
                for rows, (_, _, write) in mems.items()}
    timings = interleaved(variants, args.rounds, args.budget)
    out["write"][str(args.write_batch)] = {
        rows: dict(t, median_ms=t["median_s"] * 1e3, rows_per_s=args.write_batch / t["median_s"],
                   ratio_to_smallest=t["median_s"] / timings[str(ref)]["median_s"])
        for rows, t in timings.items()}
    out["state_bytes"] = {str(rows): variable_bytes(comp.memory) for rows, (comp, _, _) in mems.items()}
    out["load_average"] = load_average()
    return out


def bench_dim(args, dim: int) -> dict:
    from reloop2_tf._keras import tf

    stream = Stream(dim, args.seed)
    top = max(args.rows)
    logger.info("d=%d: generating %d rows", dim, top)
    parts = list(stream.rows(0, top))
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    del parts
    queries = stream.held_out(max(max(args.batches), args.queries), tag=1)
    writes = stream.held_out(args.write_batch, tag=2)

    sketch = tf_memory("sketch", dim, 0)
    cells, snapshots, filled = [], {}, 0
    fill_seconds = 0.0
    for rows in sorted(args.rows):
        fill_seconds += fill_tf(sketch[2], stream, filled, rows)
        filled = rows
        snapshots[rows] = sketch[0].memory.snapshot()
        logger.info("d=%d N=%d: benchmarking", dim, rows)
        cell = bench_cell(args, stream, data, queries, writes, rows, sketch)
        cell["sketch_fill_seconds_cumulative"] = fill_seconds
        cells.append(cell)
    logger.info("d=%d: sketch flatness across N", dim)
    flat = sketch_flatness(args, dim, snapshots, queries, writes)
    # Sketches are restored from snapshots: written weight must equal the rows.
    flat["total_weight_check"] = float(sketch[0].memory.total_weight()) == float(top)
    del data
    tf.keras.backend.clear_session()
    return {"dim": dim, "cells": cells, "sketch_across_rows": flat}


# -- peak RSS in child processes --------------------------------------------------------------------

def rss_child(structure: str, dim: int, rows: int, seed: int, batch: int) -> dict:
    """Runs in a fresh process: holds one structure with ``rows`` rows, serves one read batch."""
    from reloop2_tf._keras import tf

    stream = Stream(dim, seed)
    queries = stream.held_out(batch, tag=1)
    tf.function(lambda x: x + 1.0)(tf.zeros([1]))  # start TF's runtime in every child alike
    import faiss  # noqa: F401  (imported by every child alike)

    baseline = rss_mb()
    state = 0
    if structure in ("sketch", "knn"):
        comp, read, write = tf_memory(structure, dim, rows)
        fill_tf(write, stream, 0, rows)
        read(tf.constant(queries["logits"]), tf.constant(queries["hidden"]))["probability"].numpy()
        state = variable_bytes(comp.memory)
    elif structure == "faiss_ivf":
        train_rows = min(rows, 64 * max(1, int(round(math.sqrt(rows)))))
        ivf = FaissIVF(dim, rows, next(stream.rows(0, train_rows))["hidden"])
        for chunk in stream.rows(0, rows):
            ivf.write(chunk["logits"], chunk["hidden"], chunk["labels"])
        ivf.flush()
        ivf.index.nprobe = 8
        ivf.compensate(queries["logits"], queries["hidden"])
        state = ivf.state_bytes()
    else:  # "none": the same process without a structure, data generated and dropped
        for _ in stream.rows(0, rows):
            pass
    return {"structure": structure, "dim": dim, "rows": rows, "read_batch": batch,
            "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb(), "state_bytes": state}


def peak_rss(args) -> dict:
    rows = max(args.rows)
    out: dict = {"rows": rows, "read_batch": 256, "children": []}
    for dim in args.dims:
        for structure in ("none", "sketch", "knn", "faiss_ivf"):
            cmd = [sys.executable, __file__, "--rss-child", structure, "--rss-dim", str(dim),
                   "--rss-rows", str(rows), "--seed", str(args.seed)]
            logger.info("peak RSS: %s d=%d N=%d", structure, dim, rows)
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                out["children"].append({"structure": structure, "dim": dim,
                                        "error": proc.stderr.strip().splitlines()[-1:]})
                continue
            out["children"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for child in out["children"]:
        base = next((c for c in out["children"] if c["structure"] == "none"
                     and c["dim"] == child["dim"] and "peak_rss_mb" in c), None)
        if base is not None and "peak_rss_mb" in child:
            child["peak_over_empty_process_mb"] = child["peak_rss_mb"] - base["peak_rss_mb"]
    return out


# -- DCN forward pass ----------------------------------------------------------------------------

def random_features(spec, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from reloop2_tf.features import DenseFeature, SequenceFeature

    out = {}
    for feature in spec.features:
        if isinstance(feature, DenseFeature):
            out[feature.name] = rng.standard_normal(batch).astype(np.float32)
        elif isinstance(feature, SequenceFeature):
            out[feature.name] = np.array([" ".join(map(str, rng.integers(1, 4000, 20)))
                                          for _ in range(batch)], dtype=object)
        else:
            out[feature.name] = rng.integers(1, 5000, batch).astype(str).astype(object)
    return out


def bench_dcn(args) -> dict:
    from reloop2_tf._keras import tf
    from reloop2_tf.export import export_serving_model, feature_specs
    from reloop2_tf.features import FeatureSpec
    from reloop2_tf.layers.compensation import ErrorCompensation
    from reloop2_tf.layers.knn_memory import KNNErrorMemory
    from reloop2_tf.models import build_model
    from reloop2_tf.wrapper import ReLoop2Model

    rng = np.random.default_rng(args.seed)
    spec = FeatureSpec.movielens()
    base = build_model("dcn", spec)
    model = ReLoop2Model(base, hidden_layer="hidden",
                         compensation=ErrorCompensation(compensation_weight=COMPENSATION_WEIGHT))
    knn_model = ReLoop2Model(base, hidden_layer="hidden", compensation=ErrorCompensation(
        KNNErrorMemory(capacity=args.dcn_knn_capacity, top_k=TOP_K),
        compensation_weight=COMPENSATION_WEIGHT, temperature=KNN_TEMPERATURE))
    specs = feature_specs(model)
    features = {k: tf.constant(v) for k, v in random_features(spec, args.dcn_batch, rng).items()}
    hidden_width = int(model.encode(features)[1].shape[-1])

    write = tf.function(model.update_memory, input_signature=[specs, tf.TensorSpec([None])])
    write_knn = tf.function(knn_model.update_memory, input_signature=[specs, tf.TensorSpec([None])])
    written = 0
    while written < args.dcn_knn_capacity:  # fill both memories with real DCN hiddens
        batch = {k: tf.constant(v) for k, v in random_features(spec, 1024, rng).items()}
        labels = tf.constant((rng.random(1024) < 0.3).astype(np.float32))
        write(batch, labels)
        write_knn(batch, labels)
        written += 1024

    base_fn = tf.function(lambda f: base(f, training=False), input_signature=[specs])
    encode_fn = tf.function(model.encode, input_signature=[specs])
    comp_fn = tf.function(model.compensate, input_signature=[specs])
    knn_fn = tf.function(knn_model.compensate, input_signature=[specs])
    variants = {
        "base": lambda: base_fn(features).numpy(),
        "encode": lambda: encode_fn(features)[0].numpy(),
        "sketch": lambda: comp_fn(features)["probability"].numpy(),
        "knn": lambda: knn_fn(features)["probability"].numpy(),
    }
    logger.info("DCN at batch %d: tf.function", args.dcn_batch)
    timings = interleaved(variants, args.rounds * 2, args.budget * 2)
    base_s = timings["base"]["median_s"]
    result: dict = {
        "batch": args.dcn_batch, "hidden_width": hidden_width,
        "knn_capacity": args.dcn_knn_capacity,
        "tf_function": {name: dict(t, median_ms=t["median_s"] * 1e3,
                                   ratio_to_sketch=t["median_s"] / timings["sketch"]["median_s"],
                                   overhead_vs_base=t["median_s"] / base_s - 1.0)
                        for name, t in timings.items()},
        "load_average": load_average(),
    }
    if args.savedmodel:
        logger.info("DCN at batch %d: SavedModel signatures", args.dcn_batch)
        with tempfile.TemporaryDirectory() as tmp:
            module = tf.Module()
            module.base = base
            module.predict = tf.function(lambda f: {"logit": base(f, training=False)},
                                         input_signature=[specs])
            tf.saved_model.save(module, f"{tmp}/base", signatures={"serving_default": module.predict})
            export_serving_model(model, f"{tmp}/reloop2")
            base_sig = tf.saved_model.load(f"{tmp}/base").signatures["serving_default"]
            loaded = tf.saved_model.load(f"{tmp}/reloop2")
            comp_sig = loaded.signatures["predict"]
            variants = {"base": lambda: base_sig(**features)["logit"].numpy(),
                        "sketch": lambda: comp_sig(**features)["probability"].numpy()}
            timings = interleaved(variants, args.rounds * 2, args.budget * 2)
        result["saved_model_signature"] = {
            name: dict(t, median_ms=t["median_s"] * 1e3,
                       overhead_vs_base=t["median_s"] / timings["base"]["median_s"] - 1.0)
            for name, t in timings.items()}
        result["saved_model_signature"]["load_average"] = load_average()
    return result


# -- before/after of a sketch implementation ----------------------------------------------------------

def load_sketch_class(path: str):
    """``LSHErrorMemory`` from another copy of lsh_memory.py (e.g. ``git show REV:...``)."""
    source = Path(path).read_text().replace(
        '@keras.saving.register_keras_serializable(package="reloop2_tf")', "")
    namespace: dict = {"__name__": "sketch_before"}
    exec(compile(source, path, "exec"), namespace)  # noqa: S102  (a file the user names)
    return namespace["LSHErrorMemory"]


def sketch_before_after(args, path: str) -> dict:
    """Read + compensate and write of the current sketch vs the one in ``path``, interleaved."""
    from reloop2_tf._keras import tf
    from reloop2_tf.layers.compensation import ErrorCompensation
    from reloop2_tf.layers.lsh_memory import LSHErrorMemory

    before_cls = load_sketch_class(path)
    out: dict = {"before": path, "ratio_definition": "before seconds / after seconds (> 1: "
                 "the current code is faster)", "dims": {}}
    for dim in args.dims:
        stream = Stream(dim, args.seed)
        fns = {}
        for name, cls in (("before", before_cls), ("after", LSHErrorMemory)):
            comp = ErrorCompensation(cls(num_tables=64, num_bits=12, seed=0),
                                     compensation_weight=COMPENSATION_WEIGHT)
            col, hid = tf.TensorSpec([None]), tf.TensorSpec([None, dim])
            read = tf.function(comp.compensate, input_signature=[col, hid])
            write = tf.function(comp.update_memory, input_signature=[col, hid, col])
            fns[name] = (comp, read, write)
        # The same writes, through both paths (small and large batches), must give the same sketch.
        for name in fns:
            write = fns[name][2]
            for chunk in stream.rows(0, 2 * CHUNK_ROWS):
                for lo in (0, 100):  # one batch of 100 rows (scatter), the rest in one (dense)
                    part = {k: tf.constant(v[lo:lo + 100] if lo == 0 else v[100:])
                            for k, v in chunk.items()}
                    write(part["logits"], part["hidden"], part["labels"])
        a, b = (fns[n][0].memory.snapshot().numpy() for n in ("before", "after"))
        sketch_diff = float(np.max(np.abs(a - b)))
        fill_tf(fns["before"][2], stream, 2 * CHUNK_ROWS, min(max(args.rows), 100_000))
        fill_tf(fns["after"][2], stream, 2 * CHUNK_ROWS, min(max(args.rows), 100_000))
        queries = stream.held_out(max(max(args.batches), args.write_batch), tag=1)
        block: dict = {"read": {}, "write": {}}
        for batch in args.batches:
            tl, th = tf.constant(queries["logits"][:batch]), tf.constant(queries["hidden"][:batch])
            same = all(np.array_equal(fns["before"][1](tl, th)[k].numpy(),
                                      fns["after"][1](tl, th)[k].numpy())
                       for k in ("probability", "memory_support"))
            t = interleaved({n: (lambda r=f[1]: r(tl, th)["probability"].numpy())
                             for n, f in fns.items()}, args.rounds * 2, args.budget)
            block["read"][str(batch)] = {
                "before_ms": t["before"]["median_s"] * 1e3, "after_ms": t["after"]["median_s"] * 1e3,
                "speedup": t["before"]["median_s"] / t["after"]["median_s"],
                "speedup_of_fastest_samples": t["before"]["min_s"] / t["after"]["min_s"],
                "identical_outputs": same}
        for batch in sorted({1, 256, args.write_batch}):
            wl, wh, wy = (tf.constant(queries[k][:batch]) for k in ("logits", "hidden", "labels"))
            t = interleaved({n: (lambda w=f[2]: w(wl, wh, wy).numpy()) for n, f in fns.items()},
                            args.rounds * 2, args.budget)
            block["write"][str(batch)] = {
                "before_ms": t["before"]["median_s"] * 1e3, "after_ms": t["after"]["median_s"] * 1e3,
                "speedup": t["before"]["median_s"] / t["after"]["median_s"],
                "speedup_of_fastest_samples": t["before"]["min_s"] / t["after"]["min_s"]}
        block["sketch_max_abs_diff_after_same_writes"] = sketch_diff
        block["load_average"] = load_average()
        out["dims"][str(dim)] = block
    return out


# -- summary ---------------------------------------------------------------------------------------

def gauc_share() -> dict:
    """``sketch_share_of_knn_gauc_lift`` from the streaming benchmark's runs, if any."""
    found = {}
    for path in sorted(glob.glob(str(REPO / "runs" / "*" / "results.json"))):
        try:
            with open(path) as f:
                results = json.load(f)
        except (OSError, ValueError):
            continue
        if "sketch_share_of_knn_gauc_lift" in results:
            lift = results.get("lift_vs_static", {})
            found[str(Path(path).relative_to(REPO))] = {
                "sketch_share_of_knn_gauc_lift": results["sketch_share_of_knn_gauc_lift"],
                "gauc_lift_sketch": lift.get("reloop2", {}).get("gauc"),
                "gauc_lift_knn": lift.get("reloop2-knn", {}).get("gauc"),
            }
    return found


def targets(results: dict) -> dict:
    out: dict = {}
    top = max(results["config"]["rows"])
    flat, speed, footprint = {}, {}, {}
    for block in results["memories"]:
        d = block["dim"]
        across = block["sketch_across_rows"]
        flat[str(d)] = {
            "read_largest_over_smallest": {b: max(t[r]["ratio_to_smallest"] for r in t)
                                           for b, t in across["read"].items()},
            "write_largest_over_smallest": {b: max(t[r]["ratio_to_smallest"] for r in t)
                                            for b, t in across["write"].items()},
        }
        cell = next(c for c in block["cells"] if c["rows"] == top)
        speed[str(d)] = {
            b: {"knn_over_sketch": t["knn"].get("ratio_to_sketch"),
                "faiss_over_sketch": t["faiss_ivf"]["ratio_to_sketch"],
                "faiss_recall": cell["accuracy"]["faiss_recall_at_k"]}
            for b, t in cell["read"].items()}
        footprint[str(d)] = {"sketch_bytes": sorted(set(across["state_bytes"].values()))}
    out["flat_in_rows"] = {"target": "sketch read/write cost flat from smallest to largest N "
                                     "(ratios near 1)", "measured": flat}
    out["reads_at_largest_rows"] = {
        "target": f"at N={top}: exact k-NN/sketch >= 100, FAISS IVF/sketch > 1",
        "measured": speed,
        "met_knn_100x": all((v["knn_over_sketch"] or 0) >= 100 for s in speed.values()
                            for v in s.values() if v["knn_over_sketch"] is not None),
        "met_faiss": all(v["faiss_over_sketch"] > 1 for s in speed.values() for v in s.values()),
    }
    dcn = results.get("dcn")
    if dcn:
        out["dcn_overhead"] = {
            "target": "compensation adds <= 10% to a DCN forward at batch 1024",
            "tf_function": dcn["tf_function"]["sketch"]["overhead_vs_base"],
            "saved_model_signature": dcn.get("saved_model_signature", {}).get(
                "sketch", {}).get("overhead_vs_base"),
        }
        out["dcn_overhead"]["met"] = out["dcn_overhead"]["tf_function"] <= 0.10
    sizes = [b for f in footprint.values() for b in f["sketch_bytes"]]
    out["footprint"] = {"target": "sketch state <= 32 MB, independent of rows written",
                        "sketch_bytes_by_dim": footprint,
                        "met": max(sizes) <= 32 * 2**20 and all(
                            len(f["sketch_bytes"]) == 1 for f in footprint.values())}
    out["gauc_lift_share"] = {"target": "sketch keeps >= 90% of exact k-NN's gAUC lift "
                                        "(streaming benchmark)", "runs": gauc_share()}
    return out


def print_tables(results: dict) -> None:
    for block in results["memories"]:
        d = block["dim"]
        print(f"\nd = {d}: read + compensate, median ms (x = time / sketch time)")
        print(f"{'N':>9} {'batch':>6} {'sketch':>9} {'exact k-NN':>20} {'FAISS IVF':>20} "
              f"{'nprobe':>6} {'recall':>6}")
        for cell in block["cells"]:
            acc = cell["accuracy"]
            for batch, t in cell["read"].items():
                knn = t["knn"]
                knn_s = (f"{knn['median_ms']:9.3f} ({knn['ratio_to_sketch']:6.1f}x)"
                         if "median_ms" in knn else f"{'skipped':>20}")
                fa = t["faiss_ivf"]
                print(f"{cell['rows']:>9} {batch:>6} {t['sketch']['median_ms']:9.3f} {knn_s} "
                      f"{fa['median_ms']:9.3f} ({fa['ratio_to_sketch']:6.1f}x) "
                      f"{acc['faiss_nprobe']:>6} {acc['faiss_recall_at_k']:6.3f}")
        print(f"d = {d}: writes, rows/s (x = time / sketch time)")
        for cell in block["cells"]:
            for batch, t in cell["write"].items():
                print(f"{cell['rows']:>9} {batch:>6} " + "  ".join(
                    f"{name} {t[name]['rows_per_s']:,.0f} ({t[name]['ratio_to_sketch']:.2f}x)"
                    for name in ("sketch", "knn", "faiss_ivf")))
        across = block["sketch_across_rows"]
        print(f"d = {d}: sketch alone across N (ratio to smallest N): " + "; ".join(
            f"read b={b}: " + ", ".join(f"{r}: {v['ratio_to_smallest']:.2f}" for r, v in t.items())
            for b, t in across["read"].items()))
    dcn = results.get("dcn")
    if dcn:
        tfn = dcn["tf_function"]
        print(f"\nDCN batch {dcn['batch']} (tf.function): base {tfn['base']['median_ms']:.2f} ms, "
              f"+sketch {100 * tfn['sketch']['overhead_vs_base']:.1f}%, "
              f"+exact k-NN ({dcn['knn_capacity']} rows) {100 * tfn['knn']['overhead_vs_base']:.1f}%")
        sig = dcn.get("saved_model_signature")
        if sig:
            print(f"DCN batch {dcn['batch']} (SavedModel signature): base "
                  f"{sig['base']['median_ms']:.2f} ms, +sketch {100 * sig['sketch']['overhead_vs_base']:.1f}%")
    print("\nload average: start", results["load_average"]["start"], "end",
          results["load_average"]["end"])


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
    p.add_argument("--budget", type=float, help="seconds of timing per variant and cell")
    p.add_argument("--max-sims-gb", type=float, default=6.0,
                   help="skip exact k-NN reads whose similarity matrices exceed this")
    p.add_argument("--no-dcn", action="store_true", help="skip the DCN forward-pass section")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child processes")
    p.add_argument("--sketch-before", metavar="FILE",
                   help="only compare the sketch with the lsh_memory.py in FILE (before/after)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rss-child", help=argparse.SUPPRESS)
    p.add_argument("--rss-dim", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rss-rows", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.no_rss:
        args.rss = False
    for name in ("dims", "rows", "batches"):
        if any(v < 1 for v in getattr(args, name)):
            p.error(f"--{name} must be positive")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child, args.rss_dim, args.rss_rows, args.seed, 256)))
        return {}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.perf_counter()
    if args.sketch_before:
        results = {"load_average": {"start": load_average()},
                   "sketch_before_after": sketch_before_after(args, args.sketch_before)}
        results["load_average"]["end"] = load_average()
        results["wall_seconds"] = round(time.perf_counter() - start, 1)
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=float))
        for dim, block in results["sketch_before_after"]["dims"].items():
            for kind in ("read", "write"):
                for batch, t in block[kind].items():
                    print(f"d={dim} {kind:5} batch {batch:>5}: before {t['before_ms']:8.3f} ms, "
                          f"after {t['after_ms']:8.3f} ms, speed-up {t['speedup']:.2f}x "
                          f"(fastest samples {t['speedup_of_fastest_samples']:.2f}x)")
        print(f"wrote {out}")
        return results

    import faiss

    from reloop2_tf._keras import tf

    results: dict = {
        "config": {k: getattr(args, k) for k in (
            "quick", "dims", "rows", "batches", "write_batch", "queries", "rounds", "budget",
            "max_sims_gb", "dcn_batch", "dcn_knn_capacity", "seed")} | {
            "sketch": {"num_tables": 64, "num_bits": 12}, "top_k": TOP_K,
            "knn_temperature": KNN_TEMPERATURE, "compensation_weight": COMPENSATION_WEIGHT,
            "faiss": "IndexIVFFlat, METRIC_INNER_PRODUCT, nlist=round(sqrt(N)), trained on "
                     "min(N, 64*nlist) rows, nprobe = smallest power of 2 with recall >= 0.9",
            "data": f"{NUM_CLUSTERS} Gaussian clusters, L2-normalised, cosine ~0.5 within a cluster",
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
    for dim in args.dims:
        results["memories"].append(bench_dim(args, dim))
    if not args.no_dcn:
        results["dcn"] = bench_dcn(args)
    if args.rss:
        results["peak_rss"] = peak_rss(args)
    else:
        results["peak_rss"] = {"skipped": "--quick or --no-rss"}
    results["main_process_peak_rss_mb"] = peak_rss_mb()
    results["load_average"]["end"] = load_average()
    results["targets"] = targets(results)
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float))
    print_tables(results)
    print(f"\nwrote {out} in {results['wall_seconds']} s")
    return results


if __name__ == "__main__":
    main()
