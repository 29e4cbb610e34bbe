"""Before/after of a layer implementation: the current memories vs older copies of their source."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memory_bench.structures import COMPENSATION_WEIGHT, KNN_TEMPERATURE, TOP_K, Stream
from memory_bench.timing import interleaved, load_average


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
            comp = ErrorCompensation(cls(num_tables=64, num_bits=12, seed=0, half_life=None),
                                     compensation_weight=COMPENSATION_WEIGHT, self_tuning=False)
        else:
            comp = ErrorCompensation(cls(capacity=rows, top_k=TOP_K), temperature=KNN_TEMPERATURE,
                                     compensation_weight=COMPENSATION_WEIGHT, self_tuning=False)
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
