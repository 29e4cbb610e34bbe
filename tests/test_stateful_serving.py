"""Durable memory over loopback: the dev server with --memory-store, and the keep sidecar.

Fault tests: SIGKILL during a stream of writes, a truncated newest snapshot, a version pushed
while writes stream, an unwritable store, and the sidecar beside a dev server that keeps nothing
itself. Every server a test starts, it stops.
"""

import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from serving_helpers import STATE_ROWS, DevServer, Session, build_model, make_features

from reloop2_tf import export as ex
from reloop2_tf.cli.main import main as reloop2_main
from reloop2_serving.client import ReLoop2Client
from reloop2_serving.durable import DurableMemory, MemoryEndpoint
from reloop2_serving.keep import Keeper, probe_server
from reloop2_serving.store import MemoryStore

pytestmark = pytest.mark.e2e
ROWS = 8                                # rows per write, each of weight 1
_WROTE = re.compile(r"wrote memory snapshot (\S+) \(version (\d+), memory_weight (\S+),")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def batches(n: int, seed: int = 0) -> list[tuple[dict, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(make_features(ROWS, rng), rng.integers(0, 2, ROWS).astype(np.float32))
            for _ in range(n)]


class Writer(threading.Thread):
    """Streams ``update_memory`` batches until stopped or the server goes away; ``acked`` counts
    the calls the server answered."""

    def __init__(self, target: str, stream, pause: float = 0.004):
        super().__init__(daemon=True)
        self.client = ReLoop2Client(target, timeout=10)
        self.stream, self.pause = stream, pause
        self.acked = 0
        self.stopped = threading.Event()

    def run(self):
        try:
            for features, labels in self.stream:
                if self.stopped.is_set():
                    break
                self.client.update_memory(features, labels)
                self.acked += 1
                time.sleep(self.pause)
        except grpc.RpcError:
            pass  # the server was killed under us

    def finish(self) -> int:
        self.stopped.set()
        self.join(timeout=30)
        self.client.close()
        return self.acked


def wait_for(predicate, seconds: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def snapshot_lines(server) -> list[tuple[str, int, float]]:
    return [(m.group(1), int(m.group(2)), float(m.group(3)))
            for m in map(_WROTE.search, list(server.lines)) if m]


def reference_sketch(saved_model, stream, count: int) -> np.ndarray:
    """The memory of a fresh load of ``saved_model`` after the first ``count`` writes."""
    sess = Session(saved_model)
    for features, labels in stream[:count]:
        sess("update_memory", **features, label=labels, sample_weight=np.ones(ROWS, np.float32))
    out = sess("memory_snapshot")["sketch"]
    sess.close()
    return out


def test_sigkill_restart_corrupt_snapshot_and_new_version(tmp_path, capsys):
    base, store = tmp_path / "models", tmp_path / "store"
    v1 = ex.export_serving_model(build_model(seed=7), base, version="auto")
    stream = batches(2000)
    port = str(free_port())
    args = ["--port", port, "--memory-store", str(store), "--snapshot-seconds", "1",
            "--keep-snapshots", "3"]

    # 1. SIGKILL in the middle of a stream of writes.
    server = DevServer(base, extra_args=args)
    try:
        writer = Writer(server.target, stream)
        writer.start()
        wait_for(lambda: len(snapshot_lines(server)) >= 2 and writer.acked > 100, what="snapshots")
        time.sleep(0.5)
        server.stop(signal.SIGKILL)
    finally:
        server.stop()
    acked = writer.finish()
    completed = snapshot_lines(server)
    assert completed and server.proc.returncode == -signal.SIGKILL

    server = DevServer(base, extra_args=args)
    try:
        with ReLoop2Client(server.target, timeout=30) as client:
            restored = client.memory_weight()
            state = client.snapshot()
            assert client.status() == {1: "AVAILABLE"}
        # At least everything up to the last snapshot the server finished...
        assert restored >= completed[-1][2]
        # ...and a whole one: exactly the memory of the first k writes, never a part of one.
        k = int(restored) // ROWS
        assert restored == k * ROWS and k <= acked + 1
        np.testing.assert_allclose(state, reference_sketch(v1, stream, k), rtol=1e-6, atol=1e-5)
        assert any("restored memory snapshot" in line for line in server.lines)
    finally:
        assert server.stop() == 0, "".join(server.lines)
    with capsys.disabled():
        print(f"\n[durable memory] --snapshot-seconds 1: {acked * ROWS} rows acknowledged, "
              f"{int(restored)} restored, {acked * ROWS - int(restored)} lost on SIGKILL")

    # 2. The newest snapshot is truncated: it is named in a WARNING and the previous one is used.
    files = MemoryStore(store).snapshots()
    assert 2 <= len(files) <= 3
    newest, previous = files[0], MemoryStore(store).read(files[1])
    with open(newest, "r+b") as handle:
        handle.truncate(100)
    server = DevServer(base, extra_args=[*args, "--poll-seconds", "0.2"])
    try:
        client = ReLoop2Client(server.target, timeout=30)
        assert client.memory_weight() == previous.memory_weight
        np.testing.assert_array_equal(client.snapshot(), previous.sketch)
        assert any("WARNING" in line and newest in line and "checksum" in line
                   for line in server.lines), "".join(server.lines)

        # 3. A new version pushed while writes stream gets the memory before it takes traffic,
        # and the writes that reached version 1 during the hand-over are carried over.
        start = client.memory_weight()
        writer = Writer(server.target, stream, pause=0.001)
        writer.start()
        wait_for(lambda: writer.acked > 20, what="writes")
        ex.export_serving_model(build_model(seed=7), base, version="auto")
        first = wait_for(lambda: 2 in client.status() and client.memory_weight(), what="version 2")
        assert first >= start + 20 * ROWS   # version 2 answered first with the learnt memory
        time.sleep(0.3)
        acked = writer.finish()
        assert acked < len(stream)           # the stream spanned the hand-over
        assert client.status() == {2: "AVAILABLE"}
        assert client.memory_weight() == start + acked * ROWS       # nothing lost
        lines = "".join(server.lines)
        assert lines.index("handed the memory of version 1 over to version 2") < \
            lines.index("now serving version 2")

        # 4. A version with another memory layout (other projections) is not restored into.
        ex.export_serving_model(build_model(seed=8), base, version="auto")
        wait_for(lambda: 3 in client.status(), what="version 3")
        assert client.memory_weight() == 0.0
        lines = "".join(server.lines)
        assert "version 3 has another memory layout than version 2" in lines
        assert re.search(r"skipping memory snapshot \S+: its memory layout sha256:\w+ differs",
                         lines)
        client.close()
    finally:
        assert server.stop() == 0, "".join(server.lines)


def test_hand_over_carries_the_writes_made_during_it(tmp_path):
    """The hand-over's last step, in process: writes to the old version after its memory was
    handed over are merged into the new one once the old one has drained."""
    path = ex.export_serving_model(build_model(seed=7), tmp_path / "m")
    old, new = Session(path), Session(path)

    def endpoint(sess, version):
        return MemoryEndpoint(lambda name, inputs: sess(name, **inputs), version, set(sess.sigs))

    durable = DurableMemory(MemoryStore(tmp_path / "store"), snapshot_seconds=60)
    stream = batches(6)
    ones = np.ones(ROWS, np.float32)
    for features, labels in stream[:3]:
        old("update_memory", **features, label=labels, sample_weight=ones)
    handed = durable.hand_over(endpoint(old, 1), endpoint(new, 2))
    np.testing.assert_array_equal(new("memory_snapshot")["sketch"], handed)
    assert MemoryStore(tmp_path / "store").read(durable.last_path).memory_weight == 3 * ROWS
    for features, labels in stream[3:]:      # reached version 1 after the hand-over
        old("update_memory", **features, label=labels, sample_weight=ones)
    durable.carry_rest(endpoint(old, 1), endpoint(new, 2), handed)
    np.testing.assert_allclose(new("memory_snapshot")["sketch"], old("memory_snapshot")["sketch"],
                               rtol=1e-6, atol=1e-5)
    assert float(new("memory_snapshot")["memory_weight"]) == 6 * ROWS
    old.close()
    new.close()


def test_a_retrained_version_starts_from_its_own_tables_and_the_old_versions_trust(tmp_path):
    """Another memory layout (a model trained again: other projections) cannot take the old
    version's tables, but its combiner means the same: the hand-over carries the trust sums."""
    import reloop2_tf as r2
    from serving_helpers import ID_BITS, NUM_BITS, NUM_TABLES

    old_path = ex.export_serving_model(build_model(seed=7), tmp_path / "old")
    new_path = ex.export_serving_model(build_model(seed=8), tmp_path / "new")
    other_groups = r2.LSHErrorMemory(num_tables=NUM_TABLES, num_bits=NUM_BITS, seed=8,
                                     half_life=None, id_groups=["item_id"], id_bits=ID_BITS,
                                     recent_groups=())
    other_path = ex.export_serving_model(build_model(seed=8, memory=other_groups),
                                         tmp_path / "other")
    old, new, other = Session(old_path), Session(new_path), Session(other_path)

    def endpoint(sess, version):
        return MemoryEndpoint(lambda name, inputs: sess(name, **inputs), version, set(sess.sigs))

    ones = np.ones(ROWS, np.float32)
    for features, labels in batches(40, seed=3):
        old("update_memory", **features, label=labels, sample_weight=ones)
    exported = new("memory_snapshot")["sketch"]
    rows = int(new("memory_layout")["trust_rows"])
    live = old("memory_snapshot")["sketch"]
    assert np.abs(live[-rows:]).sum() > 0 and not exported[-rows:].any()

    durable = DurableMemory(MemoryStore(tmp_path / "store"), snapshot_seconds=60)
    assert durable.hand_over(endpoint(old, 1), endpoint(new, 2)) is None  # no live tables
    handed = new("memory_snapshot")["sketch"]
    np.testing.assert_array_equal(handed[:-rows], exported[:-rows])   # its own tables
    np.testing.assert_allclose(handed[-rows:], live[-rows:], rtol=1e-6)  # the old trust
    (features, _), = batches(1, seed=4)
    served = new("predict", **features)
    assert not np.allclose(served["probability"], served["base_probability"])

    before = other("memory_snapshot")["sketch"]
    assert durable.hand_over(endpoint(old, 1), endpoint(other, 3)) is None
    np.testing.assert_array_equal(other("memory_snapshot")["sketch"], before)  # other groups
    for sess in (old, new, other):
        sess.close()


def test_unwritable_store_keeps_serving_and_reports_the_error(tmp_path):
    base = tmp_path / "models"
    ex.export_serving_model(build_model(seed=7), base, version="auto")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    server = DevServer(base, extra_args=["--memory-store", str(blocker / "store"),
                                         "--snapshot-seconds", "0.3"])
    try:
        with ReLoop2Client(server.target, timeout=30) as client:
            (features, labels), = batches(1)
            assert float(client.update_memory(features, labels)["memory_weight"]) == ROWS
            wait_for(lambda: any("ERROR" in line and "cannot write memory snapshot to "
                                 f"{blocker}/store" in line for line in server.lines),
                     what="the store error")
            assert client.predict(features)["probability"].shape == (ROWS,)
            assert client.memory_weight() == ROWS
    finally:
        assert server.stop() == 0, "".join(server.lines)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_keep_sidecar_restores_a_restarted_server_and_a_new_version(tmp_path):
    base, store = tmp_path / "models", tmp_path / "store"
    ex.export_serving_model(build_model(seed=7), base, version="auto")
    assert reloop2_main(["memory", "keep", "--target", "127.0.0.1:1", "--store", str(store),
                         "--snapshot-seconds", "0"]) == 2
    port = str(free_port())
    target = f"127.0.0.1:{port}"
    server = DevServer(base, extra_args=["--port", port])
    keeper = Keeper(target, MemoryStore(store), snapshot_seconds=0.3, poll_seconds=0.1)
    http = probe_server(keeper, port=0)
    ready = f"http://127.0.0.1:{http.server_address[1]}/ready"
    try:
        assert http_status(ready) == 503                 # before the first poll
        keeper.start()
        wait_for(lambda: http_status(ready) == 200, what="ready")
        with urllib.request.urlopen(ready.replace("/ready", "/healthz"), timeout=5) as response:
            assert b'"version": 1' in response.read()
        stream = batches(10)
        with ReLoop2Client(target, timeout=30) as client:
            for features, labels in stream:
                client.update_memory(features, labels)
        wait_for(lambda: keeper.durable.last_path and MemoryStore(store).read(
            keeper.durable.last_path).memory_weight == 10 * ROWS, what="a snapshot of 80 rows")

        server.stop(signal.SIGKILL)
        wait_for(lambda: http_status(ready) == 503, what="not ready after the kill")
        server = DevServer(base, extra_args=["--port", port, "--poll-seconds", "0.2"])
        wait_for(lambda: http_status(ready) == 200, what="ready after the restart")
        with ReLoop2Client(target, timeout=30) as client:
            assert client.memory_weight() == 10 * ROWS      # restored by the sidecar
            client.update_memory(*stream[0])
            wait_for(lambda: MemoryStore(store).read(keeper.durable.last_path).memory_weight
                     == 11 * ROWS, what="a snapshot of 88 rows")
            # A new version: the dev server unloads version 1 at once, so the sidecar restores
            # the newest snapshot into version 2.
            ex.export_serving_model(build_model(seed=7), base, version="auto")
            wait_for(lambda: keeper.version == 2 and keeper.ready, what="version 2 ready")
            assert client.memory_weight() == 11 * ROWS
            # A drop of the total weight (what a fast restart looks like) is restored too, and
            # the emptied memory is never written over the good snapshots.
            client.restore(np.zeros([STATE_ROWS, 3], np.float32))
            wait_for(lambda: keeper.restores == 4 and keeper.ready, what="restore after a drop")
            assert client.memory_weight() == 11 * ROWS
            newest = MemoryStore(store).snapshots()[0]
            assert MemoryStore(store).read(newest).memory_weight == 11 * ROWS
        assert keeper.restores == 4
    finally:
        keeper.stop()
        http.shutdown()
        assert server.stop() == 0, "".join(server.lines)


def test_endpoint_weight_reads_memory_layout_and_falls_back_to_the_snapshot():
    asked = []

    def new(name, inputs):
        asked.append(name)
        return {"fingerprint": np.array(b"sha256:00"), "memory_weight": np.array(2.0, np.float32)}

    def old(name, inputs):  # exported before memory_layout returned the weight
        asked.append(name)
        if name == "memory_layout":
            return {"fingerprint": np.array(b"sha256:00")}
        return {"sketch": np.zeros([4, 3], np.float32), "memory_weight": np.array(7.0, np.float32)}

    assert MemoryEndpoint(new, 1, ()).weight() == 2.0 and asked == ["memory_layout"]
    asked.clear()
    assert MemoryEndpoint(old, 1, ()).weight() == 7.0
    assert asked == ["memory_layout", "memory_snapshot"]
    # Nor did it name its combiner: no trust is handed to or from it.
    assert MemoryEndpoint(old, 1, ()).trust_layout == ("", 0)
