"""Random raw rows in the canonical MovieLens columns, and the JSON output, for the benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def make_features(spec, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` rows for ``spec``: ids as strings, sequences as 20 space-separated ids."""
    out = {}
    for feature in spec.features:
        if hasattr(feature, "max_length"):
            out[feature.name] = np.array([" ".join(map(str, rng.integers(1, 3700, 20)))
                                          for _ in range(n)], dtype=object)
        else:
            out[feature.name] = rng.integers(1, 3000, n).astype(str).astype(object)
    return out


def report(results, output: str | None) -> None:
    """Prints ``results`` as JSON and writes them to ``output`` when given."""
    text = json.dumps(results, indent=2)
    print(text)
    if output:
        Path(output).write_text(text, encoding="utf-8")
