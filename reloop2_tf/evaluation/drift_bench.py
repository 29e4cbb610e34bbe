"""The drift testbed: a seeded shift injected into the test stream, and how each method recovers.

Protocol (docs/drift.md). The log is split in time as in the streaming benchmark (first
``train_fraction`` of rows train the base model; the rest is the test stream in ``num_slots``
slots). The scenario starts at the first row of slot ``t0_slot`` and changes only rows from there
on (cold-start also removes its held-out items' earlier rows, training included). Every method
predicts each row before its label is revealed. Labels are revealed every ``window`` rows to the
memories, and after every slot to the model-updating methods (a training step per ``window``
rows is not what teams run). Metrics are computed per window of ``window`` rows and per slot.

The memories' settings are fixed, so the shift never leaks into tuning: the library's default
memory (its id groups found in the log, its trust learnt online), and for the paper's sketch
(``PAPER_DRIFT_MEMORY``) and the baselines what the ML-1M DCN benchmark chose on its own
validation stream, before any shift. Methods:

  static                     the base model;
  reloop2                    base + the default memory (SRP and id tables, self-tuning trust);
  reloop2-paper              base + the paper's sketch and read;
  item-bias, user-bias       per-key running residuals with the paper sketch's lambda, gamma,
                             prior_count;
  ftrl-offset                FTRL over the memory's id groups with the base logit as offset;
  incremental                one fine-tuning pass per revealed slot (learning rate 1e-4);
  incremental-hot            the same at learning rate 1e-3 (adapts harder to the newest slot);
  incremental+reloop2        both; each updated model takes over the memory as it stands;
  incremental-hot+reloop2    the same with the hot learning rate;
  periodic-retrain           from scratch on every revealed row every ``retrain_every`` slots.

Ablation rows (the default memory with one thing changed): feedback once per slot, no
centering of hidden vectors, no id tables, no SRP tables, no forgetting; and the item-bias
memory with its own validated settings.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from reloop2_tf.data import DataError, slots as split_slots
from reloop2_tf.evaluation import metrics, recovery
from reloop2_tf.evaluation.baselines import BiasMemory, FTRLOffset
from reloop2_tf.evaluation.benchmark import (BenchConfig, MemoryConfig, _check_frame,
                                             _cross_keys, _ftrl_groups, _incremental, _jsonable,
                                             _Probe, _sigmoid, _Stream, _train, ablations,
                                             encode_logits, spec_for_frame)
from reloop2_tf.evaluation.benchmark import quick_config as benchmark_quick_config
from reloop2_tf.evaluation.plotting import plot_windows
from reloop2_tf.evaluation.scenarios import Scenario, get_scenario

logger = logging.getLogger(__name__)

# Chosen by `reloop2 bench --dataset ml-1m --model dcn` on its validation stream (docs/benchmarks.md).
PAPER_DRIFT_MEMORY = MemoryConfig(num_tables=128, num_bits=14, compensation_weight=0.9,
                                  temperature=10.0, gamma=0.0, prior_count=0.0,
                                  half_life=20_000.0, id_groups=[], self_tuning=False)
# The item-bias memory's and FTRL's own choices on that validation stream.
VALIDATED_ITEM_BIAS = BiasMemory(compensation_weight=0.3, gamma=1.0, prior_count=5.0)
VALIDATED_FTRL = FTRLOffset(alpha=0.02)
METHODS = ("static", "reloop2", "reloop2-paper", "item-bias", "user-bias", "ftrl-offset",
           "incremental", "incremental-hot", "incremental+reloop2", "incremental-hot+reloop2",
           "periodic-retrain")
ABLATIONS = ("reloop2 slot-feedback", "reloop2 no-center", "reloop2 no-ids", "reloop2 no-srp",
             "reloop2 no-forgetting", "item-bias validated")


@dataclass
class DriftConfig:
    """Everything a drift run depends on; written into results.json."""

    scenario: str
    bench: BenchConfig
    cohort: str | None = None
    t0_slot: int = 2
    window: int = 1000
    smooth: int = 5
    tolerance: float = 0.01
    steady_slots: int = 3
    hot_learning_rate: float = 1e-3
    retrain_every: int = 5
    methods: tuple = METHODS + ABLATIONS
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    paper: MemoryConfig = field(default_factory=lambda: replace(PAPER_DRIFT_MEMORY))
    ftrl: FTRLOffset = field(default_factory=lambda: replace(VALIDATED_FTRL))

    def validate(self) -> None:
        if not 1 <= self.t0_slot < self.bench.num_slots:
            raise ValueError(f"`--t0-slot` should be in [1, {self.bench.num_slots}) so that the test "
                             f"stream has rows before and after the shift. Received: {self.t0_slot}")
        if self.window < 10:
            raise ValueError(f"`--window` should be >= 10 rows. Received: {self.window}")
        if not 1 <= self.steady_slots <= self.bench.num_slots - self.t0_slot:
            raise ValueError(f"`steady_slots` should be in [1, {self.bench.num_slots - self.t0_slot}]")
        unknown = set(self.methods) - set(METHODS) - set(ABLATIONS)
        if unknown:
            raise ValueError(f"unknown method(s) {sorted(unknown)}; choose from {METHODS + ABLATIONS}")


def _shift(df: pd.DataFrame, config: DriftConfig):
    """Applies the scenario; returns the shifted frame, its train cut, slot sizes, t0 and onsets."""
    bench = config.bench
    n = len(df)
    cut = int(n * bench.train_fraction)
    sizes = [len(p) for p in split_slots(df.iloc[cut:], bench.num_slots)]
    edges = cut + np.cumsum([0, *sizes])
    t0 = int(edges[config.t0_slot])
    scenario = get_scenario(config.scenario, seed=bench.seed, cohort=config.cohort,
                            slot_rows=sizes[config.t0_slot])
    shifted, keep = scenario.apply(df, t0)
    kept_before = np.concatenate([[0], np.cumsum(keep)])  # rows kept before each original position
    new_edges = kept_before[edges]
    new_sizes = np.diff(new_edges).tolist()
    if min(new_sizes) < 1:
        raise DataError(f"the scenario leaves an empty slot (slot rows {new_sizes})")
    onsets = [int(kept_before[o]) for o in scenario.onsets(t0, n)]
    held = scenario.held_items(df, t0) if scenario.kind == "cold-start" else None
    return scenario, shifted, int(kept_before[cut]), new_sizes, onsets, held


def _periodic_retrain(base, train_df, test_df, spec, stream: _Stream, config: DriftConfig,
                      progress: bool) -> np.ndarray:
    """From scratch on every revealed row (training + test so far) every ``retrain_every`` slots."""
    model, probs = base, []
    for slot, (a, b) in enumerate(tqdm(stream.bounds(), desc="periodic-retrain",
                                       disable=not progress, leave=False)):
        if slot and slot % config.retrain_every == 0:
            model = _train(pd.concat([train_df, test_df.iloc[:a]]), spec, config.bench, False)
        probs.append(_sigmoid(encode_logits(model, stream.rows(a, b))))
    return np.concatenate(probs)


def _score(stream: _Stream, probs: np.ndarray, edges, onset_windows, reference: dict,
           config: DriftConfig) -> dict:
    """Per-slot (SPEC section 6), per-window and recovery figures of one method."""
    out = stream.summarize(probs)
    windows = recovery.window_metrics(stream.labels, probs, stream.groups, edges)
    out["windows"] = {k: windows[k].tolist() for k in ("auc", "gauc", "logloss")}
    out["recovery"], out["onsets"] = {}, []
    for i, onset in enumerate(onset_windows):
        stop = onset_windows[i + 1] if i + 1 < len(onset_windows) else len(windows["rows"])
        per_metric = {key: recovery.recovery(windows[key], windows["rows"], onset, stop=stop,
                                             reference=reference[key], tolerance=config.tolerance,
                                             smooth=config.smooth, higher_is_better=key != "logloss")
                      for key in ("auc", "gauc", "logloss")}
        if i == 0:
            out["recovery"] = per_metric
        out["onsets"].append(per_metric)
    steady_start = stream.bounds()[-config.steady_slots][0]
    steady = metrics.evaluate(stream.labels[steady_start:], probs[steady_start:],
                              stream.groups[steady_start:])
    out["steady_state"] = {k: steady[k] for k in ("auc", "gauc", "logloss", "rows")}
    return out


def add_won_back(results: dict) -> dict:
    """Adds, per method and metric, the share of static's shortfall below the no-shift reference
    won back by the end of the first shifted slot (its last ``smooth`` windows), over the second
    shifted slot (the first one a per-slot model update can serve) and over the steady-state
    slots. Works on a loaded results.json too."""
    config = results["config"]
    edges = np.asarray(results["windows"]["edges"])
    slot_edges = np.cumsum([0, *results["split"]["slot_rows"]])
    last = int(np.searchsorted(edges, slot_edges[config["t0_slot"] + 1], side="right")) - 1
    onset = results["windows"]["onset_windows"][0]
    first_slot = slice(max(onset, last - config["smooth"]), last)
    second_slot = slice(last, int(np.searchsorted(edges, slot_edges[config["t0_slot"] + 2],
                                                  side="right")) - 1)
    steady = slice(int(np.searchsorted(edges, slot_edges[-1 - config["steady_slots"]])), None)
    static, reference = results["methods"]["static"], results["reference"]["windows"]
    for m in results["methods"].values():
        m["won_back"] = {}
        for key in ("auc", "gauc", "logloss"):
            sign = -1.0 if key == "logloss" else 1.0  # lower logloss is better
            m["won_back"][key] = {
                name: recovery.won_back(sign * np.asarray(m["windows"][key], float),
                                        sign * np.asarray(static["windows"][key], float),
                                        sign * np.asarray(reference[key], float), part)
                for name, part in (("end_of_first_slot", first_slot), ("second_slot", second_slot),
                                   ("steady_state", steady))}
    return results


def run_drift(df: pd.DataFrame, config: DriftConfig, output_dir, progress: bool = True) -> dict:
    """Runs one scenario on one seed; writes results.json and windows.png into ``output_dir``."""
    started = time.time()
    _check_frame(df)
    config.bench.validate(len(df))
    config.validate()
    bench = config.bench
    bench.feedback_every, bench.sweep, bench.memory = config.window, False, config.memory
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    scenario, shifted, cut, sizes, onsets, held = _shift(df, config)
    spec = spec_for_frame(shifted, history_length=bench.history_length)
    train_df, test_df = shifted.iloc[:cut], shifted.iloc[cut:]
    test = _Stream(test_df, spec, bench.num_slots, sizes=sizes)
    onsets_in_test = [o - cut for o in onsets]
    edges = recovery.window_edges(0, onsets_in_test, len(test_df), config.window)
    onset_windows = [int(np.searchsorted(edges, o)) for o in onsets_in_test]
    cohort = (scenario.cohort_mask(test_df) if held is None else
              test_df["item_id"].astype(str).isin(held).to_numpy())  # cold-start: the held items
    original = df["label"].to_numpy()[cut:] if scenario.kind != "cold-start" else None

    config.memory.fit_to_log(shifted, train_df)
    base = _train(train_df, spec, bench, progress)
    probe = _Probe(base, spec, train_df, test, bench)
    history = (probe.warm_features, probe.warm_labels, probe.warm_windows)

    probs: dict[str, np.ndarray] = {}
    out = probe.replay(config.memory.layer(bench.seed), progress, "reloop2")
    probs["static"] = out["base_probability"]
    wanted = set(config.methods)
    if "reloop2" in wanted:
        probs["reloop2"] = out["probability"]
    m = config.memory
    switched_off = ablations(m)  # the streaming benchmark's, where the two testbeds share one
    variants = {"reloop2-paper": (config.paper, config.window),
                "reloop2 slot-feedback": (m, None),
                "reloop2 no-ids": (switched_off["reloop2 no-ids"], config.window),
                "reloop2 no-srp": (switched_off["reloop2 no-srp"], config.window),
                # The tables' forgetting only (the benchmark's also stops the combiner's).
                "reloop2 no-forgetting": (replace(m, half_life=None), config.window)}
    for name, (memory, every) in variants.items():
        if name in wanted and not (memory.num_tables or memory.id_groups):
            logger.warning("skipping %s: without its SRP tables or id groups the memory is empty",
                           name)
        elif name in wanted:
            probs[name] = probe.replay(memory.layer(bench.seed), progress, name,
                                       feedback=probe.feedback(every))["probability"]
    if "reloop2 no-center" in wanted:
        uncentred = _Probe(base, spec, train_df, test, replace(bench, center=False))
        probs["reloop2 no-center"] = uncentred.replay(m.layer(bench.seed), progress,
                                                      "reloop2 no-center")["probability"]
    warm_df, warm_base = probe.warm_df, _sigmoid(probe.warm_logits)
    p = config.paper
    same = BiasMemory(p.compensation_weight, p.gamma, p.prior_count)
    for name, key, bias in (("item-bias", "item_id", same), ("user-bias", "user_id", same),
                            ("item-bias validated", "item_id", VALIDATED_ITEM_BIAS)):
        if name in wanted:
            probs[name] = bias.replay(test_df[key].to_numpy(), probs["static"], test.labels,
                                      probe.windows, warm_df[key].to_numpy(), warm_base,
                                      history[1])
    if "ftrl-offset" in wanted:
        groups = _ftrl_groups(m.id_groups)
        probs["ftrl-offset"] = config.ftrl.replay(
            _cross_keys(test_df, groups), probs["static"], test.labels, probe.windows,
            _cross_keys(warm_df, groups), warm_base, history[1], probe.warm_windows)
    if "incremental" in wanted:
        probs["incremental"] = _incremental(base, test, bench, progress=progress)
    if "incremental-hot" in wanted:
        hot = replace(bench, incremental_learning_rate=config.hot_learning_rate)
        probs["incremental-hot"] = _incremental(base, test, hot, progress=progress)
    for name, learning_rate in (("incremental+reloop2", bench.incremental_learning_rate),
                                ("incremental-hot+reloop2", config.hot_learning_rate)):
        if name in wanted:
            probs[name] = _incremental(
                base, test, replace(bench, incremental_learning_rate=learning_rate),
                compensation=config.memory.layer(bench.seed), center=probe.center,
                history=history, progress=progress)
    if "periodic-retrain" in wanted:
        probs["periodic-retrain"] = _periodic_retrain(base, train_df, test_df, spec, test, config,
                                                      progress)

    # The no-shift reference: the static model scored on the unshifted labels; for cold-start,
    # where labels are unchanged but the model never saw the held-out items, a model trained on
    # the unshifted training rows.
    if scenario.kind == "cold-start":
        warm_model = _train(df.iloc[:int(len(df) * bench.train_fraction)], spec, bench, False)
        reference_probs, reference_labels = _sigmoid(encode_logits(warm_model, test.features)), test.labels
    else:
        reference_probs, reference_labels = probs["static"], original.astype(np.float32)
    reference = recovery.window_metrics(reference_labels, reference_probs, test.groups, edges)
    reference = {k: reference[k].tolist() for k in ("auc", "gauc", "logloss")}

    t0 = onsets_in_test[0]
    results = {
        "dataset": bench.dataset,
        "scenario": {**asdict(scenario), "t0_row": t0, "onset_rows": onsets_in_test,
                     "t0_timestamp": int(test_df["timestamp"].iloc[t0]),
                     "cohort_share_after_t0": float(cohort[t0:].mean()),
                     "labels_changed_after_t0": (None if original is None else
                                                 int((original[t0:] != test.labels[t0:]).sum())),
                     "positive_rate_before_t0": float(test.labels[:t0].mean()),
                     "positive_rate_after_t0": float(test.labels[t0:].mean())},
        "windows": {"edges": edges.tolist(), "onset_windows": onset_windows},
        "reference": {"what": ("a model trained with the held-out items" if scenario.kind ==
                               "cold-start" else "static on the unshifted labels"),
                      "windows": reference},
        "methods": {name: _score(test, p, edges, onset_windows, reference, config)
                    for name, p in probs.items()},
        "split": {"rows": len(shifted), "train_rows": cut, "test_rows": len(test_df),
                  "slot_rows": sizes},
        "config": _jsonable(asdict(config)),
        "seed": bench.seed,
    }
    add_won_back(results)
    results["wall_seconds"] = round(time.time() - started, 1)
    (output_dir / "results.json").write_text(json.dumps(_jsonable(results), indent=2))
    plot_windows(results, output_dir / "windows.png",
                 title=f"{bench.dataset} / {bench.model} / {config.scenario} (seed {bench.seed})")
    return results


def format_table(results: dict) -> str:
    """Per method: drop, recovery rows and regret of AUC, and the steady-state figures."""
    lines = [f"{'method':<26}{'AUC drop':>9}{'recov.rows':>11}{'regret':>9}"
             f"{'post AUC':>9}{'post gAUC':>10}{'logloss':>9}"]
    for name, m in results["methods"].items():
        r, s = m["recovery"]["auc"], m["steady_state"]
        rows = "never" if r["recovery_rows"] is None else str(r["recovery_rows"])
        lines.append(f"{name:<26}{100 * r['drop']:9.2f}{rows:>11}{100 * r['regret']:9.1f}"
                     f"{100 * s['auc']:9.2f}{100 * s['gauc']:10.2f}{s['logloss']:9.4f}")
    return "\n".join(lines)


def quick_config(config: DriftConfig) -> DriftConfig:
    """A few minutes on 2 cores for ML-100K: the benchmark's quick run (``quick_config``: one
    epoch, at most 5 slots, the full warm start), windows of 500 rows."""
    benchmark_quick_config(config.bench)
    config.t0_slot, config.window, config.smooth, config.steady_slots = 1, 500, 3, 2
    config.retrain_every = 3
    config.paper = replace(config.paper, num_tables=32, num_bits=10, half_life=5_000.0)
    return config


__all__ = ["DriftConfig", "Scenario", "run_drift", "format_table", "quick_config",
           "PAPER_DRIFT_MEMORY"]
