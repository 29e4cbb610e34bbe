"""Streaming replay: score each slot, then reveal its labels to the memory (SPEC section 5)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from reloop2_tf import metrics
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

    def rows(self, start: int, stop: int) -> "Slot":
        return Slot({k: v[start:stop] for k, v in self.features.items()},
                    self.labels[start:stop], self.groups[start:stop])


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def replay(model: ReLoop2Model, slots: list[Slot], feedback_every: int | None = None,
           batch_size: int = 4096, progress: bool = True) -> list[dict[str, np.ndarray]]:
    """Streams ``slots`` through ``model``: predict, then write the labels back.

    With ``feedback_every=None`` the labels of a slot are written after the whole slot is scored
    (the paper's protocol); with ``feedback_every=B`` they are written every ``B`` rows.
    Returns, per slot, the arrays ``probability`` and ``base_probability`` (scored before the
    slot's own labels were seen, up to the feedback granularity).
    """
    outputs = []
    for slot in tqdm(slots, desc="replay", unit="slot", disable=not progress):
        chunk = feedback_every or len(slot)
        probs, base = [], []
        for start, stop in _batches(len(slot), chunk):
            part = slot.rows(start, stop)
            for b0, b1 in _batches(len(part), batch_size):
                out = model.compensate({k: v[b0:b1] for k, v in part.features.items()})
                probs.append(out["probability"].numpy())
                base.append(out["base_probability"].numpy())
            for b0, b1 in _batches(len(part), batch_size):
                model.update_memory({k: v[b0:b1] for k, v in part.features.items()},
                                    part.labels[b0:b1])
        outputs.append({"probability": np.concatenate(probs),
                        "base_probability": np.concatenate(base)})
    return outputs


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
