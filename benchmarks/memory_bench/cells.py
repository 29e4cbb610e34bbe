"""The memory benchmark proper: every structure at each (d, N) cell, and the sketch across N."""

from __future__ import annotations

import logging
import time

import numpy as np

from memory_bench.structures import (KINDS, KNN_TEMPERATURE, FaissIndex, Stream, build_faiss,
                                     estimate_from_neighbours, exact_top_k, fill_tf,
                                     nprobe_for_recall, tf_memory, variable_bytes)
from memory_bench.timing import interleaved, load_average, rss_mb, with_ratios

logger = logging.getLogger("memory_benchmark")


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
