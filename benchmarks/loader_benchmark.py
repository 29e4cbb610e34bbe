"""The default memory's serving cost in TensorFlow's C++ loader, with no Python in the call path
(issue 15).

``tensorflow_model_server`` cannot be installed here; ``TF_LoadSessionFromSavedModel`` of the
C API is the C++ ``LoadSavedModel`` it links, and ``serving_bench/saved_model_runner.c`` (built
with gcc against the installed ``tensorflow``) runs signatures from threads and times each step
(``serving_bench.c_api``). The exports are the serving benchmark's (``serving_bench.servers.
build_exports``: a zoo dcn with the default memory after 2,048 random rows, and its base alone).

1. ``predict`` at batch 1, 256 and 1024, base vs memory: in each round one runner process per
   export (a warm-up step, then a timed step per batch), the exports alternating; the median
   over rounds of the ms per call, and the memory's ratio and overhead.
2. Writes of 256 rows into the memory export from 1, 2 and 4 threads started together:
   ``update_memory_by_keys`` with a fresh ``write_id`` on every call (exactly-once on, what
   ``reloop2 replay`` sends), with ``write_id`` "" (off), and ``update_memory`` by features;
   the median over rounds of the rows per second.

What this leaves out: the gRPC transport of a real server (``serving_benchmark.py`` measures
the development server's, which is Python). Prints the tables; writes ``runs/bench/loader.json``.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/loader_benchmark.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from serving_bench import c_api  # noqa: E402

log = logging.getLogger("loader_benchmark")

FULL = {"rounds": 5, "predict_calls": {1: 2000, 256: 300, 1024: 100}, "write_calls": 400,
        "feature_write_calls": 100, "threads": [1, 2, 4], "warmup": 20}
QUICK = {"rounds": 1, "predict_calls": {1: 20, 256: 4}, "write_calls": 8,
         "feature_write_calls": 4, "threads": [1, 2], "warmup": 2}
BATCH = 256
WRITES = ("by keys, fresh write_id", 'by keys, write_id ""', "by features")


def _signature_defs(path: Path) -> dict:
    from tensorflow.python.saved_model import loader_impl

    meta = loader_impl.parse_saved_model(str(path)).meta_graphs[0]
    return dict(meta.signature_def)


def _inputs(path: Path, rng) -> dict:
    """Request rows for every batch, and a 256-row write by keys and by features."""
    from reloop2_tf._keras import tf
    from serving_bench.servers import make_features, spec

    model = tf.saved_model.load(str(path))
    rows = {b: make_features(spec(), b, rng) for b in (*FULL["predict_calls"], BATCH)}
    served = model.signatures["predict"](**{k: tf.constant(v) for k, v in rows[BATCH].items()})
    label = rng.integers(0, 2, BATCH).astype(np.float32)
    weight = np.ones(BATCH, np.float32)
    keys = {"memory_keys": served["memory_keys"].numpy(),
            "base_probability": served["base_probability"].numpy(), "label": label,
            "sample_weight": weight}
    return {"rows": rows,
            WRITES[0]: {**keys, "write_id": c_api.FreshIds("loader")},
            WRITES[1]: {**keys, "write_id": np.array(b"", dtype=object)},
            WRITES[2]: {**rows[BATCH], "label": label, "sample_weight": weight,
                        "write_id": c_api.FreshIds("loader")}}


def _round(binary, dirs, inputs, cfg, folder: Path) -> dict:
    """One runner process per export; returns seconds per call of every timed call."""
    out = {"predict": {}, "writes": {}}
    for name, path in dirs.items():
        plan = c_api.Plan(folder / name, _signature_defs(path))
        plan.folder.mkdir(parents=True, exist_ok=True)
        timed = []  # (key, calls per step, call files)
        for batch, calls in cfg["predict_calls"].items():
            x = inputs["rows"][batch]
            plan.step(("predict", x, 1, cfg["warmup"]))
            timed.append(((name, batch), calls, plan.step(("predict", x, 1, calls))))
        if name == "memory":
            for kind in WRITES:
                signature = "update_memory" if kind == "by features" else "update_memory_by_keys"
                total = cfg["feature_write_calls"] if kind == "by features" else cfg["write_calls"]
                for threads in cfg["threads"]:
                    per = max(1, total // threads)
                    plan.step((signature, inputs[kind], threads, cfg["warmup"]))
                    timed.append(((kind, threads), per * threads,
                                  plan.step((signature, inputs[kind], threads, per))))
        seconds = plan.run(binary, path)
        steps = iter(seconds[1::2])  # every timed step follows its warm-up step
        for (key, calls, files), elapsed in zip(timed, steps):
            if key[0] in WRITES:
                written = [float(r["weight_written"]) for r in c_api.results(files[0])]
                if written != [float(BATCH)] * len(written):
                    raise RuntimeError(f"{key}: a timed write wrote {written}, not {BATCH} rows")
                out["writes"].setdefault(key[0], {})[key[1]] = elapsed / calls
            else:
                out["predict"].setdefault(key[1], {})[key[0]] = elapsed / calls
    return out


def run(cfg: dict) -> dict:
    from serving_bench import servers

    rng = np.random.default_rng(0)
    started = time.perf_counter()
    results = {"config": {**{k: v for k, v in cfg.items() if k != "predict_calls"},
                          "predict_calls": {str(b): n for b, n in cfg["predict_calls"].items()},
                          "batch": BATCH},
               "load_average": {"start": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="reloop2-loader-") as tmp:
        exports = servers.build_exports(rng, root=Path(tmp) / "exports")
        dirs = {"base": Path(exports["dirs"]["base"]), "memory": Path(exports["dirs"]["memory"])}
        binary = c_api.build_runner(Path(tmp) / "saved_model_runner")
        inputs = _inputs(dirs["memory"], rng)
        rounds = []
        for r in range(cfg["rounds"]):
            log.info("round %d of %d", r + 1, cfg["rounds"])
            folder = Path(tmp) / f"round{r}"
            rounds.append(_round(binary, dirs if r % 2 == 0 else dict(reversed(dirs.items())),
                                 inputs, cfg, folder))
            shutil.rmtree(folder, ignore_errors=True)
    results["predict"] = {}
    for batch in cfg["predict_calls"]:
        base = float(np.median([r["predict"][batch]["base"] for r in rounds])) * 1e3
        memory = float(np.median([r["predict"][batch]["memory"] for r in rounds])) * 1e3
        results["predict"][str(batch)] = {"base_ms": base, "memory_ms": memory,
                                          "ratio": memory / base, "overhead_ms": memory - base}
    results["writes"] = {kind: {str(t): {
        "ms_per_call": float(np.median([r["writes"][kind][t] for r in rounds])) * 1e3,
        "rows_per_s": float(np.median([BATCH / r["writes"][kind][t] for r in rounds]))}
        for t in cfg["threads"]} for kind in WRITES}
    results["load_average"]["end"] = os.getloadavg()
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    return results


def print_tables(results: dict) -> None:
    print("\npredict in the C++ loader (median ms per call)")
    print(f"{'batch':>6} {'base':>9} {'memory':>9} {'ratio':>7} {'overhead':>9}")
    for batch, row in results["predict"].items():
        print(f"{batch:>6} {row['base_ms']:9.3f} {row['memory_ms']:9.3f} {row['ratio']:7.2f} "
              f"{row['overhead_ms']:9.3f}")
    print(f"\nwrites of {results['config']['batch']} rows (rows/s; threads started together)")
    threads = results["config"]["threads"]
    print(f"{'':26}" + "".join(f"{f'{t} thread(s)':>14}" for t in threads))
    for kind, row in results["writes"].items():
        print(f"{kind:26}" + "".join(f"{row[str(t)]['rows_per_s']:14,.0f}" for t in threads))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one short round (for the tests)")
    p.add_argument("--output", default="runs/bench/loader.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = run(QUICK if args.quick else FULL)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print_tables(results)
    print(f"\nwrote {out} in {results['wall_seconds']} s; load average {results['load_average']}")
    return results


if __name__ == "__main__":
    main()
