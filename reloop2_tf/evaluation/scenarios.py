"""Controlled shifts injected into a real time-ordered log (the drift testbed).

A :class:`Scenario` changes a canonical frame only from a row position ``t0`` on (the shift's
onset, in time order) and only inside its cohort. Every random draw comes from ``seed``, so a
scenario is the same shift for every method and every rerun.

Kinds:
  ``flip``         concept drift: in the cohort, each label is inverted with ``probability``.
                   ``ramp_rows`` > 0 ramps the probability linearly from 0 over that many rows
                   (gradual); ``period_rows`` switches the shift on and off every that many rows
                   (recurring: on, off, on, ...).
  ``label-shift``  the base rate moves: in the cohort each positive becomes negative with
                   ``probability`` (``promote=True``: each negative becomes positive).
  ``cold-start``   a seeded ``holdout_fraction`` of the items seen from t0 on loses every row
                   before t0 (training included) and is removed from earlier behaviour
                   histories, so those items are first seen after t0.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from reloop2_tf.data import DataError

KINDS = ("flip", "label-shift", "cold-start")


@dataclass(frozen=True)
class Scenario:
    """One seeded shift. See the module docstring for the kinds.

    Args:
        name: the name used by ``reloop2 bench --scenario``.
        kind: "flip", "label-shift" or "cold-start".
        cohort: ``"column=value"`` (for example ``"genre=Drama"``), or `None` for every row.
        probability: per-row probability of the change once the shift is fully on.
        ramp_rows: rows over which a flip ramps up from 0 (0 = sudden).
        period_rows: a flip is on for this many rows, then off as long, and so on (`None` = stays on).
        promote: for label-shift, turn negatives into positives instead of the reverse.
        holdout_fraction: for cold-start, the share of the items seen from t0 on that is held out.
        seed: the seed of every draw.
    """

    name: str
    kind: str
    cohort: str | None = None
    probability: float = 1.0
    ramp_rows: int = 0
    period_rows: int | None = None
    promote: bool = False
    holdout_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"`kind` should be one of {KINDS}. Received: kind={self.kind!r}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"`probability` should be in [0, 1]. Received: {self.probability!r}")
        if self.ramp_rows < 0:
            raise ValueError(f"`ramp_rows` should be >= 0. Received: {self.ramp_rows!r}")
        if self.period_rows is not None and self.period_rows < 1:
            raise ValueError(f"`period_rows` should be >= 1 or None. Received: {self.period_rows!r}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"`holdout_fraction` should be in (0, 1). Received: {self.holdout_fraction!r}")
        if self.cohort is not None and "=" not in self.cohort:
            raise ValueError(f"`cohort` should look like 'column=value'. Received: {self.cohort!r}")

    def with_seed(self, seed: int) -> "Scenario":
        return replace(self, seed=int(seed))

    def cohort_mask(self, df: pd.DataFrame) -> np.ndarray:
        """Rows of the cohort (every row when ``cohort`` is None)."""
        if self.cohort is None:
            return np.ones(len(df), bool)
        column, value = self.cohort.split("=", 1)
        if column not in df.columns:
            raise DataError(f"cohort column {column!r} is not in the log; columns: {list(df.columns)} "
                            "(pick a cohort with --cohort COLUMN=VALUE)")
        mask = df[column].astype(str).to_numpy() == value
        if not mask.any():
            raise DataError(f"cohort {self.cohort!r} matches no row; e.g. values "
                            f"{df[column].astype(str).value_counts().index[:5].tolist()}")
        return mask

    def onsets(self, t0: int, end: int) -> list[int]:
        """Row positions where the shift switches on or off (t0 first)."""
        if self.kind != "flip" or self.period_rows is None:
            return [t0]
        return list(range(t0, end, self.period_rows))

    def strength(self, positions: np.ndarray, t0: int) -> np.ndarray:
        """The change probability at each row position (0 before t0)."""
        since = positions - t0
        p = np.where(since >= 0, self.probability, 0.0)
        if self.kind == "flip" and self.ramp_rows:
            p = p * np.clip((since + 1) / self.ramp_rows, 0.0, 1.0)
        if self.kind == "flip" and self.period_rows is not None:
            p = p * ((np.maximum(since, 0) // self.period_rows) % 2 == 0)
        return p

    def held_items(self, df: pd.DataFrame, t0: int) -> set[str]:
        """For cold-start: the items held out (a seeded share of the cohort's items seen from t0)."""
        after = df["item_id"].iloc[t0:][self.cohort_mask(df)[t0:]]
        items = np.sort(after.astype(str).unique())
        count = max(1, int(round(self.holdout_fraction * len(items))))
        return set(np.random.default_rng(self.seed).choice(items, size=count, replace=False))

    def apply(self, df: pd.DataFrame, t0: int) -> tuple[pd.DataFrame, np.ndarray]:
        """The shifted frame and the boolean mask of the original rows it keeps.

        Only cold-start removes rows (the held-out items' rows before ``t0``); the other kinds keep
        every row and change labels at or after ``t0`` inside the cohort.
        """
        if not 0 <= t0 < len(df):
            raise ValueError(f"`t0` should be a row position in [0, {len(df)}). Received: t0={t0!r}")
        cohort = self.cohort_mask(df)
        out = df.copy()
        if self.kind == "cold-start":
            held = self.held_items(df, t0)
            is_held = df["item_id"].astype(str).isin(held).to_numpy()
            keep = ~(is_held & (np.arange(len(df)) < t0))
            if "history" in out.columns:
                before = np.arange(len(df)) < t0
                out.loc[before, "history"] = [
                    " ".join(i for i in str(h).split() if i not in held)
                    for h in out["history"].to_numpy()[before]]
            return out[keep].reset_index(drop=True), keep
        labels = df["label"].to_numpy().astype(np.int64)
        draw = np.random.default_rng(self.seed).random(len(df)) < self.strength(np.arange(len(df)), t0)
        change = draw & cohort
        if self.kind == "flip":
            labels = np.where(change, 1 - labels, labels)
        elif self.promote:
            labels = np.where(change & (labels == 0), 1, labels)
        else:
            labels = np.where(change & (labels == 1), 0, labels)
        out["label"] = labels.astype(df["label"].dtype)
        return out, np.ones(len(df), bool)


# The scenarios of docs/drift.md. Cohorts name MovieLens columns (genre = the first genre); pass
# another cohort for other logs. Ramps and periods are in test slots: ``get_scenario`` turns them
# into rows.
SCENARIOS = {
    "flip-sudden": Scenario("flip-sudden", "flip", cohort="genre=Drama", probability=0.8),
    "flip-gradual": Scenario("flip-gradual", "flip", cohort="genre=Drama", probability=0.8),
    "flip-users": Scenario("flip-users", "flip", cohort="age=18", probability=0.8),
    "label-shift": Scenario("label-shift", "label-shift", probability=0.5),
    "cold-start": Scenario("cold-start", "cold-start", holdout_fraction=0.2),
    "recurring": Scenario("recurring", "flip", cohort="genre=Drama", probability=0.8),
}
_IN_SLOTS = {"flip-gradual": {"ramp_rows": 2}, "recurring": {"period_rows": 2}}


def get_scenario(name: str, seed: int = 0, cohort: str | None = None,
                 slot_rows: int = 20_000) -> Scenario:
    """A named scenario with its seed; ramps and periods are set from the slot size in rows."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; choose one of {sorted(SCENARIOS)}")
    s = SCENARIOS[name]
    rows = {k: v * int(slot_rows) for k, v in _IN_SLOTS.get(name, {}).items()}
    return replace(s, seed=int(seed), cohort=cohort if cohort is not None else s.cohort, **rows)
