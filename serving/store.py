"""Durable snapshots of the error memory: the file format and a store folder.

A snapshot file holds the ``memory_snapshot`` signature's ``sketch`` and a JSON header::

    b"RELOOP2SNAP\\x01" | uint32 big-endian header length | header (UTF-8 JSON)
    | payload (float32 little-endian, rows x 3) | sha256 of everything before it (32 bytes)

The header names the memory layout's ``fingerprint`` (the ``memory_layout`` signature), the
model name and version, the creation time, the writer, the payload's shape and the memory's
total weight. The trailing digest covers the header too, so a truncated file or one flipped byte
anywhere is rejected.

A store is one folder, a local path or any ``tf.io.gfile`` URL (``gs://...``). Files are named
``<model>-<ns since epoch>-<writer>.r2snap`` and are written as a temporary file in the same
folder, then renamed, so a reader never sees a half-written name. (On object stores the rename is
a copy; the digest still rejects a partial copy.) The newest ``keep`` files are kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import socket
import struct
import time
import uuid

import numpy as np
import tensorflow as tf

logger = logging.getLogger("reloop2.store")

MAGIC = b"RELOOP2SNAP\x01"
SUFFIX = ".r2snap"
FORMAT_VERSION = 1
DEFAULT_KEEP = 3
_DIGEST = 32
_LENGTH = struct.Struct(">I")
_TMP_PREFIX = ".tmp-"
# A temporary file this old belongs to a writer that died mid-write.
_STALE_TMP_SECONDS = 600.0
_NAME = re.compile(r"^(?P<model>.+)-(?P<ns>\d{19,20})-(?P<writer>[A-Za-z0-9_.\-]+)"
                   + re.escape(SUFFIX) + "$")


class SnapshotError(ValueError):
    """A snapshot file that cannot be used (truncated, corrupt, or of another layout)."""


class StoreError(OSError):
    """The store could not be written or listed."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One decoded snapshot: its file, its header and the ``sketch`` ``[rows, 3]`` float32."""

    path: str
    header: dict
    sketch: np.ndarray

    @property
    def memory_weight(self) -> float:
        return float(self.header["memory_weight"])


def encode_snapshot(sketch: np.ndarray, header: dict) -> bytes:
    """The bytes of a snapshot file for ``sketch`` and the header fields given."""
    sketch = np.ascontiguousarray(sketch, dtype="<f4")
    if sketch.ndim != 2 or sketch.shape[1] != 3:
        raise ValueError(f"`sketch` should have shape [rows, 3]. Received: shape={sketch.shape}")
    payload = sketch.tobytes()
    full = {**header, "format": FORMAT_VERSION, "rows": int(sketch.shape[0]), "cols": 3,
            "dtype": "<f4", "payload_bytes": len(payload)}
    head = json.dumps(full, sort_keys=True).encode("utf-8")
    body = MAGIC + _LENGTH.pack(len(head)) + head + payload
    return body + hashlib.sha256(body).digest()


def decode_snapshot(data: bytes, name: str = "<bytes>") -> tuple[dict, np.ndarray]:
    """``(header, sketch)`` of a snapshot file's bytes; raises ``SnapshotError`` naming ``name``."""
    if not data.startswith(MAGIC):
        raise SnapshotError(f"{name}: not a ReLoop2 snapshot (bad magic)")
    start = len(MAGIC) + _LENGTH.size
    if len(data) < start + _DIGEST:
        raise SnapshotError(f"{name}: truncated ({len(data)} bytes)")
    (head_len,) = _LENGTH.unpack_from(data, len(MAGIC))
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotError(f"{name}: checksum mismatch (truncated or corrupted, "
                            f"{len(data)} bytes)")
    try:
        header = json.loads(body[start:start + head_len].decode("utf-8"))
        rows, cols = int(header["rows"]), int(header["cols"])
        payload = body[start + head_len:]
        if header["format"] != FORMAT_VERSION or header["dtype"] != "<f4" or cols != 3:
            raise SnapshotError(f"{name}: unsupported format {header['format']!r}, dtype "
                                f"{header['dtype']!r}, cols {cols}")
        if len(payload) != rows * cols * 4:
            raise SnapshotError(f"{name}: payload has {len(payload)} bytes, header says "
                                f"{rows} x {cols} float32")
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, SnapshotError):
            raise
        raise SnapshotError(f"{name}: bad header: {err}") from err
    sketch = np.frombuffer(payload, dtype="<f4").reshape(rows, cols).astype(np.float32)
    return header, sketch


def default_writer() -> str:
    """``<host>.<pid>``, restricted to file-name-safe characters."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", f"{socket.gethostname()}.{os.getpid()}")


class MemoryStore:
    """A folder of snapshot files for one model name.

    Args:
        url: str. A local folder or a ``tf.io.gfile`` URL such as ``gs://bucket/reloop2``.
        model_name: str. Names the files, so one folder can hold several models. Defaults to
            `"reloop2"`.
        keep: int >= 1. Snapshots of this model kept after each write. Defaults to `3`.
        writer: optional str. Names this writer in file names (replicas sharing a folder never
            collide). Defaults to ``<host>.<pid>``.
    """

    def __init__(self, url: str | os.PathLike, model_name: str = "reloop2", keep: int = DEFAULT_KEEP,
                 writer: str | None = None):
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise ValueError(f"`keep` should be an int >= 1. Received: keep={keep!r}")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", model_name):
            raise ValueError(f"`model_name` should be file-name safe. Received: {model_name!r}")
        self.url = os.fspath(url).rstrip("/") or "/"
        self.model_name = model_name
        self.keep = keep
        self.writer = writer or default_writer()
        if not re.match(r"^[A-Za-z0-9_.\-]+$", self.writer):
            raise ValueError(f"`writer` may hold only letters, digits, '_', '-' and '.'. "
                             f"Received: {self.writer!r}")

    def _join(self, name: str) -> str:
        return f"{self.url}/{name}"

    def snapshots(self) -> list[str]:
        """Paths of this model's snapshot files, newest first (by the time in the name)."""
        try:
            names = tf.io.gfile.listdir(self.url)
        except tf.errors.NotFoundError:
            return []
        except tf.errors.OpError as err:
            raise StoreError(f"cannot list memory store {self.url}: {err.message}") from err
        dated = []
        for name in names:
            match = _NAME.match(name.rstrip("/"))
            if match and match.group("model") == self.model_name:
                dated.append((int(match.group("ns")), name))
        return [self._join(name) for _, name in sorted(dated, reverse=True)]

    def write_snapshot(self, sketch: np.ndarray, fingerprint: str, model_version: int,
                       memory_weight: float) -> str:
        """Writes one snapshot atomically, prunes to the newest ``keep``; returns its path.

        Raises ``StoreError`` naming the store when it cannot be written; nothing is left
        behind then but, at worst, a temporary file that a later write removes.
        """
        created = time.time_ns()
        header = {"fingerprint": fingerprint, "model_name": self.model_name,
                  "model_version": int(model_version), "created": created / 1e9,
                  "writer": self.writer, "memory_weight": float(memory_weight)}
        data = encode_snapshot(sketch, header)
        final = self._join(f"{self.model_name}-{created:020d}-{self.writer}{SUFFIX}")
        tmp = self._join(f"{_TMP_PREFIX}{uuid.uuid4().hex}{SUFFIX}.part")
        try:
            tf.io.gfile.makedirs(self.url)
            with tf.io.gfile.GFile(tmp, "wb") as handle:
                handle.write(data)
            tf.io.gfile.rename(tmp, final, overwrite=False)
        except (tf.errors.OpError, OSError) as err:
            self._remove(tmp)
            message = err.message if isinstance(err, tf.errors.OpError) else str(err)
            raise StoreError(f"cannot write memory snapshot to {self.url}: {message}") from err
        self.prune()
        return final

    def prune(self) -> list[str]:
        """Removes all but the newest ``keep`` snapshots and stale temporary files."""
        removed = [path for path in self.snapshots()[self.keep:] if self._remove(path)]
        try:
            names = tf.io.gfile.listdir(self.url)
        except tf.errors.OpError:
            return removed
        now = time.time()
        for name in names:
            if name.startswith(_TMP_PREFIX):
                path = self._join(name)
                try:
                    age = now - tf.io.gfile.stat(path).mtime_nsec / 1e9
                except tf.errors.OpError:
                    continue
                if age > _STALE_TMP_SECONDS and self._remove(path):
                    removed.append(path)
        return removed

    @staticmethod
    def _remove(path: str) -> bool:
        try:
            tf.io.gfile.remove(path)
            return True
        except tf.errors.OpError:
            return False

    def read(self, path: str) -> Snapshot:
        """Decodes one file; raises ``SnapshotError`` (or ``StoreError`` if unreadable)."""
        try:
            with tf.io.gfile.GFile(path, "rb") as handle:
                data = handle.read()
        except tf.errors.OpError as err:
            raise StoreError(f"cannot read {path}: {err.message}") from err
        header, sketch = decode_snapshot(data, path)
        return Snapshot(path, header, sketch)

    def newest_valid_snapshot(self, fingerprint: str, rows: int | None = None) -> Snapshot | None:
        """The newest snapshot whose layout ``fingerprint`` (and ``rows``) match, or `None`.

        Every file skipped on the way (truncated, corrupt, unreadable, another layout) is
        logged at WARNING with its path and the reason.
        """
        for path in self.snapshots():
            try:
                snapshot = self.read(path)
            except (SnapshotError, StoreError) as err:
                logger.warning("skipping memory snapshot %s: %s; trying the previous one",
                               path, err)
                continue
            theirs = snapshot.header.get("fingerprint")
            if theirs != fingerprint:
                logger.warning("skipping memory snapshot %s: its memory layout %s differs from "
                               "the model's %s (other projections, seed, centre or tables)",
                               path, theirs, fingerprint)
                continue
            if rows is not None and snapshot.sketch.shape[0] != rows:
                logger.warning("skipping memory snapshot %s: %d state rows, the model has %d",
                               path, snapshot.sketch.shape[0], rows)
                continue
            return snapshot
        return None
