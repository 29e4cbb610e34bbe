"""Cheap corrections a practitioner tries first: per-key running residuals and FTRL over ids.

A *bias memory* keeps, per key (a user or an item), the running sums of weight, label and base
prediction, and corrects with the same formula as ``ErrorCompensation`` (compensation_weight,
gamma, prior_count). It is the identity-keyed counterpart of the similarity-keyed sketch. It is
written in NumPy because it is a benchmark baseline, not a serving layer: ``np.add.at`` over
factorised keys is all it needs.

``FTRLOffset`` is the strongest cheap baseline we know: online logistic regression over hashed
ids with the base logit as a fixed offset. It is written here in NumPy rather than
taken from a library because none we can install does FTRL-proximal with a per-row offset and
chunked (delayed) feedback; sklearn's ``SGDClassifier`` has neither offsets nor FTRL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from reloop2_tf.evaluation.windows import feedback_chunks


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

    def replay(self, keys, base_probs, labels, windows, warm_keys=None, warm_base=None,
               warm_labels=None) -> np.ndarray:
        """Streams rows (predict a feedback window, then write its labels; ``windows``:
        ``windows.feedback_windows``); returns corrected probabilities. The warm rows are
        written at once: the sums do not depend on how they are cut."""
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
        for start, stop in feedback_chunks(windows, len(base_probs)):
            out[start:stop] = self._correct(stats, codes[start:stop], base_probs[start:stop])
            self._write(stats, codes[start:stop], base_probs[start:stop], labels[start:stop])
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


@dataclass
class FTRLOffset:
    """Online logistic regression over hashed ids with the base logit as a fixed offset.

    FTRL-proximal (McMahan et al., KDD 2013), per-coordinate learning rates, one weight per
    hashed value of every key column plus a bias. Like the memories it sees a chunk's labels
    only after scoring the chunk, and updates once per chunk with every row's gradient.

    Args:
        alpha: per-coordinate learning rate scale. Defaults to `0.05`.
        beta: learning rate smoothing. Defaults to `1.0`.
        l1: L1 strength. Defaults to `0.0`.
        l2: L2 strength. Defaults to `1.0`.
        num_buckets: hashing space shared by all key columns. Defaults to `2**22`.
    """

    alpha: float = 0.05
    beta: float = 1.0
    l1: float = 0.0
    l2: float = 1.0
    num_buckets: int = 2**22

    def replay(self, keys, base_probs, labels, windows, warm_keys=None, warm_base=None,
               warm_labels=None, warm_windows=None) -> np.ndarray:
        """``keys``: ``[N, C]`` id values (one column per group, crosses already joined;
        `None`: the row has no feature in that column). ``windows`` / ``warm_windows``:
        ``windows.feedback_windows`` of the rows and of the warm rows (`None`: the warm rows
        in one update)."""
        keys = np.asarray(keys, dtype=object).reshape(len(base_probs), -1)
        warm_keys = (np.empty((0, keys.shape[1]), object) if warm_keys is None
                     else np.asarray(warm_keys, dtype=object).reshape(-1, keys.shape[1]))
        cols = self._columns(np.concatenate([warm_keys, keys]))
        # The hashed values, the bias, and one coordinate that stands for "no feature": it is
        # never updated, so its weight stays 0.
        z_state = np.zeros(self.num_buckets + 2)
        n_state = np.zeros(self.num_buckets + 2)
        offsets = _logit(np.concatenate([[] if warm_base is None else warm_base, base_probs]))
        targets = np.concatenate([[] if warm_labels is None else warm_labels, labels])
        nw = len(warm_keys)
        warm_windows = np.zeros(nw, np.int64) if warm_windows is None else warm_windows
        for start, stop in feedback_chunks(warm_windows, nw):
            rows = slice(start, stop)
            self._update(z_state, n_state, cols[rows], offsets[rows], targets[rows])
        out = np.empty(len(base_probs))
        for start, stop in feedback_chunks(windows, len(base_probs)):
            rows = slice(nw + start, nw + stop)
            out[start:stop] = _sigmoid(offsets[rows] + self._weights(z_state, n_state, cols[rows]).sum(1))
            self._update(z_state, n_state, cols[rows], offsets[rows], targets[rows])
        return out

    def _columns(self, keys) -> np.ndarray:
        hashed = np.stack([pd.util.hash_array(np.asarray([f"{j}|{v}" for v in keys[:, j]], object))
                           % self.num_buckets for j in range(keys.shape[1])], 1).astype(np.int64)
        hashed[np.equal(keys, None)] = self.num_buckets + 1
        bias = np.full((len(keys), 1), self.num_buckets)
        return np.concatenate([hashed, bias], 1)

    def _weights(self, z_state, n_state, cols) -> np.ndarray:
        z, n = z_state[cols], n_state[cols]
        w = -(z - np.sign(z) * self.l1) / ((self.beta + np.sqrt(n)) / self.alpha + self.l2)
        return np.where(np.abs(z) <= self.l1, 0.0, w)

    def _update(self, z_state, n_state, cols, offsets, targets) -> None:
        p = _sigmoid(offsets + self._weights(z_state, n_state, cols).sum(1))
        touched, inverse = np.unique(cols.ravel(), return_inverse=True)
        g = np.where(cols.ravel() == self.num_buckets + 1, 0.0, np.repeat(p - targets, cols.shape[1]))
        grad = np.bincount(inverse, g, len(touched))
        grad_sq = np.bincount(inverse, g * g, len(touched))
        w = self._weights(z_state, n_state, touched)
        n_new = n_state[touched] + grad_sq
        sigma = (np.sqrt(n_new) - np.sqrt(n_state[touched])) / self.alpha
        z_state[touched] += grad - sigma * w
        n_state[touched] = n_new


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _logit(p):
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)
