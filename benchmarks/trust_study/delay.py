"""How fast labels come back, in the replica: labels a fixed time after their row instead of every
N rows, and what the memory's keys would know in hindsight (docs/history/benchmarks.md, "How fast labels
come back")."""

from __future__ import annotations

import numpy as np

from trust_study.replica import OnlinePopularity, Replica, Stream, sigmoid


class Delayed(OnlinePopularity):
    """The default memory with every label written ``delay`` seconds (of the log's timestamps)
    after its row. The warm rows are written first in chunks of 1,000, as in ``reloop2 bench``;
    then rows are served in micro-batches of ``micro``, and before each one every earlier row
    whose time lies ``delay`` or more before the micro-batch's first row is written, its
    combiner expansion taken at the trust it was served with (as ``update_memory_by_keys``
    does). ``delay=0`` writes a label as soon as the next micro-batch is served."""

    def __init__(self, s: Stream, times: np.ndarray, delay: float, micro: int = 50, **kwargs):
        super().__init__(s, **kwargs)
        if len(times) != len(s.wy) + len(s.y):
            raise ValueError(f"`times` should hold one time per warm and test row "
                             f"({len(s.wy) + len(s.y)}). Received: {len(times)}")
        self.times, self.delay, self.micro = np.asarray(times, np.float64), float(delay), micro

    def run(self) -> np.ndarray:
        s = self.s
        z, y = np.concatenate([s.wz, s.z]), np.concatenate([s.wy, s.y])
        warm, out = len(s.wy), np.empty(len(s.y))
        for a in range(0, warm, 1000):
            idx = np.arange(a, min(a + 1000, warm))
            base = sigmoid(z[idx])
            self.features(idx, base)  # keys the popularity cross by the counts read
            self._decay(len(idx))
            self._write(idx, y[idx], base)
        written = warm
        h = m = xs = qs = ws = None  # sized by the first micro-batch's features
        for a in range(warm, len(y), self.micro):
            due = min(int(np.searchsorted(self.times, self.times[a] - self.delay, "right")), a)
            if h is not None and due > written:
                idx = np.arange(written, due)
                x, q, served = xs[idx - warm], qs[idx - warm], ws[idx - warm]
                self._decay(len(idx))
                f = 0.5 ** (len(idx) / self.trust_half_life)
                weight = q * (1 - q)
                h = h * f + (x * weight[:, None]).T @ x
                m = m * f + x.T @ (weight * served) - x.T @ (q - y[idx])
                self._write(idx, y[idx], sigmoid(z[idx]))
                written = due
            idx = np.arange(a, min(a + self.micro, len(y)))
            x = self.features(idx, sigmoid(z[idx]))
            if h is None:
                k = x.shape[1]
                h, m = np.zeros((k, k)), np.zeros(k)
                xs, qs, ws = np.zeros((len(s.y), k)), np.zeros(len(s.y)), np.zeros(len(s.y))
            ridge = np.full(len(m), self.ridge)
            ridge[-2:] = self.global_ridge
            w = np.clip(self.solve(h + np.diag(ridge), m), -16, 16)
            out[idx - warm] = qs[idx - warm] = sigmoid(z[idx] + x @ w)
            xs[idx - warm], ws[idx - warm] = x, x @ w
        return out


def hindsight_ceiling(s: Stream) -> np.ndarray:
    """Every test row read from all the other rows of its keys, before and after it (warm and
    test), without forgetting, and the trust fitted on the test rows themselves (Newton, the
    combiner's ridge of 10): what the memory's id groups know about a row with every label of
    the log back at once (the replica's columns, every row's own contribution taken out of its
    cells). Not a method; an upper bound for any reading of these keys."""
    r = Replica(s, recent_half_life=None, net=False, half_life=None)
    z, y = np.concatenate([s.wz, s.z]), np.concatenate([s.wy, s.y])
    base = sigmoid(z)
    rows = np.stack([np.ones_like(base), y, base], 1)
    for table, codes in zip(r.state, r.codes):
        np.add.at(table, codes, rows)
    idx = np.arange(len(s.wy), len(y))
    cells = [table[codes[idx]] - rows[idx] for table, codes in zip(r.state, r.codes)]
    x = r.columns(cells, idx, base[idx])
    w = np.zeros(x.shape[1])
    for _ in range(15):
        p = sigmoid(z[idx] + x @ w)
        curvature = (x * (p * (1 - p))[:, None]).T @ x + 10.0 * np.eye(len(w))
        w = w + np.linalg.solve(curvature, x.T @ (y[idx] - p) - 10.0 * w)
    return sigmoid(z[idx] + x @ w)


def same_window_share(users: np.ndarray, every: int) -> float:
    """The share of rows (after a user's first) whose user's previous row lies in the same
    ``every``-row feedback window: rows that cannot see the labels of their user's last rows."""
    window = np.arange(len(users)) // every
    last: dict = {}
    same = total = 0
    for user, w in zip(users, window):
        if user in last:
            total += 1
            same += last[user] == w
        last[user] = w
    return same / max(total, 1)
