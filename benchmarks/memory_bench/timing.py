"""Measurement helpers: load, memory, and round-robin timing of variants against each other."""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable

import numpy as np


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # Linux /proc fallback
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM, which starts afresh at exec. (``ru_maxrss`` does not:
    a child started by vfork + exec inherits its parent's peak.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, budget: float,
                min_sample_seconds: float = 0.02, max_inner: int = 200,
                setup: dict[str, Callable[[], object]] | None = None) -> dict[str, dict]:
    """Median seconds per call of each variant, measured round-robin.

    Each variant is called once to warm up; if that took under half a second it is called
    again and timed once more to size its samples (a slow variant is sized by its warm-up call).
    A sample is ``inner`` back-to-back calls (so that a sample lasts >= ``min_sample_seconds``),
    and a variant gets ``rounds`` samples, fewer (at least 3) when that would take longer than
    ``budget`` seconds. Round r times every variant still owed a
    sample, starting at a rotating offset, so that load changes hit all variants alike.
    ``setup[name]`` (untimed) runs before each of that variant's samples.
    """
    names = list(variants)
    setup = setup or {}
    plan = {}
    for name in names:
        fn = variants[name]
        setup.get(name, _noop)()
        start = time.perf_counter()
        fn()
        once = time.perf_counter() - start
        if once < 0.5:
            fn()
            start = time.perf_counter()
            fn()
            once = time.perf_counter() - start
        once = max(once, 1e-7)
        inner = int(min(max_inner, max(1, math.ceil(min_sample_seconds / once))))
        reps = int(min(rounds, max(3, budget // (once * inner))))
        plan[name] = (inner, reps)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(max(reps for _, reps in plan.values())):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            inner, reps = plan[name]
            if r >= reps:
                continue
            fn = variants[name]
            setup.get(name, _noop)()
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: {"median_s": float(np.median(samples[name])),
                   "min_s": float(np.min(samples[name])),
                   "max_s": float(np.max(samples[name])),
                   "samples": len(samples[name]), "calls_per_sample": plan[name][0]}
            for name in names}


def _noop() -> None:
    return None


def with_ratios(timings: dict[str, dict], reference: str = "sketch", rows: int | None = None
                ) -> dict[str, dict]:
    """Adds ``ratio_to_sketch`` = median seconds / the sketch's median seconds (> 1: the
    sketch is faster) and, for writes, rows per second."""
    ref = timings[reference]["median_s"]
    out = {}
    for name, t in timings.items():
        entry = dict(t, median_ms=t["median_s"] * 1e3, ratio_to_sketch=t["median_s"] / ref)
        if rows is not None:
            entry["rows_per_s"] = rows / t["median_s"]
        out[name] = entry
    return out
