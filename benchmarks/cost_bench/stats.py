"""Pure helpers: percentiles, ratios and interleaved timing of callables."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np


def percentiles_ms(seconds, quantiles=(50, 99)) -> dict[str, float]:
    """``{"p50_ms": ..., "p99_ms": ..., "calls": n}`` of durations given in seconds."""
    values = np.asarray(seconds, dtype=np.float64) * 1e3
    if values.size == 0:
        raise ValueError("`seconds` should hold at least one duration. Received: an empty list")
    out = {f"p{q}_ms": round(float(np.percentile(values, q)), 4) for q in quantiles}
    out["calls"] = int(values.size)
    return out


def ratio(value: float, reference: float) -> float:
    """``value / reference``, rejecting a non-positive reference."""
    if not reference > 0:
        raise ValueError(f"`reference` should be > 0. Received: reference={reference!r}")
    return float(value) / float(reference)


def overhead(with_memory: float, base: float) -> dict[str, float]:
    """Absolute and relative overhead of ``with_memory`` over ``base`` (same unit)."""
    return {"delta": float(with_memory) - float(base),
            "ratio": ratio(with_memory, base),
            "percent": 100.0 * (ratio(with_memory, base) - 1.0)}


def interleaved_medians(fns: Mapping[str, Callable[[], object]], rounds: int, calls: int,
                        clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each function, timed in ``rounds`` interleaved rounds of
    ``calls`` calls each (every round runs every function in turn, so that machine noise
    hits all alike)."""
    if rounds < 1 or calls < 1:
        raise ValueError(f"`rounds` and `calls` should be >= 1. Received: {rounds=}, {calls=}")
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = clock()
            for _ in range(calls):
                fn()
            samples[name].append((clock() - start) / calls)
    return {name: float(np.median(s)) for name, s in samples.items()}


def flatness(times_by_rows: Mapping[int, float]) -> dict[int, float]:
    """Each time divided by the time at the fewest rows (1.0 = flat)."""
    if not times_by_rows:
        raise ValueError("`times_by_rows` should not be empty")
    first = times_by_rows[min(times_by_rows)]
    return {rows: ratio(t, first) for rows, t in sorted(times_by_rows.items())}
