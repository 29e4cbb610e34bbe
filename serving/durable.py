"""Durable memory: snapshot a served memory into a ``MemoryStore`` and restore it into new loads.

The same logic serves the development server (in process, through its Session) and the sidecar
(``reloop2 memory keep``, through gRPC): both see a model version as a ``MemoryEndpoint``, a
function that runs a signature plus the version number and the signature names.

* A snapshot is the ``memory_snapshot`` signature's output, written with
  ``MemoryStore.write_snapshot``; it is skipped when the memory has not changed since the last
  one. A failed write is logged at ERROR and remembered in ``last_error``; serving goes on.
* A restore is ``memory_restore`` of the store's newest snapshot whose layout fingerprint (the
  ``memory_layout`` signature) is the model's. A model without ``memory_layout`` (exported before
  it existed) is never restored into: its layout cannot be checked.
* Writes that reach the memory after the last snapshot and before the restore are lost; that is
  the price of a restart (docs/serving.md, section 4).
* A new version whose memory layout differs (a retrained model: another centre) starts from its
  exported tables, and from the old version's self-tuning combiner when their trust layouts
  agree (``memory_layout``'s ``trust_layout``): what the old one learnt about how much to trust
  each group carries over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping

import numpy as np

from reloop2_serving.store import MemoryStore, Snapshot, StoreError

logger = logging.getLogger("reloop2.durable")

MEMORY_SNAPSHOT, MEMORY_RESTORE, MEMORY_MERGE, MEMORY_LAYOUT = (
    "memory_snapshot", "memory_restore", "memory_merge", "memory_layout")

Call = Callable[[str, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


@dataclasses.dataclass
class MemoryEndpoint:
    """One loaded model version: ``call(signature, inputs) -> outputs``, its version and the
    names of its signatures."""

    call: Call
    version: int
    signatures: Collection[str]
    _fingerprint: str | None = dataclasses.field(default=None, repr=False)
    _trust: tuple[str, int] | None = dataclasses.field(default=None, repr=False)

    @property
    def durable(self) -> bool:
        """Whether this version can be snapshotted and restored with a checked layout."""
        return MEMORY_SNAPSHOT in self.signatures and MEMORY_LAYOUT in self.signatures

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            value = np.asarray(self.call(MEMORY_LAYOUT, {})["fingerprint"]).item()
            self._fingerprint = value.decode() if isinstance(value, bytes) else str(value)
        return self._fingerprint

    @property
    def trust_layout(self) -> tuple[str, int]:
        """``(trust_layout, trust_rows)`` of ``memory_layout``; ``("", 0)`` for a model without
        a self-tuning combiner or exported before they existed."""
        if self._trust is None:
            out = self.call(MEMORY_LAYOUT, {})
            value = np.asarray(out.get("trust_layout", b"")).item()
            value = value.decode() if isinstance(value, bytes) else str(value)
            self._trust = (value, int(out["trust_rows"]) if value else 0)
        return self._trust

    def snapshot(self) -> tuple[np.ndarray, float]:
        out = self.call(MEMORY_SNAPSHOT, {})
        return np.asarray(out["sketch"], np.float32), float(out["memory_weight"])

    def weight(self) -> float:
        out = self.call(MEMORY_LAYOUT, {})  # older exports: only the fingerprint
        return float((out if "memory_weight" in out else self.call(MEMORY_SNAPSHOT, {}))
                     ["memory_weight"])

    def restore(self, sketch: np.ndarray) -> float:
        return float(self.call(MEMORY_RESTORE, {"sketch": sketch})["memory_weight"])

    def merge(self, delta: np.ndarray) -> float:
        # An internal hand-over, never retried: no deduplication.
        out = self.call(MEMORY_MERGE, {"sketch": delta, "write_id": np.array(b"", object)})
        return float(out["memory_weight"])


def _digest(sketch: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(sketch, np.float32).tobytes()).hexdigest()


class DurableMemory:
    """Snapshots and restores the memory of whatever version is current.

    Args:
        store: the ``MemoryStore``.
        snapshot_seconds: float > 0. Seconds between snapshots of ``start``'s loop.
            Defaults to `30.0`.
    """

    def __init__(self, store: MemoryStore, snapshot_seconds: float = 30.0):
        if not snapshot_seconds > 0:
            raise ValueError("`snapshot_seconds` should be > 0. "
                             f"Received: snapshot_seconds={snapshot_seconds!r}")
        self.store = store
        self.snapshot_seconds = float(snapshot_seconds)
        self.last_error: str | None = None
        self.last_path: str | None = None
        self.last_snapshot_seconds: float | None = None
        self._last_digest: tuple[int, str] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: set[int] = set()

    def _usable(self, endpoint: MemoryEndpoint) -> bool:
        if endpoint.durable:
            return True
        if endpoint.version not in self._warned:
            self._warned.add(endpoint.version)
            logger.error("version %d has no memory_snapshot/memory_layout signature: its memory "
                         "is not kept in %s (re-export it with this release)", endpoint.version,
                         self.store.url)
        return False

    # -- snapshots ------------------------------------------------------------------------------
    def save(self, endpoint: MemoryEndpoint, force: bool = False) -> str | None:
        """Writes a snapshot of ``endpoint`` unless it is unchanged; `None` if nothing was written
        (unchanged, or the store failed: then ``last_error`` says why)."""
        if not self._usable(endpoint):
            return None
        started = time.monotonic()
        sketch, weight = endpoint.snapshot()
        return self.write(endpoint, sketch, weight, force, started)

    def write(self, endpoint: MemoryEndpoint, sketch: np.ndarray, weight: float,
              force: bool = False, started: float | None = None) -> str | None:
        """Writes a snapshot already taken of ``endpoint`` (``save`` without the call)."""
        started = time.monotonic() if started is None else started
        digest = (endpoint.version, _digest(sketch))
        with self._lock:
            if not force and digest == self._last_digest:
                return None
            try:
                path = self.store.write_snapshot(sketch, endpoint.fingerprint, endpoint.version,
                                                 weight)
            except StoreError as err:
                if str(err) != self.last_error:
                    logger.error("%s; the server keeps serving without durable memory until a "
                                 "write succeeds", err)
                self.last_error = str(err)
                return None
            self._last_digest, self.last_error, self.last_path = digest, None, path
            self.last_snapshot_seconds = time.monotonic() - started
        logger.info("wrote memory snapshot %s (version %d, memory_weight %.6g, %d bytes of state, "
                    "%.1f ms)", path, endpoint.version, weight, sketch.nbytes,
                    1000 * self.last_snapshot_seconds)
        return path

    def start(self, current: Callable[[], MemoryEndpoint]) -> None:
        """Snapshots ``current()`` every ``snapshot_seconds`` in a daemon thread."""
        def loop():
            while not self._stop.wait(self.snapshot_seconds):
                try:
                    self.save(current())
                except Exception as err:  # a version being unloaded; the next tick retries
                    logger.warning("memory snapshot skipped: %s", err)

        self._thread = threading.Thread(target=loop, name="memory-snapshots", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- restores -------------------------------------------------------------------------------
    def restore_newest(self, endpoint: MemoryEndpoint) -> Snapshot | None:
        """Restores the store's newest valid snapshot into ``endpoint``; `None` if there is none."""
        if not self._usable(endpoint):
            return None
        try:
            snapshot = self.store.newest_valid_snapshot(endpoint.fingerprint)
        except StoreError as err:
            logger.error("%s; version %d starts from its exported memory", err, endpoint.version)
            self.last_error = str(err)
            return None
        if snapshot is None:
            logger.info("no snapshot in %s with layout %s: version %d starts from its exported "
                        "memory", self.store.url, endpoint.fingerprint, endpoint.version)
            return None
        weight = endpoint.restore(snapshot.sketch)
        with self._lock:
            self._last_digest = (endpoint.version, _digest(snapshot.sketch))
        logger.info("restored memory snapshot %s (written by version %s, %.1f s old, "
                    "memory_weight %.6g) into version %d", snapshot.path,
                    snapshot.header.get("model_version"),
                    time.time() - float(snapshot.header.get("created", time.time())), weight,
                    endpoint.version)
        return snapshot

    def hand_over(self, old: MemoryEndpoint, new: MemoryEndpoint) -> np.ndarray | None:
        """Before ``new`` takes traffic: the live memory of ``old`` (written to the store too)
        goes into ``new`` when their layouts agree, else the store's newest valid snapshot.

        Returns the state handed over, for ``carry_rest``; `None` if nothing live was handed.
        """
        if not (self._usable(old) and self._usable(new)) or old.fingerprint != new.fingerprint:
            if self._usable(new):
                logger.info("version %d has another memory layout than version %d",
                            new.version, old.version)
            if self.restore_newest(new) is None and self._usable(old) and self._usable(new):
                self.hand_over_trust(old, new)
            return None
        started = time.monotonic()
        sketch, weight = old.snapshot()
        self.write(old, sketch, weight, False, started)
        new.restore(sketch)
        with self._lock:
            self._last_digest = (new.version, _digest(sketch))
        logger.info("handed the memory of version %d over to version %d (memory_weight %.6g)",
                    old.version, new.version, weight)
        return sketch

    def hand_over_trust(self, old: MemoryEndpoint, new: MemoryEndpoint) -> bool:
        """Puts the self-tuning combiner of ``old`` (the last ``trust_rows`` rows of its live
        state) into ``new``, whose tables stay as exported, when their trust layouts agree.
        Returns whether it did."""
        layout, rows = old.trust_layout
        if not layout or (layout, rows) != new.trust_layout:
            logger.info("version %d's combiner is another than version %d's: it starts from "
                        "its exported trust", new.version, old.version)
            return False
        state, live = new.snapshot()[0], old.snapshot()[0]
        state[-rows:] = live[-rows:]
        new.restore(state)
        logger.info("handed the trust of version %d over to version %d (%d rows of combiner "
                    "sums; the tables are version %d's own)", old.version, new.version, rows,
                    new.version)
        return True

    def carry_rest(self, old: MemoryEndpoint, new: MemoryEndpoint, handed: np.ndarray | None) -> None:
        """After ``old`` has drained: merges what it learnt after ``hand_over`` into ``new``."""
        if handed is None:
            return
        delta = old.snapshot()[0] - handed
        if not delta.any():
            return
        try:
            weight = new.merge(delta)
        except Exception as err:  # e.g. the new version was restored meanwhile
            logger.warning("writes to version %d during the hand-over were not carried over: %s",
                           old.version, err)
            return
        logger.info("carried writes made during the hand-over into version %d (memory_weight "
                    "%.6g)", new.version, weight)
