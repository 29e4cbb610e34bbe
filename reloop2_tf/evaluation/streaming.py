"""Streaming replay: score each slot, then reveal its labels to the memory (SPEC section 5).

Scoring is split in two steps so that one encoding of a stream serves many memories: ``encode``
runs the base model once, ``replay_encoded`` streams the encoded rows through an
``ErrorCompensation`` layer (predict, then write the labels back).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from reloop2_tf._keras import tf
from reloop2_tf.evaluation import metrics
from reloop2_tf.layers import ErrorCompensation
from reloop2_tf.wrapper import ReLoop2Model

logger = logging.getLogger(__name__)


@dataclass
class Slot:
    """One test slot: model features, binary labels and the user of each row (for gAUC)."""

    features: dict[str, np.ndarray]
    labels: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return int(np.asarray(self.labels).size)


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


# One traced encoder per model, reused across calls (a new tf.function per call would retrace).
_ENCODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def encode(model: ReLoop2Model, features: dict[str, np.ndarray],
           batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Base logits ``[N]`` and hidden vectors ``[N, d]`` of ``features``, in batches."""
    n = len(next(iter(features.values())))
    fn = _ENCODERS.get(model)
    if fn is None:
        fn = _ENCODERS[model] = tf.function(model.encode, reduce_retracing=True)
    logits, hidden = [], []
    for start, stop in _batches(n, batch_size):
        z, h = fn({k: v[start:stop] for k, v in features.items()})
        logits.append(z.numpy())
        hidden.append(h.numpy())
    return np.concatenate(logits), np.concatenate(hidden)


def replay_encoded(compensation: ErrorCompensation, logits: np.ndarray, hidden: np.ndarray,
                   labels: np.ndarray, slot_sizes: list[int], feedback_every: int | None = None,
                   batch_size: int = 8192, progress: bool = False,
                   desc: str = "replay") -> dict[str, np.ndarray]:
    """Streams encoded rows through ``compensation``: predict a chunk, then write its labels.

    With ``feedback_every=None`` a slot's labels are written after the whole slot is scored (the
    paper's protocol); with ``feedback_every=B`` they are written every ``B`` rows. Returns the
    arrays ``probability`` and ``base_probability`` over all rows.
    """
    probs, base = [], []
    offset = 0
    for size in tqdm(slot_sizes, desc=desc, unit="slot", disable=not progress, leave=False):
        chunk = feedback_every or size
        for c0, c1 in _batches(size, chunk):
            a, b = offset + c0, offset + c1
            for b0, b1 in _batches(b - a, batch_size):
                out = compensation.compensate(logits[a + b0:a + b1], hidden[a + b0:a + b1])
                probs.append(out["probability"].numpy())
                base.append(out["base_probability"].numpy())
            for b0, b1 in _batches(b - a, batch_size):
                compensation.update_memory(logits[a + b0:a + b1], hidden[a + b0:a + b1],
                                           labels[a + b0:a + b1])
        offset += size
    return {"probability": np.concatenate(probs), "base_probability": np.concatenate(base)}


def replay(model: ReLoop2Model, slots: list[Slot], feedback_every: int | None = None,
           batch_size: int = 4096, progress: bool = True) -> list[dict[str, np.ndarray]]:
    """Streams ``slots`` through ``model`` (predict, then feedback); returns per-slot outputs."""
    features = {k: np.concatenate([s.features[k] for s in slots]) for k in slots[0].features}
    logits, hidden = encode(model, features, batch_size)
    labels = np.concatenate([s.labels for s in slots]).astype(np.float32)
    sizes = [len(s) for s in slots]
    out = replay_encoded(model.compensation, logits, hidden, labels, sizes, feedback_every,
                         progress=progress)
    bounds = np.cumsum([0, *sizes])
    return [{k: v[a:b] for k, v in out.items()} for a, b in zip(bounds[:-1], bounds[1:])]


def summarize(slots: list[Slot], predictions: list[np.ndarray]) -> dict:
    """Per-slot and overall AUC, gAUC and logloss in the ``results.json`` layout."""
    per_slot = [
        {k: metrics.evaluate(s.labels, p, s.groups)[k] for k in ("auc", "gauc", "logloss", "rows")}
        for s, p in zip(slots, predictions)
    ]
    labels = np.concatenate([s.labels for s in slots])
    groups = np.concatenate([s.groups for s in slots])
    overall = metrics.evaluate(labels, np.concatenate(predictions), groups)
    return {"auc": overall["auc"], "gauc": overall["gauc"], "logloss": overall["logloss"],
            "slots": per_slot}
