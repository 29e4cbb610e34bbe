"""The two SavedModels (base alone, base + default memory), their dev servers and the gRPC parts
of the benchmark: predict latency, write throughput, replay equality."""

from __future__ import annotations

import tempfile
import time
from concurrent import futures
from pathlib import Path

import numpy as np

from cost_bench.forward import default_model
from random_rows import make_features
from serving_bench import timing


def spec():
    import reloop2_tf as r2

    return r2.FeatureSpec.movielens()


def export_base(model, path: Path) -> Path:
    """The base model alone: ``serving_default`` (and ``predict``) return ``base_probability``."""
    from reloop2_tf import export as ex
    from reloop2_tf._keras import tf

    module = tf.Module()
    module.model = model.base_model

    @tf.function(input_signature=[ex.feature_specs(model)])
    def predict(features):
        logits = tf.reshape(module.model(features, training=False), [-1])
        return {"base_probability": tf.sigmoid(logits)}

    tf.saved_model.save(module, str(path), signatures={"serving_default": predict,
                                                       "predict": predict})
    return path


def build_exports(rng: np.random.Generator, root: Path | None = None, warm_rows: int = 2048,
                  **memory) -> dict:
    """dcn + the default memory (seed 0; ``memory``: other ``LSHErrorMemory`` arguments),
    ``warm_rows`` random rows written so that reads see filled buckets and a solved trust;
    exported as ReLoop2 SavedModel and as the base alone (same weights) to ``root``/memory and
    ``root``/base (default: a new temporary ``root``, which the caller removes). Returns the
    paths and the footprint figures."""
    from reloop2_tf import export as ex
    from reloop2_tf._keras import keras

    keras.utils.set_random_seed(0)
    model = default_model("dcn", **memory)
    model.update_memory(make_features(spec(), warm_rows, rng),
                        rng.integers(0, 2, warm_rows).astype(np.float32))
    tmp = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="reloop2-serving-bench-"))
    memory_dir = Path(ex.export_serving_model(model, tmp / "memory"))
    base_dir = export_base(model, tmp / "base")
    mem = model.memory
    return {
        "root": tmp,
        "dirs": {"base": base_dir, "memory": memory_dir},
        "memory": {"class": type(mem).__name__, "num_tables": mem.num_tables,
                   "num_bits": mem.num_bits, "id_groups": [list(g) for g in mem.id_groups],
                   "id_tables": [list(t) for t in mem.id_tables],
                   "id_bits": mem.id_bits, "num_key_columns": mem.num_key_columns,
                   "num_state_rows": mem.num_state_rows, "hidden_dim": int(mem.dim),
                   "num_trust_features": mem.num_trust_features, "warm_rows": warm_rows},
        "footprint": {
            "memory_variables_bytes": ex.memory_footprint_bytes(model),
            "model_variables_bytes": int(sum(np.prod(v.shape) * v.dtype.size
                                             for v in model.base_model.variables)),
            "saved_model_bytes": {name: sum(f.stat().st_size for f in Path(d).rglob("*")
                                            if f.is_file())
                                  for name, d in (("memory", memory_dir), ("base", base_dir))},
        },
    }


def start_servers(dirs: dict) -> dict:
    """One dev server per name, started at once (they load in parallel)."""
    from reloop2_serving.process import DevServerProcess

    with futures.ThreadPoolExecutor(len(dirs)) as pool:
        pending = {name: pool.submit(DevServerProcess, path) for name, path in dirs.items()}
        servers, errors = {}, []
        for name, job in pending.items():
            try:
                servers[name] = job.result()
            except Exception as err:  # stop the others before raising
                errors.append(err)
    if errors:
        for server in servers.values():
            server.stop()
        raise errors[0]
    return servers


def _protos(inputs: dict) -> dict:
    from reloop2_tf._keras import tf

    return {k: tf.make_tensor_proto(np.asarray(v)) for k, v in inputs.items()}


def predict_latency(clients: dict, batch: int, calls: int, warmup: int,
                    rng: np.random.Generator, block: int = 20) -> dict:
    """Predict on the base server and the memory server, the same rows to both.

    ``blocks`` (the figures the targets are judged on): prebuilt requests (TensorProtos built
    before timing: the RPC, the server and decoding the answer), ``block`` consecutive calls to
    one server after one untimed call, the servers' blocks alternating, so that each server
    answers a run of its own requests (warm, as a server with its own traffic).

    Then three pairs of arms interleaved call by call, the calls alternating between the servers
    (each server mostly answers right after the other one ran: a cold-cache bound):
    ``prebuilt``; ``client``, ``ReLoop2Client.predict`` on raw arrays (also building the
    request); ``probability_only``, the prebuilt call with the memory's
    ``output_filter=["probability"]`` (one output back, like the base)."""
    batches = [make_features(spec(), batch, rng) for _ in range(warmup + calls)]
    protos = [_protos(b) for b in batches]
    base, memory = clients["base"], clients["memory"]
    arms = {
        "prebuilt base": lambda i: base.call("serving_default", protos[i]),
        "prebuilt memory": lambda i: memory.call("serving_default", protos[i]),
        "client base": lambda i: base.predict(batches[i]),
        "client memory": lambda i: memory.predict(batches[i]),
        "probability_only base": lambda i: base.call("serving_default", protos[i]),
        "probability_only memory": lambda i: memory.call("serving_default", protos[i],
                                                         ["probability"]),
    }
    # Calls alternate between the servers (base, memory, ... on even iterations, memory, base,
    # ... on odd ones); only at an iteration's start does a server answer twice in a row, and
    # that hits the prebuilt base and the prebuilt memory arm alike (every other iteration each).
    modes = ("prebuilt", "client", "probability_only")
    schedule = timing.paired([(f"{mode} base", f"{mode} memory") for mode in modes])
    seconds = timing.time_interleaved(arms, calls, warmup, schedule=schedule)
    blocks = timing.time_blocks({
        "base": lambda j: base.call("serving_default", protos[warmup + j % calls]),
        "memory": lambda j: memory.call("serving_default", protos[warmup + j % calls])},
        calls, block)
    seconds.update({f"blocks {k}": v for k, v in blocks.items()})
    out = {}
    for mode in timing.PREDICT_MODES:
        b, m = timing.latency(seconds[f"{mode} base"]), timing.latency(seconds[f"{mode} memory"])
        out[mode] = {"base": b, "memory": m, "overhead": timing.predict_overhead(b, m)}
    out["block"] = block
    out["outputs"] = {"base": sorted(base.predict(batches[0])),
                      "memory": sorted(memory.predict(batches[0]))}
    return out


def writes_and_replay(clients: dict, batch: int, calls: int, warmup: int,
                      rng: np.random.Generator) -> tuple[dict, dict]:
    """One-thread write throughput, by keys on server ``keys`` and by features on server
    ``features`` (both loaded from the same export), interleaved call by call; then ``replay``.

    ``prebuilt``: requests built before timing (their TensorProtos, one fresh write_id each);
    ``client``: ``update_memory_by_keys`` / ``update_memory`` of ``ReLoop2Client`` on arrays.
    Keys and base probabilities come from a ``predict`` of the same rows on the keys server,
    made before timing (a caller has them from serving)."""
    from reloop2_serving.client import new_write_id

    keys_client, feat_client = clients["keys"], clients["features"]
    n = warmup + calls
    data = {}
    for mode in ("prebuilt", "client"):
        rows = [make_features(spec(), batch, rng) for _ in range(n)]
        served = [keys_client.predict(r, output_filter=["memory_keys", "base_probability"])
                  for r in rows]
        labels = [rng.integers(0, 2, batch).astype(np.float32) for _ in range(n)]
        weights = [rng.integers(0, 3, batch).astype(np.float32) for _ in range(n)]
        data[mode] = (rows, served, labels, weights)
    rows, served, labels, weights = data["prebuilt"]
    by_keys = [_protos({"memory_keys": s["memory_keys"].astype(np.int32),
                        "base_probability": s["base_probability"].astype(np.float32),
                        "label": y, "sample_weight": w,
                        "write_id": np.array(new_write_id().encode(), dtype=object)})
               for s, y, w in zip(served, labels, weights)]
    by_features = [_protos({**r, "label": y, "sample_weight": w,
                            "write_id": np.array(new_write_id().encode(), dtype=object)})
                   for r, y, w in zip(rows, labels, weights)]
    c_rows, c_served, c_labels, c_weights = data["client"]
    arms = {
        "prebuilt by_keys": lambda i: keys_client.call("update_memory_by_keys", by_keys[i]),
        "prebuilt by_features": lambda i: feat_client.call("update_memory", by_features[i]),
        "client by_keys": lambda i: keys_client.update_memory_by_keys(
            c_served[i]["memory_keys"], c_served[i]["base_probability"], c_labels[i],
            c_weights[i]),
        "client by_features": lambda i: feat_client.update_memory(
            c_rows[i], c_labels[i], c_weights[i]),
    }
    schedule = timing.paired([("prebuilt by_keys", "prebuilt by_features"),
                              ("client by_keys", "client by_features")])
    seconds = timing.time_interleaved(arms, calls, warmup, schedule=schedule)
    writes = {"batch": batch, "one_thread": {}}
    for mode in ("prebuilt", "client"):
        cell = {}
        for kind in ("by_keys", "by_features"):
            s = seconds[f"{mode} {kind}"]
            cell[kind] = {**timing.latency(s), "rows_per_s": round(timing.rows_per_second(batch, s), 1)}
        cell["keys_over_features"] = round(cell["by_keys"]["rows_per_s"]
                                           / cell["by_features"]["rows_per_s"], 3)
        writes["one_thread"][mode] = cell

    return writes, replay(clients, batch, 2 * n, rng)


def replay(clients: dict, batch: int, batches: int, rng: np.random.Generator) -> dict:
    """The same rows written by keys to server ``keys`` and by features to server ``features``,
    from the same state (the features server's memory restored into both: a restore leaves
    the forgetting clocks at 1, so the two hold the same floats, not only the same sums), each
    batch predicted on the keys server just before its write, as a client does: the keys of a
    memory that read its own counts (a popularity cross) are those of the moment the rows are
    served. Then the two memories and their predictions are compared."""
    keys_client, feat_client = clients["keys"], clients["features"]
    state = feat_client.snapshot()
    keys_client.restore(state)
    feat_client.restore(state)
    written = {"keys": 0.0, "features": 0.0}
    for _ in range(batches):
        rows = make_features(spec(), batch, rng)
        labels = rng.integers(0, 2, batch).astype(np.float32)
        weights = rng.integers(0, 3, batch).astype(np.float32)
        served = keys_client.predict(rows, output_filter=["memory_keys", "base_probability"])
        written["keys"] += float(keys_client.update_memory_by_keys(
            served["memory_keys"], served["base_probability"], labels, weights)["weight_written"])
        written["features"] += float(feat_client.update_memory(rows, labels,
                                                               weights)["weight_written"])
    a, b = keys_client.snapshot(), feat_client.snapshot()
    probe = make_features(spec(), batch, rng)
    pa, pb = keys_client.predict(probe), feat_client.predict(probe)
    return {
        "batches": batches, "rows": batches * batch,
        "weight_written_by_keys": written["keys"],
        "weight_written_by_features": written["features"],
        "shape_by_keys": list(a.shape), "shape_by_features": list(b.shape),
        "snapshots_equal": bool(a.shape == b.shape and np.array_equal(a, b)),
        "max_abs_diff": float(np.max(np.abs(a - b))) if a.shape == b.shape else None,
        "predictions_equal_after": bool(np.array_equal(pa["probability"], pb["probability"])),
    }


def threaded_writes(clients: dict, batch: int, calls: int, threads: int, repeats: int,
                    rng: np.random.Generator, in_flight: int = 1) -> dict:
    """Rows/s of a burst of ``calls`` writes from ``threads`` client threads sharing one channel
    (``ReLoop2Client`` on arrays), by keys (server ``keys``) and by features (server
    ``features``), ``repeats`` alternating runs each; rows over wall-clock seconds. With
    ``in_flight`` > 1, one thread sends them through ``ReLoop2Client.writer(in_flight)``."""
    if in_flight > 1 and threads != 1:
        raise ValueError("writes in flight are sent from one thread")
    keys_client, feat_client = clients["keys"], clients["features"]
    rows = [make_features(spec(), batch, rng) for _ in range(calls)]
    served = [keys_client.predict(r, output_filter=["memory_keys", "base_probability"])
              for r in rows]
    labels = [rng.integers(0, 2, batch).astype(np.float32) for _ in range(calls)]

    def send(client, kind, i):
        if kind == "by_keys":
            return client.update_memory_by_keys(served[i]["memory_keys"],
                                                served[i]["base_probability"], labels[i])
        return client.update_memory(rows[i], labels[i])

    def run(kind):
        client = keys_client if kind == "by_keys" else feat_client
        start = time.perf_counter()
        if in_flight > 1:
            with client.writer(in_flight) as writer:
                for i in range(calls):
                    send(writer, kind, i)
        else:
            with futures.ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda i: send(client, kind, i), range(calls)))
        return batch * calls / (time.perf_counter() - start)

    runs = {"by_keys": [], "by_features": []}
    for r in range(repeats):
        for kind in (("by_keys", "by_features") if r % 2 == 0 else ("by_features", "by_keys")):
            runs[kind].append(round(run(kind), 1))
    return {kind: {"threads": threads, "in_flight": in_flight, "calls": calls,
                   "runs_rows_per_s": v, "rows_per_s": sorted(v)[len(v) // 2]}
            for kind, v in runs.items()}
