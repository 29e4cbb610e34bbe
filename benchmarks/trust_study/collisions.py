"""The replica's id tables with a hash's collisions: every key of a table gets a random bucket
of ``2**bits`` (the replica otherwise keeps every key apart), so a sizing rule for the id
tables can be judged over several hash draws instead of the one a TF run makes."""

from __future__ import annotations

import numpy as np

from reloop2_tf.layers.id_keys import long_id_tables
from trust_study.replica import Replica, Stream


class Hashed(Replica):
    """``Replica`` whose table ``t`` (a tuple of column names) holds ``2 ** bits_of(t)``
    buckets, each key in one drawn with ``seed``; a recent table shares its table's buckets."""

    def __init__(self, s: Stream, bits_of, seed: int = 0, **kwargs):
        super().__init__(s, **kwargs)
        rng = np.random.default_rng(seed)
        self.sizes = []
        for i, table in enumerate(long_id_tables(self.groups)):
            size = 2 ** int(bits_of(table))
            bucket = rng.integers(0, size, int(self.codes[i].max()) + 1)
            self.codes[i] = bucket[self.codes[i]]
            self.state[i] = np.zeros((size, 3))
            self.sizes.append(size)
        self.recent = [(i, np.zeros_like(self.state[i])) for i, _ in self.recent]
