"""Cheap corrections a practitioner tries first: per-user and per-item running residuals.

A *bias memory* keeps, per key (a user or an item), the running sums of weight, label and base
prediction, and corrects with the same formula as ``ErrorCompensation`` (compensation_weight,
gamma, prior_count). It is the identity-keyed counterpart of the similarity-keyed sketch. It is
written in NumPy because it is a benchmark baseline, not a serving layer: ``np.add.at`` over
factorised keys is all it needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class BiasMemory:
    """Per-key running residual correction.

    Args:
        compensation_weight: lambda. Defaults to `0.5`.
        gamma: `1` blends with the key's label mean, `0` adds its mean residual. Defaults to `0.0`.
        prior_count: support shrinkage ``n / (n + prior_count)``. Defaults to `20.0`.
    """

    compensation_weight: float = 0.5
    gamma: float = 0.0
    prior_count: float = 20.0

    def replay(self, keys, base_probs, labels, slot_sizes, feedback_every=None,
               warm_keys=None, warm_base=None, warm_labels=None) -> np.ndarray:
        """Streams rows (predict a chunk, then write its labels); returns corrected probabilities."""
        warm_keys = np.asarray([] if warm_keys is None else warm_keys, dtype=object)
        all_keys = np.concatenate([warm_keys, np.asarray(keys, dtype=object)])
        codes, uniques = pd.factorize(all_keys)
        stats = np.zeros((len(uniques), 3))
        if warm_keys.size:
            self._write(stats, codes[:warm_keys.size], warm_base, warm_labels)
        codes = codes[warm_keys.size:]
        base_probs = np.asarray(base_probs, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.float64)
        out = np.empty_like(base_probs)
        offset = 0
        for size in slot_sizes:
            step = feedback_every or size
            for start in range(offset, offset + size, step):
                stop = min(start + step, offset + size)
                out[start:stop] = self._correct(stats, codes[start:stop], base_probs[start:stop])
                self._write(stats, codes[start:stop], base_probs[start:stop], labels[start:stop])
            offset += size
        return out

    @staticmethod
    def _write(stats, codes, base, labels) -> None:
        np.add.at(stats, codes, np.stack([np.ones_like(base), labels, base], axis=1))

    def _correct(self, stats, codes, base) -> np.ndarray:
        weight, label_sum, base_sum = stats[codes].T
        safe = np.maximum(weight, 1e-12)
        label_mean, base_mean = label_sum / safe, base_sum / safe
        if self.prior_count > 0:
            rho = weight / (weight + self.prior_count)
        else:
            rho = (weight > 0).astype(np.float64)
        err = rho * (self.gamma * (label_mean - base) + (1 - self.gamma) * (label_mean - base_mean))
        return np.clip(base + self.compensation_weight * err, 0.0, 1.0)
