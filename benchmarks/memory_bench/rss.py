"""Peak RSS of each structure, one fresh child process (``memory_benchmark.py --rss-child``) each."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from memory_bench.structures import Stream, build_faiss, fill_tf, tf_memory, variable_bytes
from memory_bench.timing import peak_rss_mb, rss_mb

logger = logging.getLogger("memory_benchmark")
# The script the children run (it dispatches --rss-child to rss_child).
SCRIPT = Path(__file__).resolve().parents[1] / "memory_benchmark.py"


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
        cmd = [sys.executable, str(SCRIPT), "--rss-child", structure, "--rss-dim", str(dim),
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
