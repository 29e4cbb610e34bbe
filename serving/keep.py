"""``reloop2 memory keep``: the durable-memory sidecar for a real (or any) TF Serving.

It sees the server only through gRPC (``reloop2_serving.client``):

* every ``poll_seconds`` it reads ``GetModelStatus`` and the memory's total weight;
* every ``snapshot_seconds`` it writes ``memory_snapshot`` to the store (skipped if unchanged);
* when a new version becomes AVAILABLE it hands the old version's memory over (while both are
  loaded, as TF Serving's availability-preserving policy keeps them for a moment) or restores
  the store's newest valid snapshot; when the server restarted (it was unreachable, or the
  memory's total weight dropped) it restores the newest valid snapshot;
* ``GET /ready`` answers 200 only once the current version has been restored; ``GET /healthz``
  answers 200 and a JSON status while the sidecar runs. A pod whose readiness probe is
  ``/ready`` gets no traffic before its memory is back.

At its own start it restores only if the newest snapshot holds more weight than the live memory:
a sidecar that restarts beside a running server must not roll the memory back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

from reloop2_serving.client import ReLoop2Client
from reloop2_serving.durable import DurableMemory, MemoryEndpoint
from reloop2_serving.store import MemoryStore

logger = logging.getLogger("reloop2.keep")


class Keeper:
    """Snapshots and restores the memory of the model served at ``target``.

    Args:
        target: str. ``HOST:PORT`` of the gRPC server.
        store: the ``MemoryStore``.
        model_name: str. Defaults to `"reloop2"`.
        snapshot_seconds: float. Defaults to `30.0`.
        poll_seconds: float. Defaults to `1.0`.
        timeout: float. Seconds per gRPC call. Defaults to `30.0`.
        drop_fraction: float. A total weight below ``(1 - drop_fraction)`` times the last one
            seen means the server restarted. Defaults to `0.01`.
    """

    def __init__(self, target: str, store: MemoryStore, model_name: str = "reloop2",
                 snapshot_seconds: float = 30.0, poll_seconds: float = 1.0,
                 timeout: float = 30.0, drop_fraction: float = 0.01):
        if not poll_seconds > 0:
            raise ValueError(f"`poll_seconds` should be > 0. Received: {poll_seconds!r}")
        if not 0 <= drop_fraction < 1:
            raise ValueError(f"`drop_fraction` should be in [0, 1). Received: {drop_fraction!r}")
        self.target, self.model_name, self.timeout = target, model_name, timeout
        self.durable = DurableMemory(store, snapshot_seconds)
        self.poll_seconds = float(poll_seconds)
        self.drop_fraction = float(drop_fraction)
        self.version: int | None = None
        self.weight: float | None = None
        self.ready = False
        self.restores = 0
        self._down = False
        self._next_snapshot = 0.0
        self._status = ReLoop2Client(target, model_name, timeout)
        self._endpoints: dict[int, tuple[ReLoop2Client, MemoryEndpoint]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _endpoint(self, version: int) -> MemoryEndpoint:
        if version not in self._endpoints:
            client = ReLoop2Client(self.target, self.model_name, self.timeout, version=version)
            signatures = set(client.metadata())
            self._endpoints[version] = (client, MemoryEndpoint(client.call, version, signatures))
        return self._endpoints[version][1]

    def _forget_endpoints(self) -> None:
        for client, _ in self._endpoints.values():
            client.close()
        self._endpoints.clear()

    def status(self) -> dict:
        return {"target": self.target, "model_name": self.model_name, "ready": self.ready,
                "version": self.version, "memory_weight": self.weight,
                "restores": self.restores, "store": self.durable.store.url,
                "last_snapshot": self.durable.last_path, "last_error": self.durable.last_error}

    def step(self) -> None:
        """One poll: adopt a new or restarted server, else snapshot when it is time."""
        try:
            states = self._status.status()
            available = [v for v, state in states.items() if state == "AVAILABLE"]
            if not available:
                self.ready = False
                return
            newest = max(available)
            if newest != self.version:
                self._adopt(newest, states)
                return
            endpoint = self._endpoint(newest)
            # The weight checked for a restart is the snapshot's own, so a snapshot of a
            # freshly restarted server is never written over the good ones.
            started = time.monotonic()
            due = endpoint.durable and started >= self._next_snapshot
            sketch, weight = endpoint.snapshot() if due else (None, endpoint.weight())
            dropped = self.weight is not None and weight < self.weight * (1 - self.drop_fraction)
            if self._down or dropped:
                logger.warning("the server at %s restarted (%s): restoring version %d's memory",
                               self.target, "it was unreachable" if self._down else
                               f"memory_weight fell from {self.weight:.6g} to {weight:.6g}",
                               newest)
                self._forget_endpoints()
                self._restore(self._endpoint(newest), heavier_only=False)
                return
            self.weight = weight
            if due:
                self._next_snapshot = started + self.durable.snapshot_seconds
                self.durable.write(endpoint, sketch, weight, started=started)
        except grpc.RpcError as err:
            if not self._down:
                logger.warning("the server at %s is unreachable (%s); not ready until its memory "
                               "is restored", self.target, err.code().name)
            self.ready, self._down = False, True
            self._forget_endpoints()

    def _adopt(self, version: int, states: dict[int, str]) -> None:
        self.ready = False
        if self._down:
            self._forget_endpoints()
        new = self._endpoint(version)
        old = self.version
        if old is None:
            self._restore(new, heavier_only=True)
            return
        if not self._down and states.get(old) == "AVAILABLE":
            self.durable.hand_over(self._endpoint(old), new)
        else:
            self.durable.restore_newest(new)
        self._settle(new)

    def _restore(self, endpoint: MemoryEndpoint, heavier_only: bool) -> None:
        if heavier_only and endpoint.durable:
            live = endpoint.weight()
            newest = self.durable.store.newest_valid_snapshot(endpoint.fingerprint)
            if newest is not None and newest.memory_weight <= live:
                logger.info("version %d's live memory (weight %.6g) holds at least the newest "
                            "snapshot's (%.6g, %s): not restored", endpoint.version, live,
                            newest.memory_weight, newest.path)
                self._settle(endpoint)
                return
        self.durable.restore_newest(endpoint)
        self._settle(endpoint)

    def _settle(self, endpoint: MemoryEndpoint) -> None:
        self.version, self.weight = endpoint.version, endpoint.weight()
        self.restores += 1
        self._down = False
        self._next_snapshot = time.monotonic() + self.durable.snapshot_seconds
        self.ready = True
        logger.info("ready: version %d, memory_weight %.6g", self.version, self.weight)

    def start(self) -> None:
        def loop():
            while not self._stop.is_set():
                try:
                    self.step()
                except Exception:  # never let one bad poll kill the sidecar
                    logger.exception("memory keeper poll failed")
                    self.ready = False
                self._stop.wait(self.poll_seconds)

        self._thread = threading.Thread(target=loop, name="memory-keeper", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, final_snapshot: bool = True) -> None:
        """Stops polling; with ``final_snapshot``, writes a last snapshot of the current version."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if final_snapshot and self.ready and self.version is not None:
            try:
                self.durable.save(self._endpoint(self.version))
            except grpc.RpcError as err:
                logger.warning("no final snapshot: %s", err.code().name)
        self._forget_endpoints()
        self._status.close()


def probe_server(keeper: Keeper, host: str = "127.0.0.1", port: int = 8510) -> ThreadingHTTPServer:
    """``GET /ready`` and ``GET /healthz`` for ``keeper`` on ``host:port`` (0: a free port),
    served by a daemon thread. ``server.server_address`` gives the bound port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            if self.path == "/ready":
                ok = keeper.ready
                body = (f"ready: version {keeper.version}\n" if ok else
                        "not ready: the memory of the current version is not restored yet\n")
                self._send(200 if ok else 503, body.encode(), "text/plain")
            elif self.path == "/healthz":
                ok = keeper.alive
                self._send(200 if ok else 500, json.dumps(keeper.status()).encode(),
                           "application/json")
            else:
                self._send(404, b"not found: use /ready or /healthz\n", "text/plain")

        def _send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # probes every few seconds would flood the log
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="keeper-http", daemon=True).start()
    return server
