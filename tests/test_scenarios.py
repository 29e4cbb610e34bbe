"""Scenarios change only rows at or after t0 and only their cohort; recovery metrics by hand."""

import numpy as np
import pandas as pd
import pytest

from reloop2_tf.data import DataError, load_dataset
from reloop2_tf.evaluation import recovery
from reloop2_tf.evaluation.scenarios import SCENARIOS, Scenario, get_scenario


@pytest.fixture(scope="module")
def log():
    return load_dataset("ml-100k").iloc[:30_000].reset_index(drop=True)


T0 = 18_000


def _unchanged(before: pd.DataFrame, after: pd.DataFrame, rows) -> None:
    pd.testing.assert_frame_equal(before.loc[rows].reset_index(drop=True),
                                  after.loc[rows].reset_index(drop=True))


@pytest.mark.parametrize("name", ["flip-sudden", "flip-gradual", "flip-users", "label-shift",
                                  "recurring"])
def test_label_scenarios_touch_only_the_cohort_from_t0(log, name):
    scenario = get_scenario(name, seed=3, slot_rows=2_000)
    shifted, keep = scenario.apply(log, T0)
    assert keep.all() and len(shifted) == len(log)
    pd.testing.assert_frame_equal(shifted.drop(columns="label"), log.drop(columns="label"))
    changed = shifted["label"].to_numpy() != log["label"].to_numpy()
    cohort = scenario.cohort_mask(log)
    assert not changed[:T0].any()
    assert not changed[~cohort].any()
    assert changed[T0:][cohort[T0:]].sum() > 50  # the shift is real
    if scenario.kind == "label-shift":  # positives subsampled: never a negative turned positive
        assert (log["label"].to_numpy()[changed] == 1).all()


def test_flip_rate_matches_probability_and_ramp(log):
    sudden = Scenario("s", "flip", cohort="genre=Drama", probability=0.8, seed=1)
    shifted, _ = sudden.apply(log, T0)
    cohort = sudden.cohort_mask(log)[T0:]
    rate = (shifted["label"].to_numpy()[T0:] != log["label"].to_numpy()[T0:])[cohort].mean()
    assert abs(rate - 0.8) < 0.03
    ramp = Scenario("g", "flip", probability=0.8, ramp_rows=10)
    np.testing.assert_allclose(ramp.strength(np.arange(T0 - 2, T0 + 12), T0),
                               [0, 0] + [0.08 * k for k in range(1, 11)] + [0.8, 0.8])
    recurring = Scenario("r", "flip", probability=0.5, period_rows=3)
    np.testing.assert_allclose(recurring.strength(np.arange(T0 - 1, T0 + 9), T0),
                               [0, .5, .5, .5, 0, 0, 0, .5, .5, .5])
    assert recurring.onsets(T0, T0 + 9) == [T0, T0 + 3, T0 + 6]


def test_recurring_is_off_between_periods(log):
    scenario = Scenario("r", "flip", cohort="genre=Drama", probability=1.0, period_rows=2_000)
    shifted, _ = scenario.apply(log, T0)
    changed = shifted["label"].to_numpy() != log["label"].to_numpy()
    cohort = scenario.cohort_mask(log)
    assert changed[T0:T0 + 2_000][cohort[T0:T0 + 2_000]].all()
    assert not changed[T0 + 2_000:T0 + 4_000].any()
    assert changed[T0 + 4_000:T0 + 6_000][cohort[T0 + 4_000:T0 + 6_000]].all()


def test_cold_start_removes_only_held_items_before_t0(log):
    scenario = get_scenario("cold-start", seed=0)
    shifted, keep = scenario.apply(log, T0)
    held = set(log["item_id"][~keep])
    items_after = set(log["item_id"].iloc[T0:])
    assert held and held <= items_after
    chosen = scenario.held_items(log, T0)
    assert len(chosen) == round(0.2 * len(items_after)) and chosen <= items_after
    assert held == chosen & set(log["item_id"].iloc[:T0])  # exactly their earlier rows go
    assert keep[T0:].all()  # nothing at or after t0 is removed
    t0_new = int(keep[:T0].sum())
    assert not shifted["item_id"].iloc[:t0_new].isin(held).any()
    # Rows at or after t0 are untouched; earlier kept rows differ only by the held ids dropped
    # from their behaviour history.
    pd.testing.assert_frame_equal(shifted.iloc[t0_new:].reset_index(drop=True),
                                  log.iloc[T0:].reset_index(drop=True))
    kept_before = log.iloc[:T0][keep[:T0]].reset_index(drop=True)
    early = shifted.iloc[:t0_new].reset_index(drop=True)
    pd.testing.assert_frame_equal(early.drop(columns="history"), kept_before.drop(columns="history"))
    expected = [" ".join(i for i in h.split() if i not in held) for h in kept_before["history"]]
    assert early["history"].tolist() == expected
    assert not any(set(h.split()) & held for h in early["history"])


def test_scenarios_are_seeded(log):
    a, _ = get_scenario("flip-sudden", seed=5).apply(log, T0)
    b, _ = get_scenario("flip-sudden", seed=5).apply(log, T0)
    c, _ = get_scenario("flip-sudden", seed=6).apply(log, T0)
    pd.testing.assert_frame_equal(a, b)
    assert (a["label"] != c["label"]).any()


@pytest.mark.parametrize("kwargs,message", [
    ({"kind": "swap"}, "kind"),
    ({"kind": "flip", "probability": 1.5}, "probability"),
    ({"kind": "flip", "ramp_rows": -1}, "ramp_rows"),
    ({"kind": "flip", "period_rows": 0}, "period_rows"),
    ({"kind": "cold-start", "holdout_fraction": 1.0}, "holdout_fraction"),
    ({"kind": "flip", "cohort": "Drama"}, "column=value"),
])
def test_bad_scenarios_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Scenario("bad", **kwargs)


def test_bad_cohorts_and_t0_are_rejected(log):
    with pytest.raises(DataError, match="not in the log"):
        Scenario("x", "flip", cohort="mood=happy").apply(log, T0)
    with pytest.raises(DataError, match="matches no row"):
        Scenario("x", "flip", cohort="genre=Opera").apply(log, T0)
    with pytest.raises(ValueError, match="t0"):
        Scenario("x", "flip").apply(log, len(log))
    with pytest.raises(ValueError, match="unknown scenario"):
        get_scenario("meteor")
    assert set(SCENARIOS) >= {"flip-sudden", "flip-gradual", "label-shift", "cold-start", "recurring"}


def test_recovery_on_a_hand_made_curve():
    # Level 0.70 before the onset (window 3); drops to 0.60, climbs back; windows of 1,000 rows.
    curve = [0.70, 0.71, 0.69, 0.60, 0.62, 0.66, 0.695, 0.70, 0.70]
    rows = [1000] * 9
    r = recovery.recovery(curve, rows, onset=3)
    assert r["level"] == pytest.approx(0.70)
    assert r["drop"] == pytest.approx(0.10)
    assert r["low_window"] == 3
    assert r["recovery_rows"] == 4000  # back within 0.01 at the 4th shifted window (0.695)
    # Signed area: 0.10 + 0.08 + 0.04 + 0.005 + 0 + 0, per 1,000 rows.
    assert r["regret"] == pytest.approx(0.225)
    # Smoothing over 2 windows: means 0.60, 0.61, 0.64, 0.6775, 0.6975 -> back at the 5th.
    assert recovery.recovery(curve, rows, onset=3, smooth=2)["recovery_rows"] == 5000
    # Never back within one point; a drop inside the tolerance counts as no drop at all.
    assert recovery.recovery([0.7, 0.7, 0.6, 0.6], [10] * 4, onset=2)["recovery_rows"] is None
    assert recovery.recovery([0.7, 0.7, 0.695, 0.692], [10] * 4, onset=2)["recovery_rows"] == 0
    # Logloss: higher is worse, so a rise is the drop.
    up = recovery.recovery([0.50, 0.50, 0.60, 0.505], [1000] * 4, onset=2, higher_is_better=False)
    assert up["level"] == pytest.approx(0.50) and up["drop"] == pytest.approx(0.10)
    assert up["recovery_rows"] == 2000 and up["regret"] == pytest.approx(0.105)
    with pytest.raises(ValueError, match="onset"):
        recovery.recovery(curve, rows, onset=0)


def test_recovery_against_a_drifting_reference():
    # The reference slides down by a point per window; the method tracks it 5 points below from
    # the onset, then 3, then 0.5: back within one point at the third shifted window.
    reference = [0.80, 0.79, 0.78, 0.77, 0.76, 0.75]
    curve = [0.80, 0.79, 0.73, 0.74, 0.755, 0.75]
    r = recovery.recovery(curve, [1000] * 6, onset=2, reference=reference)
    assert r["drop"] == pytest.approx(0.05) and r["low_window"] == 2
    assert r["recovery_rows"] == 3000
    assert r["regret"] == pytest.approx(0.05 + 0.03 + 0.005 + 0.0)
    assert r["level"] == pytest.approx(np.mean(reference[2:]))
    # Against the flat pre-shift level (0.795) the same curve would never count as recovered.
    assert recovery.recovery(curve, [1000] * 6, onset=2)["recovery_rows"] is None


def test_window_edges_restart_at_every_onset():
    # A 400-row remainder before the onset joins the window before it; 800 rows stand alone.
    np.testing.assert_array_equal(recovery.window_edges(0, [2400], 5200, 1000),
                                  [0, 1000, 2400, 3400, 4400, 5200])
    np.testing.assert_array_equal(recovery.window_edges(0, [2000, 4000], 6000, 1000),
                                  [0, 1000, 2000, 3000, 4000, 5000, 6000])
    with pytest.raises(ValueError, match="window"):
        recovery.window_edges(0, [10], 20, 0)


def test_won_back_share_by_hand():
    static = [0.70, 0.60, 0.60, 0.64]
    method = [0.70, 0.65, 0.68, 0.70]
    # Over windows 1-2 static averages 0.60 (loss 0.10 below 0.70), the method 0.665: 65 % back.
    assert recovery.won_back(method, static, 0.70, slice(1, 3)) == pytest.approx(0.65)
    assert recovery.won_back(static, static, 0.70, slice(1, 3)) == 0.0
    assert np.isnan(recovery.won_back(method, static, 0.70, slice(0, 1)))
