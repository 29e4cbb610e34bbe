"""The id-table memory and its combiners, in NumPy: the same sums, features and trust as
``LSHErrorMemory`` / ``ErrorCompensation`` (without SRP tables), written per chunk of feedback."""

from __future__ import annotations

import numpy as np
import pandas as pd


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


class Stream:
    """Test and warm rows of one log and base model, from ``dump``'s ``.npz``."""

    def __init__(self, path):
        d = np.load(path, allow_pickle=True)
        self.z, self.y = d["logits"].astype(np.float64), d["labels"].astype(np.float64)
        self.wz, self.wy = d["warm_logits"].astype(np.float64), d["warm_labels"].astype(np.float64)
        self.groups = [tuple(g.split("*")) for g in d["groups"]]
        cols = list(d["cols"])
        self.test = {c: d["t_" + c] for c in cols}
        self.warm = {c: d["w_" + c] for c in cols}
        self.users = self.test["user_id"]

    def codes(self, table):
        key = None
        for c in table:
            v = np.concatenate([self.warm[c], self.test[c]]).astype(object)
            key = v if key is None else key + "\x1f" + v
        codes, uniques = pd.factorize(key)
        return codes, len(uniques)


class Replica:
    """Variants: ``priors`` (shrinkages each group is read at), ``logit`` (base-logit column),
    ``ridge``, ``global_ridge`` (on the base-logit and bias columns), ``centred`` (the base-logit
    column centred on the memory's mean base probability), ``online`` (expansions at the served
    trust, else at zero trust), ``warm_trust`` (learn the trust from the warm rows too),
    ``half_life`` (tables), ``trust_half_life`` (the combiner's sums; None: ``half_life``),
    ``recent_half_life`` (a recent table per single-feature group; None: none), ``level_gate``
    (the bias shrunk by ``max(0, 1 - level_gate * var / w^2)``; 0: not), ``group_gate`` (the
    groups' trust shrunk by ``max(0, 1 - group_gate / (w' P w))``; 0: not), ``rate_scaled``
    (residuals in logit units at the memory's level, their shrinkages counted in information:
    the layers' ``combiner.rate_scale``), ``net`` (every long group's residual net of the
    stream's relative shift, ``- rho * b``), ``parent_prior`` (a cross centred on its first
    feature's residual shrunk at this count; None: the column's own), ``groups``."""

    def __init__(self, s: Stream, groups=None, priors=(2.0, 20.0), logit=True, ridge=10.0,
                 online=True, warm_trust=False, half_life=1e5, every=1000, centred=True,
                 global_ridge=100.0, trust_half_life=2e4, recent_half_life=5e3, level_gate=4.0,
                 net=True, parent_prior=None, group_gate=4.0, rate_scaled=True):
        self.s, self.groups = s, list(groups or s.groups)
        self.priors, self.logit, self.ridge, self.online = priors, logit, ridge, online
        self.warm_trust, self.half_life, self.every = warm_trust, half_life, every
        self.centred, self.global_ridge, self.level_gate = centred, global_ridge, level_gate
        self.net, self.parent_prior = net, parent_prior
        self.group_gate, self.rate_scaled = group_gate, rate_scaled
        self.trust_half_life = trust_half_life or half_life
        tables = list(self.groups)
        for g in self.groups:
            if len(g) > 1 and g[:1] not in tables:
                tables.append(g[:1])
        self.parents = [tables.index(g[:1]) if len(g) > 1 else -1 for g in self.groups]
        self.codes, self.state = [], []
        for t in tables:
            c, n = s.codes(t)
            self.codes.append(c)
            self.state.append(np.zeros((n, 3)))
        self.recent_half_life = recent_half_life
        singles = [i for i, p in enumerate(self.parents) if p < 0] if recent_half_life else []
        self.recent = [(i, np.zeros_like(self.state[i])) for i in singles]
        self.recent_totals = np.zeros(3)

    def features(self, idx, base):
        return self.columns([s[c[idx]] for s, c in zip(self.state, self.codes)], idx, base)

    def columns(self, st, idx, base):
        """The combiner's columns of rows ``idx`` from ``st``, their cells' sums in every table
        (``features`` reads them off the tables)."""
        # Every row is in one bucket of each table: the first one's sums are the stream's.
        total_c, total_y, total_b = self.state[0].sum(0)
        shift = (total_y - total_b) / (total_b + 1.0) if self.net else 0.0
        mean = (total_b + 0.5) / (total_c + 1.0)
        scale = 1.0 / (4.0 * mean * (1.0 - mean)) if self.rate_scaled else 1.0
        cols = []
        for n in (prior * scale for prior in self.priors):
            pool = []
            for i, par in enumerate(self.parents):
                c, r = st[i][:, 0], st[i][:, 1] - (1 + shift) * st[i][:, 2]
                if par >= 0:
                    shrink = n if self.parent_prior is None else self.parent_prior * scale
                    rp = st[par][:, 1] - (1 + shift) * st[par][:, 2]
                    r = r - c * rp / (st[par][:, 0] + shrink)
                else:
                    pool.append((st[i][:, 2] - c * base) / (c + n))
                cols.append(r / (c + n))
            cols += pool
        rho = (self.recent_totals[1] - self.recent_totals[2]) / (self.recent_totals[2] + 1.0)
        for i, table in self.recent:
            st = table[self.codes[i][idx]]
            cols.append((st[:, 1] - st[:, 2] - rho * st[:, 2]) / (st[:, 0] + self.priors[0] * scale))
        cols = [col * scale for col in cols]
        if self.logit:
            level = 0.0
            if self.centred:
                mean = (total_b + 0.5) / (total_c + 1.0)
                level = np.log(mean) - np.log1p(-mean)
            cols.append(np.log(base) - np.log1p(-base) - level)
        cols.append(np.ones_like(base))
        return np.stack(cols, 1)

    def solve(self, system, m):
        w = np.linalg.solve(system, m)
        b = len(m) - 1
        if self.level_gate:
            var = np.linalg.inv(system)[b, b]
            w[b] *= max(0.0, 1.0 - self.level_gate * var / max(w[b] ** 2, 1e-30))
            rest = list(range(b))
            w[:b] = np.linalg.solve(system[np.ix_(rest, rest)], (m - system[:, b] * w[b])[:b])
        if self.group_gate:
            g = b - int(self.logit)  # the groups' columns: all but the base logit's and the bias
            wald = w[:g] @ system[:g, :g] @ w[:g]
            w[:g] *= max(0.0, 1.0 - self.group_gate / max(wald, 1e-30))
        return w

    def run(self) -> np.ndarray:
        s = self.s
        z, y = np.concatenate([s.wz, s.z]), np.concatenate([s.wy, s.y])
        warm, out = len(s.wy), np.empty(len(s.y))
        h = m = None
        for a in range(0, len(y), self.every):
            idx = np.arange(a, min(a + self.every, len(y)))
            base = sigmoid(z[idx])
            x = self.features(idx, base)
            if h is None:
                h, m = np.zeros((x.shape[1],) * 2), np.zeros(x.shape[1])
            ridge = np.full(len(m), self.ridge)
            ridge[-1 - int(self.logit):] = self.global_ridge
            w = np.clip(self.solve(h + np.diag(ridge), m), -16, 16)
            p = sigmoid(z[idx] + x @ w)
            if a >= warm:
                out[idx - warm] = p
            self._decay(len(idx))
            if self.trust_half_life:
                f = 0.5 ** (len(idx) / self.trust_half_life)
                h, m = h * f, m * f
            if self.warm_trust or a >= warm:
                q = p if self.online else base
                ht = (x * (q * (1 - q))[:, None]).T @ x
                m += (ht @ w if self.online else 0.0) - x.T @ (q - y[idx])
                h += ht
            self._write(idx, y[idx], base)
        self.trust = w
        return out

    def _decay(self, rows: int) -> None:
        if self.half_life:
            for t in self.state:
                t *= 0.5 ** (rows / self.half_life)
        if self.recent:
            for _, t in self.recent:
                t *= 0.5 ** (rows / self.recent_half_life)
            self.recent_totals *= 0.5 ** (rows / self.recent_half_life)

    def _write(self, idx, y, base) -> None:
        v = np.stack([np.ones_like(base), y, base], 1)
        for t, c in zip(self.state, self.codes):
            np.add.at(t, c[idx], v)
        for i, t in self.recent:
            np.add.at(t, self.codes[i][idx], v)
        self.recent_totals += v.sum(0)


def bias_memory(s: Stream, key="item_id", lam=0.3, gamma=0.0, prior=5.0, every=1000):
    """``BiasMemory.replay`` over the same rows (the benchmark's item-bias / user-bias)."""
    codes, n = s.codes((key,))
    st = np.zeros((n, 3))
    z, y = np.concatenate([s.wz, s.z]), np.concatenate([s.wy, s.y])
    warm, out = len(s.wy), np.empty(len(s.y))
    for a in range(0, len(y), every):
        idx = np.arange(a, min(a + every, len(y)))
        base = sigmoid(z[idx])
        c, ls, bs = st[codes[idx]].T
        safe = np.maximum(c, 1e-12)
        err = c / (c + prior) * (gamma * (ls / safe - base) + (1 - gamma) * (ls / safe - bs / safe))
        if a >= warm:
            out[idx - warm] = np.clip(base + lam * err, 0, 1)
        np.add.at(st, codes[idx], np.stack([np.ones_like(base), y[idx], base], 1))
    return out


def thin_positives(s: Stream, start: int = 40_000, probability: float = 0.5, seed: int = 0):
    """The drift testbed's label shift on a dumped stream: from test row ``start`` on, each
    positive becomes negative with ``probability``. Returns a per-row oracle of the stream's
    relative shift (``probability`` thinning -> labels scaled by ``1 - probability``)."""
    rng = np.random.default_rng(seed)
    rows = np.arange(len(s.y))
    positives = np.where((rows >= start) & (s.y > 0))[0]
    s.y = s.y.copy()
    s.y[positives[rng.random(len(positives)) < probability]] = 0.0
    return np.where(rows >= start, 1.0 - probability, 1.0)


class OracleNet(Replica):
    """Every row's residual net of the true shift at the time it was written: the tables store
    ``(1, y, b * scale)`` with ``scale`` the oracle of ``thin_positives`` and reads net nothing;
    the pooling columns and the level read the base's own sums, kept apart. The best any netting
    of the stream's shift could do. No recent table (its own netting would count twice)."""

    def __init__(self, s: Stream, scale: np.ndarray, **kwargs):
        super().__init__(s, net=False, recent_half_life=None, **kwargs)
        self.scale = np.concatenate([np.ones(len(s.wy)), scale])
        self.base_sums = [np.zeros(len(t)) for t in self.state]

    def features(self, idx, base):
        scaled = [t[:, 2].copy() for t in self.state]
        for t, b in zip(self.state, self.base_sums):  # the level and the pooling columns
            t[:, 2] = b
        own = super().features(idx, base)
        for t, b in zip(self.state, scaled):  # the residual columns
            t[:, 2] = b
        netted = super().features(idx, base)
        pooling = [i for i, p in enumerate(self.parents) if p < 0]
        per_prior = len(self.parents) + len(pooling)
        keep = [k * per_prior + len(self.parents) + j for k in range(len(self.priors))
                for j in range(len(pooling))] + [own.shape[1] - 2, own.shape[1] - 1]
        netted[:, keep] = own[:, keep]
        return netted

    def _decay(self, rows: int) -> None:
        super()._decay(rows)
        if self.half_life:
            for b in self.base_sums:
                b *= 0.5 ** (rows / self.half_life)

    def _write(self, idx, y, base) -> None:
        v = np.stack([np.ones_like(base), y, base * self.scale[idx]], 1)
        for t, b, c in zip(self.state, self.base_sums, self.codes):
            np.add.at(t, c[idx], v)
            np.add.at(b, c[idx], base)


class Experts(Replica):
    """Two combiners over the same tables, their sums forgetting at ``halves`` rows, mixed by
    exponentially weighted experts: the served trust is ``sum_k g_k w_k``, ``g`` the softmax of
    ``-eta`` times each combiner's served logloss, forgotten at ``loss_half_life`` rows."""

    def __init__(self, s: Stream, halves=(2e4, 1e5), eta=1.0, loss_half_life=2e4, **kwargs):
        super().__init__(s, **kwargs)
        self.halves, self.eta, self.loss_half_life = halves, eta, loss_half_life

    def run(self) -> np.ndarray:
        s = self.s
        z, y = np.concatenate([s.wz, s.z]), np.concatenate([s.wy, s.y])
        warm, out = len(s.wy), np.empty(len(s.y))
        h = m = None
        loss = np.zeros(len(self.halves))
        for a in range(0, len(y), self.every):
            idx = np.arange(a, min(a + self.every, len(y)))
            base = sigmoid(z[idx])
            x = self.features(idx, base)
            if h is None:
                f = x.shape[1]
                h, m = [np.zeros((f, f)) for _ in self.halves], [np.zeros(f) for _ in self.halves]
            ridge = np.full(f, self.ridge)
            ridge[-2:] = self.global_ridge
            ws = [np.clip(self.solve(hk + np.diag(ridge), mk), -16, 16) for hk, mk in zip(h, m)]
            ps = [sigmoid(z[idx] + x @ w) for w in ws]
            g = np.exp(-self.eta * (loss - loss.min()))
            g /= g.sum()
            if a >= warm:
                out[idx - warm] = sigmoid(z[idx] + x @ sum(gk * w for gk, w in zip(g, ws)))
            self._decay(len(idx))
            loss *= 0.5 ** (len(idx) / self.loss_half_life)
            if a >= warm:
                yy = y[idx]
                for k, (q, half) in enumerate(zip(ps, self.halves)):
                    qc = np.clip(q, 1e-7, 1 - 1e-7)
                    loss[k] -= (yy * np.log(qc) + (1 - yy) * np.log1p(-qc)).sum()
                    h[k] *= 0.5 ** (len(idx) / half)
                    m[k] *= 0.5 ** (len(idx) / half)
                    hk = (x * (q * (1 - q))[:, None]).T @ x
                    m[k] += hk @ ws[k] - x.T @ (q - yy)
                    h[k] += hk
            self._write(idx, y[idx], base)
        return out


def add_srp_columns(s: Stream, path, num_bits: int = 6, seed: int = 0) -> str:
    """Adds the SRP bucket of every row's hidden vector (``dump`` saves them, centred like the
    memory's) as a pseudo-column that groups can cross with; returns its name."""
    d = np.load(path, allow_pickle=True)
    center = d["center"].astype(np.float32)
    planes = np.random.default_rng(seed).standard_normal((len(center), num_bits)).astype(np.float32)
    name = f"srp{num_bits}"
    for rows, hidden in ((s.test, d["hidden"]), (s.warm, d["warm_hidden"])):
        bits = (hidden.astype(np.float32) - center) @ planes > 0
        rows[name] = (bits * (1 << np.arange(num_bits))).sum(-1).astype(str)
    return name


def add_item_clusters(s: Stream, path, k: int = 16, seed: int = 0) -> str:
    """Adds every row's item cluster, k-means (scikit-learn) over the base model's item
    embeddings (``dump`` saves them), as a pseudo-column; returns its name."""
    from sklearn.cluster import KMeans

    d = np.load(path, allow_pickle=True)
    test, warm = d["item_vec"].astype(np.float32), d["warm_item_vec"].astype(np.float32)
    vectors = np.concatenate([warm, test])
    labels = KMeans(k, n_init=3, random_state=seed).fit(np.unique(vectors, axis=0)).predict(vectors)
    name = f"item_cluster{k}"
    s.warm[name], s.test[name] = labels[:len(warm)].astype(str), labels[len(warm):].astype(str)
    return name


def add_item_popularity(s: Stream, cap: int = 10) -> str:
    """Adds every row's item popularity bucket, ``floor(log2(1 + rows of the item among the warm
    rows))`` capped at ``cap``, as a pseudo-column (the warm rows precede the test rows: no
    look-ahead); returns its name."""
    items, counts = np.unique(s.warm["item_id"], return_counts=True)
    bucket = dict(zip(items, np.minimum(np.floor(np.log2(1 + counts)), cap).astype(int)))
    for rows in (s.warm, s.test):
        rows["item_pop"] = np.array([str(bucket.get(i, 0)) for i in rows["item_id"]])
    return "item_pop"


class OnlinePopularity(Replica):
    """The default groups plus ``user_id x`` the item's popularity bucket read off the memory
    itself at serving time: ``floor(log2(1 + c))`` (capped at ``cap``) of the item table's
    (forgetting) count ``c`` when the row is read; the row is written to the bucket it was read
    from (writes by keys). What a memory-internal version of ``add_item_popularity`` would do,
    with no column the base model or the client has to know."""

    def __init__(self, s: Stream, cap: int = 15, **kwargs):
        user_codes, users = s.codes(("user_id",))
        s.warm["item_pop_online"] = np.full(len(s.wy), "0", dtype=object)
        s.test["item_pop_online"] = np.full(len(s.y), "0", dtype=object)
        super().__init__(s, groups=list(s.groups) + [("user_id", "item_pop_online")], **kwargs)
        self.cap, self.user_codes = cap, user_codes
        self.cross = len(self.groups) - 1
        self.item = self.groups.index(("item_id",))
        self.state[self.cross] = np.zeros((users * (cap + 1), 3))

    def features(self, idx, base):
        self._key_by_count(idx, self.cross, self.user_codes, self.item)
        return super().features(idx, base)

    def _table_of(self, name: str) -> int:
        """The index of the id table keyed by ``name`` alone: its own group, or the table the
        crosses that start with it are centred on."""
        if (name,) in self.groups:
            return self.groups.index((name,))
        return next(p for g, p in zip(self.groups, self.parents) if p >= 0 and g[0] == name)

    def _key_by_count(self, idx, cross, first_codes, counted) -> None:
        """Keys the rows ``idx`` of table ``cross`` by their first feature's code and
        ``floor(log2(1 + c))`` (at most ``cap``) of their count ``c`` in table ``counted``."""
        count = self.state[counted][self.codes[counted][idx], 0]
        bucket = np.minimum(np.floor(np.log2(1.0 + count)), self.cap).astype(int)
        self.codes[cross][idx] = first_codes[idx] * (self.cap + 1) + bucket
