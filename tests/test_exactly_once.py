"""Exactly-once writes over real gRPC: write ids, client retries, and a proxy that loses answers.

A loopback proxy forwards every call to the development server and, for one call in ten, throws
the server's answer away and returns UNAVAILABLE instead: the write happened, the client does
not know it. The client retries with the same ``write_id``; the model must count it once.
"""

import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from serving_helpers import STATE_ROWS, TOTALS_ROW, DevServer, build_model, make_features
from tensorflow_serving.apis import prediction_service_pb2_grpc

from reloop2_tf import export as ex
from reloop2_serving.client import GRPC_OPTIONS, ReLoop2Client

pytestmark = pytest.mark.e2e
ZEROS = np.zeros([STATE_ROWS, 3], np.float32)


class LossyProxy(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Forwards ``Predict`` to ``target``; every ``drop_every``-th answer is replaced by
    UNAVAILABLE after the server has run the call (0: none is). ``delay`` seconds are added to
    every call; ``most_at_once`` counts the calls it held at the same time."""

    def __init__(self, target: str, drop_every: int = 10, delay: float = 0.0):
        self._channel = grpc.insecure_channel(target, options=GRPC_OPTIONS)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self.drop_every, self.calls, self.dropped = drop_every, 0, 0
        self.delay, self.at_once, self.most_at_once = delay, 0, 0
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(16), options=GRPC_OPTIONS)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def GetModelMetadata(self, request, context):
        return self._stub.GetModelMetadata(request, timeout=60)

    def Predict(self, request, context):
        with self._lock:
            self.at_once += 1
            self.most_at_once = max(self.most_at_once, self.at_once)
        time.sleep(self.delay)
        try:
            response = self._stub.Predict(request, timeout=60)
        except grpc.RpcError as err:  # the server's own answer, passed on
            context.abort(err.code(), err.details())
        finally:
            with self._lock:
                self.at_once -= 1
        with self._lock:
            self.calls += 1
            drop = self.drop_every and self.calls % self.drop_every == 0
            self.dropped += drop
        if drop:
            context.abort(grpc.StatusCode.UNAVAILABLE, "proxy: answer lost")
        return response

    def stop(self) -> None:
        self.server.stop(grace=None).wait()
        self._channel.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("exactly_once") / "reloop2"
    ex.export_serving_model(build_model(seed=11), base, version="auto")  # half_life None
    process = DevServer(base)
    yield process
    assert process.stop() == 0, "".join(process.lines)


@pytest.fixture
def proxy(server):
    lossy = LossyProxy(server.target)
    yield lossy
    lossy.stop()


def test_eight_retrying_writers_through_a_lossy_proxy_write_the_exact_total(server, proxy):
    with ReLoop2Client(server.target, timeout=60) as direct:
        direct.restore(ZEROS)
    rng = np.random.default_rng(0)
    batches = [(make_features(16, rng), rng.integers(0, 2, 16), rng.integers(1, 4, 16))
               for _ in range(8 * 12)]
    by_keys = [False, True] * 4  # half the writers write by the keys predict returned

    def writer(k):
        written = 0.0
        with ReLoop2Client(proxy.target, timeout=60, retries=5, backoff=0.01) as client:
            for features, labels, weights in batches[k::8]:
                if by_keys[k]:
                    served = client.predict(features)
                    out = client.update_memory_by_keys(served["memory_keys"],
                                                       served["base_probability"], labels,
                                                       weights)
                else:
                    out = client.update_memory(features, labels, weights)
                written += float(out["weight_written"])
        return written

    with futures.ThreadPoolExecutor(8) as pool:
        written = list(pool.map(writer, range(8)))
    total = float(sum(w.sum() for _, _, w in batches))
    assert proxy.dropped >= 10  # the proxy did lose answers, writes among them
    with ReLoop2Client(server.target) as direct:
        assert direct.memory_weight() == total
        # A dropped answer's write happened once; its retry returned 0. So the weights the
        # clients saw add up to less than the total by what the lost answers carried.
        assert sum(written) <= total
        weights = direct.snapshot()[:, 0]
    first = 2**5  # the first SRP table holds every row once
    assert weights[:first].sum() == total


def test_without_write_ids_a_lost_answer_writes_twice(server, proxy):
    """The reason for write ids: the same proxy, retries with an empty id double-count."""
    with ReLoop2Client(server.target) as direct:
        direct.restore(ZEROS)
    rng = np.random.default_rng(1)
    sent = 0.0
    with ReLoop2Client(proxy.target, timeout=60, retries=5, backoff=0.01) as client:
        for _ in range(20):
            features, labels = make_features(5, rng), rng.integers(0, 2, 5)
            client.update_memory(features, labels, write_id="")
            sent += 5
    with ReLoop2Client(server.target) as direct:
        assert direct.memory_weight() == sent + 5 * proxy.dropped
    assert proxy.dropped == 2


def test_every_event_delivered_twice_is_counted_once(server):
    """At-least-once delivery (a queue that redelivers): ids derived from the events."""
    rng = np.random.default_rng(2)
    events = [(f"event-{k}", make_features(4, rng), rng.integers(0, 2, 4)) for k in range(30)]
    with ReLoop2Client(server.target) as once, ReLoop2Client(server.target) as twice:
        once.restore(ZEROS)
        for _, features, labels in events:
            once.update_memory(features, labels, write_id="")
        reference = once.snapshot()
        twice.restore(ZEROS)
        delivered = events + events[::-1]  # every event twice, the second time out of order
        outs = [twice.update_memory(f, y, write_id=i)["weight_written"]
                for i, f, y in delivered]
        assert [float(w) for w in outs] == [4.0] * 30 + [0.0] * 30
        # Tables and trust sums alike: the duplicates left no trace.
        np.testing.assert_array_equal(twice.snapshot(), reference)
        # A merge under a known id is dropped too.
        merged = twice.merge(reference, write_id="merge-1")
        assert float(merged["weight_written"]) == 120.0
        again = twice.merge(reference, write_id="merge-1")
        assert float(again["weight_written"]) == 0.0
        assert float(again["memory_weight"]) == 240.0


def test_one_thread_writing_with_four_in_flight_through_a_lossy_proxy_writes_the_exact_total(
        server, proxy):
    """``Writer``: one thread keeps several writes on the wire; a lost answer is retried with
    the same id when its result is collected, so every write counts once."""
    with ReLoop2Client(server.target, timeout=60) as direct:
        direct.restore(ZEROS)
    rng = np.random.default_rng(3)
    batches = [(make_features(16, rng), rng.integers(0, 2, 16), rng.integers(1, 4, 16))
               for _ in range(60)]
    with ReLoop2Client(proxy.target, timeout=60, retries=5, backoff=0.01) as client:
        served = [client.predict(features) for features, _, _ in batches[::2]]
        sent = []
        with client.writer(in_flight=4) as writer:
            for k, (features, labels, weights) in enumerate(batches):
                if k % 2:
                    sent.append(writer.update_memory(features, labels, weights))
                else:
                    out = served[k // 2]
                    sent.append(writer.update_memory_by_keys(
                        out["memory_keys"], out["base_probability"], labels, weights))
        assert all(p.done() for p in sent)
        written = sum(float(p.result()["weight_written"]) for p in sent)
    total = float(sum(w.sum() for _, _, w in batches))
    assert proxy.dropped >= 5  # answers to writes were lost: 90 calls, one in ten dropped
    with ReLoop2Client(server.target) as direct:
        assert direct.memory_weight() == total
        assert written < total  # a retried write answers 0: it had been written
        assert direct.snapshot()[:2**5, 0].sum() == total


def test_a_writer_keeps_at_most_in_flight_writes_on_the_wire(server):
    """The window is what it says: with every call held 50 ms, 12 writes from one thread
    overlap, never more than ``in_flight`` at once, and a write after a rejected one lands."""
    slow = LossyProxy(server.target, drop_every=0, delay=0.05)
    rng = np.random.default_rng(4)
    batches = [(make_features(8, rng), rng.integers(0, 2, 8)) for _ in range(12)]
    try:
        with ReLoop2Client(server.target) as direct:
            direct.restore(ZEROS)
        with ReLoop2Client(slow.target, timeout=60) as client:
            writer = client.writer(in_flight=3)
            sent = [writer.update_memory(f, y) for f, y in batches[:6]]
            bad = writer.update_memory(batches[6][0], batches[6][1][:5])  # 5 labels, 8 rows
            sent += [writer.update_memory(f, y) for f, y in batches[7:]]
            with pytest.raises(grpc.RpcError) as err:
                writer.flush()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "label" in err.value.details()
        with pytest.raises(grpc.RpcError):
            bad.result()
        assert [float(p.result()["weight_written"]) for p in sent] == [8.0] * 11
        assert slow.most_at_once == 3
        with ReLoop2Client(server.target) as direct:
            assert direct.memory_weight() == 88.0  # the rejected write changed nothing
        writer.flush()  # the failure was reported once
    finally:
        slow.stop()


def test_a_writer_rejects_a_window_that_is_not_a_positive_int():
    client = ReLoop2Client("127.0.0.1:1")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="in_flight"):
            client.writer(in_flight=bad)
    client.close()


def _session_and_a_batch(tmp_path, rows):
    """A TF1 Session of a fresh export, ``rows`` random feature rows and its ``predict`` of them."""
    from serving_helpers import Session

    session = Session(ex.export_serving_model(build_model(), tmp_path / "m"))
    features = make_features(rows, np.random.default_rng(0))
    return session, features, session("predict", **features)


def test_concurrent_writes_with_fresh_ids_never_forget_each_others_ids(tmp_path):
    # Eight threads write with fresh ids into one TF1 Session at once (how gRPC workers run a
    # SavedModel); then every id is sent again. Each remembered id writes nothing the second
    # time: a write that forgot another's id (two writes taking the same slot of the ring of
    # recent ids) would count that one twice.
    session, _, served = _session_and_a_batch(tmp_path, 8)
    keys, base = served["memory_keys"], served["base_probability"]
    labels, weights = np.ones(8, np.float32), np.ones(8, np.float32)

    def write(k):
        for j in range(150):
            session("update_memory_by_keys", memory_keys=keys, base_probability=base,
                    label=labels, sample_weight=weights, write_id=f"w{k}-{j}")

    with futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))
    first = float(session("memory_layout")["memory_weight"])
    assert first == pytest.approx(8 * 150 * 8, rel=0.01)  # the export's half-life: < 1 % off
    again = [float(session("update_memory_by_keys", memory_keys=keys, base_probability=base,
                           label=labels, sample_weight=weights,
                           write_id=f"w{k}-{j}")["weight_written"])
             for k in range(8) for j in range(150)]
    assert sum(again) == 0.0
    session.close()


def test_calls_with_the_same_id_at_the_same_time_write_once(tmp_path):
    # A client's retry while its first call still runs, or one event delivered to two workers:
    # four calls with one id reach a TF1 Session together. The id is claimed in the memory's
    # lock, after the checks, so exactly one of them writes (when "seen?" and "remember" were
    # two steps around the write, 29 of 40 such rounds wrote the id more than once).
    import threading

    session, features, served = _session_and_a_batch(tmp_path, 64)
    by_keys = dict(memory_keys=served["memory_keys"], base_probability=served["base_probability"],
                   label=np.ones(64, np.float32), sample_weight=np.ones(64, np.float32))
    by_features = dict(features, label=np.ones(64, np.float32), sample_weight=np.ones(64, np.float32))
    delta = session("memory_snapshot")["sketch"]
    calls = [("update_memory_by_keys", by_keys, 64.0)] * 12 + [("update_memory", by_features, 64.0)] * 4 \
        + [("memory_merge", {"sketch": delta}, float(delta[TOTALS_ROW, 0]))] * 4
    with futures.ThreadPoolExecutor(4) as pool:
        for round_, (signature, inputs, weight) in enumerate(calls):
            start = threading.Barrier(4)

            def call(_, signature=signature, inputs=inputs, round_=round_, start=start):
                start.wait()
                return float(session(signature, **inputs, write_id=f"same-{round_}")["weight_written"])

            written = sorted(pool.map(call, range(4)))
            assert written[:3] == [0.0] * 3 and written[3] == pytest.approx(weight), (signature, written)
    session.close()


def test_concurrent_writes_and_snapshots_across_the_clocks_folds_keep_every_weight(tmp_path):
    # Cells are stored divided by their forgetting clock's scale, which a write folds back into
    # true units once it is below 1e-6. With half-lives of 5 rows both clocks fold every ~6
    # writes of 16 rows, while eight threads write into one TF1 Session and a ninth snapshots.
    # Every write's `memory_weight` and every snapshot's totals must stay where serial writes
    # keep them. Before writes took turns, a write landed at a scale another had just folded
    # away (weights 10^7 times too large), and soon every write failed: "Input is not
    # invertible", the combiner's sums corrupted.
    from serving_helpers import ID_GROUPS, Session

    from reloop2_tf import LSHErrorMemory

    def memory():
        return LSHErrorMemory(num_tables=8, num_bits=5, half_life=5.0, id_groups=ID_GROUPS,
                              id_bits=10, recent_half_life=5.0)

    session = Session(ex.export_serving_model(build_model(memory=memory()), tmp_path / "m"))
    layout = memory()
    served = session("predict", **make_features(16, np.random.default_rng(0)))
    ones = np.ones(16, np.float32)
    keep = 0.5 ** (16 / 5.0)  # each write forgets this much, then adds 16 rows
    low, high = 16 * keep * 0.999, 16 / (1 - keep) * 1.001
    stop = threading.Event()

    def write(_):
        weights = [float(session("update_memory_by_keys", memory_keys=served["memory_keys"],
                                 base_probability=served["base_probability"], label=ones,
                                 sample_weight=ones)["memory_weight"]) for _ in range(250)]
        return np.array(weights)

    write(0)  # the snapshots start from a memory that holds rows

    def snapshot():
        totals = []
        while not stop.is_set():
            sketch = session("memory_snapshot")["sketch"]
            totals.append(sketch[[layout.totals_row, layout.recent_totals_row], 0])
        return np.array(totals)

    with futures.ThreadPoolExecutor(9) as pool:
        snapshots = pool.submit(snapshot)
        try:
            written = np.concatenate(list(pool.map(write, range(8))))
        finally:
            stop.set()
        totals = snapshots.result()
    assert len(written) == 2000 and len(totals) > 5
    assert low <= written.min() and written.max() <= high, (written.min(), written.max())
    assert low <= totals.min() and totals.max() <= high, (totals.min(), totals.max())
    session.close()
