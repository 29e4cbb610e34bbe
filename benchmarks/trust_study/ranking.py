"""Combiner variants aimed at per-user ranking (gAUC), a multi-valued cross and more crosses,
in the NumPy replica (docs/history/benchmarks.md, "Sixth session" and "Seventh session"). None of the
combiner variants and crosses is adopted; the multi-valued cross is the library's
``"<name>:each"`` (``LSHErrorMemory``)."""

from __future__ import annotations

import zlib

import numpy as np

from trust_study.replica import OnlinePopularity, Stream, sigmoid


class Variant(OnlinePopularity):
    """The default (``OnlinePopularity``) with, optionally:

    * ``no_pool20``: the item's pooling column at the long shrinkage zeroed;
    * ``parent_prior`` (``Replica``'s): a cross centred on its first feature's residual shrunk
      at this count;
    * ``within``: the share of the trust's sums taken from features demeaned per user within
      each feedback batch (a ranking objective; the level still from the plain sums);
    * ``fit_user``: a recent user residual (half-life in rows) in the fit, not in the score;
    * ``running``: like ``within``, but the features and the working response are demeaned
      per user over the user's whole (forgetting) history, not the batch: the pooled
      within-user sums kept exactly by Chan's update of each user's weighted means.
    """

    def __init__(self, s: Stream, no_pool20=False, within=0.0, fit_user=0.0, running=False,
                 **kw):
        super().__init__(s, **kw)
        self.no_pool20, self.within, self.fit_user = no_pool20, within, fit_user
        self.running = running
        n_users = self.user_codes.max() + 1
        self.user_w, self.user_x, self.user_t = np.zeros(n_users), None, np.zeros(n_users)
        self.recent_user = np.zeros((self.user_codes.max() + 1, 3))
        self.recent_user_totals = np.zeros(3)

    def _pool20(self) -> int:
        singles = [i for i, p in enumerate(self.parents) if p < 0]
        block = len(self.parents) + len(singles)
        return block + len(self.parents)  # the first single group's pooling column, n = 20

    def features(self, idx, base):
        x = super().features(idx, base).copy()
        if self.no_pool20:
            x[:, self._pool20()] = 0.0
        if self.fit_user:
            st = self.recent_user[self.user_codes[idx]]
            t = self.recent_user_totals
            rho = (t[1] - t[2]) / (t[2] + 1.0)
            col = (st[:, 1] - (1 + rho) * st[:, 2]) / (st[:, 0] + self.priors[0])
            x = np.concatenate([x[:, :-2], col[:, None], x[:, -2:]], 1)
        return x

    def _decay(self, rows):
        super()._decay(rows)
        if self.fit_user:
            f = 0.5 ** (rows / self.fit_user)
            self.recent_user *= f
            self.recent_user_totals *= f

    def _write(self, idx, y, base):
        super()._write(idx, y, base)
        if self.fit_user:
            v = np.stack([np.ones_like(base), y, base], 1)
            np.add.at(self.recent_user, self.user_codes[idx], v)
            self.recent_user_totals += v.sum(0)

    def run(self) -> np.ndarray:
        s = self.s
        z, y = np.concatenate([s.wz, s.z]), np.concatenate([s.wy, s.y])
        warm, out = len(s.wy), np.empty(len(s.y))
        self.served = []
        h = None
        for a in range(0, len(y), self.every):
            idx = np.arange(a, min(a + self.every, len(y)))
            base = sigmoid(z[idx])
            x = self.features(idx, base)
            f = x.shape[1]
            if h is None:
                h, m, hd, md = np.zeros((f, f)), np.zeros(f), np.zeros((f, f)), np.zeros(f)
            ridge = np.full(f, self.ridge)
            ridge[-2:] = self.global_ridge
            if self.within:
                # The groups from the mixed sums, then the level from the plain ones around them.
                a_ = self.within * hd + (1 - self.within) * h + np.diag(ridge)
                b_ = self.within * md + (1 - self.within) * m
                w = np.zeros(f)
                w[:-1] = np.linalg.solve(a_[:-1, :-1], b_[:-1])
                hb = h[-1, -1] + ridge[-1]
                wb = (m[-1] - h[-1, :-1] @ w[:-1]) / hb
                w[-1] = wb * max(0.0, 1.0 - self.level_gate / hb / max(wb * wb, 1e-30))
            else:
                w = self.solve(h + np.diag(ridge), m)
            w = np.clip(w, -16, 16)
            p = sigmoid(z[idx] + x @ w)
            served = w.copy()
            if self.fit_user:
                served[-3] = 0.0
            if a >= warm:
                out[idx - warm] = sigmoid(z[idx] + x @ served)
                self.served.append(x)
            self._decay(len(idx))
            keep = 0.5 ** (len(idx) / self.trust_half_life)
            h, m, hd, md = h * keep, m * keep, hd * keep, md * keep
            if a >= warm:
                v, yy = p * (1 - p), y[idx]
                ht = (x * v[:, None]).T @ x
                m += ht @ w - x.T @ (p - yy)
                h += ht
                if self.within and self.running:
                    hdt, mdt = self._running_within(self.user_codes[idx], x, v, p, yy, w, keep)
                    hd += hdt
                    md += mdt
                elif self.within:
                    u = self.user_codes[idx]
                    sums, counts = np.zeros((u.max() + 1, f)), np.zeros(u.max() + 1)
                    np.add.at(sums, u, x)
                    np.add.at(counts, u, 1.0)
                    d = x - sums[u] / counts[u][:, None]
                    hdt = (d * v[:, None]).T @ d
                    md += hdt @ w - d.T @ (p - yy)
                    hd += hdt
            self._write(idx, y[idx], base)
        return out

    def _running_within(self, u, x, v, p, y, w, keep):
        """The batch's addition to the pooled within-user curvature and moment: each user's
        weighted (``v``) means of the features and of the working response ``x.w + (y - p)/v``
        over its history, updated by the batch (Chan et al.'s pairwise update, exact)."""
        f = x.shape[1]
        if self.user_x is None:
            self.user_x = np.zeros((len(self.user_w), f))
        self.user_w *= keep
        users, inv = np.unique(u, return_inverse=True)
        wb = np.bincount(inv, weights=v)
        sx = np.zeros((len(users), f))
        np.add.at(sx, inv, x * v[:, None])
        vt = (y - p) + v * (x @ w)  # v times the working response
        safe = np.maximum(wb, 1e-12)
        xb, tb = sx / safe[:, None], np.bincount(inv, weights=vt) / safe
        # Within the batch: sum v x x' - sum_u W_b xb xb'; and the cross with the response.
        h = (x * v[:, None]).T @ x - xb.T @ sx
        m = x.T @ vt - sx.T @ tb
        wo, xo, to = self.user_w[users], self.user_x[users], self.user_t[users]
        c = wo * wb / np.maximum(wo + wb, 1e-12)
        dx, dt = xb - xo, tb - to
        h += (dx * c[:, None]).T @ dx
        m += dx.T @ (c * dt)
        tot = np.maximum(wo + wb, 1e-12)
        self.user_x[users] = xo + dx * (wb / tot)[:, None]
        self.user_t[users] = to + dt * wb / tot
        self.user_w[users] = wo + wb
        return h, m


class UserActivity(OnlinePopularity):
    """The default plus ``item_id x`` the user's activity bucket, ``floor(log2(1 + c))`` of the
    user table's (forgetting) count ``c`` read off the memory when the row is served: the
    mirror of the default's ``user_id x item_id:popularity`` (does this item's error differ
    for new users and for heavy ones?)."""

    def __init__(self, s: Stream, cap: int = 15, **kw):
        self.item_codes, items = s.codes(("item_id",))
        s.warm["user_activity"] = np.full(len(s.wy), "0", dtype=object)
        s.test["user_activity"] = np.full(len(s.y), "0", dtype=object)
        s.groups = list(s.groups) + [("item_id", "user_activity")]
        super().__init__(s, cap=cap, **kw)
        self.activity = self.groups.index(("item_id", "user_activity"))
        self.user_table = self._table_of("user_id")
        self.state[self.activity] = np.zeros((items * (cap + 1), 3))

    def features(self, idx, base):
        self._key_by_count(idx, self.activity, self.item_codes, self.user_table)
        return super().features(idx, base)


def hindsight(s: Stream, features: np.ndarray, within_user: bool, ridge: float = 1.0):
    """Scores of one fixed trust fit on the whole test stream (an oracle: it sees the labels it
    scores): the logistic fit of ``features`` with the base logit as offset, or the same fit
    on features demeaned per user (a ranking fit), applied to the features as they are."""
    x = features
    if within_user:
        u = s.codes(("user_id",))[0][len(s.wy):]
        sums = np.zeros((u.max() + 1, x.shape[1]))
        np.add.at(sums, u, x)
        x = x - (sums / np.maximum(np.bincount(u), 1)[:, None])[u]
    w = np.zeros(x.shape[1])
    for _ in range(20):
        p = sigmoid(s.z + x @ w)
        g = x.T @ (p - s.y) + ridge * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(len(w))
        w -= np.linalg.solve(hess, g)
    return sigmoid(s.z + features @ w)


class PooledTokens(OnlinePopularity):
    """The default plus a group keyed by a row's first feature and each of up to ``slots``
    tokens, read pooled over them like the library's ``"genres:each"``: ``(sum (y - b) -
    (sum c) r_parent) / (sum c + n)``, centred on the residual of the table keyed by the
    feature ``parent``. ``token_keys``: ``[rows, slots]`` cell per token, -1 for an empty
    slot."""

    def __init__(self, s: Stream, token_keys: np.ndarray, parent: str, **kw):
        super().__init__(s, **kw)
        self.token_keys, self.parent = token_keys, self._table_of(parent)
        self.token_cells = np.zeros((token_keys.max() + 2, 3))  # the last: an empty slot

    def features(self, idx, base):
        x = super().features(idx, base)
        _, ty, tb = self.state[0].sum(0)
        rho = (ty - tb) / (tb + 1.0)
        sp = self.state[self.parent][self.codes[self.parent][idx]]
        keys = self.token_keys[idx]
        cells = self.token_cells[np.where(keys >= 0, keys, len(self.token_cells) - 1)]
        r = (cells[..., 1] - (1 + rho) * cells[..., 2]).sum(1)
        c = cells[..., 0].sum(1)
        cols = [(r - c * (sp[:, 1] - (1 + rho) * sp[:, 2]) / (sp[:, 0] + n)) / (c + n)
                for n in self.priors]
        return np.concatenate([x[:, :-2], np.stack(cols, 1), x[:, -2:]], 1)

    def _decay(self, rows):
        super()._decay(rows)
        if self.half_life:
            self.token_cells *= 0.5 ** (rows / self.half_life)

    def _write(self, idx, y, base):
        super()._write(idx, y, base)
        v = np.stack([np.ones_like(base), y, base], 1)
        for j in range(self.token_keys.shape[1]):
            ok = self.token_keys[idx, j] >= 0
            np.add.at(self.token_cells, self.token_keys[idx, j][ok], v[ok])


def _token_keys(firsts, token_lists, slots: int, buckets: int | None = None) -> np.ndarray:
    """``[rows, slots]``: a cell per (first feature, token) pair (hashed into ``buckets`` cells
    by CRC-32 if given: the same cells in every process), -1 where a row has fewer tokens."""
    cells: dict = {}
    keys = np.full((len(firsts), slots), -1)
    for r, (f, tokens) in enumerate(zip(firsts, token_lists)):
        for j, t in enumerate(tokens[:slots]):
            key = (f, t) if buckets is None else zlib.crc32(f"{f}\x1f{t}".encode()) % buckets
            keys[r, j] = cells.setdefault(key, len(cells))
    return keys


class Tokens(PooledTokens):
    """``user x genre`` replaced by ``user x`` every genre of the item (``tokens``: item id ->
    list), the row's first 4 tokens, centred on the user's residual."""

    def __init__(self, s: Stream, tokens: dict, **kw):
        s.groups = [g for g in s.groups if g != ("user_id", "genre")]
        items = np.concatenate([s.warm["item_id"], s.test["item_id"]])
        users = np.concatenate([s.warm["user_id"], s.test["user_id"]])
        super().__init__(s, _token_keys(users, [tokens.get(i) or ["?"] for i in items], 4),
                         "user_id", **kw)


class RecentItems(PooledTokens):
    """The default plus ``item_id x`` each of the user's ``slots`` most recent items (the log's
    ``history`` column, oldest first), centred on the item's own residual: how this item's
    error moves after the items the user just took. ``buckets``: the pairs hashed into that
    many cells, as a table of the memory would (None: one cell per pair)."""

    def __init__(self, s: Stream, slots: int = 4, buckets: int | None = None, **kw):
        items = np.concatenate([s.warm["item_id"], s.test["item_id"]])
        history = np.concatenate([s.warm["history"], s.test["history"]])
        keys = _token_keys(items, [str(h).split()[::-1] for h in history], slots, buckets)
        super().__init__(s, keys, "item_id", **kw)


def genre_lists(item_file: str, row_ids: bool) -> dict:
    """Item id -> every genre, from a RecBole ``.item`` file (4th column, space-separated);
    ``row_ids``: the loader numbers items by their row (ML-1M, whose ids hold spaces)."""
    import pandas as pd

    items = pd.read_csv(item_file, sep="\t", dtype=str, encoding="latin-1")
    ids = (pd.Series([str(i + 1) for i in range(len(items))]) if row_ids
           else items.iloc[:, 0].str.strip())
    return dict(zip(ids, items.iloc[:, 3].fillna("").str.split()))
