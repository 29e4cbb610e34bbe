"""The synthetic rows and the three structures: LSH sketch, exact k-NN memory, FAISS indexes."""

from __future__ import annotations

import math
import time

import numpy as np


TOP_K = 32
KNN_TEMPERATURE = 0.1  # SPEC section 3 default
COMPENSATION_WEIGHT = 0.5
RECALL_TARGET = 0.9
NUM_CLUSTERS = 1000
KINDS = ("clustered", "diffuse")
CHUNK_ROWS = 16_384


# -- data -----------------------------------------------------------------------------------------

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
        comp = ErrorCompensation(LSHErrorMemory(num_tables=64, num_bits=12, seed=0, half_life=None),
                                 compensation_weight=COMPENSATION_WEIGHT, self_tuning=False)
    else:
        comp = ErrorCompensation(KNNErrorMemory(capacity=capacity, top_k=TOP_K),
                                 compensation_weight=COMPENSATION_WEIGHT,
                                 temperature=KNN_TEMPERATURE, self_tuning=False)
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
