"""The error memory: SRP tables keyed by similarity, id tables keyed by identity (docs/core.md).

O(1) reads and writes, a constant footprint, and exact merges (SPEC section 2 and section 7).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping

import numpy as np

from reloop2_tf._keras import keras, tf
from reloop2_tf.layers import _validation as v
from reloop2_tf.layers import combiner
from reloop2_tf.layers._mutex import locked, mutex_name, when
from reloop2_tf.layers.id_keys import (EACH, EACH_SEPARATOR, EACH_SLOTS, ID_HASH,
                                       POPULARITY_BUCKETS, as_id_strings, each_of,
                                       long_id_tables, mix_keys, normalize_id_groups,
                                       popularity_of, split_tokens, transpose_keys)
from reloop2_tf.layers.memory_base import ErrorMemory, probability_to_logit

# Below this scale a clock's rows are folded back into true units, so float32 never overflows:
# every ~20 half-lives of rows, one pass over that clock's rows (the recent tables' alone, a
# few MB, every ~100,000 rows at their 5,000-row half-life; all rows every ~2M rows).
_MIN_SCALE = 1e-6
# With `srp_centre`, a row is written to the SRP tables net of the centring feature's residual
# shrunk at this count: a user with a handful of rows is believed for part of their level. The
# figures do not move with it (2, 5 or 20: within 0.01 gAUC on ML-100K DCN, docs/benchmarks.md).
_CENTRE_PRIOR = 5.0


@keras.saving.register_keras_serializable(package="reloop2_tf")
class LSHErrorMemory(ErrorMemory):
    """Error memory keyed by similarity (SRP tables) and by identity (id tables).

    Every table stores ``(weight_sum, label_sum, base_sum)`` per bucket.

    * ``num_tables`` SRP tables of ``2**num_bits`` buckets: a row's bucket in table ``k`` is
      ``sum_j [ (h - center) . P[k, :, j] > 0 ] * 2**j`` (the paper's sketch).
    * One id table of ``2**id_bits`` buckets (or its own size) per entry of ``id_groups``: a
      row's bucket is a FarmHash of the group's feature values (``"item_id"``, or a cross such
      as ``("user_id", "genre")``). A cross is read as its deviation from its first feature's
      own residual, so the first feature of every cross gets a table too (listed or not).
    * A cross may name a single-feature group's popularity, ``"<name>:popularity"`` (e.g.
      ``("user_id", "item_id:popularity")``): the bucket ``floor(log2(1 + c))`` (at most 15)
      of the count ``c`` in ``<name>``'s table when the row is read. It is read off the memory,
      so clients send nothing more; a row is written where it was read from
      (``keys_read_state``). ``default_id_groups`` has ``(user, "<item>:popularity")``
      (docs/benchmarks.md).
    * A cross may name a multi-valued feature, ``"<name>:each"`` (e.g. ``("user_id",
      "genres:each")`` with ``genres`` values such as ``"Comedy|Drama"``): the row keys one
      cell per token (its first 4), the group reads their pooled residual
      ``(sum (y - b) - (sum c) r_a) / (sum c + n)``, and a write adds the row to each. A
      user's taste for every genre of a film, not for its first genre or its combination of
      genres. ``reloop2_tf.data.id_groups_for_frame`` uses it for columns whose
      values hold ``"|"``.
    * One more id table per entry of ``recent_groups`` (by default the single-feature groups,
      such as the item), keyed like its group but forgetting at ``recent_half_life``: its
      residual is the last few thousand rows', so a shift shows up within a feedback slot while
      the other tables keep their long evidence (docs/core.md).

    A row is written to all its buckets, so reads and writes touch ``num_key_columns`` cells
    (one per table, 4 for a multi-valued group) whatever the memory holds. ``keys`` gives those
    buckets as int32 ``[B, T]``; ``update_by_keys`` writes by them without the hidden vector or
    the ids.

    Args:
        num_tables: int >= 0. SRP tables K (0: identity only; then ``id_groups`` is required).
            Defaults to `4`.
        num_bits: int. SRP bits per table L. Defaults to `8`.
        seed: int. Seed of the N(0, 1) projections and of the id hashes. Defaults to `0`.
        half_life: optional float. A row's weight halves after ``half_life`` further rows are
            written (O(1) per write); `None` keeps every row at full weight. Defaults to
            `100_000`.
        id_groups: feature names or tuples of names that key id tables. Defaults to `()`.
        id_bits: int, or a dict by id table. Each id table has ``2**id_bits`` buckets; a dict
            gives every table's bits by its features joined with ``"*"`` (``"item_id"``,
            ``"user_id*genre"``, a cross's first feature ``"user_id"``; a recent table has its
            group's), as ``reloop2_tf.data.id_bits_for_frame`` sizes them for a log. Defaults
            to `18`.
        trust_half_life: optional float. The half-life, in rows, of the self-tuning combiner's
            sums (its evidence about how much to trust each group), apart from the tables':
            a handful of trusts re-learn from recent rows after a shift while the tables keep
            their long memory. `None`: the tables' ``half_life``. Defaults to `20_000`.
        recent_groups: optional feature names or tuples of names that also get a recent table.
            `None`: every single-feature entry of ``id_groups``; `()`: none. Defaults to `None`.
        recent_half_life: float. The half-life, in rows, of the recent tables. Defaults to
            `5_000`.
        pooled_groups: optional single-feature id groups whose mean base prediction the
            combiner may pool a row's towards (the paper's gamma, learnt: one more feature per
            group). `None`: every single-feature entry of ``id_groups``; `()`: none. Defaults to
            `None`.
        srp_centre: optional id feature whose table the memory holds (a single-feature group,
            or the first feature of a cross), such as the user. Every row is then written to
            the SRP tables net of that feature's residual read just before the write, so that
            similar rows pool their errors beyond their users' own levels, as a cross is read
            net of its first feature's (docs/core.md, "SRP tables centred on the user"). The
            defaults for a log (``default_srp_centre``) name the user. `None`: the paper's
            plain residuals. Defaults to `None`.

    Example:

    >>> mem = LSHErrorMemory(num_tables=4, num_bits=3, id_groups=["item_id"])
    >>> mem.update(tf.ones([2, 8]), [1.0, 0.0], [0.5, 0.5], ids={"item_id": ["a", "b"]})
    >>> mem.lookup(tf.ones([1, 8]), ids={"item_id": ["a"]})["label_mean"]  # [1, 5]
    """

    def __init__(self, num_tables: int = 4, num_bits: int = 8, seed: int = 0,
                 half_life: float | None = 100_000.0, id_groups: Iterable = (),
                 id_bits: int | Mapping[str, int] = 18,
                 trust_half_life: float | None = 20_000.0, recent_groups: Iterable | None = None,
                 recent_half_life: float = 5_000.0, pooled_groups: Iterable | None = None,
                 srp_centre: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_tables, int) or num_tables < 0:
            raise ValueError(f"`num_tables` should be an int >= 0. Received: num_tables={num_tables!r}")
        if not isinstance(num_bits, int) or not 1 <= num_bits <= 24:
            raise ValueError(f"`num_bits` should be an int in [1, 24]. Received: num_bits={num_bits!r}")
        for bits in (id_bits.values() if isinstance(id_bits, Mapping) else [id_bits]):
            if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 24:
                raise ValueError("`id_bits` should be an int in [1, 24], or a dict of them by id "
                                 f"table. Received: id_bits={id_bits!r}")
        if recent_half_life is None:
            raise ValueError("`recent_half_life` should be a positive number (no recent tables: "
                             "`recent_groups=()`). Received: recent_half_life=None")
        for name, value in (("half_life", half_life), ("trust_half_life", trust_half_life),
                            ("recent_half_life", recent_half_life)):
            if value is not None and not (
                    isinstance(value, (int, float)) and not isinstance(value, bool)
                    and value > 0 and math.isfinite(value)):
                raise ValueError(f"`{name}` should be a positive number or None. "
                                 f"Received: {name}={value!r}")
        self.id_groups = normalize_id_groups(id_groups)
        if num_tables == 0 and not self.id_groups:
            raise ValueError("a memory needs tables: `num_tables` >= 1 or some `id_groups`. "
                             f"Received: num_tables=0, id_groups={list(id_groups)!r}")
        self.num_tables = num_tables
        self.num_bits = num_bits
        self.seed = int(seed)
        self.half_life = None if half_life is None else float(half_life)
        self.trust_half_life = None if trust_half_life is None else float(trust_half_life)
        self.recent_half_life = float(recent_half_life)
        singles = tuple(g for g in self.id_groups if len(g) == 1)
        self.recent_groups = (singles if recent_groups is None
                              else normalize_id_groups(recent_groups))
        # The stored id tables: the listed groups, then the first features of crosses that are
        # not listed themselves, then the recent tables (the last `len(recent_groups)`).
        # `_parents[i]` is the table a listed group is centred on (-1: none).
        tables = list(long_id_tables(self.id_groups))
        self._first_recent = num_tables + len(tables)  # the first recent table (all tables)
        # Every table's bits: `id_bits`, or its entry by name (a recent table: its group's).
        names = ["*".join(t) for t in (*tables, *self.recent_groups)]
        if isinstance(id_bits, Mapping):
            missing = [n for n in dict.fromkeys(names) if n not in id_bits]
            unknown = [n for n in id_bits if n not in names]
            if missing or unknown:
                raise ValueError(f"`id_bits` should give the bits of every id table "
                                 f"{list(dict.fromkeys(names))} (a cross's first feature has a "
                                 f"table too): missing {missing}, unknown {unknown}. "
                                 f"Received: id_bits={dict(id_bits)!r}")
            table_bits = [id_bits[n] for n in names]
        else:
            table_bits = [id_bits] * len(names)
        # One int when every table has the same size (the layout of earlier releases), else the
        # sizes by name, kept as pairs: a dict set on a layer becomes a tracked wrapper (the
        # `id_bits` property rebuilds it).
        if len(set(table_bits)) == 1 or not isinstance(id_bits, Mapping):
            self._id_bits = table_bits[0] if table_bits else id_bits
        else:
            self._id_bits = tuple(dict(zip(names, table_bits)).items())
        tables += self.recent_groups
        self.id_tables: tuple[tuple[str, ...], ...] = tuple(tables)
        self._parents = [tables.index(g[:1]) if len(g) > 1 else -1 for g in self.id_groups]
        self.pooled_groups = (singles if pooled_groups is None
                              else normalize_id_groups(pooled_groups))
        if not set(self.pooled_groups) <= set(singles):
            raise ValueError("`pooled_groups` should name single-feature entries of `id_groups`. "
                             f"Received: pooled_groups={[list(g) for g in self.pooled_groups]!r}, "
                             f"id_groups={[list(g) for g in self.id_groups]!r}")
        long_tables = tables[:self._first_recent - num_tables]
        if srp_centre is not None:
            if not isinstance(srp_centre, str) or (srp_centre,) not in long_tables:
                raise ValueError(
                    "`srp_centre` should name a feature whose table the memory holds (a "
                    "single-feature id group or the first feature of a cross): one of "
                    f"{sorted(t[0] for t in long_tables if len(t) == 1)}. "
                    f"Received: srp_centre={srp_centre!r}")
            if not num_tables:
                raise ValueError("`srp_centre` centres the SRP tables' writes; with num_tables=0 "
                                 f"there are none. Received: srp_centre={srp_centre!r}")
        self.srp_centre = srp_centre
        # Every change of the state holds this mutex (`_locked`), by name in the resource
        # manager of the session or eager context that runs it.
        self._mutex_name = mutex_name("reloop2_memory")
        # The centring feature's table (its long one, not a recent copy).
        self._centre_table = (None if srp_centre is None
                              else num_tables + long_tables.index((srp_centre,)))
        # The tables of the pooled groups, in `id_groups` order.
        self._pooled = [num_tables + i for i, g in enumerate(self.id_groups)
                        if g in self.pooled_groups]
        # Popularity buckets a cross names, and the id table whose counts each one reads.
        self._popularity = tuple(dict.fromkeys(n for t in tables for n in t if popularity_of(n)))
        for group in (*self.id_groups, *self.recent_groups):
            if popularity_of(group[0]) or each_of(group[0]):
                raise ValueError(f"`{group[0]}` cannot be the first feature of a group: a cross is "
                                 f"centred on its first feature's table. Received: {group!r}")
            if sum(1 for n in group if each_of(n)) > 1:
                raise ValueError(f"a group may name one multi-valued feature (`{EACH}`). "
                                 f"Received: {group!r}")
            bad = [n for n in group if each_of(n) and popularity_of(each_of(n))]
            if bad:
                raise ValueError(f"`{bad[0]}`: a popularity bucket holds one value, not a list of "
                                 f"tokens. Received: {group!r}")
        for name in self._popularity:
            if (popularity_of(name),) not in self.id_groups:
                raise ValueError(f"`{name}` buckets the counts of the id group "
                                 f"{popularity_of(name)!r}: list it in `id_groups` too. "
                                 f"Received: id_groups={list(id_groups)!r}")
        # Key columns: one per SRP table and per id table, EACH_SLOTS for an id table keyed by
        # a multi-valued feature (one per token). `_table_columns[t]`: table t's key columns
        # (SRP tables first); `_column_tables[c]`: key column c's table.
        slots = [EACH_SLOTS if any(each_of(n) for n in t) else 1 for t in tables]
        self._table_columns = [[c] for c in range(num_tables)]
        for count in slots:
            start = sum(len(c) for c in self._table_columns)
            self._table_columns.append(list(range(start, start + count)))
        self._column_tables = [t for t, cs in enumerate(self._table_columns) for _ in cs]
        # The key columns of tables keyed by tokens: their key 0 is "no token", never written.
        self._each_columns = [len(self._table_columns[t]) > 1 for t in self._column_tables]
        self._popularity_tables = [tables.index((popularity_of(n),)) for n in self._popularity]
        plain = sorted({n for g in tables for n in g if not popularity_of(n) and not each_of(n)})
        self._plain_features = tuple(plain)
        self._each_features = tuple(sorted({each_of(n) for g in tables for n in g if each_of(n)}))
        self.id_features: tuple[str, ...] = tuple(sorted({*plain, *self._each_features}))
        # Id keys: a seed per table (from the memory's seed and the table's names), and for
        # every position in a cross the row of the hashed features each id key column reads:
        # one per plain feature, then zeros ("no feature"), then the popularity buckets, then
        # the tokens of every multi-valued feature, slot by slot.
        seeds = [int.from_bytes(hashlib.sha256(f"{self.seed}:{'*'.join(t)}".encode())
                                .digest()[:8], "little") for t in tables]
        rows = [*plain, None, *self._popularity,
                *((f, j) for f in self._each_features for j in range(EACH_SLOTS))]
        id_columns = self._column_tables[num_tables:]
        self._column_seeds = [seeds[t - num_tables] for t in id_columns]
        self._column_bits = [table_bits[t - num_tables] for t in id_columns]

        def row(column: int, position: int) -> int:
            table = self._column_tables[column]
            names = tables[table - num_tables]
            if position >= len(names):
                return rows.index(None)
            if each_of(names[position]):
                slot = column - self._table_columns[table][0]
                return rows.index((each_of(names[position]), slot))
            return rows.index(names[position])

        self._id_columns = [[row(c, j) for c in range(num_tables, num_tables + len(id_columns))]
                            for j in range(max((len(t) for t in tables), default=0))]
        # Per id key column, the row of its token among the tokens' rows (`_id_keys_t`); one
        # past the last for a column of a table without tokens.
        first_token = len(rows) - len(self._each_features) * EACH_SLOTS

        def token_row(column: int) -> int:
            names = tables[self._column_tables[column] - num_tables]
            position = next((j for j, n in enumerate(names) if each_of(n)), None)
            return len(rows) if position is None else row(column, position)

        self._column_token_rows = [token_row(c) - first_token
                                   for c in range(num_tables, len(self._column_tables))]
        sizes = [2**num_bits] * num_tables + [2**b for b in table_bits]
        if sum(sizes) >= 2**31:
            raise ValueError(f"the memory would hold {sum(sizes)} buckets; at most 2**31 - 1")
        self.table_sizes: tuple[int, ...] = tuple(sizes)
        # Rows of `sketch` held at the recent tables' scale: [_recent_cells[0], _recent_cells[1]).
        self._recent_cells = (sum(sizes[:self._first_recent]), sum(sizes))

    @property
    def id_bits(self) -> int | dict[str, int]:
        """Every id table's bits: one int when they are all the same size, else a dict by
        table name (the features joined with ``"*"``)."""
        return self._id_bits if isinstance(self._id_bits, int) else dict(self._id_bits)

    @property
    def keys_read_state(self) -> bool:
        """True when a row's keys depend on what the memory holds (a popularity cross): they
        must be computed when the row is served, not ahead of the stream."""
        return bool(self._popularity)

    @property
    def num_buckets(self) -> int:
        """Buckets per SRP table."""
        return 2**self.num_bits

    @property
    def num_key_columns(self) -> int:
        """The width T of ``keys``: one column per SRP table and per id table, ``EACH_SLOTS``
        (4) for an id table keyed by a multi-valued feature (``"<name>:each"``)."""
        return len(self._column_tables)

    @property
    def num_cells(self) -> int:
        """Buckets of all tables, table after table: the first rows of ``sketch``."""
        return sum(self.table_sizes)

    @property
    def num_trust_features(self) -> int:
        """Inputs of the self-tuning combiner: at each of two shrinkages, one for the SRP tables,
        one per id group and one more per pooled group; one per recent table; then the
        base logit and a bias (``trust_features``)."""
        return (2 * ((1 if self.num_tables else 0) + len(self.id_groups) + len(self._pooled))
                + len(self.recent_groups) + 2)

    @property
    def totals_row(self) -> int:
        """The row of ``sketch`` that sums every row written (``totals``), after the cells."""
        return self.num_cells

    @property
    def recent_totals_row(self) -> int | None:
        """With recent tables, the row after ``totals_row``: the same sums at the recent tables'
        forgetting (``recent_totals``). `None` without recent tables."""
        return self.num_cells + 1 if self.recent_groups else None

    @property
    def _first_trust_row(self) -> int:
        return self.num_cells + (2 if self.recent_groups else 1)

    @property
    def num_state_rows(self) -> int:
        """Rows of ``sketch``: the table cells, the totals row (two with recent tables), then the
        combiner's sums (3 values per row)."""
        f = self.num_trust_features
        return self._first_trust_row + -(-(f * (f + 1)) // 3)

    @property
    def num_trust_rows(self) -> int:
        """The last rows of the state (``snapshot``): the combiner's sums (``trust_sums``)."""
        return self.num_state_rows - self._first_trust_row

    def _trust_rows(self) -> tf.Tensor:
        return tf.range(self._first_trust_row, self.num_state_rows)

    def _build_state(self, dim: int) -> None:
        k, l = self.num_tables, self.num_bits
        # Drawn with NumPy so that the projections depend only on `seed`, not on TF's RNG version.
        values = np.random.default_rng(self.seed).standard_normal((k, dim, l)).astype(np.float32)
        # Stored fused, [d, K*L] (column k*L + j is bit j of table k), so a read is one matmul
        # with no transpose; `projection_matrices` gives the [K, d, L] view.
        self.projections = self.add_weight(
            name="projections", shape=[dim, k * l], trainable=False,
            initializer=keras.initializers.Constant(values.transpose(1, 0, 2).reshape(dim, k * l)),
        )
        # One additive state, so that snapshot, restore and merge move everything at once: the
        # buckets of every table, the sums of every row written (one row, so that the memory's
        # level is read in O(1)), then the self-tuning combiner's curvature and gradient sums.
        self.sketch = self.add_weight(name="sketch", shape=[self.num_state_rows, 3],
                                      initializer="zeros", trainable=False)
        # True sketch = sketch * scale (the recent tables: * recent_scale). Only forgetting moves
        # them away from 1.
        self.scale = self.add_weight(name="scale", shape=[], initializer="ones", trainable=False)
        self.recent_scale = self.add_weight(name="recent_scale", shape=[], initializer="ones",
                                            trainable=False)
        # The combiner's trust solved from the sums above, kept up to date by every method that
        # changes them, so that a read gathers it instead of solving (docs/performance.md).
        self.trust_solution = self.add_weight(name="trust_solution",
                                              shape=[self.num_trust_features],
                                              initializer="zeros", trainable=False)
        # The combiner's read-outs as one matmul of a row's cells by this matrix (plus the
        # offsets), then a gather and a few elementwise ops (``trust_features``). Its entries
        # are fixed by the groups, the clocks' scales, the stream's shift and level; it is
        # rebuilt whenever the state changes, like the trust (docs/performance.md).
        # Zeros read an empty memory exactly: its cells are zero and its level is 0.
        self._read_layout = combiner.ReadLayout(self)
        cells, readouts = self._read_layout.shape
        self.read_weights = self.add_weight(name="read_weights", shape=[cells - 1, readouts],
                                            initializer="zeros", trainable=False)
        self.read_offsets = self.add_weight(name="read_offsets", shape=[readouts, 1],
                                            initializer="zeros", trainable=False)
        # The weight of every row written, true units, as of the last change: one variable, so
        # that `total_weight` reads it whole without waiting for a write (`_locked`).
        self.written_weight = self.add_weight(name="written_weight", shape=[],
                                              initializer="zeros", trainable=False)
        # [K*L, K] block-diagonal powers of two: packing every table's bits is one matmul, exact
        # in float32 because every partial sum is an integer below 2**24.
        pack = np.zeros([k * l, k], np.float32)
        for table in range(k):
            pack[table * l:(table + 1) * l, table] = 2.0 ** np.arange(l)
        self._pack = tf.constant(pack)
        # Per key column: where its table's cells start, the scale they are stored at (0:
        # `scale`, 1: `recent_scale`; the recent tables are the last) and the table's size.
        tables = np.array(self._column_tables)
        offsets = np.cumsum([0, *self.table_sizes[:-1]]).astype(np.int32)[tables]
        self._offsets = tf.constant(offsets)
        self._srp_offsets, self._id_offsets = tf.constant(offsets[:k]), tf.constant(offsets[k:])
        self._table_clock = tf.constant((tables >= self._first_recent).astype(np.int32))
        self._sizes = tf.constant(np.array(self.table_sizes, np.int32)[tables])
        # The totals row on each clock (without recent tables the second is unused: no table is
        # on the recent clock).
        self._totals_rows = tf.constant(
            [self.totals_row, self.recent_totals_row if self.recent_groups else self.totals_row],
            tf.int32)
        # A batch of at least this many rows is summed per cell and added in one pass over the
        # table; smaller batches scatter. Scattering costs ~12x more per update than the pass
        # costs per cell (docs/performance.md), so the pass wins from cells / 12 rows.
        self._dense_write_rows = max(1, self.num_state_rows // (12 * self.num_key_columns))
        if self.srp_centre is not None:
            # The centring feature's key column, and where a write's values hold the SRP
            # cells' label sums (`write_keys`: 3 per cell, then the totals rows).
            self._centre_key_column = self._table_columns[self._centre_table][0]
            mask = np.zeros(3 * (self.num_key_columns + (2 if self.recent_groups else 1)),
                            np.float32)
            mask[3 * np.arange(k) + 1] = 1.0
            self._srp_label_mask = tf.constant(mask)

    def call(self, hidden, ids=None):
        return self.lookup(hidden, ids)

    # -- keys --------------------------------------------------------------------------------

    def bucket_ids(self, hidden) -> tf.Tensor:
        """int32 ``[B, K]``: the bucket of every row in every SRP table."""
        hidden = self._check_hidden(hidden)
        if self.num_tables == 0:
            return tf.zeros([tf.shape(hidden)[0], 0], tf.int32)
        # (h - c) . p > 0 as h . p > c . p: the centre is projected once per call, not
        # subtracted from every row.
        threshold = tf.matmul(self.center[None, :], self.projections)  # [1, K*L]
        bits = tf.cast(tf.matmul(hidden, self.projections) > threshold, tf.float32)
        return tf.cast(tf.matmul(bits, self._pack), tf.int32)

    @property
    def projection_matrices(self) -> tf.Tensor:
        """float32 ``[K, d, L]``: table ``k``'s hyperplanes are ``projection_matrices[k]``."""
        self._require_built()
        k, l = self.num_tables, self.num_bits
        return tf.transpose(tf.reshape(self.projections, [self.dim, k, l]), [1, 0, 2])

    def id_bucket_ids(self, ids: Mapping | None, rows=None) -> tf.Tensor:
        """int32 ``[B, I]``: the bucket of every row in every id table (``I`` of the
        ``num_key_columns``: one per id table, one per token slot of a multi-valued group).

        ``ids`` maps each name of ``id_features`` to ``[B]`` or ``[B, 1]`` strings or integers
        (an integer hashes as its decimal string); a multi-valued feature's value lists its
        tokens separated by ``"|"``. Every feature (every token) is hashed once (FarmHash
        Fingerprint64), and every table mixes its features' hashes in order into a 64-bit key
        seeded by the memory's seed and the table's names (multiply-xorshift); the bucket is
        the key's top ``id_bits`` bits (for a token slot: 0 when the slot is empty, never 0
        otherwise). All tables at once, whatever their number.
        """
        return transpose_keys(self._id_keys_t(ids, rows))

    def _id_keys_t(self, ids: Mapping | None, rows=None) -> tf.Tensor:
        """``id_bucket_ids`` column-major, int32 ``[I, B]``: every step works on contiguous
        rows of B values (docs/performance.md)."""
        if not self.id_tables:
            return tf.zeros([0, 0 if rows is None else rows], tf.int32)
        if not isinstance(ids, Mapping):
            raise ValueError(f"this memory has id tables {list(self.id_groups)}: pass `ids`, a dict "
                             f"with {list(self.id_features)}. Received: ids={type(ids).__name__}")
        missing = [n for n in self.id_features if n not in ids]
        if missing:
            raise ValueError(f"`ids` lacks {missing} (the id tables read {list(self.id_features)}). "
                             f"Received keys: {sorted(ids)}")
        strings = {n: as_id_strings(ids[n], n) for n in self.id_features}
        sizes = tf.stack([tf.size(s) for s in strings.values()])
        expected = sizes[0] if rows is None else rows
        check = v.assert_that(tf.reduce_all(tf.equal(sizes, expected)),
                              f"`ids` must have one id per row (of `hidden`) for each of "
                              f"{list(self.id_features)}")
        with tf.control_dependencies([check]):
            # One op per feature: hashing a stack of the strings costs the copy of the strings.
            hashed = [tf.strings.to_hash_bucket_fast(strings[n], 2**63 - 1)
                      for n in self._plain_features]
            tokens = [tf.transpose(split_tokens(strings[n])) for n in self._each_features]  # [S, B]
        # A row of zeros stands for "no feature" in tables shorter than the longest.
        zeros = tf.zeros_like(strings[self.id_features[0]], tf.int64)
        hashed = tf.bitcast(tf.stack([*hashed, zeros]), tf.uint64)
        if self._popularity:
            hashed = tf.concat([hashed, self._popularity_rows(hashed)], axis=0)
        if not tokens:
            return self._mix_keys(hashed, range(len(self._column_seeds)))
        tokens = tf.concat(tokens, axis=0)
        hashed = tf.concat([hashed, tf.bitcast(tf.strings.to_hash_bucket_fast(tokens, 2**63 - 1),
                                               tf.uint64)], axis=0)
        keys = self._mix_keys(hashed, range(len(self._column_seeds)))
        # An empty token slot keys bucket 0, which no write touches; a token never does.
        empty = tf.gather(tf.concat([tf.equal(tokens, ""), tf.zeros_like(zeros[None], tf.bool)],
                                    axis=0), self._column_token_rows)
        each = tf.constant(self._each_columns[self.num_tables:])[:, None]
        return tf.where(empty, 0, tf.where(each, tf.maximum(keys, 1), keys))

    def _mix_keys(self, hashed, columns) -> tf.Tensor:
        """int32 ``[len(columns), B]``: the buckets of these id key columns (0 is the first id
        table's) from the hashed rows (``_id_columns``)."""
        columns = list(columns)
        bits = [self._column_bits[c] for c in columns]
        return mix_keys(hashed, [self._column_seeds[c] for c in columns],
                        [[position[c] for c in columns] for position in self._id_columns],
                        bits[0] if len(set(bits)) == 1 else bits)

    def _popularity_rows(self, hashed) -> tf.Tensor:
        """uint64 ``[P, B]``: every row's popularity bucket (plus 1) of each group a cross names,
        ``floor(log2(1 + c))`` of the group table's count ``c`` in the row's bucket now (true
        units), at most ``POPULARITY_BUCKETS - 1``. Read before any write of the row, so a
        write by keys goes where the row was read from."""
        self._require_built()
        k = self.num_tables
        columns = [self._table_columns[k + t][0] - k for t in self._popularity_tables]
        keys = self._mix_keys(hashed, columns)  # [P, B]
        offsets = tf.constant([sum(self.table_sizes[:k + t]) for t in self._popularity_tables],
                              tf.int32)
        count = tf.gather(self.sketch, keys + offsets[:, None])[..., 0] * self.scale
        bucket = tf.minimum(tf.floor(tf.math.log1p(tf.maximum(count, 0.0)) / math.log(2.0)),
                            POPULARITY_BUCKETS - 1.0)
        return tf.cast(tf.cast(bucket, tf.int64) + 1, tf.uint64)

    def keys(self, hidden, ids: Mapping | None = None) -> tf.Tensor:
        """int32 ``[B, T]``: every row's bucket in the SRP tables, then in the id tables."""
        srp = self.bucket_ids(hidden)
        if not self.id_tables:
            return srp
        return tf.concat([srp, self.id_bucket_ids(ids, rows=tf.shape(srp)[0])], axis=1)

    def check_keys(self, keys) -> tf.Tensor:
        """``keys`` as int32 ``[B, T]`` after checking the shape and that every bucket exists."""
        self._require_built()
        keys = tf.convert_to_tensor(keys)
        if not keys.dtype.is_integer:
            raise ValueError(f"`memory_keys` must be integers. Received: dtype={keys.dtype.name}")
        keys = tf.cast(keys, tf.int32)
        t = self.num_key_columns
        if keys.shape.rank != 2 or (keys.shape[1] is not None and keys.shape[1] != t):
            raise ValueError(f"`memory_keys` must have shape [B, {t}] (one bucket per key column). "
                             f"Received: shape={keys.shape}")
        checks = [] if keys.shape[1] is not None else [
            tf.debugging.assert_equal(tf.shape(keys)[1], t,
                                      message=f"`memory_keys` must have {t} columns")]
        with tf.control_dependencies(checks):
            # Every table's smallest and largest key, not every key against its table's size:
            # a broadcast compare of [B, T] with [T] costs ~60 us at B = 256 (docs/performance.md).
            low, high = tf.reduce_min(keys), tf.reduce_max(keys, axis=0)
        checks = [v.assert_that(low >= 0, "`memory_keys` must be >= 0"),
                  v.assert_that(tf.reduce_all(high < self._sizes),
                                "`memory_keys` holds a bucket beyond its table")]
        with tf.control_dependencies(checks):
            return tf.identity(keys)

    def _require_built(self) -> None:
        if not self.built:
            raise ValueError("the memory is not built yet: write or read one row by hidden vector "
                             "first, or call `build([None, d])`")

    # -- reads -------------------------------------------------------------------------------

    def lookup_keys(self, keys) -> tf.Tensor:
        """float32 ``[B, T, 3]``: ``(weight, label, base)`` sums in every key's bucket, true units."""
        return tf.gather(self.sketch, keys + self._offsets) * self._table_scales()[:, None]

    def _clock_scales(self) -> tf.Tensor:
        """float32 ``[2]``: the long clock's scale and the recent one's."""
        return tf.stack([self.scale, self.recent_scale])

    def _table_scales(self) -> tf.Tensor:
        """float32 ``[T]``: the scale every table's cells are stored at."""
        return tf.gather(self._clock_scales(), self._table_clock)

    def _row_scales(self, rows: int | None = None) -> tf.Tensor:
        """float32 ``[rows]``: the scale of each of the first ``rows`` rows of ``sketch``
        (all by default)."""
        rows = self.num_state_rows if rows is None else rows
        start, end = self._recent_cells  # the recent tables are the last tables
        segments = [(start, self.scale), (end - start, self.recent_scale), (1, self.scale)]
        if self.recent_groups:
            segments.append((1, self.recent_scale))  # the recent totals row
        segments.append((self.num_trust_rows, self.scale))
        parts, left = [], rows
        for count, scale in segments:
            parts.append(tf.fill([min(count, left)], scale))
            left -= min(count, left)
        return tf.concat(parts, axis=0)

    def lookup(self, hidden, ids: Mapping | None = None) -> dict[str, tf.Tensor]:
        """Reads every table: ``weight``, ``label_mean``, ``base_mean``, each ``[B, T]``.

        Means are 0 where a bucket is empty (weight 0).
        """
        stats = self.lookup_keys(self.keys(hidden, ids))
        weight = stats[..., 0]
        return {"weight": weight, "label_mean": tf.math.divide_no_nan(stats[..., 1], weight),
                "base_mean": tf.math.divide_no_nan(stats[..., 2], weight)}

    def estimate(self, hidden, temperature: float, ids: Mapping | None = None) -> dict:
        return self.estimate_from_stats(self.lookup_keys(self.keys(hidden, ids)), temperature)

    @staticmethod
    def estimate_from_stats(stats, temperature: float) -> dict[str, tf.Tensor]:
        """The paper's read over all tables (SPEC section 2): attention ``a_k ~ c_k^(1/tau)``."""
        weight = stats[..., 0]
        label_mean = tf.math.divide_no_nan(stats[..., 1], weight)
        base_mean = tf.math.divide_no_nan(stats[..., 2], weight)
        filled = weight > 0.0
        scores = tf.where(filled, tf.math.log(tf.where(filled, weight, 1.0)) / temperature, 0.0)
        scores -= tf.reduce_max(tf.where(filled, scores, -np.inf), axis=-1, keepdims=True)
        attention = tf.where(filled, tf.exp(tf.where(filled, scores, 0.0)), 0.0)
        attention = tf.math.divide_no_nan(attention, tf.reduce_sum(attention, -1, keepdims=True))
        return {
            "label_mean": tf.reduce_sum(attention * label_mean, axis=-1),
            "base_mean": tf.reduce_sum(attention * base_mean, axis=-1),
            "support": tf.reduce_sum(weight, axis=-1) / tf.cast(tf.shape(weight)[-1], tf.float32),
        }

    def trust_features(self, keys, base_probs, prior_count: float) -> tf.Tensor:
        """float32 ``[B, F]``: the self-tuning combiner's inputs for rows with these ``keys``
        (int32 ``[B, T]``, from ``keys``) and base probabilities ``base_probs`` ``[B]``.

        Every group is read at two shrinkages, ``n = prior_count`` and ``10 * prior_count``, so
        that the combiner learns how fast to trust a bucket as its count ``c`` grows:

        * SRP tables pool into one shrunk residual, ``sum_k (y_k - b_k) / (sum_k c_k + K n)``
          (``y_k``, ``b_k``, ``c_k``: the label, base and weight sums of the row's bucket).
        * An id group gives its shrunk residual ``(y - b) / (c + n)``; a cross gives the same
          after subtracting what its first feature's own residual predicts for its ``c`` rows.
        * A pooled group (``pooled_groups``; by default every single-feature group, such as the
          item) also gives ``(b - c * base) / (c + n)``: how far
          this row's base prediction lies from the group's mean one, which lets the combiner pool
          the base model's predictions towards the group's (the paper's gamma = 1, learnt).
        * A recent table gives its shrunk residual at ``n = prior_count`` only.
        * Every residual is read net of the stream's own relative shift over its table's
          window: ``y - b - rho * b``, ``rho = (Y - B) / (B + 1)`` from ``totals`` (the recent
          tables: ``recent_totals``). A change of the whole stream's rate (every label thinned
          alike) then leaves them at zero; a change that hits some items moves them.
        * Every one of these is read in logit units at the memory's level ``p``: times
          ``s = 1 / (4 p (1 - p))``, with every shrinkage ``n`` counted as ``n * s`` rows (``n``
          rows' worth of information at that rate; ``combiner.rate_scale``), so the trust means
          the same on a log of 5 % positives as on one of 50 %.

        Then the row's base logit, centred on the logit of the memory's mean base probability
        (the combiner can temper an over- or under-confident base around the stream's level, and
        the ridge on this column never stands in for the level: on a log with rare positives the
        raw logit is about -6 on every row), and 1 (it can follow a shift of the base rate).

        All of it is one matmul of the rows' cells by ``read_weights`` (rebuilt whenever the
        state changes), one gather and six elementwise ops: ``(r - c p / (q + n1)) / (d + n2)``
        for five parts ``r, c, p, q, d`` of every feature (docs/performance.md).
        """
        return tf.transpose(self.read(keys, base_probs, prior_count)[0])

    def read(self, keys, base_probs, prior_count: float) -> tuple[tf.Tensor, tf.Tensor]:
        """``(features, support)``: ``trust_features`` feature-major, ``[F, B]``, and the mean
        weight of the rows' buckets over the tables ``[B]``, true units. ``keys`` ``[B, T]``
        must be checked already."""
        base_probs = tf.convert_to_tensor(base_probs, tf.float32)
        readouts = self.read_offsets + self._readouts(keys, self._offsets, self.read_weights)
        # Feature-major, so that the gather and every op after it move contiguous rows of B.
        rows = combiner.with_base_rows(readouts, base_probs)
        features = self._read_layout.features(rows, prior_count)
        return features, readouts[self._read_layout.support]

    def correction(self, keys, base_probs, prior_count: float) -> tuple[tf.Tensor, tf.Tensor]:
        """``(correction, support)``, each ``[B]``, for rows with these ``keys`` ``[B, T]``
        (checked already): the self-tuning combiner's correction of the base logit, ``trust .
        trust_features``, and the mean weight of the rows' buckets (``serve``)."""
        readouts = self.read_offsets + self._readouts(keys, self._offsets, self.read_weights)
        return self._corrected(readouts, base_probs, prior_count)

    def read_ids(self, ids) -> tuple[tf.Tensor | None, tf.Tensor | None]:
        """The part of a served read that needs the ids alone: ``(keys, readouts)``, the rows'
        id keys int32 ``[B, I]`` and the id tables' share of the combiner's read-outs ``[U, B]``
        (`None`, `None` without id tables); ``serve`` completes it.

        Hashing and the gather of the id tables' cells (from tables of megabytes) wait for no
        model output, so a served graph runs them while the base model runs. Inside a
        ``tf.function`` the checks run in the order they were made: make this before any check
        of the base model's outputs (``ErrorCompensation.compensate`` does), or it waits for them.
        """
        if not self.id_tables:
            return None, None
        keys = self.id_bucket_ids(ids)
        weights = self.read_weights[3 * self.num_tables:]
        return keys, self.read_offsets + self._readouts(keys, self._id_offsets, weights)

    def serve(self, hidden, id_read, base_probs, prior_count: float) -> dict[str, tf.Tensor]:
        """``memory_keys`` ``[B, T]``, ``correction`` and ``support`` (``correction``) of rows
        given by their hidden vectors and ``id_read`` (``read_ids`` of their ids)."""
        srp = self.bucket_ids(hidden)
        keys, readouts = id_read
        checks = []
        if keys is None:
            readouts = self.read_offsets  # [U, 1]: the read-outs of empty cells
        else:
            # The ids were checked against each other; here against `hidden`'s rows, before the
            # first op that joins the two.
            checks.append(v.assert_that(tf.equal(tf.shape(keys)[0], tf.shape(srp)[0]),
                                        f"`ids` must have one id per row (of `hidden`) for each "
                                        f"of {list(self.id_features)}"))
        k = self.num_tables
        with tf.control_dependencies(checks):
            if k:
                readouts = readouts + self._readouts(srp, self._srp_offsets,
                                                     self.read_weights[:3 * k])
            if keys is not None:
                srp = tf.concat([srp, keys], axis=1)
            correction, support = self._corrected(readouts, base_probs, prior_count)
        return {"memory_keys": srp, "correction": correction, "support": support}

    def _readouts(self, keys, offsets, weights) -> tf.Tensor:
        """float32 ``[U, B]``: the cells of the rows' buckets ``keys`` ``[B, n]`` (tables at
        ``offsets``) mapped by their rows of ``read_weights``, ``weights`` ``[3 n, U]``."""
        cells = tf.gather(self.sketch, keys + offsets)  # [B, n, 3], as stored
        return tf.matmul(weights, tf.reshape(cells, [-1, weights.shape[0]]),
                         transpose_a=True, transpose_b=True)

    def _corrected(self, readouts, base_probs, prior_count: float) -> tuple[tf.Tensor, tf.Tensor]:
        """``(trust . features, support)`` from the rows' read-outs ``[U, B]``."""
        rows = combiner.with_base_rows(readouts, tf.convert_to_tensor(base_probs, tf.float32))
        # The trust as a row: the sum over features is one MatMul.
        correction = tf.matmul(self.trust_solution[None, :],
                               self._read_layout.features(rows, prior_count))
        return tf.reshape(correction, [-1]), readouts[self._read_layout.support]

    def _read_weights_value(self) -> tf.Tensor:
        """``read_weights`` with ``read_offsets`` as a last row for the current state: the
        tables' scales, each table's netting factor ``1 + rho`` and the memory's level
        (``trust_features``)."""
        scales = self._table_scales()
        totals = tf.gather(self.sketch, self._totals_rows) * self._clock_scales()[:, None]
        rho = combiner.stream_shift(totals[:, 1], totals[:, 2])
        level = probability_to_logit((totals[0, 2] + 0.5) / (totals[0, 0] + 1.0))
        values = tf.concat([scales, scales * tf.gather(1.0 + rho, self._table_clock),
                            level[None]], axis=0)
        return self._read_layout.weights(values)

    def trust_sums(self) -> tuple[tf.Tensor, tf.Tensor]:
        """The combiner's sums in true units: curvature ``[F, F]`` and moment ``[F]``
        (``ErrorCompensation.trust``)."""
        f = self.num_trust_features
        # A gather reads only these rows; slicing the variable would copy all of it first.
        rows = tf.gather(self.sketch, self._trust_rows())
        flat = tf.reshape(rows, [-1])[:f * (f + 1)] * self.scale
        return tf.reshape(flat[:f * f], [f, f]), flat[f * f:]

    def set_trust_sums(self, curvature, moment) -> None:
        """Starts the combiner from sums another memory learnt (``trust_sums``, true units),
        and solves the trust from them; the tables are left as they are.

        A memory's trust starts at zero and is learnt from the rows written to it. One that
        takes over from another of the same groups (a new model version, or a memory tuned on
        a validation stream, as ``reloop2 bench`` does) can start from what that one learnt,
        with the same features and forgetting; docs/core.md says when this helps. The sums
        must come from a memory with the same tables, id groups and recent groups (the same
        ``num_trust_features`` and the same meaning of each): nothing checks the meaning.

        Args:
            curvature: ``[F, F]`` floats, symmetric.
            moment: ``[F]`` floats.
        """
        self._require_built()
        f = self.num_trust_features
        curvature = np.asarray(curvature, np.float32)
        moment = np.asarray(moment, np.float32)
        if curvature.shape != (f, f) or moment.shape != (f,):
            raise ValueError(f"this memory's combiner has {f} features: `curvature` must have "
                             f"shape {[f, f]} and `moment` {[f]}. Received: "
                             f"{list(curvature.shape)} and {list(moment.shape)}")
        if not (np.isfinite(curvature).all() and np.isfinite(moment).all()):
            raise ValueError("`curvature` and `moment` must be finite")
        if not np.allclose(curvature, curvature.T, rtol=1e-5, atol=1e-5 * max(
                1.0, float(np.abs(curvature).max(initial=0.0)))):
            raise ValueError("`curvature` must be symmetric (a sum of outer products)")

        def set_sums():
            self.sketch.scatter_nd_update(self._trust_rows()[:, None],
                                          self._stored_trust_rows(curvature, moment))
            self._refresh()

        self._locked(set_sums)

    def _stored_trust_rows(self, curvature, moment) -> tf.Tensor:
        """``[num_trust_rows, 3]``: the combiner's sums (true units) as the state stores them."""
        flat = tf.concat([tf.reshape(curvature, [-1]), moment], 0) / self.scale
        rows = self.num_trust_rows
        return tf.reshape(tf.pad(flat, [[0, 3 * rows - tf.size(flat)]]), [rows, 3])

    def trust(self) -> tf.Tensor:
        """float32 ``[F]``: the self-tuning combiner's trust (``ErrorCompensation.trust``),
        solved when the state last changed."""
        self._require_built()
        return tf.identity(self.trust_solution)

    def solve_trust(self) -> tf.Tensor:
        """The trust solved from the current sums (``combiner.solve_trust``)."""
        return combiner.solve_trust(*self.trust_sums())

    def _refresh(self, trust: bool = True) -> None:
        """Rebuilds what reads gather instead of computing: ``read_weights`` and, with
        ``trust``, the trust solved from the combiner's sums."""
        weights = self._read_weights_value()
        self.read_weights.assign(weights[:-1])
        self.read_offsets.assign(weights[-1][:, None])
        self.written_weight.assign(self.totals()[0])
        if trust:
            self.trust_solution.assign(self.solve_trust())

    def totals(self) -> tf.Tensor:
        """float32 ``[3]``: the weight, label and base-probability sums of every row written,
        true units (the state's ``totals_row``)."""
        return tf.gather(self.sketch, self.totals_row) * self.scale

    def recent_totals(self) -> tf.Tensor:
        """float32 ``[3]``: ``totals`` forgotten at ``recent_half_life`` (zeros without recent
        tables)."""
        if not self.recent_groups:
            return tf.zeros([3])
        return tf.gather(self.sketch, self.recent_totals_row) * self.recent_scale

    def total_weight(self) -> tf.Tensor:
        """The weight of every row written, true units, as of the last write, merge, restore
        or decay (a variable those set while they hold the mutex, ``_locked``)."""
        self._require_built()
        return self.written_weight.read_value()

    # -- writes ------------------------------------------------------------------------------

    def checked_write(self, hidden, labels, base_probs, sample_weight=None, ids=None) -> tuple:
        """``(keys, labels, base_probs, sample_weight)`` of a write by hidden vector and ids, every
        input checked before the keys are computed (``ErrorMemory.update``'s checks)."""
        hidden = v.as_hidden(hidden, self.dim)
        self._ensure_built(hidden)
        labels, base_probs, sample_weight = v.write_columns(labels, base_probs, sample_weight)
        with tf.control_dependencies(v.update_checks(hidden, labels, base_probs, sample_weight)):
            return self.keys(hidden, ids), labels, base_probs, sample_weight

    def update(self, hidden, labels, base_probs, sample_weight=None, ids=None,
               guard=None) -> tf.Tensor:
        """Writes labelled rows by hidden vector and ids (``ErrorMemory.update``); the tables
        only, not the trust sums (``ErrorCompensation.update_memory`` adds those)."""
        return self.write_keys(*self.checked_write(hidden, labels, base_probs, sample_weight, ids),
                               guard=guard)

    def checked_key_write(self, keys, labels, base_probs, sample_weight=None) -> tuple:
        """``(keys, labels, base_probs, sample_weight)`` of a write by keys, all checked (keys
        in their tables, labels and base probabilities in [0, 1], weights >= 0, one per row)."""
        keys = self.check_keys(keys)
        labels, base_probs, sample_weight = v.write_columns(labels, base_probs, sample_weight)
        checks = v.update_checks(None, labels, base_probs, sample_weight, reference=keys,
                                 reference_name="memory_keys")
        with tf.control_dependencies(checks):
            return tuple(tf.identity(t) for t in (keys, labels, base_probs, sample_weight))

    def update_by_keys(self, keys, labels, base_probs, sample_weight=None,
                       guard=None) -> tf.Tensor:
        """Writes rows by their ``keys`` (from ``keys`` or a ``predict``): no model, no hashing."""
        return self.write_keys(*self.checked_key_write(keys, labels, base_probs, sample_weight),
                               guard=guard)

    def write_keys(self, keys, labels, base_probs, sample_weight, trust_delta=None,
                   guard=None) -> tf.Tensor:
        """Adds ``(w, w*y, w*y_base)`` at every row's T buckets, and ``trust_delta`` (curvature
        ``[F, F]``, moment ``[F]``) to the combiner's sums, one write at a time (``_locked``).
        Inputs must be checked already. ``guard``: a callable run in the lock before the write,
        returning a scalar bool; when false nothing is written and 0 returned (``_mutex.when``:
        the export's exactly-once write ids)."""
        return self._locked(lambda: when(guard, lambda: self._write_keys(
            keys, labels, base_probs, sample_weight, trust_delta),
            after=[keys, labels, base_probs, sample_weight]))

    def _locked(self, change, changes_state: bool = True):
        """Runs ``change()`` holding the memory's mutex; returns what it returns.
        ``changes_state=False`` for a read that must not straddle a write (``snapshot``).

        Cells are stored divided by their clock's scale, and a write reads the scale, moves it,
        adds, and may fold the rows back into true units (``_fold_if_due``). Two writes that
        interleave could add rows divided by a scale the other had just folded away (a weight
        10^6 times too large), or set a scale back after the other's fold, after which the
        combiner's sums no longer solve and every later write fails
        (``tests/test_exactly_once.py``); a snapshot taken across a fold would mix the two
        units. Writes, merges, restores and snapshots therefore take turns; reads do not wait.
        The mutex is an asynchronous kernel: a write that waits holds no thread.
        """
        def done_reads():
            # Reads of every variable a change may set, ordered after its writes (a function's
            # ops on one variable run in program order): the lock is held until they ran.
            if not changes_state:
                return []
            return [tf.gather(self.sketch, [0]), self.scale.read_value(),
                    self.recent_scale.read_value(), self.trust_solution.read_value(),
                    tf.gather(self.read_weights, [0]), self.read_offsets.read_value(),
                    self.written_weight.read_value()]

        # Locks are taken in the order of the function's earlier changes (a read of the state
        # runs after them): a later locked read never holds the mutex that an earlier change in
        # the same call waits for.
        return locked(self._mutex_name, change, after=[tf.gather(self.sketch, [0])],
                      held_for=done_reads)

    def _write_keys(self, keys, labels, base_probs, sample_weight, trust_delta) -> tf.Tensor:
        rows = tf.reduce_sum(tf.cast(sample_weight > 0, tf.float32))
        if self.half_life is not None:
            self.scale.assign(self.scale * tf.pow(0.5, rows / self.half_life))
        if self.recent_groups:
            self.recent_scale.assign(self.recent_scale * tf.pow(0.5, rows / self.recent_half_life))
        w = sample_weight
        values = tf.stack([w, w * labels, w * base_probs], axis=-1)  # [B, 3], true units
        # Every row goes to its T cells and to the totals row(s): [B, T + 1 or 2], each cell's
        # values divided by the scale its row is stored at.
        totals = [(self.totals_row, self.scale)]
        if self.recent_groups:
            totals.append((self.recent_totals_row, self.recent_scale))
        rows_of = tf.constant([[row for row, _ in totals]], tf.int32)
        cells = tf.concat([keys + self._offsets,
                           tf.tile(rows_of, [tf.shape(keys)[0], 1])], axis=1)
        scales = tf.concat([self._table_scales(), tf.stack([s for _, s in totals])], axis=0)
        cells = tf.reshape(cells, [-1])
        # [B, 3] @ [3, 3 (T + 1 or 2)]: every row's values over every cell's scale in one matmul,
        # exact (one non-zero term per sum); a broadcast divide of [B, 1, 3] by [1, T, 1] costs
        # ~40 us at B = 256.
        spread = tf.reshape(tf.eye(3)[:, None, :] / scales[None, :, None], [3, -1])
        values = tf.matmul(values, spread)  # [B, 3 (T + 1 or 2)]
        if self.srp_centre is not None:
            values -= self._srp_centring(keys, w)
        if any(self._each_columns):
            # An empty token slot (key 0 of a table keyed by tokens) writes nothing.
            each = tf.constant(self._each_columns + [False] * len(totals))
            keep = tf.logical_not(tf.logical_and(each, tf.equal(
                tf.pad(keys, [[0, 0], [0, len(totals)]], constant_values=1), 0)))
            values = values * tf.repeat(tf.cast(keep, tf.float32), 3, axis=1)
        values = tf.reshape(values, [-1, 3])
        # Then the combiner's sums: their forgetting and the rows' expansion, in the same add.
        trust_update = None
        if self.trust_half_life is not None and self.trust_half_life != self.half_life:
            trust_update = self._trust_forgetting(rows)
        if trust_delta is not None:
            flat = self._stored_trust_rows(*trust_delta)
            trust_update = flat if trust_update is None else trust_update + flat
        if trust_update is not None:
            cells = tf.concat([cells, self._trust_rows()], axis=0)
            values = tf.concat([values, trust_update], axis=0)
        batch = keys.shape[0]
        if batch is not None:
            (self._add_dense if batch >= self._dense_write_rows else self._scatter)(cells, values)
        else:
            tf.cond(tf.shape(keys)[0] >= self._dense_write_rows,
                    lambda: self._add_dense(cells, values), lambda: self._scatter(cells, values))
        if self.half_life is not None or self.recent_groups:
            self._fold_if_due()
        # The read weights follow the totals on every write; the trust moves with new sums and
        # with forgetting.
        self._refresh(trust=trust_delta is not None or self.half_life is not None
                      or bool(self.recent_groups) or self.trust_half_life is not None)
        return tf.reduce_sum(sample_weight)

    def _srp_centring(self, keys, weights) -> tf.Tensor:
        """What to take off a write's values ``[B, 3 (T + 1 or 2)]`` (as stored) to write its
        rows to the SRP tables net of ``srp_centre``'s residual: ``w * r`` at every SRP cell's
        label sum, ``r = (y - (1 + rho) b) / (c + n)`` read from the row's cell of the
        centring feature's table before the write, as every read of the combiner is (net of
        the stream's shift ``rho``, by which the SRP reads are netted again;
        ``n = _CENTRE_PRIOR``)."""
        column = self._centre_key_column
        cell = tf.gather(self.sketch, keys[:, column] + self._offsets[column]) * self.scale
        totals = tf.gather(self.sketch, self.totals_row) * self.scale
        rho = combiner.stream_shift(totals[1], totals[2])
        residual = (cell[:, 1] - (1.0 + rho) * cell[:, 2]) / (cell[:, 0] + _CENTRE_PRIOR)
        return (weights * residual)[:, None] * (self._srp_label_mask / self.scale)[None, :]

    def _trust_forgetting(self, rows) -> tf.Tensor:
        """What to add to the combiner's sums (as stored) to scale them by ``0.5 ** (rows /
        trust_half_life)`` in true units (the global ``scale`` has already applied the tables'
        half-life to them). Added, not assigned, so that a concurrent writer's sums are never
        overwritten."""
        keep = tf.pow(0.5, rows / self.trust_half_life)
        if self.half_life is not None:
            keep /= tf.pow(0.5, rows / self.half_life)
        return (keep - 1.0) * tf.gather(self.sketch, self._trust_rows())

    def _scatter(self, cells, values):
        """Adds ``values`` ``[N, 3]`` at the rows ``cells`` ``[N]`` of the state: O(T) per row.
        A row hit more than once (the totals row, by every row) is summed first (in row order),
        so that every cell gets one add: ``ResourceScatterAdd`` spreads large updates over
        threads, and with one add per cell the sums do not depend on their order. Half the time
        of ``scatter_nd_add``, whose CPU kernel adds one index at a time (docs/performance.md)."""
        unique, position = tf.unique(cells)
        sums = tf.math.unsorted_segment_sum(values, position, tf.size(unique))
        self.sketch.scatter_add(tf.IndexedSlices(sums, unique))
        return tf.no_op()

    def _add_dense(self, cells, values):
        """Same sum as ``_scatter``: per-cell totals, then one locked ``assign_add``."""
        delta = tf.math.unsorted_segment_sum(values, cells, self.num_state_rows)
        # Scatters leave the sketch in copy-on-read mode, where assign_add first copies the
        # whole table; switching back to copy-on-write skips that copy when nothing else holds it.
        with tf.control_dependencies([tf.raw_ops.DisableCopyOnRead(resource=self.sketch.handle)]):
            self.sketch.assign_add(delta)
        return tf.no_op()

    def _fold_if_due(self) -> None:
        """Folds a clock's rows into true units once its scale is below ``_MIN_SCALE``: all
        rows when the tables' clock is (then both scales restart at 1), else the recent rows
        alone when theirs is. Folding every row whenever the recent clock came due stalled a
        write by 10-28 ms every ~100,000 rows (a pass over the whole 25 MB state)."""
        recent = (lambda: tf.cond(self.recent_scale < _MIN_SCALE, self._fold_recent, tf.no_op)
                  ) if self.recent_groups else tf.no_op
        tf.cond(self.scale < _MIN_SCALE, self._fold_scale, recent)

    def _fold_scale(self):
        self.sketch.assign(self.sketch * self._row_scales()[:, None])
        self.scale.assign(1.0)
        self.recent_scale.assign(1.0)
        return tf.no_op()

    def _fold_recent(self):
        """The recent tables' cells and their totals row times their scale (each row once, so
        the by-row scatter is deterministic), and their scale back to 1."""
        start, end = self._recent_cells
        rows = tf.concat([tf.range(start, end), [self.recent_totals_row]], axis=0)
        self.sketch.scatter_mul(tf.IndexedSlices(
            tf.fill([end - start + 1, 3], self.recent_scale), rows))
        self.recent_scale.assign(1.0)
        return tf.no_op()

    def reset(self) -> None:
        """Forgets everything."""
        def forget():
            for variable in (self.sketch, self.trust_solution, self.read_weights,
                             self.read_offsets, self.written_weight):
                variable.assign(tf.zeros_like(variable))
            self.scale.assign(1.0)
            self.recent_scale.assign(1.0)

        self._locked(forget)

    def decay(self, factor) -> None:
        """Multiplies every stored weight by ``factor`` in (0, 1]."""
        factor = float(factor)
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"`factor` should be in (0, 1]. Received: factor={factor!r}")

        def forget():
            self.scale.assign(self.scale * factor)
            self.recent_scale.assign(self.recent_scale * factor)
            self._fold_if_due()
            self._refresh()

        self._locked(forget)

    # -- snapshots and merges ----------------------------------------------------------------

    def snapshot(self) -> tf.Tensor:
        """The whole state in true units, ``[num_state_rows, 3]``: the table cells, the totals
        row, then the combiner's sums. What ``restore`` and ``merge`` take. Taken between
        writes, never across one (``_locked``)."""
        self._require_built()
        return self._locked(lambda: self.sketch * self._row_scales()[:, None],
                            changes_state=False)

    def _check_state(self, state, delta: bool = False) -> tf.Tensor:
        state = tf.convert_to_tensor(state, tf.float32)
        expected = [self.num_state_rows, 3]
        if state.shape.is_fully_defined() and state.shape.as_list() != expected:
            raise ValueError(f"`state` must have shape {expected}. Received: shape={state.shape}")
        checks = [
            tf.debugging.assert_equal(tf.shape(state), tf.constant(expected),
                                      message=f"`state` must have shape {expected}"),
            tf.debugging.assert_all_finite(state, "`state` contains NaN or Inf"),
        ]
        with tf.control_dependencies(checks):
            weights = state[:self._first_trust_row, 0]
            if delta:
                # A delta may be negative where the other memory forgot (half-life decay
                # between two snapshots); what it leaves behind may not. The tolerance absorbs
                # float32 rounding of a difference of snapshots.
                rows = self._first_trust_row
                current = (tf.gather(self.sketch, tf.range(rows))[:, 0]
                           * self._row_scales(rows))
                weights = current + weights + 1e-3 * (tf.abs(current) + 1e-3)
                message = "`state` would leave negative weights (a delta larger than the memory)"
            else:
                message = "`state` has negative weights"
            with tf.control_dependencies([tf.debugging.assert_non_negative(weights, message)]):
                return tf.identity(state)

    def check_delta(self, state) -> tf.Tensor:
        """``state`` after checking that ``merge`` may add it: shape, finite values, and no
        bucket left with a negative weight."""
        return self._check_state(state, delta=True)

    def restore(self, state) -> None:
        """Replaces the sketch with ``state`` (from ``snapshot``)."""
        state = self._check_state(state)

        def replace():
            self.sketch.assign(state)
            self.scale.assign(1.0)
            self.recent_scale.assign(1.0)
            self._refresh()

        self._locked(replace)

    def merge(self, other, guard=None) -> tf.Tensor:
        """Adds another memory (an ``LSHErrorMemory``, a ``snapshot`` or a difference of two
        snapshots) with the same layout. A delta may hold negative values (what the other
        memory forgot) as long as no bucket's weight ends below zero.

        Merges and writes take turns (``_locked``), so a merge never loses a concurrent
        ``update`` (stored values are true values divided by ``scale``). Returns the weight
        added (the totals of ``other``); ``guard`` as in ``write_keys``, run after ``other`` is
        checked against the state.
        """
        if isinstance(other, LSHErrorMemory):
            mine, theirs = self.layout(), other.layout()
            if ({**mine, "seed": 0} != {**theirs, "seed": 0}) or other.dim != self.dim:
                raise ValueError("`other` must have the same num_tables, num_bits, id tables, "
                                 "id_bits, pooled groups and width d.")
            if mine["seed"] != theirs["seed"] or not bool(
                    tf.reduce_all(other.projections == self.projections)):
                raise ValueError("`other` must share this memory's projections and id hashes "
                                 "(same seed and d).")
            other = other.snapshot()

        def add():
            state = self.check_delta(other)  # checked against the state it is added to

            def apply():
                self.sketch.assign_add(state / self._row_scales()[:, None])
                self._refresh()
                return state[self.totals_row, 0]

            return when(guard, apply, after=[state])

        return self._locked(add)

    def layout(self) -> dict:
        """What two memories must share for their sketches to add up."""
        layout = {"num_tables": self.num_tables, "num_bits": self.num_bits, "seed": self.seed,
                  "id_tables": [list(t) for t in self.id_tables], "id_bits": self.id_bits,
                  "recent_tables": len(self.recent_groups), "id_hash": ID_HASH,
                  "pooled_groups": [list(g) for g in self.pooled_groups]}
        if self.srp_centre is not None:  # (absent otherwise: earlier releases' fingerprints hold)
            layout["srp_centre"] = self.srp_centre
        if self._each_features:  # how many tokens a row keys, and how they are separated
            layout["each"] = {"slots": EACH_SLOTS, "separator": EACH_SEPARATOR}
        return layout

    def get_config(self):
        config = super().get_config()
        config.update(num_tables=self.num_tables, num_bits=self.num_bits, seed=self.seed,
                      half_life=self.half_life, id_groups=[list(g) for g in self.id_groups],
                      id_bits=self.id_bits, trust_half_life=self.trust_half_life,
                      recent_groups=[list(g) for g in self.recent_groups],
                      recent_half_life=self.recent_half_life,
                      pooled_groups=[list(g) for g in self.pooled_groups],
                      srp_centre=self.srp_centre)
        return config
