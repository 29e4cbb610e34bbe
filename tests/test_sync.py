"""``reloop2 memory sync``: three dev-server replicas on loopback kept equal by delta exchange.

Each replica receives a different third of a labelled stream; one round makes every replica's
tables equal to one memory fed the whole stream. The self-tuning trust sums are not the one
memory's: each replica learnt them from the feedback it saw, and after a round every replica
holds the sum of the three replicas' own trust deltas (docs/serving.md, "Keeping replicas equal").
"""

import argparse
import os
import signal
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
from serving_helpers import (
    STATE_ROWS,
    TABLE_SIZES,
    DevServer,
    Session,
    build_model,
    make_features,
)

import reloop2_tf as r2
from reloop2_tf import export as ex
from reloop2_serving.client import ReLoop2Client
from reloop2_serving.store import encode_snapshot
from reloop2_serving.client import parse_targets
from reloop2_serving.sync import LayoutMismatch, MemorySync
from reloop2_serving.sync_cli import register_sync

pytestmark = pytest.mark.e2e
ZEROS = np.zeros([STATE_ROWS, 3], np.float32)
CELLS = int(sum(TABLE_SIZES))  # table cells; the trust sums follow
FIRST = TABLE_SIZES[0]  # the first SRP table holds every row once
STATE_BYTES = STATE_ROWS * 3 * 4


def _start(base, port=None):
    return DevServer(base, extra_args=["--port", str(port)] if port else [])


def _in_parallel(fn, n):
    threads = [threading.Thread(target=fn, args=(k,)) for k in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One export (half_life None), three replicas of it, and an in-process reference copy."""
    base = tmp_path_factory.mktemp("sync") / "reloop2"
    path = ex.export_serving_model(build_model(seed=5), base, version="auto")
    servers = [None] * 3

    def start(k):
        servers[k] = _start(base)

    _in_parallel(start, 3)
    reference = Session(path)
    state = {"base": base, "servers": servers, "reference": reference}
    try:
        assert all(servers), "a replica did not start"
        yield state
    finally:
        reference.close()
        live = [s for s in state["servers"] if s is not None]
        codes = [None] * len(live)

        def stop(k):
            codes[k] = live[k].stop()

        _in_parallel(stop, len(live))
        assert codes == [0] * len(live), [list(s.lines)[-5:] for s in live]


def targets(cluster):
    return [s.target for s in cluster["servers"]]


def clients(cluster):
    return [ReLoop2Client(t, timeout=60) for t in targets(cluster)]


def stream(seed, batches, rows=16):
    rng = np.random.default_rng(seed)
    return [(make_features(rows, rng), rng.integers(0, 2, rows).astype(np.float32))
            for _ in range(batches)]


def reference_state(cluster, start, batches):
    """One memory (the in-process Session of the same export) fed ``batches`` from ``start``."""
    ref = cluster["reference"]
    ref("memory_restore", sketch=start)
    for features, labels in batches:
        ref("update_memory", **features, label=labels, sample_weight=np.ones_like(labels))
    return ref("memory_snapshot")["sketch"]


def assert_replicas_equal(states):
    """Equal up to float32 summation order (each replica added the others' deltas to its own)."""
    for state in states[1:]:
        np.testing.assert_allclose(state, states[0], rtol=1e-6, atol=1e-6)


def assert_tables_equal(actual, expected):
    """Weights (counts) exactly; the label and error sums to relative 1e-5."""
    np.testing.assert_array_equal(actual[:CELLS, 0], expected[:CELLS, 0])
    scale = np.abs(expected[:CELLS]).max()
    np.testing.assert_allclose(actual[:CELLS], expected[:CELLS], rtol=1e-5, atol=1e-6 * scale)


def test_one_round_makes_three_thirds_equal_one_memory_fed_the_whole_stream(cluster):
    replicas = clients(cluster)
    # A common, non-empty start: every replica holds the same warm-up memory.
    common = reference_state(cluster, ZEROS, stream(0, 4))
    for client in replicas:
        client.restore(common)
    with MemorySync(targets(cluster)) as sync:
        np.testing.assert_array_equal(sync.base[targets(cluster)[0]], common)
        batches = stream(1, 30)
        for k, (features, labels) in enumerate(batches):  # a different third to each replica
            replicas[k % 3].update_memory(features, labels, write_id="")
        before = [c.snapshot() for c in replicas]
        result = sync.sync_round()
        after = [c.snapshot() for c in replicas]
        # What the sync believes each replica holds is what it holds, bit for bit.
        for target, state in zip(targets(cluster), after):
            np.testing.assert_array_equal(sync.base[target], state)
    assert result.in_sync and not result.failed and not result.healed
    assert result.merges_sent == 6 and result.merges_skipped == 0 and result.duplicates == 0
    assert result.bytes_sent == 6 * STATE_BYTES and result.bytes_received == 3 * STATE_BYTES
    assert list(result.delta_weights.values()) == [160.0, 160.0, 160.0]  # 10 batches of 16 rows
    t = targets(cluster)
    assert result.write_ids[t[0]] == [f"sync:{sync.sync_id}:1:{t[1]}->{t[0]}",
                                      f"sync:{sync.sync_id}:1:{t[2]}->{t[0]}"]

    reference = reference_state(cluster, common, batches)
    for state in after:
        assert_tables_equal(state, reference)
        assert state[:FIRST, 0].sum() == 64.0 + 480.0  # warm-up + stream, counted once
    # Trust sums: common start plus the sum of the three replicas' own trust deltas ...
    own = sum(b[CELLS:] - common[CELLS:] for b in before)
    for state in after:
        np.testing.assert_allclose(state[CELLS:], common[CELLS:] + own, rtol=1e-5, atol=1e-6)
    # ... which is not what one memory that learnt on the whole stream holds.
    learnt = np.abs(reference[CELLS:] - common[CELLS:]).max()
    assert learnt > 0
    assert np.abs(after[0][CELLS:] - reference[CELLS:]).max() > 1e-3 * learnt
    for client in replicas:
        client.close()


def test_a_quiet_round_sends_nothing_and_a_resent_round_counts_once(cluster):
    replicas = clients(cluster)
    for client in replicas:
        client.restore(ZEROS)
    with MemorySync(targets(cluster)) as sync:
        for k, (features, labels) in enumerate(stream(2, 6)):
            replicas[k % 3].update_memory(features, labels, write_id="")
        first = sync.sync_round()
        assert first.merges_sent == 6
        synced = [c.snapshot() for c in replicas]
        # The same merges again, same write ids: every replica drops them.
        assert sync.resend_last_round() == [0.0] * 6
        for client, state in zip(replicas, synced):
            np.testing.assert_array_equal(client.snapshot(), state)
        # No writes since: all deltas are exactly zero, nothing is sent, nothing changes.
        quiet = sync.sync_round()
        assert quiet.merges_sent == 0 and quiet.merges_skipped == 6 and quiet.bytes_sent == 0
        assert quiet.delta_weights == {t: 0.0 for t in targets(cluster)} and quiet.in_sync
        for client, state in zip(replicas, synced):
            np.testing.assert_array_equal(client.snapshot(), state)
        # One replica written: its delta goes to the two others only.
        features, labels = stream(3, 1)[0]
        replicas[1].update_memory(features, labels, write_id="")
        one = sync.sync_round()
        assert one.merges_sent == 2 and one.merges_skipped == 4
        assert sorted(one.write_ids) == sorted([targets(cluster)[0], targets(cluster)[2]])
        states = [c.snapshot() for c in replicas]
        assert_replicas_equal(states)
        assert [s[:FIRST, 0].sum() for s in states] == [6 * 16 + 16] * 3
    for client in replicas:
        client.close()


def test_a_restarted_replica_is_reported_while_down_and_healed_when_back(cluster):
    servers, base = cluster["servers"], cluster["base"]
    replicas = clients(cluster)
    for client in replicas:
        client.restore(ZEROS)
    batches = stream(4, 12)
    with MemorySync(targets(cluster), retries=1) as sync:
        for k, (features, labels) in enumerate(batches[:6]):
            replicas[k % 3].update_memory(features, labels, write_id="")
        assert sync.sync_round().in_sync

        # Replica 2 goes down; replicas 0 and 1 keep learning and syncing.
        down = servers[2].target
        port = int(down.rsplit(":", 1)[1])
        assert servers[2].stop() == 0
        for k, (features, labels) in enumerate(batches[6:9]):
            replicas[k % 2].update_memory(features, labels, write_id="")
        while_down = sync.sync_round()
        assert list(while_down.failed) == [down] and while_down.owing == [down]
        assert "UNAVAILABLE" in while_down.failed[down]
        assert while_down.merges_sent == 2 and not while_down.in_sync

        # It comes back from its export (an empty memory): its weight tells, so it is healed
        # after the round instead of being sent what it missed.
        servers[2] = _start(base, port)
        replicas[0].update_memory(*batches[9], write_id="")
        back = sync.sync_round()
        assert back.restarted == [down] and back.healed == [down] and not back.caught_up
        assert back.in_sync and back.merges_sent == 1
        assert back.bytes_sent == 2 * STATE_BYTES  # one merge, one restore
        states = [c.snapshot() for c in replicas]
        assert_replicas_equal(states)
        assert_tables_equal(states[0], reference_state(cluster, ZEROS, batches[:10]))

        # Written, then restarted before the next round: its memory_weight fell, so it is
        # healed; the write it had not synced yet is lost, the others' writes are kept.
        replicas[2].update_memory(*batches[10], write_id="")
        replicas[1].update_memory(*batches[11], write_id="")
        assert servers[2].stop() == 0
        servers[2] = _start(base, port)
        restarted = sync.sync_round()
        assert restarted.restarted == [down] and restarted.healed == [down]
        assert restarted.in_sync and not restarted.failed
        states = [c.snapshot() for c in replicas]
        assert_replicas_equal(states)
        assert_tables_equal(states[0], reference_state(cluster, ZEROS, batches[:10] + batches[11:]))
    for client in replicas:
        client.close()


class _Unavailable(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "test: no route to the replica"


class _Flaky:
    """A ``ReLoop2Client`` the sync cannot reach while ``down``, and that loses the answer of
    one merge (after the replica ran it) when ``lose_answer`` is set."""

    def __init__(self, target):
        self.client = ReLoop2Client(target, timeout=60)
        self.down = self.lose_answer = False

    def call(self, signature, inputs):
        if self.down:
            raise _Unavailable()
        return self.client.call(signature, inputs)

    def merge(self, delta, write_id=None):
        if self.down:
            raise _Unavailable()
        out = self.client.merge(delta, write_id=write_id)
        if self.lose_answer:
            self.lose_answer = False
            raise _Unavailable()
        return out

    def restore(self, sketch):
        if self.down:
            raise _Unavailable()
        return self.client.restore(sketch)


def test_a_replica_the_sync_cannot_reach_is_caught_up_without_losing_a_write(cluster):
    """The replica keeps serving (and learning) while the sync cannot reach it: when it can
    again, it is sent what it missed, and its own writes go out; a merge whose answer was lost
    is sent again under its id and counted once."""
    replicas = clients(cluster)
    for client in replicas:
        client.restore(ZEROS)
    t = targets(cluster)
    flaky = {target: _Flaky(target) for target in t}
    batches = stream(7, 9)
    with MemorySync(flaky) as sync:
        for k in range(3):
            replicas[k].update_memory(*batches[k], write_id="")
        assert sync.sync_round().in_sync

        flaky[t[2]].down = True
        for k in range(3, 6):
            replicas[k - 3].update_memory(*batches[k], write_id="")
        cut = sync.sync_round()
        assert list(cut.failed) == [t[2]] and cut.owing == [t[2]] and cut.merges_sent == 2
        replicas[0].update_memory(*batches[6], write_id="")
        replicas[2].update_memory(*batches[7], write_id="")
        still = sync.sync_round()
        assert list(still.failed) == [t[2]] and still.merges_sent == 1

        flaky[t[2]].down = False
        flaky[t[1]].lose_answer = True
        replicas[1].update_memory(*batches[8], write_id="")
        back = sync.sync_round()
        assert back.caught_up == [t[2]] and not back.restarted and not back.healed
        assert list(back.failed) == [t[1]] and back.owing == [t[1]]
        assert back.delta_weights[t[2]] == 32.0  # its own writes while cut off: 2 batches
        again = sync.sync_round()
        assert again.caught_up == [t[1]] and again.duplicates == 1 and again.in_sync
    states = [c.snapshot() for c in replicas]
    assert_replicas_equal(states)
    assert_tables_equal(states[0], reference_state(cluster, ZEROS, batches))
    assert states[0][:FIRST, 0].sum() == 9 * 16  # every write once
    for client in (*replicas, *(f.client for f in flaky.values())):
        client.close()


def _parser():
    parser = argparse.ArgumentParser(prog="reloop2")
    sub = parser.add_subparsers(dest="command", required=True)
    memory = sub.add_parser("memory")
    register_sync(memory.add_subparsers(dest="memory_command", required=True))
    return parser


def test_the_cli_syncs_and_refuses_bad_targets(cluster, capsys, caplog, tmp_path):
    replicas = clients(cluster)
    for client in replicas:
        client.restore(ZEROS)  # the export's memory: empty
    batches = stream(5, 9)
    for k, (features, labels) in enumerate(batches):
        replicas[k % 3].update_memory(features, labels, write_id="")
    joined = ",".join(targets(cluster))
    # --since the export they all started from: one round exchanges all three thirds.
    args = _parser().parse_args(["memory", "sync", "--targets", joined, "--rounds", "1",
                                 "--since", str(cluster["base"])])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "1 rounds; last: round 1:" in out and "6 merges sent" in out
    synced = [c.snapshot() for c in replicas]
    assert_replicas_equal(synced)
    assert_tables_equal(synced[0], reference_state(cluster, ZEROS, batches))

    # --since a snapshot file of the synced state, --summed: one merge per replica, N not N(N-1).
    fingerprint = replicas[0].call("memory_layout", {})["fingerprint"].item().decode()
    common = tmp_path / "synced.r2snap"
    common.write_bytes(encode_snapshot(synced[0], {
        "fingerprint": fingerprint, "memory_weight": float(synced[0][:FIRST, 0].sum())}))
    replicas[0].update_memory(*batches[0], write_id="")
    replicas[2].update_memory(*batches[1], write_id="")
    args = _parser().parse_args(["memory", "sync", "--targets", joined, "--rounds", "2",
                                 "--every", "0.05", "--summed", "--since", str(common)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "last: round 2:" in out and "0 merges sent (3 zero deltas skipped" in out
    states = [c.snapshot() for c in replicas]
    assert_replicas_equal(states)
    assert_tables_equal(states[0], reference_state(cluster, ZEROS, batches + batches[:2]))

    # Without --since, what they learnt before the start stays where it is, and a warning says so.
    replicas[1].update_memory(*batches[2], write_id="")
    args = _parser().parse_args(["memory", "sync", "--targets", joined, "--rounds", "1"])
    with caplog.at_level("WARNING", logger="reloop2.sync"):
        assert args.func(args) == 0
    assert "0 merges sent" in capsys.readouterr().out
    assert "memories differ at start" in caplog.text and "--since" in caplog.text

    # A replica that never answers: reported, and the run exits 1.
    args = _parser().parse_args(["memory", "sync", "--targets", f"{joined},127.0.0.1:1",
                                 "--rounds", "1", "--retries", "0"])
    assert args.func(args) == 1
    assert "failed: 127.0.0.1:1 (UNAVAILABLE" in capsys.readouterr().out

    wrong = tmp_path / "other.r2snap"
    wrong.write_bytes(encode_snapshot(synced[0], {"fingerprint": "not-this-one",
                                                  "memory_weight": 1.0}))
    for argv, message in [
            (["--targets", "127.0.0.1"], "--targets entry '127.0.0.1' is not HOST:PORT"),
            (["--targets", targets(cluster)[0]], "--targets names 1 replica"),
            (["--targets", f"{targets(cluster)[0]},,{targets(cluster)[1]}"], "empty entry"),
            (["--targets", f"{targets(cluster)[0]},{targets(cluster)[0]}"], "more than once"),
            (["--targets", "localhost:99999,localhost:8500"], "'localhost:99999' is not"),
            (["--targets", joined, "--every", "0"], "--every must be > 0"),
            (["--targets", joined, "--since", str(tmp_path / "nothing")], "no such file"),
            (["--targets", joined, "--since", str(wrong)], "has memory layout not-this-one")]:
        args = _parser().parse_args(["memory", "sync", *argv])
        assert args.func(args) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("reloop2 memory sync: error: ") and message in err, err
    for client in replicas:
        client.close()


class _Fake:
    """A replica that only answers its layout and an empty snapshot."""

    def __init__(self, fingerprint):
        self.fingerprint = fingerprint

    def call(self, signature, inputs):
        if signature == "memory_layout":
            return {"fingerprint": np.array(self.fingerprint.encode(), dtype=object)}
        return {"sketch": ZEROS, "memory_weight": np.float32(0)}


def test_replicas_of_different_layouts_are_refused_by_name():
    with pytest.raises(LayoutMismatch, match="pod-c has bbb, but pod-a has aaa"):
        MemorySync({"pod-a": _Fake("aaa"), "pod-b": _Fake("aaa"), "pod-c": _Fake("bbb")})
    assert parse_targets(" a:1 ,b:2") == ["a:1", "b:2"]


class _SessionReplica:
    """An in-process replica (a TF1 Session of the export) with the client's memory methods."""

    def __init__(self, path):
        self.session = Session(path)

    def call(self, signature, inputs):
        return self.session(signature, **inputs)

    def merge(self, delta, write_id=None):
        return self.session("memory_merge", sketch=delta, write_id=write_id or "")

    def restore(self, sketch):
        return float(self.session("memory_restore", sketch=sketch)["memory_weight"])

    def write(self, features, labels):
        self.session("update_memory", **features, label=labels, sample_weight=np.ones_like(labels))

    def snapshot(self):
        return self.session("memory_snapshot")["sketch"]


def test_with_half_life_synced_replicas_are_close_to_one_memory_not_equal(tmp_path):
    """Each replica decays only on its own writes: the closer the rounds, the closer the match."""
    memory = r2.LSHErrorMemory(num_tables=8, num_bits=5, seed=5, half_life=400.0,
                               id_groups=["item_id", ("user_id", "item_id")], id_bits=10,
                               recent_groups=())
    path = ex.export_serving_model(build_model(seed=5, memory=memory), tmp_path / "hl", version=None)
    one, *three = [_SessionReplica(path) for _ in range(4)]
    batches = stream(6, 120, rows=8)  # 960 rows: 2.4 half-lives
    errors = {}
    try:
        for per_round in (1, 6, 30):  # batches per round: 8, 48 and 240 rows, over 3 replicas
            for replica in (one, *three):
                replica.restore(ZEROS)
            with MemorySync({f"r{k}": r for k, r in enumerate(three)}) as sync:
                for k, (features, labels) in enumerate(batches):
                    one.write(features, labels)
                    three[k % 3].write(features, labels)
                    if (k + 1) % per_round == 0:
                        result = sync.sync_round()
                        assert result.in_sync and not result.restarted
            reference, synced = one.snapshot()[:CELLS], three[0].snapshot()[:CELLS]
            for replica in three[1:]:
                np.testing.assert_allclose(replica.snapshot()[:CELLS], synced, rtol=1e-4, atol=1e-4)
            errors[per_round] = (
                float(np.abs(synced - reference).sum() / np.abs(reference).sum()),
                float(synced[:FIRST, 0].sum() / reference[:FIRST, 0].sum() - 1))
    finally:
        for replica in (one, *three):
            replica.session.close()
    # rows per round -> (relative L1 distance of the tables, relative excess of total weight)
    print(f"half_life 400: synced vs one memory {errors}")
    # One writer between two rounds: its decay is the one memory's, so they are equal.
    assert errors[1][0] < 1e-5 and abs(errors[1][1]) < 1e-5
    # Three writers: each one's rows escape the others' decay until the round ends, so the synced
    # memory is heavier, by a share that grows with the rows per round (measured 1.1 % at 48
    # rows, 6 % at 240, for a half-life of 400 rows).
    assert 0.002 < errors[6][0] < 0.03 and 0.002 < errors[6][1] < 0.03
    assert 2 * errors[6][0] < errors[30][0] < 0.12 and 2 * errors[6][1] < errors[30][1] < 0.12


def test_the_cli_runs_until_sigterm_and_exits_cleanly(cluster):
    """``--every`` without ``--rounds``: rounds until SIGTERM, which ends the process with 0."""
    code = ("import argparse, logging, sys\n"
            "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')\n"
            "from reloop2_serving.sync_cli import register_sync\n"
            "parser = argparse.ArgumentParser()\n"
            "register_sync(parser.add_subparsers())\n"
            "args = parser.parse_args(sys.argv[1:])\n"
            "sys.exit(args.func(args))\n")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-c", code, "sync", "--targets",
                             ",".join(targets(cluster)), "--every", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "reloop2.sync: round 3:" in line:
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert "reloop2 memory sync: stopped after" in output and "Traceback" not in output, output
