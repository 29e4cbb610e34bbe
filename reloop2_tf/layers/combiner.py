"""The self-tuning combiner (docs/core.md): where its features come from, and its trust.

The memory's read-outs of a row (``LSHErrorMemory.read``) map to the combiner's features through
a layout fixed by the memory's groups (``ReadLayout``); the trust is solved from the sums of the
rows' expansions that every write adds (``solve_trust``).
"""

from __future__ import annotations

import numpy as np

from reloop2_tf._keras import tf
from reloop2_tf.layers.memory_base import probability_to_logit

# Ridge added to the combiner's curvature (about 40 rows of evidence at p = 0.5): with little
# evidence, or features that move together (a group at its two shrinkages), trust stays small.
RIDGE = 10.0
# Ridge on the two columns that move every row's score at once, the (centred) base logit and the
# bias: a change of the whole stream's level or spread is believed on the stream's evidence
# (prior sd 0.1, ~400 rows at p = 0.5), not on a few clicks of a rare-positive log, where a level
# that moves from one batch to the next reorders rows the base model barely separates (docs/core.md;
# Open Bandit in docs/benchmarks.md). A group's column moves only rows whose bucket has evidence.
GLOBAL_RIDGE = 100.0
# Evidence gates (positive-part James-Stein factors): the bias (the level) is shrunk by
# max(0, 1 - EVIDENCE_GATE * var / w^2), var its posterior variance, and the groups' trust as a
# whole by max(0, 1 - EVIDENCE_GATE / (w' P w)), P their posterior precision: each moves only
# on evidence past two standard errors. A level step between batches reorders a whole stream
# whose rows the base barely separates (rare positives), whether right or not; a real base-rate
# shift is many standard errors out within a batch; the groups' trust on a log of a few dozen
# clicks is noise that reorders it the same way (docs/core.md).
EVIDENCE_GATE = 4.0
# Trust stays in [-MAX_TRUST, MAX_TRUST] per group (docs/core.md).
MAX_TRUST = 16.0
# The base-logit column's trust stays in [-MAX_TEMPER, MAX_TEMPER]: the corrected logit keeps
# between half and 1.5 times the base's, so the base ranking is never inverted by it.
MAX_TEMPER = 0.5


def solve_trust(curvature, moment) -> tf.Tensor:
    """float32 ``[F]``: the trust from the combiner's sums, curvature ``[F, F]`` and moment
    ``[F]`` in true units, the last two columns the base logit's and the bias.

    Solves ``(H + R) w = m`` (``R``: ridge 10 on the groups' columns, 100 on the base logit's and
    the bias), the base-logit column held in ``[-0.5, 0.5]``, the bias and then the groups' trust
    as a whole shrunk towards zero unless their evidence is past two standard errors, and every
    trust in ``[-16, 16]`` (docs/core.md).
    """
    f = int(moment.shape[0])
    ridge = tf.constant([RIDGE] * (f - 2) + [GLOBAL_RIDGE] * 2, tf.float32)
    # One inverse of the system gives every step below: holding a column at a value is a
    # rank-one correction along the inverse's column, and the inverse's diagonal gives the
    # posterior variances (three solves before: ~0.1 ms of every write, docs/performance.md).
    system = curvature + tf.linalg.diag(ridge)
    inverse = tf.linalg.inv(system)
    solved = tf.linalg.matvec(inverse, moment)
    # The base-logit column (second to last) may temper the base model's logit, never invert
    # or double it: its trust stays in [-MAX_TEMPER, MAX_TEMPER] and the others are solved
    # again with it held there (the same solution when it is inside). Near-constant logits
    # (rare positives) otherwise let it trade off against the bias and flip the ranking.
    z, b = f - 2, f - 1
    along_z = inverse[:, z] / inverse[z, z]
    temper = tf.clip_by_value(solved[z], -MAX_TEMPER, MAX_TEMPER)
    held = solved + along_z * (temper - solved[z])
    # With it held, the bias's posterior variance and the direction that moves the bias
    # alone (zero at the base-logit column): the conditional inverse's last column.
    along_b = inverse[:, b] - along_z * inverse[z, b]
    bias, variance = held[b], along_b[b]
    # The level moves every row at once: it is shrunk by the positive-part James-Stein
    # factor, zero until it is two standard errors from zero (bias^2 > 4 var), and the
    # groups are solved again around it (the same solution when the factor is 1).
    shrink = tf.maximum(0.0, 1.0 - EVIDENCE_GATE * variance / tf.maximum(bias * bias, 1e-30))
    groups = held[:z] + along_b[:z] * (bias * (shrink - 1.0) / variance)
    # The groups' trust as a whole, by its Wald statistic (squared Mahalanobis distance from
    # zero under their posterior precision, the system's block): hundreds on MovieLens (the
    # factor ~1), ~10-30 with 6 % positives, ~1 on a log of 65 clicks (docs/core.md).
    wald = tf.tensordot(groups, tf.linalg.matvec(system[:z, :z], groups), 1)
    groups = groups * tf.maximum(0.0, 1.0 - EVIDENCE_GATE / tf.maximum(wald, 1e-30))
    trust = tf.concat([groups, temper[None], (bias * shrink)[None]], axis=0)
    return tf.clip_by_value(trust, -MAX_TRUST, MAX_TRUST)


def rate_scale(level) -> tf.Tensor:
    """``1 / (4 p (1 - p))`` at ``p = sigmoid(level)``: a residual in probability units times
    this is the change of logit it means at the memory's level, in units of p = 0.5's; a row
    there holds ``1 / s`` of the information of a row at p = 0.5, so a shrinkage of ``n`` rows'
    worth is ``n * s`` rows.

    So the ridge and the trust's bounds mean the same on every log: at a rate of 6 % a residual
    of 0.01 is 0.18 logits, and unscaled its column needed a trust 4.4 times larger, which the
    ridge held back (20 times harder in curvature) on every log with rare positives
    (docs/core.md). 1 at p = 0.5 (an empty memory), 1.02 on MovieLens (57 % positives)."""
    return 0.5 * (1.0 + tf.cosh(level))


def stream_shift(labels, base) -> tf.Tensor:
    """The stream's relative shift ``rho = (Y - B) / (B + 1)`` from a totals row's label and
    base sums: every residual is read net of it (docs/core.md)."""
    return (labels - base) / (base + 1.0)


def with_base_rows(readouts, base_probs) -> tf.Tensor:
    """``[U + 3, B]``: the read-outs, then the base probability, its logit and 1."""
    return tf.concat([readouts, tf.stack([base_probs, probability_to_logit(base_probs),
                                          tf.ones_like(base_probs)])], axis=0)


class ReadLayout:
    """Where the combiner's features come from (``LSHErrorMemory.trust_features``), fixed by a
    memory's groups.

    A row's cells as stored, ``[w, y, b]`` per key column (``3 T`` values), map linearly to
    ``U`` read-outs: the SRP tables' summed residual and count, every id table's residual and
    count (summed over its key columns: a multi-valued group's tokens), every pooled group's
    base sum, the mean weight, and the level.
    ``read_weights`` ``[3 T, U]`` and ``read_offsets`` ``[U, 1]`` (constants: the level) hold
    that map for the current state: every non-zero entry is a constant times one of ``values`` =
    ``[scale_t (T), scale_t (1 + rho_t) (T), level]`` (``weights``). The read-outs and four
    more rows (the base probability, its logit, 1 and 0) give every feature's five parts
    ``r, c, p, q, d`` by one gather (``parts``, ``[5, F]`` row indices); a feature is
    ``(r - c p / (q + n1)) / (d + n2)`` with ``n1``, ``n2`` ``a * prior_count + b``
    (``shrinkage``).
    """

    def __init__(self, memory):
        t, k = memory.num_key_columns, memory.num_tables
        level = 2 * t  # the entry of `values` that holds the level
        entries = []  # (row of read_weights, read-out, entry of `values`, constant)
        readouts = {}

        def readout(name, *terms):
            readouts[name] = len(readouts)
            entries.extend((row, readouts[name], source, constant)
                           for row, source, constant in terms)

        # A table's read-outs sum its key columns' cells (a multi-valued group's tokens).
        def count(table, constant=1.0):
            return [(3 * c, c, constant) for c in memory._table_columns[table]]

        def residual(table):
            return [e for c in memory._table_columns[table]
                    for e in ((3 * c + 1, c, 1.0), (3 * c + 2, t + c, -1.0))]

        if k:
            readout("srp residual", *(e for table in range(k) for e in residual(table)))
            readout("srp count", *(e for table in range(k) for e in count(table)))
        for table in range(k, len(memory._table_columns)):
            readout(("residual", table), *residual(table))
            readout(("count", table), *count(table))
        for table in memory._pooled:
            readout(("base", table), *((3 * c + 2, c, 1.0) for c in memory._table_columns[table]))
        readout("support", *((3 * c, c, 1.0 / t) for c in range(t)))
        readout("level", (3 * t, level, 1.0))
        readout("zero")
        self.shape = [3 * t + 1, len(readouts)]
        self.support = readouts["support"]
        for name in ("base probability", "logit", "one"):  # rows after the read-outs
            readouts[name] = len(readouts)
        zero = "zero"
        parts, n1, n2 = [], [], []  # per feature: (r, c, p, q, d), (a, b) of n1 and of n2

        def feature(r, c, p, q, d, a1, a2):
            parts.append([readouts[x] for x in (r, c, p, q, d)])
            n1.append(a1)
            n2.append(a2)

        for m in (1.0, 10.0):
            if k:
                feature("srp residual", zero, zero, zero, "srp count", (0.0, 1.0), (k * m, 1e-12))
            for i, parent in enumerate(memory._parents):
                own = ("residual", k + i), ("count", k + i)
                if parent < 0:
                    feature(own[0], zero, zero, zero, own[1], (m, 1e-12), (m, 1e-12))
                else:
                    feature(own[0], own[1], ("residual", k + parent), ("count", k + parent),
                            own[1], (m, 1e-12), (m, 1e-12))
            for table in memory._pooled:
                feature(("base", table), ("count", table), "base probability", zero,
                        ("count", table), (0.0, 1.0), (m, 1e-12))
        for j in range(len(memory.recent_groups)):
            table = memory._first_recent + j
            feature(("residual", table), zero, zero, zero, ("count", table), (0.0, 1.0),
                    (1.0, 1e-12))
        feature("logit", "one", "level", zero, zero, (0.0, 1.0), (0.0, 1.0))  # logit - level
        feature("one", zero, zero, zero, zero, (0.0, 1.0), (0.0, 1.0))  # the bias
        if len(parts) != memory.num_trust_features:
            raise AssertionError(f"{len(parts)} read features, {memory.num_trust_features} trusts")
        self.parts = np.array(parts, np.int32).T  # [5, F]
        self._level = readouts["level"]
        # Every feature but the base logit and the bias is a residual in probability units.
        self._in_probability = np.array([1.0] * (len(parts) - 2) + [0.0, 0.0], np.float32)[:, None]
        rows, columns, sources, constants = zip(*entries)
        self._indices = np.stack([rows, columns], axis=1).astype(np.int32)
        self._sources = np.array(sources, np.int32)
        self._constants = np.array(constants, np.float32)
        self._n1, self._n2 = np.array(n1, np.float64), np.array(n2, np.float64)

    def weights(self, values) -> tf.Tensor:
        """``read_weights`` with ``read_offsets`` as a last row, for ``values`` ``[2 T + 1]``."""
        return tf.scatter_nd(self._indices, self._constants * tf.gather(values, self._sources),
                             self.shape)

    def features(self, rows, prior_count: float) -> tf.Tensor:
        """float32 ``[F, B]``: ``(r - c p / (q + n1)) / (d + n2)`` of every feature, from
        ``rows``: the read-outs ``[U, B]``, then the base probability, its logit and 1
        (``with_base_rows``). Every feature but the last two (the residuals, in probability
        units) is read in logit units at the memory's level: times ``s = rate_scale(level)``,
        its shrinkages ``prior_count`` rows' worth of information (``prior_count * s`` rows)."""
        r, c, p, q, d = tf.unstack(tf.gather(rows, self.parts), axis=0)
        s = 1.0 + self._in_probability * (rate_scale(rows[self._level]) - 1.0)  # [F, B]
        n1, n2 = (a[:, :1].astype(np.float32) * (prior_count * s) + a[:, 1:].astype(np.float32)
                  for a in (self._n1, self._n2))
        return s * (r - c * p / (q + n1)) / (d + n2)
