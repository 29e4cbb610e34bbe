"""A synthetic CTR stream with a known, sudden shift: for tests and the first demo.

Rows come from ``num_clusters`` clusters of context vectors. The click logit is a fixed linear
function of the context plus a per-cluster bias. From row ``shift_at`` on, the clusters listed in
``shifted_clusters`` flip their preference (the logit changes sign), which a model trained on the
past gets exactly wrong there. Everything is drawn from ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class DriftingStream:
    """Arrays of one stream; ``features`` holds ``context`` [N, dim] and ``user_id`` [N]."""

    features: dict[str, np.ndarray]
    labels: np.ndarray
    timestamps: np.ndarray
    cluster: np.ndarray
    shift_at: int
    shifted_clusters: tuple[int, ...]
    true_probs: np.ndarray = field(repr=False)

    def slice(self, start: int, stop: int) -> "DriftingStream":
        return DriftingStream(
            features={k: v[start:stop] for k, v in self.features.items()},
            labels=self.labels[start:stop],
            timestamps=self.timestamps[start:stop],
            cluster=self.cluster[start:stop],
            shift_at=self.shift_at - start,
            shifted_clusters=self.shifted_clusters,
            true_probs=self.true_probs[start:stop],
        )

    def __len__(self) -> int:
        return int(self.labels.size)


def make_drifting_stream(num_rows: int = 60_000, shift_at: int = 40_000, dim: int = 16,
                         num_clusters: int = 8, shifted_clusters: tuple[int, ...] = (0, 1, 2),
                         num_users: int = 500, noise: float = 0.6, seed: int = 0) -> DriftingStream:
    """Draws a stream whose ``shifted_clusters`` flip their preference from row ``shift_at`` on."""
    if not 0 < shift_at <= num_rows:
        raise ValueError(f"`shift_at` should be in (0, num_rows]. Received: shift_at={shift_at!r}")
    if any(not 0 <= c < num_clusters for c in shifted_clusters):
        raise ValueError(f"`shifted_clusters` should be in [0, {num_clusters}). "
                         f"Received: shifted_clusters={shifted_clusters!r}")
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.5, size=(num_clusters, dim))
    weights = rng.normal(0.0, 1.0, size=dim) / np.sqrt(dim)
    cluster_bias = rng.normal(0.0, 1.0, size=num_clusters)
    user_bias = rng.normal(0.0, 0.5, size=num_users)

    cluster = rng.integers(0, num_clusters, size=num_rows)
    users = rng.integers(0, num_users, size=num_rows)
    context = centers[cluster] + rng.normal(0.0, noise, size=(num_rows, dim))
    logits = 2.0 * (context @ weights) + cluster_bias[cluster] + user_bias[users]
    flip = (np.arange(num_rows) >= shift_at) & np.isin(cluster, shifted_clusters)
    logits = np.where(flip, -logits, logits)
    probs = 1.0 / (1.0 + np.exp(-logits))
    labels = (rng.random(num_rows) < probs).astype(np.float32)
    return DriftingStream(
        features={"context": context.astype(np.float32),
                  "user_id": users.astype(np.int64)},
        labels=labels,
        timestamps=np.arange(num_rows, dtype=np.int64),
        cluster=cluster,
        shift_at=shift_at,
        shifted_clusters=tuple(shifted_clusters),
        true_probs=probs.astype(np.float32),
    )


def build_synthetic_model(dim: int = 16, hidden_units: tuple[int, ...] = (64, 32)):
    """A small MLP base model for the stream: ``context`` in, logit out, last layer named ``hidden``."""
    from reloop2_tf._keras import keras

    context = keras.Input(shape=(dim,), name="context")
    x = context
    for i, units in enumerate(hidden_units):
        last = i == len(hidden_units) - 1
        x = keras.layers.Dense(units, activation="relu", name="hidden" if last else f"dense_{i}")(x)
    logit = keras.layers.Dense(1, name="logit")(x)
    return keras.Model({"context": context}, logit, name="synthetic_mlp")
