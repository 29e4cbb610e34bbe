"""Pure helpers of the serving benchmark: interleaved timing of calls, rows/s, overheads, the
targets of issue 15 and the consistency check of the JSON report. No TensorFlow here."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

from cost_bench.stats import percentiles_ms

# Issue 15's targets for the gRPC part, judged on the numbers this benchmark stores.
P50_OVERHEAD_MS_BATCH_1 = 0.2
P50_OVERHEAD_PERCENT_BATCH_256 = 10.0
BY_KEYS_ROWS_PER_S = 200_000
# "Flat": the read at every stored-row count within this factor of the read at the fewest rows.
FLAT_TOLERANCE = 1.15
# How predict is timed (serving_bench.servers.predict_latency); targets are judged on "blocks".
PREDICT_MODES = ("blocks", "prebuilt", "client", "probability_only")


def rotation(names: Sequence[str]) -> Callable[[int], list[str]]:
    """Iteration ``i`` runs the arms starting at arm ``i mod n``: each arm is first as often."""
    names = list(names)
    if not names:
        raise ValueError("`names` should hold at least one arm")
    return lambda i: names[i % len(names):] + names[:i % len(names)]


def paired(pairs: Sequence[tuple[str, str]]) -> Callable[[int], list[str]]:
    """The pairs in the given order; inside each pair ``(a, b)`` on even iterations, ``(b, a)`` on
    odd ones. Used for writes: arm ``a`` goes to one server and ``b`` to another, so both servers
    get their batches in the same order (their memories can then be compared bit for bit)."""
    pairs = [tuple(p) for p in pairs]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"`pairs` should be a non-empty list of 2-tuples. Received: {pairs!r}")
    return lambda i: [name for a, b in pairs for name in ((a, b) if i % 2 == 0 else (b, a))]


def time_interleaved(arms: Mapping[str, Callable[[int], object]], n: int, warmup: int = 0,
                     schedule: Callable[[int], list[str]] | None = None,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds of every call of every arm: iteration ``i`` (``0 .. warmup + n - 1``) calls each
    ``arms[name](i)`` once, in the order ``schedule(i)`` (default: ``rotation``). The first
    ``warmup`` iterations run but are not timed."""
    if n < 1 or warmup < 0:
        raise ValueError(f"`n` should be >= 1 and `warmup` >= 0. Received: {n=}, {warmup=}")
    schedule = schedule or rotation(list(arms))
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for i in range(warmup + n):
        order = schedule(i)
        if sorted(order) != sorted(arms):
            raise ValueError(f"schedule({i}) = {order} should name every arm once: {sorted(arms)}")
        for name in order:
            start = clock()
            arms[name](i)
            elapsed = clock() - start
            if i >= warmup:
                seconds[name].append(elapsed)
    return seconds


def time_blocks(arms: Mapping[str, Callable[[int], object]], n: int, block: int,
                warmup: int = 1, clock: Callable[[], float] = time.perf_counter
                ) -> dict[str, list[float]]:
    """Seconds of ``n`` calls of every arm, made in blocks: each round runs every arm in turn
    (``rotation``), ``warmup`` untimed calls then ``block`` timed ones (the last block may be
    shorter), so that each arm's calls follow its own (a warm server) while the rounds still
    interleave the arms. ``arms[name](j)`` gets the arm's running call index ``j``."""
    if n < 1 or block < 1 or warmup < 0:
        raise ValueError(f"`n`, `block` should be >= 1, `warmup` >= 0. Received: {n=}, {block=}, "
                         f"{warmup=}")
    order = rotation(list(arms))
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    index = dict.fromkeys(arms, 0)
    for r in range(-(-n // block)):
        size = min(block, n - r * block)
        for name in order(r):
            for k in range(warmup + size):
                start = clock()
                arms[name](index[name])
                elapsed = clock() - start
                index[name] += 1
                if k >= warmup:
                    seconds[name].append(elapsed)
    return seconds


def latency(seconds: Sequence[float]) -> dict:
    """p50/p99 (ms) and the call count, plus the total seconds (for rows/s)."""
    out = percentiles_ms(seconds)
    out["total_s"] = float(sum(seconds))
    return out


def predict_overhead(base: Mapping, memory: Mapping) -> dict:
    """Overhead of ``memory`` over ``base`` (both ``latency`` dicts) at p50 and p99."""
    out = {}
    for q in ("p50", "p99"):
        b, m = base[f"{q}_ms"], memory[f"{q}_ms"]
        out[f"{q}_ms"] = round(m - b, 4)
        out[f"{q}_percent"] = round(100.0 * (m / b - 1.0), 2)
    return out


def rows_per_second(rows_per_call: int, seconds: Sequence[float]) -> float:
    """Rows written per second of call time (the calls' own durations, summed)."""
    total = float(sum(seconds))
    if not seconds or total <= 0:
        raise ValueError("`seconds` should hold positive durations")
    return rows_per_call * len(seconds) / total


def verdicts(results: Mapping) -> list[dict]:
    """Issue 15's targets for this benchmark, each with the measured value and met or not."""
    out = []
    predict = results.get("predict", {})
    if "batch_1" in predict:
        v = predict["batch_1"]["blocks"]["overhead"]["p50_ms"]
        out.append({"target": f"predict p50 overhead <= {P50_OVERHEAD_MS_BATCH_1} ms at batch 1",
                    "measured": v, "unit": "ms", "met": v <= P50_OVERHEAD_MS_BATCH_1})
    if "batch_256" in predict:
        v = predict["batch_256"]["blocks"]["overhead"]["p50_percent"]
        out.append({"target": f"predict p50 overhead <= {P50_OVERHEAD_PERCENT_BATCH_256:g} % at "
                              "batch 256", "measured": v, "unit": "%",
                    "met": v <= P50_OVERHEAD_PERCENT_BATCH_256})
    writes = results.get("writes")
    if writes:
        v = writes["threads"]["1"]["by_keys"]["rows_per_s"]
        out.append({"target": f"update_memory_by_keys >= {BY_KEYS_ROWS_PER_S:,} rows/s at batch "
                              f"{writes['batch']}, one client thread (burst, wall clock)",
                    "measured": v, "unit": "rows/s", "met": v >= BY_KEYS_ROWS_PER_S})
        for window, cell in writes.get("in_flight", {}).items():
            v = cell["by_keys"]["rows_per_s"]
            out.append({"target": f"update_memory_by_keys >= {BY_KEYS_ROWS_PER_S:,} rows/s at "
                                  f"batch {writes['batch']}, one client thread with {window} "
                                  "writes in flight (burst, wall clock)",
                        "measured": v, "unit": "rows/s", "met": v >= BY_KEYS_ROWS_PER_S})
    replay = results.get("replay")
    if replay:
        out.append({"target": "memory after a replay by keys == by features, bit for bit",
                    "measured": replay["snapshots_equal"], "unit": "",
                    "met": bool(replay["snapshots_equal"])})
    reads = results.get("reads")
    if reads:
        worst = max(r for cell in reads["batches"].values() for r in cell["ratio_to_fewest"].values())
        out.append({"target": f"reads flat from {min(reads['rows']):,} to {max(reads['rows']):,} "
                              f"stored rows (every ratio <= {FLAT_TOLERANCE})",
                    "measured": round(worst, 3), "unit": "x", "met": worst <= FLAT_TOLERANCE})
        sizes = set(reads["footprint_bytes"].values())
        out.append({"target": "footprint constant in stored rows", "measured": sorted(sizes),
                    "unit": "bytes", "met": len(sizes) == 1})
    return out


def _close(a: float, b: float, tol: float) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def check_report(results: Mapping) -> list[str]:
    """Inconsistencies in a report (empty when consistent): every overhead, ratio and rate is
    recomputed from the raw figures stored beside it, and the verdicts from those."""
    problems = []
    calls = results["config"]["calls"]
    for key, block in results.get("predict", {}).items():
        batch = int(key.split("_")[1])
        for mode in PREDICT_MODES:
            cell = block[mode]
            for arm in ("base", "memory"):
                lat = cell[arm]
                if lat["calls"] != calls[str(batch)]:
                    problems.append(f"predict {key} {mode} {arm}: {lat['calls']} calls, config "
                                    f"says {calls[str(batch)]}")
                if not 0 < lat["p50_ms"] <= lat["p99_ms"]:
                    problems.append(f"predict {key} {mode} {arm}: p50 {lat['p50_ms']} > p99")
            want = predict_overhead(cell["base"], cell["memory"])
            for name, value in want.items():
                if not _close(cell["overhead"][name], value, 1e-3):
                    problems.append(f"predict {key} {mode}: overhead {name} "
                                    f"{cell['overhead'][name]} != {value}")
    writes = results.get("writes")
    if writes:
        for mode, cell in writes["one_thread"].items():
            if not _close(cell["keys_over_features"], cell["by_keys"]["rows_per_s"]
                          / cell["by_features"]["rows_per_s"], 2e-3):
                problems.append(f"writes {mode}: keys_over_features {cell['keys_over_features']} "
                                "is not the quotient of the rates")
            for kind in ("by_keys", "by_features"):
                rate = cell[kind]
                want = writes["batch"] * rate["calls"] / rate["total_s"]
                if rate["calls"] != calls["writes"] or not _close(rate["rows_per_s"], want, 1e-3):
                    problems.append(f"writes {mode} {kind}: {rate['rows_per_s']} rows/s over "
                                    f"{rate['calls']} calls, recomputed {want}")
        bursts = [(f"{t} threads", cell, int(t), 1) for t, cell in writes.get("threads", {}).items()]
        bursts += [(f"{w} in flight", cell, 1, int(w))
                   for w, cell in writes.get("in_flight", {}).items()]
        for name, cell, threads, window in bursts:
            for kind, rate in cell.items():
                runs = sorted(rate["runs_rows_per_s"])
                if (rate["threads"], rate.get("in_flight", 1)) != (threads, window) or not _close(
                        rate["rows_per_s"], runs[len(runs) // 2], 1e-6):
                    problems.append(f"writes {name} {kind}: rows/s is not the median of its runs")
    replay = results.get("replay")
    if replay:
        equal = replay["max_abs_diff"] == 0.0 and replay["shape_by_keys"] == replay["shape_by_features"]
        if replay["snapshots_equal"] != equal:
            problems.append(f"replay: snapshots_equal={replay['snapshots_equal']} but max_abs_diff="
                            f"{replay['max_abs_diff']}")
        if replay["rows"] != replay["batches"] * writes["batch"]:
            problems.append("replay: rows != batches x batch")
        if not replay["weight_written_by_keys"] == replay["weight_written_by_features"]:
            problems.append("replay: the two servers report different weights written")
    reads = results.get("reads")
    if reads:
        for batch, cell in reads["batches"].items():
            first = cell["median_ms"][str(min(reads["rows"]))]
            for rows, ratio in cell["ratio_to_fewest"].items():
                if not _close(ratio, cell["median_ms"][rows] / first, 1e-6):
                    problems.append(f"reads batch {batch}, {rows} rows: ratio {ratio} != "
                                    f"{cell['median_ms'][rows]} / {first}")
        counts = reads["tracing_counts"]
        if any(c != 1 for k, c in counts.items() if k.startswith("read")) or max(counts.values()) > 1:
            problems.append(f"reads: a traced function was retraced {reads['tracing_counts']}")
    if results.get("verdicts") != verdicts(results):
        problems.append("verdicts differ from the ones recomputed from the figures")
    return problems
