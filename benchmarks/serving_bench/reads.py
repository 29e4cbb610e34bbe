"""In-process read time and footprint of the default memory after 10^4 .. 10^6 written rows.

One ``ErrorCompensation(LSHErrorMemory(id_groups=MOVIELENS_GROUPS, srp_centre="user_id"))`` per
stored-row count, each filled with the same seeded stream of random rows (hidden vectors of the
dcn's width, MovieLens-like ids with ML-1M's cardinalities), so the smaller memories hold a
prefix of the larger one's rows. Reads (``compensate`` in a traced ``tf.function``, result
fetched) of the same batch are timed on the memories in interleaved rounds
(``cost_bench.stats.interleaved_medians``)."""

from __future__ import annotations

import numpy as np

from cost_bench import stats
from cost_bench.forward import MOVIELENS_GROUPS

# ML-1M's number of distinct values per id feature.
CARDINALITY = {"user_id": 6040, "item_id": 3706, "genre": 18, "release_year": 81, "age": 7,
               "gender": 2, "occupation": 21}
WRITE_BATCH = 4096


def _rows(rng: np.random.Generator, n: int, dim: int) -> tuple:
    ids = {name: rng.integers(0, c, n).astype(str).astype(object) for name, c in CARDINALITY.items()}
    hidden = rng.standard_normal((n, dim)).astype(np.float32)
    logits = rng.normal(-0.5, 1.0, (n, 1)).astype(np.float32)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logits[:, 0]))).astype(np.float32)
    return logits, hidden, labels, ids


def _fill(rows: int, dim: int, seed: int):
    import reloop2_tf as r2
    from reloop2_tf._keras import tf

    comp = r2.ErrorCompensation(r2.LSHErrorMemory(
        id_groups=MOVIELENS_GROUPS, srp_centre=r2.default_srp_centre(MOVIELENS_GROUPS)))
    rng = np.random.default_rng(seed)
    ids_spec = {name: tf.TensorSpec([None], tf.string) for name in CARDINALITY}
    write = tf.function(
        lambda logits, hidden, labels, ids: comp.update_memory(logits, hidden, labels, ids=ids),
        input_signature=[tf.TensorSpec([None, 1]), tf.TensorSpec([None, dim]),
                         tf.TensorSpec([None]), ids_spec])
    read = tf.function(lambda logits, hidden, ids: comp.compensate(logits, hidden, ids)["probability"],
                       input_signature=[tf.TensorSpec([None, 1]), tf.TensorSpec([None, dim]), ids_spec])
    done = 0
    while done < rows:
        n = min(WRITE_BATCH, rows - done)
        logits, hidden, labels, ids = _rows(rng, n, dim)
        if done == 0:  # builds the variables eagerly; the rest run traced
            comp.update_memory(logits, hidden, labels, ids=ids)
        else:
            write(logits, hidden, labels, ids)
        done += n
    return comp, read, write


def read_flatness(rows: list[int], batches: list[int], dim: int, rounds: int, calls: int,
                  seed: int = 0) -> dict:
    """Median ms per read at every (batch, stored rows), the ratio to the fewest rows, and the
    bytes of the memory's variables at every row count."""
    from reloop2_tf._keras import tf

    memories = {str(n): _fill(n, dim, seed) for n in rows}
    rng = np.random.default_rng(seed + 1)
    out = {"rows": rows, "dim": dim, "rounds": rounds, "calls": calls, "batches": {},
           "footprint_bytes": {}, "tracing_counts": {}}
    for n, (comp, _, _) in memories.items():
        out["footprint_bytes"][n] = int(sum(np.prod(v.shape) * v.dtype.size
                                            for v in comp.memory.variables))
    for batch in batches:
        logits, hidden, _, ids = _rows(rng, batch, dim)
        x = (tf.constant(logits), tf.constant(hidden), {k: tf.constant(v) for k, v in ids.items()})
        fns = {}
        for n, (_, read, _) in memories.items():
            read(*x).numpy()  # warm-up
            fns[n] = (lambda f=read: f(*x).numpy())
        medians = stats.interleaved_medians(fns, rounds, calls)
        first = medians[str(min(rows))]
        out["batches"][str(batch)] = {
            "median_ms": {n: s * 1e3 for n, s in medians.items()},
            "ratio_to_fewest": {n: (s * 1e3) / (first * 1e3) for n, s in medians.items()},
        }
    for n, (_, read, write) in memories.items():
        out["tracing_counts"][f"read {n}"] = read.experimental_get_tracing_count()
        out["tracing_counts"][f"write {n}"] = write.experimental_get_tracing_count()
    return out
