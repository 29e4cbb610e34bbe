"""Where a call's time goes: the same signatures run in process by the dev server's own
``Servable`` (the TF1 Session over the SignatureDefs, no gRPC); and ``memory_weight()``."""

from __future__ import annotations

import numpy as np

from cost_bench import stats
from random_rows import make_features
from serving_bench import timing


def _protos(inputs: dict) -> dict:
    from reloop2_tf._keras import tf

    return {k: tf.make_tensor_proto(np.asarray(v)) for k, v in inputs.items()}


def session_costs(dirs: dict, spec, rng: np.random.Generator, rounds: int, calls: int) -> dict:
    """Median ms per ``Servable.run`` (what the dev server does per request once it has the
    TensorProtos): predict of the base and of the memory at batch 1 and 256, and both writes at
    batch 256 (on a third Session, so that the predicts read an unchanged memory), each with a
    fresh ``write_id`` per call as over gRPC, and by keys also with ``write_id=""`` (no
    exactly-once check: the cost of the dedup window)."""
    from reloop2_serving.client import new_write_id
    from reloop2_serving.dev_server import Servable

    base, memory, writer = (Servable(dirs["base"], 1), Servable(dirs["memory"], 1),
                            Servable(dirs["memory"], 1))
    out = {}
    try:
        for batch in (1, 256):
            x = _protos(make_features(spec, batch, rng))
            fns = {"predict base": lambda: base.run("serving_default", x),
                   "predict memory": lambda: memory.run("serving_default", x),
                   "predict memory, probability only": lambda: memory.run("serving_default", x,
                                                                          ["probability"])}
            if batch == 1:
                fns["memory_weight"] = lambda: memory.run("memory_layout", {}, ["memory_weight"])
                fns["memory_weight via memory_snapshot"] = lambda: memory.run(
                    "memory_snapshot", {}, ["memory_weight"])
            if batch == 256:
                served = memory.run("serving_default", x)[1]
                y = rng.integers(0, 2, batch).astype(np.float32)
                w = np.ones(batch, np.float32)
                keys = _protos({"memory_keys": served["memory_keys"],
                                "base_probability": served["base_probability"], "label": y,
                                "sample_weight": w})
                rest = _protos({"label": y, "sample_weight": w})
                # A fresh id for every call, its TensorProto built before the timing (as the
                # other inputs' are): 2 warm-up calls and `rounds * calls` timed ones per arm.
                ids = iter([_protos({"write_id": np.array(new_write_id().encode(), dtype=object)})
                            for _ in range(2 * (2 + rounds * calls))])
                no_id = _protos({"write_id": np.array(b"", dtype=object)})
                fns["update_memory_by_keys"] = lambda: writer.run(
                    "update_memory_by_keys", {**keys, **next(ids)})
                fns["update_memory_by_keys, write_id \"\""] = lambda: writer.run(
                    "update_memory_by_keys", {**keys, **no_id})
                fns["update_memory"] = lambda: writer.run("update_memory", {**x, **rest, **next(ids)})
            for fn in fns.values():  # the first run of a signature optimises its graph
                fn()
                fn()
            medians = stats.interleaved_medians(fns, rounds, calls)
            out[str(batch)] = {name: s * 1e3 for name, s in medians.items()}
    finally:
        for servable in (base, memory, writer):
            servable.close()
    return out


def memory_weight_rpc(client, calls: int, warmup: int) -> dict:
    """p50/p99 of ``ReLoop2Client.memory_weight()`` (``memory_layout``: no copy of the state)."""
    seconds = timing.time_interleaved({"memory_weight": lambda i: client.memory_weight()},
                                      calls, warmup)
    return timing.latency(seconds["memory_weight"])
