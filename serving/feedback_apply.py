"""The ordered stage of ``reloop2 feedback run``: a window's exact delta, and its delivery.

One in-process copy of the served SavedModel (loaded once per DoFn, RunInference style) starts
from the memory of the first target that answers, then, window after window: snapshot, write the
window's rows (``update_memory_by_keys`` for rows with keys, ``update_memory`` for raw features,
in stream order, ``batch_size`` rows per call), snapshot, and send the difference with one
``memory_merge`` per target under the window's deterministic ``write_id``.

* A target that fails (after the client's retries) misses the window. It is healed at the next
  window it answers, and at the end of a bounded run at the latest, with ``memory_restore`` of the
  local copy's whole state.
* If the first target that answered dropped the merge as a duplicate (a re-run), the window was
  already in the memories, so the local copy undoes it; a target that wrote it anyway (it lost
  its dedup window) has the window twice and is healed like a target that missed it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent import futures

import apache_beam as beam
import numpy as np
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from reloop2_serving.feedback_rows import BASE, KEYS, write_id

logger = logging.getLogger(__name__)
NAMESPACE = "reloop2_feedback"
MERGED, DUPLICATE, FAILED, HEALED, HEAL_FAILED = (
    "merged", "duplicate", "failed", "healed", "heal_failed")


class LocalMemory:
    """The served SavedModel loaded in-process; its memory is the sketch the deltas come from."""

    def __init__(self, path: str):
        import tensorflow as tf

        self._tf = tf
        self._model = tf.saved_model.load(path)
        self._sigs = self._model.signatures
        self.fingerprint = self._sigs["memory_layout"]()["fingerprint"].numpy().decode()
        self._inputs = {name: dict(self._sigs[name].structured_input_signature[1])
                        for name in ("update_memory", "update_memory_by_keys")}

    def snapshot(self) -> np.ndarray:
        return self._sigs["memory_snapshot"]()["sketch"].numpy()

    def restore(self, sketch: np.ndarray) -> None:
        self._sigs["memory_restore"](sketch=self._tf.constant(sketch, self._tf.float32))

    def _write(self, signature: str, inputs: dict) -> float:
        tf, specs = self._tf, self._inputs[signature]
        if "write_id" in specs:
            inputs["write_id"] = ""  # no deduplication in the local copy
        out = self._sigs[signature](**{k: tf.constant(v, specs[k].dtype) for k, v in inputs.items()})
        return float(out["weight_written"])

    def write(self, batch: dict, batch_size: int) -> float:
        """Writes a window's rows in stream order: runs of the same kind, ``batch_size`` rows
        per call. Returns the weight written."""
        keyed, written = batch["keyed"], 0.0
        cursor = {True: 0, False: 0}  # position in the keyed / raw columns
        start = 0
        while start < len(keyed):
            kind = bool(keyed[start])
            stop = start + 1
            while stop < len(keyed) and stop - start < batch_size and keyed[stop] == kind:
                stop += 1
            a, b = cursor[kind], cursor[kind] + (stop - start)
            rows = {"label": batch["label"][start:stop],
                    "sample_weight": batch["sample_weight"][start:stop]}
            if kind:
                written += self._write("update_memory_by_keys", {
                    KEYS: batch[KEYS][a:b], BASE: batch[BASE][a:b], **rows})
            else:
                written += self._write("update_memory", {
                    **{n: v[a:b] for n, v in batch["features"].items()}, **rows})
            cursor[kind], start = b, stop
        return written


class WindowApplier:
    """Computes each window's delta in the local copy and delivers it to every target."""

    def __init__(self, model_path: str, targets: Sequence[str], model_name: str = "reloop2",
                 timeout: float = 30.0, retries: int = 3, batch_size: int = 1024,
                 source_id: str = "", window_spec: str = "",
                 on_window: Callable[[int], None] | None = None):
        self.model_path, self.targets = model_path, list(targets)
        self.model_name, self.timeout, self.retries = model_name, timeout, retries
        self.batch_size, self.source_id, self.window_spec = batch_size, source_id, window_spec
        self.on_window = on_window
        self.local: LocalMemory | None = None
        self._clients: dict = {}
        self._pool: futures.ThreadPoolExecutor | None = None
        self.excluded: dict[str, str] = {}
        self.to_heal: set[str] = set()
        self.reference: str | None = None
        self._merge_bytes: int | None = None

    # -- targets ---------------------------------------------------------------------------------
    def _client(self, target: str):
        from reloop2_serving.client import ReLoop2Client

        if target not in self._clients:
            self._clients[target] = ReLoop2Client(target, self.model_name, timeout=self.timeout,
                                                  retries=self.retries)
        return self._clients[target]

    def _call(self, target: str, method: str, *args, **kwargs):
        """A call on ``target``; on failure the channel is dropped, so the next call reconnects
        at once instead of waiting out gRPC's reconnect backoff."""
        try:
            return getattr(self._client(target), method)(*args, **kwargs)
        except Exception:
            client = self._clients.pop(target, None)
            if client is not None:
                client.close()
            raise

    def _each(self, targets: Sequence[str], fn: Callable[[str], object], what: str) -> dict:
        """``fn(target)`` on every target at once: target -> result, or the exception raised."""
        pending = {t: self._pool.submit(fn, t) for t in targets}
        out = {}
        for target, future in pending.items():
            try:
                out[target] = future.result()
            except Exception as err:  # noqa: BLE001 - any failure of one target is reported
                logger.warning("target %s: %s failed: %s", target, what,
                               str(err).strip().splitlines()[0] if str(err).strip() else err)
                out[target] = err
        return out

    def _layout_ok(self, target: str) -> bool:
        """Whether ``target`` serves the local model's memory layout; if not, it is excluded."""
        theirs = self._call(target, "call", "memory_layout", {})["fingerprint"].item().decode()
        if theirs != self.local.fingerprint:
            self.excluded[target] = f"memory layout {theirs} != the model's"
            logger.error("target %s serves another memory layout (%s); it is skipped",
                         target, theirs)
        return target not in self.excluded

    def _heal(self, state: np.ndarray) -> Callable[[str], float]:
        def heal(target: str) -> float:
            if not self._layout_ok(target):
                raise ValueError(f"{target} serves another memory layout")
            return self._call(target, "restore", state)
        return heal

    def _live(self) -> list[str]:
        return [t for t in self.targets if t not in self.excluded]

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> None:
        """Loads the local copy, checks every target's memory layout, and starts the local
        memory from the first target that answers ``memory_snapshot``."""
        if self.local is None:
            self.local = LocalMemory(self.model_path)
        if self._pool is None:
            self._pool = futures.ThreadPoolExecutor(max_workers=min(32, len(self.targets)))
        layouts = self._each(self.targets, self._layout_ok, "memory_layout")
        for target, out in layouts.items():
            if isinstance(out, Exception):
                self.to_heal.add(target)  # unreachable now: healed once it answers
        for target in self._live():
            if target in self.to_heal:
                continue
            try:
                state = self._call(target, "snapshot")
            except Exception as err:  # noqa: BLE001
                logger.warning("target %s: memory_snapshot failed: %s", target, err)
                self.to_heal.add(target)
                continue
            self.local.restore(state)
            self.reference = target
            logger.info("local memory starts from %s (weight %.1f)", target, state[:, 0].sum())
            return
        raise RuntimeError(f"no target answered memory_snapshot: {self.targets}")

    def apply(self, window: int, batch: dict) -> dict:
        """Writes one window into the local copy and delivers its delta; returns its report."""
        if self.on_window is not None:
            self.on_window(window)
        started = time.perf_counter()
        before = self.local.snapshot()
        weight = self.local.write(batch, self.batch_size)
        after = self.local.snapshot()
        delta = after - before
        wid = write_id(self.source_id, self.window_spec, window, batch["digest"])
        local_seconds = time.perf_counter() - started
        started = time.perf_counter()
        healing = [t for t in self._live() if t in self.to_heal]
        merging = [t for t in self._live() if t not in self.to_heal]
        outcomes = {}
        merges = self._each(merging, lambda t: self._call(t, "merge", delta, write_id=wid),
                            "memory_merge")
        for target, out in merges.items():
            if isinstance(out, Exception):
                outcomes[target] = FAILED
            else:
                outcomes[target] = DUPLICATE if float(out["weight_written"]) == 0.0 else MERGED
        answered = [outcomes[t] for t in merging if outcomes[t] != FAILED]
        # Weight 0 is a duplicate only for a delta that has weight; a zero-weight window (all
        # sample weights 0) reads as a duplicate and is undone, which changes nothing.
        duplicate = bool(answered) and answered[0] == DUPLICATE
        if duplicate:
            self.local.restore(before)
        for target in merging:
            if outcomes[target] == FAILED or (duplicate and outcomes[target] == MERGED):
                self.to_heal.add(target)
        state = before if duplicate else after
        for target, out in self._each(healing, self._heal(state), "heal").items():
            outcomes[target] = HEAL_FAILED if isinstance(out, Exception) else HEALED
            if outcomes[target] == HEALED:
                self.to_heal.discard(target)
        for target, outcome in outcomes.items():
            Metrics.counter(NAMESPACE, f"{outcome}:{target}").inc()
        Metrics.counter(NAMESPACE, "rows").inc(batch["rows"])
        Metrics.counter(NAMESPACE, "windows").inc()
        return {"window": window, "rows": batch["rows"], "weight": weight, "write_id": wid,
                "duplicate": duplicate, "merge_bytes": self.merge_bytes(delta, wid),
                "local_seconds": local_seconds, "send_seconds": time.perf_counter() - started,
                "targets": outcomes}

    def merge_bytes(self, delta: np.ndarray, wid: str) -> int:
        """Bytes of one ``memory_merge`` request (the serialized PredictRequest)."""
        if self._merge_bytes is None:
            request = self._client(self.targets[0]).request("memory_merge", {
                "sketch": delta.astype(np.float32), "write_id": np.asarray(wid.encode(), object)})
            self._merge_bytes = request.ByteSize()
        return self._merge_bytes

    def close(self) -> dict:
        """Heals every target still missing windows with the local copy's state; the report."""
        outcomes = {}
        healing = [t for t in self._live() if t in self.to_heal]
        if healing:
            state = self.local.snapshot()
            for target, out in self._each(healing, self._heal(state), "heal").items():
                outcomes[target] = HEAL_FAILED if isinstance(out, Exception) else HEALED
                if outcomes[target] == HEALED:
                    self.to_heal.discard(target)
                Metrics.counter(NAMESPACE, f"{outcomes[target]}:{target}").inc()
        weight = float(self.local.snapshot()[:, 0].sum()) if self.local else 0.0
        return {"final": True, "targets": outcomes, "reference": self.reference,
                "excluded": dict(self.excluded), "unhealed": sorted(self.to_heal),
                "local_weight": weight}

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for client in self._clients.values():
            client.close()
        self._clients.clear()


class ApplyWindowsInOrder(beam.DoFn):
    """Bounded input: all window batches on one key; applied in window order, then healed."""

    def __init__(self, config: dict):
        self.config = config
        self.applier: WindowApplier | None = None

    def setup(self):
        self.applier = WindowApplier(**self.config)

    def process(self, element):
        _, batches = element
        self.applier.open()
        for window, batch in sorted(batches, key=lambda wb: wb[0]):
            yield self.applier.apply(window, batch)
        yield self.applier.close()

    def teardown(self):
        if self.applier is not None:
            self.applier.shutdown()


class ApplyWindowsStateful(beam.DoFn):
    """Unbounded input: a stateful DoFn on one key, so windows are applied one at a time, as
    they fire. A target that missed a window is healed at the next window it answers."""

    APPLIED = ReadModifyWriteStateSpec("windows_applied", VarIntCoder())

    def __init__(self, config: dict):
        self.config = config
        self.applier: WindowApplier | None = None

    def setup(self):
        self.applier = WindowApplier(**self.config)
        self.opened = False

    def process(self, element, applied=beam.DoFn.StateParam(APPLIED)):
        _, (window, batch) = element
        if not self.opened:
            self.applier.open()
            self.opened = True
        yield self.applier.apply(window, batch)
        applied.write((applied.read() or 0) + 1)

    def teardown(self):
        if self.applier is not None:
            self.applier.shutdown()
