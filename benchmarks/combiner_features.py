"""``reloop2 bench`` with some of the self-tuning combiner's features switched off.

A feature held at zero on every row gets zero trust and leaves every other trust as it would be
without it (its row and column of the combiner's sums are zero; the ridge keeps the solve
regular), so this is the memory without that feature. It patches the read layout of the memory
(``LSHErrorMemory`` has no setting for it: a study, not a configuration), and also keeps the
paper sketch's and k-NN's sweeps to one point, as a study runs neither.

    python benchmarks/combiner_features.py --off base:item_id -- \
        bench --dataset ml-100k --model dcn --seeds 0,1,2 --methods static,reloop2,item-bias \
        --output runs/s10-off-base

Feature names (``feature_names``): ``srp``, ``resid:<group>`` (both shrinkages),
``base:<group>`` (a single-feature group's pooling of the base prediction towards the group's
mean one; ``base`` switches off every group's), ``recent:<group>``, ``temper`` (the centred base
logit) and ``bias``. docs/history/benchmarks.md, "What the combiner trades".
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from reloop2_tf.layers import combiner, lsh_memory  # noqa: E402


def feature_names(memory: lsh_memory.LSHErrorMemory) -> list[str]:
    """The combiner's features in ``trust_features`` order (``combiner.ReadLayout``)."""
    names = []
    for _ in (1, 10):  # the two shrinkages
        names += ["srp"] if memory.num_tables else []
        names += ["resid:" + "*".join(g) for g in memory.id_groups]
        names += ["base:" + "*".join(g) for g in memory.id_groups if g in memory.pooled_groups]
    names += ["recent:" + "*".join(g) for g in memory.recent_groups]
    return names + ["temper", "bias"]


def switch_off(off: set[str]) -> None:
    """Every memory built from now on reads the features named in ``off`` as zeros."""
    layout, features = combiner.ReadLayout.__init__, combiner.ReadLayout.features

    def init(self, memory):
        layout(self, memory)
        names = feature_names(memory)
        if len(names) != self.parts.shape[1]:
            raise AssertionError(f"{len(names)} names for {self.parts.shape[1]} features")
        self.keep = np.array([not (n in off or (n.startswith("base:") and "base" in off))
                              for n in names], np.float32)[:, None]

    def read(self, rows, prior_count):
        out = features(self, rows, prior_count)
        return out * self.keep if hasattr(self, "keep") else out  # built before: unchanged

    combiner.ReadLayout.__init__ = init
    combiner.ReadLayout.features = read


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--off", default="", help="comma-separated feature names")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then reloop2's arguments")
    args = parser.parse_args(argv)
    switch_off(set(filter(None, args.off.split(","))))
    from reloop2_tf.cli.main import main as reloop2

    return reloop2([a for a in args.bench_args if a != "--"] or ["--help"])


if __name__ == "__main__":
    sys.exit(main())
