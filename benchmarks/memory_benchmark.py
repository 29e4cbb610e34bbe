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
KINDS = ("clustered", "diffuse")
CHUNK_ROWS = 16_384
REPO = Path(__file__).resolve().parents[1]

FULL = dict(dims=[64, 256], rows=[10_000, 100_000, 1_000_000], batches=[1, 256, 4096],
            write_batch=4096, queries=500, rounds=7, budget=4.0, dcn_batch=1024,
            dcn_knn_capacity=100_000, dcn_sketches=((64, 12), (128, 14), (16, 8)),
            savedmodel=True, rss=True)
QUICK = dict(dims=[32], rows=[2_000, 20_000], batches=[1, 256], write_batch=256, queries=200,
             rounds=5, budget=0.3, dcn_batch=1024, dcn_knn_capacity=1_024,
             dcn_sketches=((64, 12),), savedmodel=False, rss=False)


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
    """This process's peak RSS: VmHWM, which starts afresh at exec. (``ru_maxrss`` does not:
    a child started by vfork + exec inherits its parent's peak.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, budget: float,
                min_sample_seconds: float = 0.02, max_inner: int = 200,
                setup: dict[str, Callable[[], object]] | None = None) -> dict[str, dict]:
    """Median seconds per call of each variant, measured round-robin.

    Each variant is called once to warm up; if that took under half a second it is called
    again and timed once more to size its samples (a slow variant is sized by its warm-up call).
    A sample is ``inner`` back-to-back calls (so that a sample lasts >= ``min_sample_seconds``),
    and a variant gets ``rounds`` samples, fewer (at least 3) when that would take longer than
    ``budget`` seconds. Round r times every variant still owed a
    sample, starting at a rotating offset, so that load changes hit all variants alike.
    ``setup[name]`` (untimed) runs before each of that variant's samples.
    """
    names = list(variants)
    setup = setup or {}
    plan = {}
    for name in names:
        fn = variants[name]
        setup.get(name, _noop)()
        start = time.perf_counter()
        fn()
        once = time.perf_counter() - start
        if once < 0.5:
            fn()
            start = time.perf_counter()
            fn()
            once = time.perf_counter() - start
        once = max(once, 1e-7)
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
            setup.get(name, _noop)()
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: {"median_s": float(np.median(samples[name])),
                   "min_s": float(np.min(samples[name])),
                   "max_s": float(np.max(samples[name])),
                   "samples": len(samples[name]), "calls_per_sample": plan[name][0]}
            for name in names}


def _noop() -> None:
    return None


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
    """L2-normalised synthetic hidden vectors with labels and base predictions.

    ``kind="clustered"``: ``NUM_CLUSTERS`` Gaussian clusters (centres N(0, I), within-cluster noise
    N(0, I), so two rows of one cluster have cosine ~0.5); every cluster has its own click rate
    and a base model that is off by N(0, 0.1) for it. With nlist ~ sqrt(N) IVF cells this is the
    easy case for FAISS: a query's neighbours sit in one or two cells.
    ``kind="diffuse"``: one Gaussian whose variances fall as 1/i (i = 1..d), a power-law spectrum
    like that of learned embeddings; the click rate varies smoothly along a random direction.
    Neighbourhoods straddle IVF cells, so FAISS needs a larger nprobe for the same recall.
    Rows are made in fixed chunks from per-chunk seeds: a child process can regenerate any
    prefix without holding it.
    """

    def __init__(self, dim: int, seed: int = 0, kind: str = "clustered"):
        rng = np.random.default_rng([seed, dim, KINDS.index(kind)])
        self.dim, self.seed, self.kind = dim, seed, kind
        self.centres = rng.standard_normal((NUM_CLUSTERS, dim)).astype(np.float32)
        self.ctr = rng.uniform(0.05, 0.6, NUM_CLUSTERS).astype(np.float32)
        self.base = np.clip(self.ctr + rng.normal(0, 0.1, NUM_CLUSTERS), 0.02, 0.98).astype(np.float32)
        self.scales = (np.arange(1, dim + 1) ** -0.5).astype(np.float32)
        self.direction = rng.standard_normal(dim).astype(np.float32)
        self.direction /= np.linalg.norm(self.direction)

    def chunk(self, index: int, tag: int = 0, rows: int = CHUNK_ROWS) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.dim, KINDS.index(self.kind), tag, index])
        if self.kind == "clustered":
            cluster = rng.integers(0, NUM_CLUSTERS, rows)
            h = self.centres[cluster] + rng.standard_normal((rows, self.dim), dtype=np.float32)
            ctr, base = self.ctr[cluster], self.base[cluster]
        else:
            h = rng.standard_normal((rows, self.dim), dtype=np.float32) * self.scales
            slope = h @ self.direction / np.sqrt(np.mean(self.scales**2))
            ctr = np.clip(0.3 + 0.15 * slope, 0.02, 0.98)
            base = np.clip(ctr + 0.05 * rng.standard_normal(rows), 0.02, 0.98)
        h /= np.linalg.norm(h, axis=1, keepdims=True)
        labels = (rng.random(rows) < ctr).astype(np.float32)
        return {"hidden": h, "labels": labels,
                "logits": np.log(base / (1 - base)).astype(np.float32)}

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
        """Rows from the same distribution but other seeds: queries and write batches."""
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


class FaissIndex:
    """A FAISS index doing the k-NN memory's job: cosine top-k, then the same formula in NumPy.

    ``ivf=True``: ``IndexIVFFlat`` (nlist = round(sqrt(N)), trained on ``train``); otherwise
    ``IndexFlatIP``, FAISS's exact search (a second, optimised exact k-NN).
    """

    def __init__(self, dim: int, rows: int, train: np.ndarray | None = None, ivf: bool = True):
        import faiss

        self.ivf = ivf
        self.nlist = max(1, int(round(math.sqrt(rows)))) if ivf else 0
        if ivf:
            self.quantizer = faiss.IndexFlatIP(dim)
            self.index = faiss.IndexIVFFlat(self.quantizer, dim, self.nlist,
                                            faiss.METRIC_INNER_PRODUCT)
            self.index.train(np.ascontiguousarray(train))
        else:
            self.index = faiss.IndexFlatIP(dim)
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
        """Appends the side columns of written rows to the arrays that reads index."""
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
        # vectors (+ int64 ids in inverted lists) + coarse centroids + the three side columns
        return int(n * d * 4 + (n * 8 + self.nlist * d * 4 if self.ivf else 0) + n * 3 * 4)


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


def fill_tf(write, stream: Stream, start: int, stop: int) -> float:
    from reloop2_tf._keras import tf

    begin = time.perf_counter()
    for chunk in stream.rows(start, stop):
        write(tf.constant(chunk["logits"]), tf.constant(chunk["hidden"]), tf.constant(chunk["labels"]))
    return time.perf_counter() - begin


def build_faiss(stream: Stream, rows: int, ivf: bool = True) -> FaissIndex:
    train = None
    if ivf:
        train_rows = min(rows, 64 * max(1, int(round(math.sqrt(rows)))))
        train = np.concatenate([c["hidden"] for c in stream.rows(0, train_rows)])
    index = FaissIndex(stream.dim, rows, train, ivf=ivf)
    for chunk in stream.rows(0, rows):
        index.write(chunk["logits"], chunk["hidden"], chunk["labels"])
    index.flush()
    return index


def exact_top_k(stream: Stream, rows: int, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k of ``queries`` among the first ``rows`` rows, one chunk at a time."""
    import faiss

    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    offset = 0
    for chunk in stream.rows(0, rows):
        sims, idx = faiss.knn(queries, chunk["hidden"], min(TOP_K, len(chunk["hidden"])),
                              faiss.METRIC_INNER_PRODUCT)
        best_s = np.concatenate([best_s, sims], axis=1)
        best_i = np.concatenate([best_i, idx + offset], axis=1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :TOP_K]
        best_s = np.take_along_axis(best_s, keep, 1)
        best_i = np.take_along_axis(best_i, keep, 1)
        offset += len(chunk["hidden"])
    return best_s, best_i


def nprobe_for_recall(index: FaissIndex, queries: np.ndarray, exact: np.ndarray) -> tuple[int, list]:
    sweep = []
    probe = 1
    while True:
        index.index.nprobe = probe
        _, idx = index.search(queries)
        recall = float(np.mean([len(np.intersect1d(a, b)) / TOP_K for a, b in zip(idx, exact)]))
        sweep.append({"nprobe": probe, "recall": recall})
        if recall >= RECALL_TARGET or probe >= index.nlist:
            return probe, sweep
        probe = min(probe * 2, index.nlist)


# -- one (d, N) cell --------------------------------------------------------------------------------

def bench_cell(args, streams: dict[str, Stream], queries: dict, writes: dict, rows: int,
               sketch, call_floor) -> dict:
    """Reads, writes, accuracy and size of every structure holding ``rows`` rows."""
    from reloop2_tf._keras import tf

    stream = streams["clustered"]
    dim = stream.dim
    comp_lsh, read_lsh, write_lsh = sketch
    cell: dict = {"dim": dim, "rows": rows, "load_average_start": load_average()}

    rss = [rss_mb()]
    comp_knn, read_knn, write_knn = tf_memory("knn", dim, rows)
    cell["fill_seconds"] = {"knn": fill_tf(write_knn, stream, 0, rows)}
    rss.append(rss_mb())
    indexes: dict[str, FaissIndex] = {}
    for name, kind, ivf in (("faiss_flat", "clustered", False), ("faiss_ivf", "clustered", True),
                            ("faiss_ivf_diffuse", "diffuse", True)):
        begin = time.perf_counter()
        indexes[name] = build_faiss(streams[kind], rows, ivf)
        cell["fill_seconds"][name] = time.perf_counter() - begin
        rss.append(rss_mb())

    # Accuracy: exact top-k on held-out queries, FAISS recall, estimates vs exact k-NN.
    accuracy: dict = {"queries": args.queries}
    exact_estimates = {}
    for name, kind in (("faiss_ivf", "clustered"), ("faiss_ivf_diffuse", "diffuse")):
        q = queries[kind]["hidden"][:args.queries]
        q_logits = queries[kind]["logits"][:args.queries]
        sims, idx = exact_top_k(streams[kind], rows, q)
        index = indexes[name]
        nprobe, sweep = nprobe_for_recall(index, q, idx)
        index.index.nprobe = nprobe
        exact = estimate_from_neighbours(sims, idx, index.labels, index.base, index.weights, q_logits)
        exact_estimates[kind] = exact
        approx = index.compensate(q_logits, q)
        accuracy[name] = {
            "data": kind, "nlist": index.nlist, "nprobe": nprobe,
            "recall_at_k": sweep[-1]["recall"], "nprobe_sweep": sweep,
            "mean_abs_label_estimate_diff_vs_exact_knn": float(np.mean(np.abs(
                approx["label_mean"] - exact["label_mean"]))),
        }
    q = queries["clustered"]["hidden"][:args.queries]
    sketch_est = comp_lsh.memory.estimate(tf.constant(q), comp_lsh.temperature)
    accuracy["sketch"] = {"data": "clustered", "mean_abs_label_estimate_diff_vs_exact_knn": float(
        np.mean(np.abs(sketch_est["label_mean"].numpy() - exact_estimates["clustered"]["label_mean"])))}
    check = min(64, len(q))  # the NumPy formula must be KNNErrorMemory's
    knn_est = comp_knn.memory.estimate(tf.constant(q[:check]), KNN_TEMPERATURE)
    accuracy["numpy_formula_vs_knn_memory_max_abs_diff"] = float(np.max(np.abs(
        knn_est["label_mean"].numpy() - exact_estimates["clustered"]["label_mean"][:check])))
    cell["accuracy"] = accuracy

    cell["state_bytes"] = {"sketch": variable_bytes(comp_lsh.memory),
                           "knn": variable_bytes(comp_knn.memory),
                           **{name: index.state_bytes() for name, index in indexes.items()}}
    cell["rss_growth_mb"] = dict(zip(["knn", *indexes], np.diff(rss).tolist()))

    # Reads: every structure interleaved, per batch size.
    cell["read"] = {}
    for batch in args.batches:
        qc = {k: v[:batch] for k, v in queries["clustered"].items()}
        qd = {k: v[:batch] for k, v in queries["diffuse"].items()}
        tl, th = tf.constant(qc["logits"]), tf.constant(qc["hidden"])
        variants = {
            "sketch": lambda: read_lsh(tl, th)["probability"].numpy(),
            "knn": lambda: read_knn(tl, th)["probability"].numpy(),
            "faiss_flat": lambda: indexes["faiss_flat"].compensate(qc["logits"], qc["hidden"]),
            "faiss_ivf": lambda: indexes["faiss_ivf"].compensate(qc["logits"], qc["hidden"]),
            "faiss_ivf_diffuse": lambda: indexes["faiss_ivf_diffuse"].compensate(
                qd["logits"], qd["hidden"]),
            "tf_call_floor": lambda: call_floor(tl, th).numpy(),
        }
        skipped = {}
        sims_bytes = 2 * batch * rows * 4
        if sims_bytes > args.max_sims_gb * 2**30:
            skipped["knn"] = (f"KNNErrorMemory materialises two [batch, N] float32 matrices "
                              f"({sims_bytes / 2**30:.1f} GiB > --max-sims-gb {args.max_sims_gb})")
        if batch * rows > args.max_flat_pairs:
            skipped["faiss_flat"] = (f"time: batch x N = {batch * rows:.2g} > --max-flat-pairs "
                                     f"{args.max_flat_pairs:.2g} (FAISS flat search is the "
                                     "slowest exact search at large batches)")
        for name in skipped:
            del variants[name]
        logger.info("d=%d N=%d read batch %d: %s", dim, rows, batch, ", ".join(variants))
        timings = with_ratios(interleaved(variants, args.rounds, args.budget))
        for name, reason in skipped.items():
            timings[name] = {"skipped": reason}
        timings["load_average"] = load_average()
        cell["read"][str(batch)] = timings

    # Writes, after the reads; the sketch is restored afterwards, the others are dropped.
    before = comp_lsh.memory.snapshot()
    wl, wh, wy = (tf.constant(writes[k]) for k in ("logits", "hidden", "labels"))
    variants = {
        "sketch": lambda: write_lsh(wl, wh, wy).numpy(),
        "knn": lambda: write_knn(wl, wh, wy).numpy(),
        **{name: (lambda i=index: i.write(writes["logits"], writes["hidden"], writes["labels"]))
           for name, index in indexes.items() if name != "faiss_ivf_diffuse"},
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
    return cell


def sketch_flatness(args, sketch, snapshots: dict[int, object], queries: dict, writes: dict) -> dict:
    """One sketch holding each N's rows in turn (restored before every sample), interleaved."""
    from reloop2_tf._keras import tf

    comp, read, write = sketch
    ref = str(min(snapshots))
    setup = {str(rows): (lambda s=snap: comp.memory.restore(s)) for rows, snap in snapshots.items()}
    out: dict = {"read": {}, "write": {}}
    for batch in args.batches:
        tl, th = tf.constant(queries["logits"][:batch]), tf.constant(queries["hidden"][:batch])
        variants = {name: (lambda: read(tl, th)["probability"].numpy()) for name in setup}
        timings = interleaved(variants, args.rounds, args.budget, setup=setup)
        out["read"][str(batch)] = {
            rows: dict(t, median_ms=t["median_s"] * 1e3,
                       ratio_to_smallest=t["median_s"] / timings[ref]["median_s"])
            for rows, t in timings.items()}
    wl, wh, wy = (tf.constant(writes[k]) for k in ("logits", "hidden", "labels"))
    variants = {name: (lambda: write(wl, wh, wy).numpy()) for name in setup}
    timings = interleaved(variants, args.rounds, args.budget, setup=setup)
    out["write"][str(args.write_batch)] = {
        rows: dict(t, median_ms=t["median_s"] * 1e3, rows_per_s=args.write_batch / t["median_s"],
                   ratio_to_smallest=t["median_s"] / timings[ref]["median_s"])
        for rows, t in timings.items()}
    out["state_bytes"] = variable_bytes(comp.memory)
    weights = {}
    for rows, snap in snapshots.items():
        comp.memory.restore(snap)
        weights[str(rows)] = float(comp.memory.total_weight())
    out["total_weight_by_rows"] = weights
    out["load_average"] = load_average()
    comp.memory.restore(snapshots[max(snapshots)])
    return out


def bench_dim(args, dim: int) -> dict:
    from reloop2_tf._keras import tf

    streams = {kind: Stream(dim, args.seed, kind) for kind in KINDS}
    queries = {kind: stream.held_out(max(max(args.batches), args.queries), tag=1)
               for kind, stream in streams.items()}
    writes = streams["clustered"].held_out(args.write_batch, tag=2)
    sketch = tf_memory("sketch", dim, 0)
    col, hid = tf.TensorSpec([None]), tf.TensorSpec([None, dim])
    call_floor = tf.function(lambda logits, hidden: logits, input_signature=[col, hid])
    cells, snapshots, filled, fill_seconds = [], {}, 0, 0.0
    for rows in sorted(args.rows):
        fill_seconds += fill_tf(sketch[2], streams["clustered"], filled, rows)
        filled = rows
        snapshots[rows] = sketch[0].memory.snapshot()
        logger.info("d=%d N=%d: benchmarking", dim, rows)
        cell = bench_cell(args, streams, queries, writes, rows, sketch, call_floor)
        cell["fill_seconds"]["sketch_cumulative"] = fill_seconds
        cells.append(cell)
    logger.info("d=%d: sketch across N", dim)
    flat = sketch_flatness(args, sketch, snapshots, queries["clustered"], writes)
    return {"dim": dim, "cells": cells, "sketch_across_rows": flat}


# -- peak RSS in child processes --------------------------------------------------------------------

def rss_child(structure: str, dim: int, rows: int, seed: int, batch: int) -> dict:
    """Runs in a fresh process: holds one structure with ``rows`` rows, serves one read batch."""
    import faiss  # noqa: F401  (imported by every child alike)

    from reloop2_tf._keras import tf

    stream = Stream(dim, seed)
    queries = stream.held_out(batch, tag=1)
    tf.function(lambda x: x + 1.0)(tf.zeros([1]))  # start TF's runtime in every child alike
    baseline = rss_mb()
    state = 0
    if structure in ("sketch", "knn"):
        comp, read, write = tf_memory(structure, dim, rows)
        fill_tf(write, stream, 0, rows)
        read(tf.constant(queries["logits"]), tf.constant(queries["hidden"]))["probability"].numpy()
        state = variable_bytes(comp.memory)
    elif structure in ("faiss_ivf", "faiss_flat"):
        index = build_faiss(stream, rows, ivf=structure == "faiss_ivf")
        if index.ivf:
            index.index.nprobe = 8
        index.compensate(queries["logits"], queries["hidden"])
        state = index.state_bytes()
    else:  # "none": the same process without a structure, data generated and dropped
        for _ in stream.rows(0, rows):
            pass
    return {"structure": structure, "dim": dim, "rows": rows, "read_batch": batch,
            "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb(), "state_bytes": state}


def peak_rss(args) -> dict:
    rows = max(args.rows)
    out: dict = {"rows": rows, "read_batch": 256, "children": [],
                 "note": "one fresh process per structure: fill N rows, serve one read batch; "
                         "peak_over_empty_process_mb subtracts the peak of a process that only "
                         "imports TF/FAISS and generates the same rows"}
    dim = max(args.dims)  # the largest structures; smaller d scale down (see state_bytes)
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
    base = next((c for c in out["children"] if c["structure"] == "none" and "peak_rss_mb" in c), None)
    for child in out["children"]:
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
    from reloop2_tf.layers.lsh_memory import LSHErrorMemory
    from reloop2_tf.models import build_model
    from reloop2_tf.wrapper import ReLoop2Model

    rng = np.random.default_rng(args.seed)
    spec = FeatureSpec.movielens()
    base = build_model("dcn", spec)
    models = {
        f"sketch_k{k}_l{l}": ReLoop2Model(base, hidden_layer="hidden", compensation=ErrorCompensation(
            LSHErrorMemory(num_tables=k, num_bits=l), compensation_weight=COMPENSATION_WEIGHT))
        for k, l in args.dcn_sketches}  # the default first; ML-1M DCN's validated pick; small
    models["knn"] = ReLoop2Model(base, hidden_layer="hidden", compensation=ErrorCompensation(
        KNNErrorMemory(capacity=args.dcn_knn_capacity, top_k=TOP_K),
        compensation_weight=COMPENSATION_WEIGHT, temperature=KNN_TEMPERATURE))
    default = f"sketch_k{args.dcn_sketches[0][0]}_l{args.dcn_sketches[0][1]}"
    specs = feature_specs(models[default])
    features = {k: tf.constant(v) for k, v in random_features(spec, args.dcn_batch, rng).items()}
    encode_fn = tf.function(models[default].encode, input_signature=[specs])
    hidden_width = int(encode_fn(features)[1].shape[-1])

    label_spec = tf.TensorSpec([None])
    writes = {name: tf.function(m.update_memory, input_signature=[specs, label_spec])
              for name, m in models.items()}
    written = 0
    while written < args.dcn_knn_capacity:  # fill every memory with the DCN's own hiddens
        batch = {k: tf.constant(v) for k, v in random_features(spec, 1024, rng).items()}
        labels = tf.constant((rng.random(1024) < 0.3).astype(np.float32))
        for write in writes.values():
            write(batch, labels)
        written += 1024

    base_fn = tf.function(lambda f: base(f, training=False), input_signature=[specs])
    reads = {name: tf.function(m.compensate, input_signature=[specs]) for name, m in models.items()}
    # Where the default sketch's time goes, on the hidden vectors of this batch.
    memory = models[default].memory
    logits, hidden = encode_fn(features)
    hid = tf.TensorSpec([None, hidden_width])
    fused = tf.reshape(tf.transpose(memory.projections, [1, 0, 2]), [hidden_width, -1])
    parts = {
        f"{default}:projection_matmul": tf.function(lambda h: tf.matmul(h - memory.center, fused),
                                                    input_signature=[hid]),
        f"{default}:bucket_ids": tf.function(memory.bucket_ids, input_signature=[hid]),
        f"{default}:lookup": tf.function(memory.lookup, input_signature=[hid]),
    }
    on_hidden = tf.function(models[default].compensation.compensate,
                            input_signature=[tf.TensorSpec([None]), hid])
    variants = {"base": lambda: base_fn(features).numpy(),
                "encode": lambda: encode_fn(features)[0].numpy(),
                **{name: (lambda r=read: r(features)["probability"].numpy())
                   for name, read in reads.items()},
                **{name: (lambda f=fn: tf.nest.map_structure(lambda x: x.numpy(), f(hidden)))
                   for name, fn in parts.items()},
                f"{default}:compensate_on_hidden":
                    lambda: on_hidden(logits, hidden)["probability"].numpy()}
    logger.info("DCN at batch %d: tf.function", args.dcn_batch)
    # Fast variants get many samples: run-to-run noise on a busy machine is ~10% of the base.
    timings = interleaved(variants, args.rounds * 6, args.budget * 2)
    base_s = timings["base"]["median_s"]
    result: dict = {
        "batch": args.dcn_batch, "hidden_width": hidden_width,
        "knn_capacity": args.dcn_knn_capacity, "default_sketch": default,
        "tf_function": {name: dict(t, median_ms=t["median_s"] * 1e3,
                                   ratio_to_sketch=t["median_s"] / timings[default]["median_s"],
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
            export_serving_model(models[default], f"{tmp}/reloop2")
            base_sig = tf.saved_model.load(f"{tmp}/base").signatures["serving_default"]
            comp_sig = tf.saved_model.load(f"{tmp}/reloop2").signatures["predict"]
            variants = {"base": lambda: base_sig(**features)["logit"].numpy(),
                        default: lambda: comp_sig(**features)["probability"].numpy()}
            timings = interleaved(variants, args.rounds * 6, args.budget * 2)
        result["saved_model_signature"] = {
            name: dict(t, median_ms=t["median_s"] * 1e3,
                       overhead_vs_base=t["median_s"] / timings["base"]["median_s"] - 1.0)
            for name, t in timings.items()}
        result["saved_model_signature"]["load_average"] = load_average()
    return result


# -- before/after of a layer implementation ---------------------------------------------------------

def load_layer_classes(path: str) -> dict:
    """The memory classes defined in another copy of a layer file (e.g. ``git show REV:...``)."""
    source = Path(path).read_text().replace(
        '@keras.saving.register_keras_serializable(package="reloop2_tf")', "")
    namespace: dict = {"__name__": "layers_before"}
    exec(compile(source, path, "exec"), namespace)  # noqa: S102  (a file the user names)
    return {name: namespace[name] for name in ("LSHErrorMemory", "KNNErrorMemory")
            if name in namespace}


def before_after(args, paths: list[str]) -> dict:
    """Read + compensate and write of the current memories vs older copies, interleaved."""
    from reloop2_tf.layers.knn_memory import KNNErrorMemory
    from reloop2_tf.layers.lsh_memory import LSHErrorMemory

    current = {"LSHErrorMemory": LSHErrorMemory, "KNNErrorMemory": KNNErrorMemory}
    out: dict = {"before": paths, "ratio_definition": "speedup = before seconds / after seconds "
                 "(> 1: the current code is faster)", "layers": {}}
    for path in paths:
        for name, before_cls in load_layer_classes(path).items():
            out["layers"][name] = {str(d): _before_after_one(args, d, name, before_cls, current[name])
                                   for d in args.dims}
    return out


def _before_after_one(args, dim: int, name: str, before_cls, after_cls) -> dict:
    from reloop2_tf._keras import tf
    from reloop2_tf.layers.compensation import ErrorCompensation

    stream = Stream(dim, args.seed)
    rows = min(max(args.rows), 100_000)
    fns = {}
    for label, cls in (("before", before_cls), ("after", after_cls)):
        if name == "LSHErrorMemory":
            comp = ErrorCompensation(cls(num_tables=64, num_bits=12, seed=0),
                                     compensation_weight=COMPENSATION_WEIGHT)
        else:
            comp = ErrorCompensation(cls(capacity=rows, top_k=TOP_K), temperature=KNN_TEMPERATURE,
                                     compensation_weight=COMPENSATION_WEIGHT)
        col, hid = tf.TensorSpec([None]), tf.TensorSpec([None, dim])
        fns[label] = (comp, tf.function(comp.compensate, input_signature=[col, hid]),
                      tf.function(comp.update_memory, input_signature=[col, hid, col]))
    # The same writes through both (a 100-row batch, then the rest of each chunk in one batch:
    # both write paths of the sketch) must leave the same state.
    for label in fns:
        write = fns[label][2]
        for chunk in stream.rows(0, rows):
            for part in ({k: v[:100] for k, v in chunk.items()},
                         {k: v[100:] for k, v in chunk.items()}):
                write(tf.constant(part["logits"]), tf.constant(part["hidden"]),
                      tf.constant(part["labels"]))
    state = {label: [v.numpy() for v in fns[label][0].memory.variables] for label in fns}
    block: dict = {"rows": rows, "state_max_abs_diff_after_same_writes": float(max(
        np.max(np.abs(a - b)) for a, b in zip(state["before"], state["after"])))}
    queries = stream.held_out(max(max(args.batches), args.write_batch), tag=1)
    block["read"] = {}
    for batch in args.batches:
        if name == "KNNErrorMemory" and 2 * batch * rows * 4 > args.max_sims_gb * 2**30:
            continue
        tl, th = tf.constant(queries["logits"][:batch]), tf.constant(queries["hidden"][:batch])
        same = all(np.array_equal(fns["before"][1](tl, th)[k].numpy(),
                                  fns["after"][1](tl, th)[k].numpy())
                   for k in ("probability", "memory_support"))
        t = interleaved({label: (lambda r=f[1]: r(tl, th)["probability"].numpy())
                         for label, f in fns.items()}, args.rounds * 2, args.budget)
        block["read"][str(batch)] = _speedup(t) | {"identical_outputs": same}
    block["write"] = {}
    for batch in sorted({1, 256, args.write_batch}):
        wl, wh, wy = (tf.constant(queries[k][:batch]) for k in ("logits", "hidden", "labels"))
        t = interleaved({label: (lambda w=f[2]: w(wl, wh, wy).numpy())
                         for label, f in fns.items()}, args.rounds * 2, args.budget)
        block["write"][str(batch)] = _speedup(t)
    block["load_average"] = load_average()
    return block


def _speedup(t: dict) -> dict:
    return {"before_ms": t["before"]["median_s"] * 1e3, "after_ms": t["after"]["median_s"] * 1e3,
            "speedup": t["before"]["median_s"] / t["after"]["median_s"],
            "speedup_of_fastest_samples": t["before"]["min_s"] / t["after"]["min_s"]}


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
        d = str(block["dim"])
        across = block["sketch_across_rows"]
        flat[d] = {kind: {b: max(t[r]["ratio_to_smallest"] for r in t) for b, t in across[kind].items()}
                   for kind in ("read", "write")}
        cell = next(c for c in block["cells"] if c["rows"] == top)
        speed[d] = {b: {name: t[name].get("ratio_to_sketch")
                        for name in ("knn", "faiss_flat", "faiss_ivf", "faiss_ivf_diffuse")}
                    for b, t in cell["read"].items()}
        speed[d]["faiss_recall"] = {name: cell["accuracy"][name]["recall_at_k"]
                                    for name in ("faiss_ivf", "faiss_ivf_diffuse")}
        footprint[d] = across["state_bytes"]
    knn = [v[n] for s in speed.values() for b, v in s.items() if b != "faiss_recall"
           for n in ("knn",) if v[n] is not None]
    ivf = [v[n] for s in speed.values() for b, v in s.items() if b != "faiss_recall"
           for n in ("faiss_ivf", "faiss_ivf_diffuse")]
    out["flat_in_rows"] = {"target": "sketch read/write cost flat from smallest to largest N: "
                                     "largest ratio (time at N / time at smallest N) near 1",
                           "measured": flat}
    out["reads_at_largest_rows"] = {
        "target": f"at N={top}: exact k-NN time / sketch time >= 100 and FAISS IVF time / sketch "
                  "time > 1 at recall >= 0.9",
        "measured_ratios_to_sketch": speed,
        "knn_at_least_100x_in_every_measured_batch": bool(knn) and min(knn) >= 100,
        "faiss_ivf_slower_in_every_batch": bool(ivf) and min(ivf) > 1,
    }
    dcn = results.get("dcn")
    if dcn:
        default = dcn["default_sketch"]
        out["dcn_overhead"] = {
            "target": "compensation adds <= 10% to a DCN forward at batch 1024",
            "tf_function": dcn["tf_function"][default]["overhead_vs_base"],
            "saved_model_signature": dcn.get("saved_model_signature", {}).get(
                default, {}).get("overhead_vs_base"),
        }
        out["dcn_overhead"]["met"] = out["dcn_overhead"]["tf_function"] <= 0.10
    out["footprint"] = {"target": "sketch state <= 32 MB, independent of rows written",
                        "sketch_bytes_by_dim": footprint,
                        "met": max(footprint.values()) <= 32 * 2**20}
    out["gauc_lift_share"] = {"target": "sketch keeps >= 90% of exact k-NN's gAUC lift "
                                        "(streaming benchmark)", "runs": gauc_share()}
    return out


def _ms(t: dict) -> str:
    if "median_ms" not in t:
        return f"{'skipped':>18}"
    return f"{t['median_ms']:9.3f} ({t['ratio_to_sketch']:6.1f}x)"


def print_tables(results: dict) -> None:
    names = ("knn", "faiss_flat", "faiss_ivf", "faiss_ivf_diffuse", "tf_call_floor")
    for block in results["memories"]:
        d = block["dim"]
        print(f"\nd = {d}: read + compensate, median ms (x = time / sketch time)")
        print(f"{'N':>9} {'batch':>6} {'sketch':>9} " + " ".join(f"{n:>18}" for n in names))
        for cell in block["cells"]:
            for batch, t in cell["read"].items():
                print(f"{cell['rows']:>9} {batch:>6} {t['sketch']['median_ms']:9.3f} "
                      + " ".join(_ms(t[n]) for n in names))
            acc = cell["accuracy"]
            print(f"{'':>17} FAISS IVF nprobe/nlist, recall@{TOP_K}: clustered "
                  f"{acc['faiss_ivf']['nprobe']}/{acc['faiss_ivf']['nlist']}, "
                  f"{acc['faiss_ivf']['recall_at_k']:.3f}; diffuse "
                  f"{acc['faiss_ivf_diffuse']['nprobe']}/{acc['faiss_ivf_diffuse']['nlist']}, "
                  f"{acc['faiss_ivf_diffuse']['recall_at_k']:.3f}")
        print(f"d = {d}: writes, rows/s (x = time / sketch time)")
        for cell in block["cells"]:
            for batch, t in cell["write"].items():
                print(f"{cell['rows']:>9} {batch:>6} " + "  ".join(
                    f"{name} {v['rows_per_s']:,.0f} ({v['ratio_to_sketch']:.2f}x)"
                    for name, v in t.items() if isinstance(v, dict)))
        across = block["sketch_across_rows"]
        for kind in ("read", "write"):
            print(f"d = {d}: sketch {kind} across N (time / time at smallest N): " + "; ".join(
                f"b={b}: " + ", ".join(f"{r}: {v['ratio_to_smallest']:.2f}" for r, v in t.items())
                for b, t in across[kind].items()))
    dcn = results.get("dcn")
    if dcn:
        tfn = dcn["tf_function"]
        print(f"\nDCN batch {dcn['batch']} (tf.function), base {tfn['base']['median_ms']:.2f} ms; "
              "overhead: " + ", ".join(f"{n} {100 * t['overhead_vs_base']:+.1f}%"
                                       for n, t in tfn.items() if n != "base" and ":" not in n)
              + "; parts of the default sketch as a share of the base forward: " + ", ".join(
                  f"{n.split(':')[1]} {100 * (1 + t['overhead_vs_base']):.0f}%"
                  for n, t in tfn.items() if ":" in n))
        sig = dcn.get("saved_model_signature")
        if sig:
            default = dcn["default_sketch"]
            print(f"DCN batch {dcn['batch']} (SavedModel signature): base "
                  f"{sig['base']['median_ms']:.2f} ms, {default} "
                  f"{100 * sig[default]['overhead_vs_base']:+.1f}%")
    print("\nload average: start", results["load_average"]["start"], "end",
          results["load_average"]["end"])


def _fmt_ms(ms: float) -> str:
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.3g}"


def _x(t: dict | None, digits: int = 1) -> str:
    if not t or "median_ms" not in t:
        return "—"
    return f"{_fmt_ms(t['median_ms'])} ms ({t['ratio_to_sketch']:,.{digits}f}×)"


def _memory_tables(results: dict, add) -> None:
    add("### Read + compensate (median ms per call; × = time / sketch time, same group)\n")
    add("| d | N | batch | sketch | exact k-NN (ours) | FAISS flat (exact) | FAISS IVF, clustered "
        "| FAISS IVF, diffuse | empty tf.function |")
    add("|---|---|---|---|---|---|---|---|---|")
    for block in results["memories"]:
        for cell in block["cells"]:
            for batch, t in cell["read"].items():
                add(f"| {block['dim']} | {cell['rows']:,} | {batch} | {_fmt_ms(t['sketch']['median_ms'])} "
                    f"| {_x(t.get('knn'))} | {_x(t.get('faiss_flat'))} | {_x(t.get('faiss_ivf'))} "
                    f"| {_x(t.get('faiss_ivf_diffuse'))} | {_x(t.get('tf_call_floor'), 2)} |")
    add("\n### FAISS IVF operating points and estimate accuracy (held-out queries)\n")
    add("| d | N | IVF clustered: nprobe/nlist, recall@32 | IVF diffuse: nprobe/nlist, recall@32 "
        "| mean abs. diff. of ȳ from exact k-NN: sketch / IVF clustered / IVF diffuse |")
    add("|---|---|---|---|---|")
    for block in results["memories"]:
        for cell in block["cells"]:
            a = cell["accuracy"]
            c, f = a["faiss_ivf"], a["faiss_ivf_diffuse"]
            key = "mean_abs_label_estimate_diff_vs_exact_knn"
            add(f"| {block['dim']} | {cell['rows']:,} | {c['nprobe']}/{c['nlist']}, "
                f"{c['recall_at_k']:.3f} | {f['nprobe']}/{f['nlist']}, {f['recall_at_k']:.3f} "
                f"| {a['sketch'][key]:.3f} / {c[key]:.3f} / {f[key]:.3f} |")
    wb = str(results["config"]["write_batch"])
    add(f"\n### Writes, batch {wb} (rows/s; × = time / sketch time)\n")
    add("| d | N | sketch | exact k-NN (ring buffer) | FAISS flat | FAISS IVF |")
    add("|---|---|---|---|---|---|")
    for block in results["memories"]:
        for cell in block["cells"]:
            t = cell["write"][wb]
            add(f"| {block['dim']} | {cell['rows']:,} | {t['sketch']['rows_per_s']:,.0f} | " + " | ".join(
                f"{t[n]['rows_per_s']:,.0f} ({t[n]['ratio_to_sketch']:.2f}×)"
                for n in ("knn", "faiss_flat", "faiss_ivf")) + " |")
    add("\n### The sketch alone across N (time / time at the smallest N, one interleaved group)\n")
    rows = results["config"]["rows"]
    add("| d | operation | batch | " + " | ".join(f"N = {n:,}" for n in rows) + " |")
    add("|---|---|---|" + "---|" * len(rows))
    for block in results["memories"]:
        across = block["sketch_across_rows"]
        for kind in ("read", "write"):
            for batch, t in across[kind].items():
                add(f"| {block['dim']} | {kind} | {batch} | " + " | ".join(
                    f"{t[str(n)]['ratio_to_smallest']:.2f} ({_fmt_ms(t[str(n)]['median_ms'])} ms)"
                    for n in rows) + " |")
    add("\n### State size (MB)\n")
    add("| d | N | sketch | exact k-NN | FAISS flat | FAISS IVF |")
    add("|---|---|---|---|---|---|")
    for block in results["memories"]:
        for cell in block["cells"]:
            b = cell["state_bytes"]
            add(f"| {block['dim']} | {cell['rows']:,} | " + " | ".join(
                f"{b[n] / 2**20:,.1f}" for n in ("sketch", "knn", "faiss_flat", "faiss_ivf")) + " |")


def markdown(results: dict) -> str:
    """The tables of docs/performance.md, from one run's results."""
    lines = []
    add = lines.append
    if results["memories"]:
        _memory_tables(results, add)
    rss = results.get("peak_rss", {})
    if rss.get("children"):
        add(f"\n### Peak RSS, one process per structure (d = {rss['children'][0]['dim']}, "
            f"N = {rss['rows']:,}, one read batch of {rss['read_batch']})\n")
        add("| structure | peak RSS (MB) | over the empty process (MB) | state (MB) |")
        add("|---|---|---|---|")
        for c in rss["children"]:
            if "peak_rss_mb" in c:
                add(f"| {c['structure']} | {c['peak_rss_mb']:,.0f} | "
                    f"{c['peak_over_empty_process_mb']:,.0f} | {c['state_bytes'] / 2**20:,.1f} |")
    dcn = results.get("dcn")
    if dcn:
        add(f"\n### DCN forward pass at batch {dcn['batch']} (hidden width {dcn['hidden_width']})\n")
        add("| call | variant | median ms | added to the base forward |")
        add("|---|---|---|---|")
        for name, t in dcn["tf_function"].items():
            share = (f"(a part: {100 * (1 + t['overhead_vs_base']):.0f}% of the base forward)"
                     if ":" in name else f"{100 * t['overhead_vs_base']:+.0f}%")
            add(f"| tf.function | {name} | {_fmt_ms(t['median_ms'])} | {share} |")
        for name, t in dcn.get("saved_model_signature", {}).items():
            if isinstance(t, dict):
                add(f"| SavedModel signature | {name} | {_fmt_ms(t['median_ms'])} | "
                    f"{100 * t['overhead_vs_base']:+.0f}% |")
    add(f"\nLoad average (1, 5, 15 min): start {results['load_average']['start']}, end "
        f"{results['load_average']['end']}; wall time {results.get('wall_seconds')} s.")
    return "\n".join(lines) + "\n"


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
