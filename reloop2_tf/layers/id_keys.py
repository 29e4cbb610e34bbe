"""How rows become id keys: id groups, feature names with a suffix, and the hashing of ids.

``LSHErrorMemory`` keys its id tables with these (docs/core.md); the names and the constants are
part of a memory's ``layout``, so memories keyed another way never merge.
"""

from __future__ import annotations

import numpy as np

from reloop2_tf._keras import tf

# An odd 64-bit multiplier (2^64 / golden ratio) and an xorshift mix a table's features' hashes.
MIX = 0x9E3779B97F4A7C15
SHIFT = 31
# The scheme of the id keys; part of `layout`, so memories keyed another way never merge.
ID_HASH = "fingerprint64-mix64"
# A cross may name an id group's popularity, "<name>:popularity": the bucket
# floor(log2(1 + c)), at most POPULARITY_BUCKETS - 1, of the count c of that group's table in
# the row's bucket when the row is read (docs/core.md).
POPULARITY = ":popularity"
POPULARITY_BUCKETS = 16
# A cross may name a multi-valued feature, "<name>:each" (e.g. ("user_id", "genres:each")):
# its value lists tokens separated by EACH_SEPARATOR ("Comedy|Drama"), and the row keys one cell
# of the group's table per token, its first EACH_SLOTS tokens; the group is read pooled over
# them. Bucket 0 of such a table stands for "no token" and is never written (docs/core.md).
EACH = ":each"
EACH_SEPARATOR = "|"
EACH_SLOTS = 4


def normalize_id_groups(id_groups) -> tuple[tuple[str, ...], ...]:
    """``["item_id", ("user_id", "genre")]`` -> ``(("item_id",), ("user_id", "genre"))``."""
    if id_groups is None:
        return ()
    if isinstance(id_groups, str):
        raise ValueError("`id_groups` should be a list of feature names or tuples of names, e.g. "
                         f"['item_id', ('user_id', 'genre')]. Received: id_groups={id_groups!r}")
    groups = []
    for group in id_groups:
        names = (group,) if isinstance(group, str) else tuple(group)
        if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) < len(names):
            raise ValueError("every id group should be a feature name or a tuple of distinct names. "
                             f"Received: {group!r} in id_groups={id_groups!r}")
        groups.append(names)
    if len(set(groups)) < len(groups):
        raise ValueError(f"`id_groups` lists a group twice. Received: id_groups={id_groups!r}")
    return tuple(groups)


def long_id_tables(id_groups) -> tuple[tuple[str, ...], ...]:
    """The id tables a memory keyed by ``id_groups`` holds besides its recent copies: the groups,
    then the first feature of every cross that is not a group itself (a cross is read net of
    it). A table is named by its features joined with ``"*"`` (``LSHErrorMemory(id_bits=...)``)."""
    tables = list(normalize_id_groups(id_groups))
    for group in list(tables):
        if len(group) > 1 and group[:1] not in tables:
            tables.append(group[:1])
    return tuple(tables)


def popularity_of(name: str) -> str | None:
    """The group whose popularity ``name`` stands for (``"item_id:popularity"`` ->
    ``"item_id"``), or `None` for a plain feature name."""
    if name.endswith(POPULARITY) and len(name) > len(POPULARITY):
        return name[:-len(POPULARITY)]
    return None


def each_of(name: str) -> str | None:
    """The multi-valued feature whose every token ``name`` stands for (``"genres:each"`` ->
    ``"genres"``), or `None` for a plain feature name."""
    if name.endswith(EACH) and len(name) > len(EACH):
        return name[:-len(EACH)]
    return None


def split_tokens(strings) -> tf.Tensor:
    """string ``[B, EACH_SLOTS]``: the first tokens of every value (``EACH_SEPARATOR``
    between tokens, spaces around them stripped), padded with ``""``."""
    parts = tf.strings.split(strings, EACH_SEPARATOR)
    return tf.strings.strip(parts.to_tensor(default_value="", shape=[None, EACH_SLOTS]))


def as_id_strings(ids, name: str) -> tf.Tensor:
    """``ids[name]`` as string ``[B]`` (integers as their decimal strings), after checking its
    dtype and shape."""
    ids = tf.convert_to_tensor(ids)
    if ids.dtype != tf.string:
        if not ids.dtype.is_integer:
            raise ValueError(f"`ids[{name!r}]` must hold strings or integers. "
                             f"Received: dtype={ids.dtype.name}")
        ids = tf.strings.as_string(ids)
    if ids.shape.rank not in (None, 1, 2) or (ids.shape.rank == 2 and ids.shape[1] not in (None, 1)):
        raise ValueError(f"`ids[{name!r}]` must have shape [B] or [B, 1]. Received: shape={ids.shape}")
    return tf.reshape(ids, [-1])


def mix_keys(hashed, seeds, positions, id_bits) -> tf.Tensor:
    """int32 ``[len(seeds), B]``: the buckets of id key columns from ``hashed`` (uint64
    ``[R, B]``, one row per hashed feature). Column ``c`` starts from ``seeds[c]`` and mixes in,
    position by position, the row ``positions[j][c]`` of ``hashed`` (multiply-xorshift); its
    bucket is the key's top ``id_bits`` bits (an int, or one per column). All columns at once,
    whatever their number."""
    mix, shift = tf.constant(MIX, tf.uint64), tf.constant(SHIFT, tf.uint64)
    key = tf.constant(seeds, tf.uint64)[:, None]
    for rows in positions:
        key = tf.bitwise.bitwise_xor(key, tf.gather(hashed, rows))
        key = key * mix
        key = tf.bitwise.bitwise_xor(key, tf.bitwise.right_shift(key, shift))
    key = key * mix
    shifts = (64 - np.asarray(id_bits, np.int64)).astype(np.uint64)
    shifts = tf.constant(shifts if shifts.ndim == 0 else shifts[:, None], tf.uint64)
    return tf.cast(tf.bitwise.right_shift(key, shifts), tf.int32)


def transpose_keys(keys_t) -> tf.Tensor:
    """Bucket indices ``[T, B]`` -> ``[B, T]``.

    A float32 matmul by the ``T x T`` identity, exact because every bucket is below 2**24
    (``num_bits`` and ``id_bits`` are at most 24) and each sum has one non-zero term:
    ``tf.transpose`` of int32 ``[11, 1024]`` costs ~80 us on CPU, this ~25 us
    (docs/performance.md).
    """
    tables = keys_t.shape[0]
    # A constant identity when the table count is static (always, inside the memory): no
    # MatrixDiag and shape ops on every call.
    eye = (tf.constant(np.eye(tables, dtype=np.float32)) if tables is not None
           else tf.eye(tf.shape(keys_t)[0]))
    return tf.cast(tf.matmul(tf.cast(keys_t, tf.float32), eye, transpose_a=True), tf.int32)
