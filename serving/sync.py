"""``reloop2 memory sync``: the delta exchange of docs/serving.md section 4, as a process.

For teams that send each label to one replica (a Service picks the pod) instead of fanning out.
The sketch is additive, so replicas are kept equal by exchanging what each one learnt since the
last round:

* per replica ``r`` the process keeps ``base_r``, the state already accounted for. At start it
  is the replica's snapshot, or, with ``since``, the state the replicas last shared (the
  export's memory, or a snapshot file), so that what each learnt before the start is exchanged
  too. Every replica must serve the same memory layout, or the start is refused;
* each round it snapshots every replica, computes ``delta_r = snapshot_r - base_r`` and merges it
  into every other replica ``s`` with ``memory_merge`` under the deterministic write id
  ``sync:<sync_id>:<round>:<r>-><s>`` (``summed=True``: one merge per replica, the sum of the
  others' deltas, id ``sync:<sync_id>:<round>:*-><s>``), so a retried or re-sent merge counts once;
* then ``base_s = snapshot_s + sum of the merged deltas``: what ``s`` holds after the merges,
  computed, not re-read, so writes that reach ``s`` during the round are picked up next round.
  The merges into one replica are sent in a fixed order and ``base_s`` is summed in the same
  order in float32, so without half-life it is bit for bit what the replica holds.

A replica that fails (after the client's retries) is reported in the round's result and skipped.
Its base moves on as if it had received the round's merges, and those merges are *owed* to it:
when it answers again (and did not restart) it is **caught up**, sent what it missed first, in
order. A merge that was attempted keeps its write id, so one whose answer was lost counts once;
the ones never attempted are summed into one merge. Nothing is lost.

A replica whose ``memory_weight`` fell below ``(1 - drop_fraction)`` of its base's restarted
(from its export or an older snapshot), and one that refused a merge or came back with another
layout, is **healed**: ``memory_restore`` of the state the healthy replicas hold after that
round's merges (``base_h`` of a healthy ``h``), and its base is reset to it. Healing keeps the
other replicas' writes and loses the writes the healed replica had not synced yet.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent import futures

import grpc
import numpy as np

from reloop2_serving.client import ReLoop2Client

logger = logging.getLogger("reloop2.sync")

MEMORY_SNAPSHOT, MEMORY_LAYOUT = "memory_snapshot", "memory_layout"


class LayoutMismatch(ValueError):
    """The replicas do not serve the same memory layout: their snapshots do not add up."""


@dataclasses.dataclass
class RoundResult:
    """What one round did.

    Attributes:
        round: int. 1 for the first round.
        seconds: float. Wall time of the round.
        delta_weights: target -> the weight its delta carried (``memory_weight`` of the
            snapshot minus that of its base; negative when it forgot more than it learnt).
        merges_sent: int. ``memory_merge`` calls that were answered.
        merges_skipped: int. Merges not sent because the delta was all zeros.
        duplicates: int. Answered merges the replica dropped as already written (a delta with
            weight whose ``weight_written`` came back 0).
        failed: target -> reason, for every replica that did not answer a call (or serves
            another layout). Its delta, if already read, was still delivered to the others.
        restarted: targets whose weight fell by more than ``drop_fraction`` since the last round.
        caught_up: targets that were sent the merges they had missed, this round.
        healed: targets restored this round from the healthy replicas' state.
        pending: targets still waiting to be healed after the round.
        owing: targets that still have merges to receive after the round (they failed).
        bytes_sent: int. Payload bytes of the merges and restores (float32 state tensors).
        bytes_received: int. Payload bytes of the snapshots.
        write_ids: the write ids of the merges sent (target -> ids, in sending order).
    """

    round: int
    seconds: float = 0.0
    delta_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    merges_sent: int = 0
    merges_skipped: int = 0
    duplicates: int = 0
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    restarted: list[str] = dataclasses.field(default_factory=list)
    caught_up: list[str] = dataclasses.field(default_factory=list)
    healed: list[str] = dataclasses.field(default_factory=list)
    pending: list[str] = dataclasses.field(default_factory=list)
    owing: list[str] = dataclasses.field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    write_ids: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def in_sync(self) -> bool:
        """Every replica answered and holds every delta so far (caught up or healed)."""
        return not self.failed and not self.pending and not self.owing

    def line(self) -> str:
        """One log line."""
        weight = sum(self.delta_weights.values())
        parts = [f"round {self.round}: {self.seconds:.3f} s", f"delta weight {weight:.6g}",
                 f"{self.merges_sent} merges sent ({self.merges_skipped} zero deltas skipped, "
                 f"{self.duplicates} duplicates)", f"{self.bytes_sent / 1e6:.3g} MB sent"]
        if self.failed:
            parts.append("failed: " + ", ".join(f"{t} ({why})" for t, why in self.failed.items()))
        if self.restarted:
            parts.append("restarted: " + ", ".join(self.restarted))
        if self.caught_up:
            parts.append("caught up: " + ", ".join(self.caught_up))
        if self.healed:
            parts.append("healed: " + ", ".join(self.healed))
        if self.owing:
            parts.append("owing merges: " + ", ".join(self.owing))
        if self.pending:
            parts.append("to heal: " + ", ".join(self.pending))
        return "; ".join(parts)


@dataclasses.dataclass(frozen=True)
class CommonState:
    """A state every replica once held: where the deltas of the first round start from."""

    sketch: np.ndarray
    memory_weight: float
    fingerprint: str
    source: str


def load_common_state(path: str) -> CommonState:
    """The memory of an exported SavedModel (a version dir, or a TF-Serving base dir: its newest
    version) or of a snapshot file (``.r2snap``, from ``--memory-store`` or ``memory keep``).

    Raises ``ValueError`` when it is neither, or has no memory signatures.
    """
    import tensorflow as tf

    from reloop2_serving.store import decode_snapshot
    from reloop2_tf.export import resolve_saved_model

    path = str(path)
    if not tf.io.gfile.exists(path):
        raise ValueError(f"--since {path}: no such file or directory")
    if not tf.io.gfile.isdir(path):
        with tf.io.gfile.GFile(path, "rb") as handle:
            header, sketch = decode_snapshot(handle.read(), path)  # SnapshotError: a ValueError
        if "fingerprint" not in header or "memory_weight" not in header:
            raise ValueError(f"--since {path}: the snapshot's header has no fingerprint or "
                             "memory_weight")
        return CommonState(sketch, float(header["memory_weight"]), str(header["fingerprint"]),
                           path)
    try:
        model_dir = resolve_saved_model(path)[0]
    except FileNotFoundError as err:
        raise ValueError(f"--since {path}: neither a SavedModel nor a TF-Serving base dir "
                         "of one, nor a snapshot file") from err
    try:
        signatures = tf.saved_model.load(model_dir).signatures
        if MEMORY_SNAPSHOT not in signatures or MEMORY_LAYOUT not in signatures:
            raise ValueError(f"--since {model_dir}: the SavedModel has no {MEMORY_SNAPSHOT} and "
                             f"{MEMORY_LAYOUT} signatures")
        out = signatures[MEMORY_SNAPSHOT]()
        layout = signatures[MEMORY_LAYOUT]()
    except (tf.errors.OpError, OSError) as err:
        raise ValueError(f"--since {model_dir}: cannot load the SavedModel: {err}") from err
    fingerprint = _fingerprint({"fingerprint": layout["fingerprint"].numpy()})
    return CommonState(out["sketch"].numpy(), float(out["memory_weight"].numpy()), fingerprint,
                       model_dir)


def _reason(err: BaseException) -> str:
    if isinstance(err, grpc.RpcError) and callable(getattr(err, "code", None)):
        details = (err.details() or "").strip().splitlines()
        return f"{err.code().name}: {details[0] if details else ''}".rstrip(": ")
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _fingerprint(outputs: Mapping[str, np.ndarray]) -> str:
    value = np.asarray(outputs["fingerprint"]).item()
    return value.decode() if isinstance(value, bytes) else str(value)


class MemorySync:
    """Keeps the memories of several replicas equal by exchanging their deltas.

    Construction reads every replica's layout fingerprint and snapshot (the starting bases).
    Then call ``sync_round()`` as often as wanted.

    Args:
        targets: ``HOST:PORT`` of every replica, or a mapping name -> client (anything with
            ``call(signature, inputs)``, ``merge(delta, write_id=)`` and ``restore(sketch)``,
            like ``ReLoop2Client``).
        model_name: str. Defaults to `"reloop2"`.
        timeout: float. Seconds per call. Defaults to `30.0`.
        retries: int. The client's retries after UNAVAILABLE / DEADLINE_EXCEEDED. Defaults to `3`.
        sync_id: str. Part of every write id; two sync processes must not share it. Defaults to
            a fresh random id.
        drop_fraction: float. A replica whose ``memory_weight`` is below ``(1 - drop_fraction)``
            times its base's restarted and is healed. Defaults to `0.01`.
        summed: bool. Send each replica one merge, the sum of the other replicas' deltas (N
            merges per round), instead of one merge per other replica (N(N-1)). Defaults to
            `False`.
        since: optional ``CommonState`` (``load_common_state``). The state every replica held
            when they were last equal; the first round then exchanges everything each learnt
            since. Defaults to `None`: each replica's snapshot at start (what they learnt
            before the start is not exchanged; a warning says so if they differ).

    Raises:
        LayoutMismatch: two replicas that answered serve different memory layouts.
        RuntimeError: no replica answered.
    """

    def __init__(self, targets: Sequence[str] | Mapping[str, object], model_name: str = "reloop2",
                 timeout: float = 30.0, retries: int = 3, sync_id: str | None = None,
                 drop_fraction: float = 0.01, summed: bool = False,
                 since: CommonState | None = None):
        if not 0 <= drop_fraction < 1:
            raise ValueError(f"`drop_fraction` should be in [0, 1). Received: {drop_fraction!r}")
        if isinstance(targets, Mapping):
            self.clients = dict(targets)
            self._owned = False
        else:
            self._new_client = lambda t: ReLoop2Client(t, model_name, timeout, retries=retries)
            self.clients = {t: self._new_client(t) for t in targets}
            self._owned = True
        if len(self.clients) < 2:
            raise ValueError("sync needs at least two replicas")
        self.targets = list(self.clients)
        self.sync_id = sync_id or uuid.uuid4().hex[:12]
        self.drop_fraction = float(drop_fraction)
        self.summed = bool(summed)
        self.since = since
        self.round = 0
        self.fingerprint: str | None = None
        self.base: dict[str, np.ndarray] = {}
        self.base_weight: dict[str, float] = {}
        self.to_heal: dict[str, str] = {}  # target -> why
        # Merges a replica has not acknowledged: attempted ones keep their write id (the
        # replica may hold them already), never-attempted ones are summed into one delta.
        self.owed: dict[str, list[tuple[str, np.ndarray, float]]] = {t: [] for t in self.clients}
        self.unsent: dict[str, tuple[np.ndarray, float] | None] = dict.fromkeys(self.clients)
        self.last_merges: list[tuple[str, str, np.ndarray]] = []  # (target, write id, delta)
        self._pool = futures.ThreadPoolExecutor(max_workers=min(32, len(self.clients)))
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # -- helpers ---------------------------------------------------------------------------------
    def _each(self, targets, fn) -> dict[str, object]:
        """``fn(target)`` for every target in parallel; a target's exception is its result."""
        pending = {t: self._pool.submit(fn, t) for t in targets}
        out = {}
        for target, future in pending.items():
            try:
                out[target] = future.result()
            except Exception as err:  # noqa: BLE001 - one replica's failure is reported, not fatal
                out[target] = err
        return out

    def _read(self, target: str):
        client = self.clients[target]
        fingerprint = _fingerprint(client.call(MEMORY_LAYOUT, {}))
        out = client.call(MEMORY_SNAPSHOT, {})
        return (fingerprint, np.asarray(out["sketch"], np.float32),
                float(np.asarray(out["memory_weight"])))

    def _start(self) -> None:
        reads = self._each(self.targets, self._read)
        answered = {t: r for t, r in reads.items() if not isinstance(r, Exception)}
        if not answered:
            raise RuntimeError("no replica answered memory_layout and memory_snapshot: " + "; ".join(
                f"{t}: {_reason(err)}" for t, err in reads.items()))
        fingerprints = {t: r[0] for t, r in answered.items()}
        first = next(iter(fingerprints))
        differ = [t for t, f in fingerprints.items() if f != fingerprints[first]]
        if differ:
            raise LayoutMismatch(
                "the replicas serve different memory layouts, so their snapshots cannot be "
                "merged: " + ", ".join(f"{t} has {fingerprints[t]}" for t in differ)
                + f", but {first} has {fingerprints[first]}")
        self.fingerprint = fingerprints[first]
        since = self.since
        if since is not None and since.fingerprint != self.fingerprint:
            raise LayoutMismatch(f"the common state {since.source} has memory layout "
                                 f"{since.fingerprint}, but the replicas serve {self.fingerprint}")
        for target, result in reads.items():
            if since is not None:
                self.base[target], self.base_weight[target] = since.sketch, since.memory_weight
            elif isinstance(result, Exception):
                self.to_heal[target] = f"unreachable at start ({_reason(result)})"
                logger.warning("replica %s did not answer at start (%s); it will be healed from "
                               "the others when it answers", target, _reason(result))
            else:
                _, self.base[target], self.base_weight[target] = result
        if since is None:
            states = [r[1] for r in answered.values()]
            apart = max(float(np.abs(s - states[0]).max()) for s in states)
            if apart > 0:
                logger.warning("the replicas' memories differ at start (by up to %.6g in a "
                               "cell): what they learnt before now is not exchanged, so they "
                               "stay apart by that much. Start with --since the state they "
                               "last shared (their export or a snapshot) to exchange it", apart)
        logger.info("sync %s: %d replicas, memory layout %s, %d state rows", self.sync_id,
                    len(self.targets), self.fingerprint, next(iter(self.base.values())).shape[0])

    # -- one round -------------------------------------------------------------------------------
    def owes(self, target: str) -> bool:
        """Whether ``target`` has merges it has not acknowledged."""
        return bool(self.owed[target]) or self.unsent[target] is not None

    def sync_round(self) -> RoundResult:
        """Catch up, snapshot, exchange the deltas, heal; see the module doc."""
        self.round += 1
        result = RoundResult(self.round)
        started = time.perf_counter()
        # A replica that failed gets a fresh channel: a gRPC channel that failed to connect
        # waits out its reconnect backoff (seconds, growing) before it tries again.
        if self._owned:
            for target in self.targets:
                if target in self.to_heal or self.owes(target):
                    self.clients[target].close()
                    self.clients[target] = self._new_client(target)

        # 1. Catch up: the merges a replica missed, after checking it did not restart.
        owing = [t for t in self.targets if t not in self.to_heal and self.owes(t)]
        caught = self._each(owing, self._catch_up)
        for target in owing:
            outcome = caught[target]
            if isinstance(outcome, Exception):
                self._fail(result, target, _reason(outcome))
            elif outcome is not None:
                sent, duplicates, error = outcome
                result.merges_sent += sent
                result.duplicates += duplicates
                result.bytes_sent += sent * self.base[target].nbytes
                if error is not None:
                    self._fail(result, target, f"memory_merge (catching up): {_reason(error)}")
                    self._heal_if_refused(target, error)
                else:
                    result.caught_up.append(target)
            else:
                result.restarted.append(target)

        # 2. Read every other replica.
        reading = [t for t in self.targets if t not in result.failed]
        reads = self._each(reading, self._read)
        snapshots: dict[str, np.ndarray] = {}
        weights: dict[str, float] = {}
        for target in reading:
            read = reads[target]
            if isinstance(read, Exception):
                self._fail(result, target, _reason(read))
                continue
            fingerprint, sketch, weight = read
            if fingerprint != self.fingerprint:
                self._fail(result, target, f"serves memory layout {fingerprint}, not "
                                           f"{self.fingerprint}")
                self._mark_to_heal(target, f"served memory layout {fingerprint}")
                continue
            result.bytes_received += sketch.nbytes
            snapshots[target], weights[target] = sketch, weight
            if target in self.to_heal:
                continue
            if self._restarted(target, weight):
                result.restarted.append(target)

        # 3. Deltas of the replicas that kept their memory; the merges each replica gets.
        active = [t for t in self.targets if t in snapshots and t not in self.to_heal]
        deltas = {t: snapshots[t] - self.base[t] for t in active}
        for target in active:
            result.delta_weights[target] = weights[target] - self.base_weight[target]
        nonzero = [t for t in active if np.any(deltas[t])]
        members = [t for t in self.targets if t not in self.to_heal]
        plans = {t: self._plan(t, nonzero, deltas, result) for t in members}
        sending = [t for t in active if plans[t]]
        self.last_merges = [(t, wid, delta) for t in sending for wid, delta, _ in plans[t]]
        outcomes = self._each(sending, lambda t: self._send(t, plans[t]))

        # 4. New bases: what each member holds once it has every merge of its plan.
        healthy = []
        for target in members:
            plan = plans[target]
            outcome = outcomes.get(target, (0, 0, 0.0, None))
            if isinstance(outcome, Exception):
                outcome = (0, 0, 0.0, outcome)
            sent, duplicates, written, error = outcome
            result.merges_sent += sent
            result.duplicates += duplicates
            result.bytes_sent += sent * self.base[target].nbytes
            if sent:
                result.write_ids[target] = [wid for wid, _, _ in plan[:sent]]
            base = snapshots[target] if target in snapshots else self.base[target]
            for _, delta, _ in plan:
                base = base + delta  # float32, in the order the replica adds them
            self.base[target] = base
            # The weights the replica measured (its snapshot's, the merges'), never our own
            # differences, which would carry float32 rounding from round to round; estimates
            # only for the merges still owed.
            known = weights[target] if target in snapshots else self.base_weight[target]
            self.base_weight[target] = known + written + sum(w for _, _, w in plan[sent:])
            if error is not None:
                self._fail(result, target, f"memory_merge: {_reason(error)}")
                self._owe(target, plan[sent:sent + 1], plan[sent + 1:])
                self._heal_if_refused(target, error)
            elif target not in snapshots:
                self._owe(target, [], plan)  # not reached this round: all of it is owed
            elif not self.owes(target):
                healthy.append(target)

        # 5. Heal the replicas that restarted, changed layout or were never seen.
        answering = [t for t in self.to_heal if t in snapshots]
        if answering and not healthy and len(answering) == len(self.targets):
            # Every replica lost its memory at once (a full rollout without a store): nothing to
            # heal from. Start again from the heaviest one and heal the others from it.
            source = max(answering, key=lambda t: weights[t])
            logger.error("round %d: every replica restarted; the sync starts again from %s "
                         "(memory_weight %.6g)", self.round, source, weights[source])
            self.to_heal.pop(source)
            self.base[source], self.base_weight[source] = snapshots[source], weights[source]
            answering.remove(source)
            healthy.append(source)
        if answering and healthy:
            source = healthy[0]
            state, weight = self.base[source], self.base_weight[source]
            healed = self._each(answering, lambda t: self.clients[t].restore(state))
            for target in answering:
                if isinstance(healed[target], Exception):
                    self._fail(result, target, f"memory_restore: {_reason(healed[target])}")
                    continue
                logger.warning("replica %s healed from %s's state after round %d (%s)", target,
                               source, self.round, self.to_heal.pop(target))
                self.base[target], self.base_weight[target] = state.copy(), weight
                result.healed.append(target)
                result.bytes_sent += state.nbytes
        result.pending = [t for t in self.targets if t in self.to_heal]
        result.owing = [t for t in self.targets if t not in self.to_heal and self.owes(t)]
        result.seconds = time.perf_counter() - started
        quiet = result.in_sync and not (result.healed or result.caught_up or result.restarted)
        (logger.info if quiet else logger.warning)("%s", result.line())
        return result

    def _restarted(self, target: str, weight: float, floor: float | None = None) -> bool:
        """Marks ``target`` to heal if ``weight`` is below ``(1 - drop_fraction)`` of
        ``floor`` (default: its base's weight)."""
        floor = self.base_weight[target] if floor is None else floor
        if weight >= (1.0 - self.drop_fraction) * floor:
            return False
        why = f"memory_weight fell from {floor:.6g} to {weight:.6g} (restarted)"
        logger.warning("replica %s: %s; the writes it had not synced are lost, it will be "
                       "healed from the others", target, why)
        self._mark_to_heal(target, why)
        return True

    def _mark_to_heal(self, target: str, why: str) -> None:
        self.to_heal.setdefault(target, why)
        self.owed[target], self.unsent[target] = [], None  # the restore replaces all of it

    def _heal_if_refused(self, target: str, error: BaseException) -> None:
        """A merge the replica refused (not a lost connection) will not pass on a retry: the
        replica's memory is not what the sync thinks, so it is healed instead."""
        code = error.code() if isinstance(error, grpc.RpcError) and callable(
            getattr(error, "code", None)) else None
        if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            self._mark_to_heal(target, f"refused a merge ({_reason(error)})")

    def _owe(self, target: str, attempted, unattempted) -> None:
        """Records merges ``target`` has not acknowledged: ``attempted`` ones with their write
        ids, the others summed into one delta."""
        self.owed[target].extend(attempted)
        for _, delta, weight in unattempted:
            pending = self.unsent[target]
            self.unsent[target] = (delta, weight) if pending is None else (
                pending[0] + delta, pending[1] + weight)

    def _catch_up(self, target: str):
        """Sends ``target`` the merges it owes, in order, if it did not restart. Returns
        ``(sent, duplicates, error)``, or `None` when it restarted (marked to heal)."""
        client = self.clients[target]
        if self._owned:  # a ReLoop2Client: only the weight comes back
            out = client.call(MEMORY_SNAPSHOT, {}, ["memory_weight"])
        else:
            out = client.call(MEMORY_SNAPSHOT, {})
        weight = float(np.asarray(out["memory_weight"]))
        owed = self.owed[target]
        unsent = self.unsent[target]
        # Some owed merges may have reached it: the weight it must have is at least its base's
        # without any of them.
        missing = sum(w for _, _, w in owed) + (unsent[1] if unsent is not None else 0.0)
        if self._restarted(target, weight, min(self.base_weight[target],
                                               self.base_weight[target] - missing)):
            return None
        plan = list(owed)
        if unsent is not None:
            plan.append((f"sync:{self.sync_id}:{self.round}:owed->{target}", *unsent))
        sent, duplicates, _, error = self._send(target, plan)
        if error is None:
            self.owed[target], self.unsent[target] = [], None
        elif sent < len(owed):
            self.owed[target] = owed[sent:]
        else:  # the summed delta was attempted: it keeps its id from now on
            self.owed[target], self.unsent[target] = [plan[-1]], None
        return sent, duplicates, error

    def _fail(self, result: RoundResult, target: str, why: str) -> None:
        if target not in result.failed:
            logger.warning("replica %s failed in round %d: %s; skipped, caught up (or healed, "
                           "if it restarted) when it answers", target, self.round, why)
        result.failed[target] = why

    def _plan(self, s: str, nonzero: list[str], deltas: dict[str, np.ndarray],
              result: RoundResult) -> list[tuple[str, np.ndarray, float]]:
        """The merges for replica ``s``: ``(write_id, delta, weight)`` in sending order."""
        sources = [r for r in nonzero if r != s]
        if self.summed:
            result.merges_skipped += not sources
            if not sources:
                return []
            total = deltas[sources[0]]
            for r in sources[1:]:
                total = total + deltas[r]
            weight = sum(result.delta_weights[r] for r in sources)
            return [(f"sync:{self.sync_id}:{self.round}:*->{s}", total, weight)]
        result.merges_skipped += len(deltas) - 1 - len(sources) if s in deltas else 0
        return [(f"sync:{self.sync_id}:{self.round}:{r}->{s}", deltas[r],
                 result.delta_weights[r]) for r in sources]

    def _send(self, s: str, plan) -> tuple[int, int, float, BaseException | None]:
        """Sends the merges in order, stopping at the first failure; returns the merges
        answered, the duplicates among them, the weight they added and the error."""
        sent = duplicates = 0
        added = 0.0
        for wid, delta, weight in plan:
            try:
                out = self.clients[s].merge(delta, write_id=wid)
            except Exception as err:  # noqa: BLE001 - reported as the replica's failure
                return sent, duplicates, added, err
            sent += 1
            written = float(np.asarray(out["weight_written"]))
            if written == 0.0 and weight != 0:
                # Already written (a re-sent round): the replica holds it, with about this weight.
                duplicates += 1
                written = weight
                logger.info("replica %s dropped merge %s as already written", s, wid)
            added += written
        return sent, duplicates, added, None

    def resend_last_round(self) -> list[float]:
        """Sends the last round's merges again, with their write ids; returns each one's
        ``weight_written`` (0 for every merge the replica still remembers). A tool for tests and
        for checking that a replica deduplicates."""
        return [float(np.asarray(self.clients[s].merge(delta, write_id=wid)["weight_written"]))
                for s, wid, delta in self.last_merges]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._owned:
            for client in self.clients.values():
                client.close()

    def __enter__(self) -> MemorySync:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
