"""Streaming replay: score each slot, then reveal its labels to the memory (SPEC section 5).

Scoring is split in two steps so that one encoding of a stream serves many memories: ``encode``
runs the base model once, ``memory_inputs`` turns hidden vectors (and ids) into what a memory
reads (its keys, for the sketch), and ``replay_encoded`` streams the encoded rows through an
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
from reloop2_tf.evaluation.windows import feedback_chunks, feedback_windows
from reloop2_tf.layers import ErrorCompensation, LSHErrorMemory
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
    for start, stop in _batches(n, batch_size) if n else [(0, 0)]:  # no rows: empty arrays
        z, h = fn({k: v[start:stop] for k, v in features.items()})
        logits.append(z.numpy())
        hidden.append(h.numpy())
    return np.concatenate(logits), np.concatenate(hidden)


class ServedKeys:
    """The keys of a memory whose keys read its own counts (``keys_read_state``: a popularity
    cross), computed for each batch of rows when ``replay_encoded`` serves it, as a server's
    ``predict`` computes them. Computed ahead of the stream, every row would see the counts of
    the memory before the stream (an empty one: every popularity bucket 0)."""

    def __init__(self, memory: LSHErrorMemory, hidden: np.ndarray,
                 features: dict[str, np.ndarray] | None):
        self.memory, self.hidden, self.features = memory, hidden, features

    def __len__(self) -> int:
        return len(self.hidden)

    def __getitem__(self, rows: slice) -> np.ndarray:
        ids = {n: self.features[n][rows] for n in self.memory.id_features}
        return self.memory.keys(self.hidden[rows], ids).numpy()


def memory_inputs(memory, hidden: np.ndarray, features: dict[str, np.ndarray] | None = None,
                  batch_size: int = 16384) -> np.ndarray | ServedKeys:
    """What ``memory`` reads for each row: int32 keys ``[N, T]`` for an ``LSHErrorMemory``
    (its SRP buckets of ``hidden``, then its id buckets of ``features``), ``hidden`` otherwise;
    for a memory whose keys read its state, ``ServedKeys`` (computed as rows are served).

    The memory must be built and centred: keys depend on the centre.
    """
    if not isinstance(memory, LSHErrorMemory):
        return hidden
    names = memory.id_features
    if names and features is None:
        raise ValueError(f"the memory's id tables read {list(names)}: pass `features`")
    if memory.keys_read_state:
        return ServedKeys(memory, hidden, features)
    return np.concatenate([
        memory.keys(hidden[a:b], {n: features[n][a:b] for n in names} if names else None).numpy()
        for a, b in _batches(len(hidden), batch_size)]) if len(hidden) else np.zeros(
            (0, memory.num_key_columns), np.int32)


def replay_encoded(compensation: ErrorCompensation, logits: np.ndarray, inputs: np.ndarray,
                   labels: np.ndarray, windows: np.ndarray, batch_size: int = 8192,
                   progress: bool = False, desc: str = "replay",
                   learn_trust: bool = True) -> dict[str, np.ndarray]:
    """Streams encoded rows through ``compensation``: predict a feedback window, then write its
    labels.

    ``inputs`` comes from ``memory_inputs``: memory keys for the sketch (read and written by
    keys, as a server does with what ``predict`` returned), hidden vectors for k-NN.
    ``windows`` (``feedback_windows``) says which rows are scored before their labels are
    written. Returns the arrays ``probability`` and ``base_probability`` over all rows.
    """
    logits, labels = np.asarray(logits, np.float32), np.asarray(labels, np.float32)
    read, write = _window_calls(compensation, learn_trust)
    chunks = feedback_chunks(windows, len(labels))
    probs, base = [], []
    bar = tqdm(total=len(labels), desc=desc, unit="row", disable=not progress, leave=False)
    for a, b in chunks:
        served = []
        for b0, b1 in _batches(b - a, batch_size):
            rows = slice(a + b0, a + b1)
            x = inputs[rows]  # the keys a row is read by are the keys it is written by
            out = read(logits[rows], x)
            probs.append(out["probability"].numpy())
            base.append(out["base_probability"].numpy())
            served.append((rows, x, out["base_probability"]))
        for rows, x, served_base in served:
            write(logits[rows], x, served_base, labels[rows])
        bar.update(b - a)
    bar.close()
    return {"probability": np.concatenate(probs), "base_probability": np.concatenate(base)}


def _window_calls(compensation: ErrorCompensation, learn_trust: bool):
    """The replay's read ``(logits, inputs)`` and write ``(logits, inputs, served base
    probabilities, labels)`` of a batch of rows. By keys (the sketch) each is traced once for
    any batch size, so that a feedback window costs two graph calls instead of some hundred
    eager ops each, which is what a replay with short windows spent its time on. The same ops
    as the eager calls: equal to them bit for bit in tests/test_benchmark.py; over a whole log
    the graph may round differently in the ninth decimal (docs/benchmarks.md)."""
    if not isinstance(compensation.memory, LSHErrorMemory):  # k-NN: eager, by hidden vectors
        return compensation.compensate, lambda logits, hidden, served, labels: (
            compensation.update_memory(logits, hidden, labels, learn_trust=learn_trust))
    keys = tf.TensorSpec([None, compensation.memory.num_key_columns], tf.int32)
    rows = tf.TensorSpec([None], tf.float32)
    read = tf.function(compensation.compensate_keys, input_signature=[rows, keys])
    by_keys = tf.function(lambda x, served, labels: compensation.update_memory_by_keys(
        x, served, labels, learn_trust=learn_trust), input_signature=[keys, rows, rows])
    return read, lambda logits, x, served, labels: by_keys(x, served, labels)


def warm_start(compensation: ErrorCompensation, logits: np.ndarray, inputs: np.ndarray,
               labels: np.ndarray, windows: np.ndarray) -> None:
    """Writes already-revealed rows (the training tail) into the tables, window by window as
    the stream would (``windows``: ``feedback_windows`` of these rows). The combiner does not
    learn from them: the base model was trained on these rows, so their residuals understate
    its error on new traffic."""
    if len(labels):
        replay_encoded(compensation, logits, inputs, labels, windows, learn_trust=False)


def replay(model: ReLoop2Model, slots: list[Slot], feedback_every: int | None = None,
           batch_size: int = 4096, progress: bool = True) -> list[dict[str, np.ndarray]]:
    """Streams ``slots`` through ``model`` (predict, then feedback every ``feedback_every``
    rows, or after each slot with `None`); returns per-slot outputs."""
    features = {k: np.concatenate([s.features[k] for s in slots]) for k in slots[0].features}
    logits, hidden = encode(model, features, batch_size)
    labels = np.concatenate([s.labels for s in slots]).astype(np.float32)
    sizes = [len(s) for s in slots]
    out = replay_encoded(model.compensation, logits, memory_inputs(model.memory, hidden, features),
                         labels, feedback_windows(sizes, feedback_every), progress=progress)
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
