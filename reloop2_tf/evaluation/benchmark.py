"""Streaming benchmark on real time-ordered logs: static vs incremental vs ReLoop2 (SPEC 5–6).

Protocol. Rows are in time order. The base model trains on the first ``train_fraction`` of rows;
the rest is the test stream, cut into ``num_slots`` slots. Hyperparameters of the memories are
chosen on a validation stream from the training period only: a tuning model trains on the first
``train_fraction - validation_fraction`` rows and the next ``validation_fraction`` rows are
replayed. The test stream is never used for tuning.

Methods, all from the same trained base model:
  static               the base model;
  reloop2              base + LSH sketch memory, written with every revealed label;
  reloop2-knn          base + exact k-NN memory;
  incremental          one fine-tuning pass on each slot after it is revealed;
  incremental+reloop2  both; after each model update the memory is rebuilt by re-encoding the
                       last ``rebuild_rows`` revealed rows with the new model.
"""

from __future__ import annotations

import json
import logging
import math
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from reloop2_tf._keras import keras, tf
from reloop2_tf.data import DataError, slots as split_slots
from reloop2_tf.evaluation import metrics
from reloop2_tf.evaluation.baselines import BiasMemory
from reloop2_tf.evaluation.plotting import plot_slots, plot_sweeps
from reloop2_tf.evaluation.streaming import encode, replay_encoded
from reloop2_tf.features import FeatureSpec, SequenceFeature, SparseFeature, features_from_frame
from reloop2_tf.layers import ErrorCompensation, KNNErrorMemory, LSHErrorMemory
from reloop2_tf.models import build_model
from reloop2_tf.training import compile_model, make_dataset
from reloop2_tf.wrapper import ReLoop2Model

logger = logging.getLogger(__name__)

_LOGIT_FNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
METHODS = ("static", "reloop2", "reloop2-knn", "incremental", "incremental+reloop2",
           "item-bias", "user-bias")
BIAS_KEYS = {"item-bias": "item_id", "user-bias": "user_id"}
BIAS_GRID = [BiasMemory(lam, gamma, prior) for lam in (0.3, 0.6, 0.9) for gamma in (0.0, 1.0)
             for prior in (5.0, 20.0)]
# Swept one parameter at a time, in this order, each at the others' current best. gamma and the
# shrinkage go first: with gamma = 1 the output leans on the neighbours' label average, and a
# lambda chosen under that setting flattens every later curve. lambda comes last.
SWEEP_GRID = {
    "gamma": [0.0, 0.5, 1.0],
    "prior_count": [0.0, 5.0, 20.0],
    "temperature": [0.1, 1.0, 10.0, math.inf],
    "num_tables": [16, 32, 64, 128],
    "num_bits": [6, 8, 10, 12, 14],
    "half_life": [None, 20_000.0, 100_000.0],
    "compensation_weight": [0.1, 0.3, 0.5, 0.7, 0.9, 1.0],
}
QUICK_SWEEP_GRID = {"gamma": [0.0, 1.0], "num_bits": [8, 12],
                    "compensation_weight": [0.3, 0.6, 0.9]}
KNN_GRID = {"gamma": [0.0, 1.0], "temperature": [0.1, 0.5],
            "compensation_weight": [0.3, 0.6, 0.9]}


@dataclass
class MemoryConfig:
    """The sketch's and the compensation's hyperparameters (names from the paper)."""

    num_tables: int = 64
    num_bits: int = 12
    compensation_weight: float = 0.5
    temperature: float = 1.0
    gamma: float = 1.0
    prior_count: float = 0.0
    half_life: float | None = None
    num_id_tables: int = 0
    id_dims: int = 0

    def layer(self, seed: int) -> ErrorCompensation:
        memory = LSHErrorMemory(num_tables=self.num_tables, num_bits=self.num_bits, seed=seed,
                                half_life=self.half_life, num_id_tables=self.num_id_tables,
                                id_dims=self.id_dims)
        return ErrorCompensation(memory, compensation_weight=self.compensation_weight,
                                 temperature=self.temperature, gamma=self.gamma,
                                 prior_count=self.prior_count)


@dataclass
class KNNConfig:
    capacity: int = 50_000
    top_k: int = 32
    temperature: float = 0.1
    compensation_weight: float = 0.5
    gamma: float = 1.0

    def layer(self) -> ErrorCompensation:
        return ErrorCompensation(KNNErrorMemory(capacity=self.capacity, top_k=self.top_k),
                                 compensation_weight=self.compensation_weight,
                                 temperature=self.temperature, gamma=self.gamma)


@dataclass
class BenchConfig:
    """Everything a run depends on; written into results.json."""

    dataset: str
    model: str = "dcn"
    num_slots: int = 10
    train_fraction: float = 0.8
    validation_fraction: float = 0.08
    epochs: int = 2
    batch_size: int = 512
    learning_rate: float = 1e-3
    incremental_learning_rate: float = 1e-4
    feedback_every: int | None = None
    warm_start_rows: int = 20_000
    rebuild_rows: int = 20_000
    center_rows: int = 50_000
    hidden_layer: str = "hidden"
    center: bool = True
    history_length: int = 20
    sweep: bool = True
    quick: bool = False
    seed: int = 0
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    knn: KNNConfig = field(default_factory=KNNConfig)
    model_kwargs: dict = field(default_factory=dict)
    bias: dict = field(default_factory=lambda: {name: BiasMemory() for name in BIAS_KEYS})

    def validate(self, rows: int) -> None:
        if not 0 < self.validation_fraction < self.train_fraction < 1:
            raise ValueError("need 0 < validation_fraction < train_fraction < 1. Received: "
                             f"{self.validation_fraction}, {self.train_fraction}")
        if self.num_slots < 1:
            raise ValueError(f"`--slots` should be >= 1. Received: {self.num_slots}")
        test_rows = rows - int(rows * self.train_fraction)
        val_rows = int(rows * self.train_fraction) - int(rows * (self.train_fraction
                                                                  - self.validation_fraction))
        if min(test_rows, val_rows) < self.num_slots:
            raise DataError(f"{rows} rows leave {test_rows} test and {val_rows} validation rows: "
                            f"too few for {self.num_slots} non-empty slots")


def _check_frame(df: pd.DataFrame) -> None:
    """Fails before any training when the log cannot be streamed."""
    missing = [c for c in ("user_id", "item_id", "timestamp", "label") if c not in df.columns]
    if missing:
        raise DataError(f"the log lacks the column(s) {missing}; columns: {list(df.columns)}")
    if df.empty:
        raise DataError("the log is empty")
    labels = pd.to_numeric(df["label"], errors="coerce")
    if labels.isna().any() or not labels.isin([0, 1]).all():
        raise DataError("`label` must be binary 0/1; found e.g. "
                        f"{df.loc[~labels.isin([0, 1]), 'label'].head(3).tolist()}")
    if not pd.api.types.is_numeric_dtype(df["timestamp"]) or df["timestamp"].isna().any():
        raise DataError("`timestamp` must be numeric and present in every row")
    if not df["timestamp"].is_monotonic_increasing:
        raise DataError("rows must be sorted by `timestamp` (use `reloop2 data prepare`)")


def spec_for_frame(df: pd.DataFrame, history_length: int = 20) -> FeatureSpec:
    """A feature spec for a canonical frame: every id/feature column hashed, plus ``history``.

    Bucket counts are twice the distinct values seen (at least 64), so collisions stay rare
    and ids that appear later fall into buckets the model has learnt to treat as "other".
    """
    skip = {"timestamp", "label", "history"}
    features = [SparseFeature(c, num_buckets=max(64, 2 * int(df[c].nunique())))
                for c in df.columns if c not in skip]
    if "history" in df.columns:
        features.append(SequenceFeature("history", max_length=history_length,
                                         share_embedding_with="item_id"))
    return FeatureSpec(features, target_item="item_id")


class _Stream:
    """A time-ordered slice of the log, cut into slots, with its model inputs."""

    def __init__(self, df: pd.DataFrame, spec: FeatureSpec, num_slots: int,
                 sizes: list[int] | None = None):
        self.df = df
        self.sizes = [len(p) for p in split_slots(df, num_slots)] if sizes is None else list(sizes)
        if sum(self.sizes) != len(df) or min(self.sizes) < 1:
            raise DataError(f"slot sizes {self.sizes} do not cut {len(df)} rows into non-empty slots")
        self.features = features_from_frame(df, spec)
        self.labels = df["label"].to_numpy(np.float32)
        self.groups = df["user_id"].to_numpy()

    def bounds(self):
        edges = np.cumsum([0, *self.sizes])
        return list(zip(edges[:-1], edges[1:]))

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: v[start:stop] for k, v in self.features.items()}

    def summarize(self, probs: np.ndarray) -> dict:
        per_slot = []
        for a, b in self.bounds():
            m = metrics.evaluate(self.labels[a:b], probs[a:b], self.groups[a:b])
            per_slot.append({k: m[k] for k in ("auc", "gauc", "logloss", "rows")})
        overall = metrics.evaluate(self.labels, probs, self.groups)
        return {"auc": overall["auc"], "gauc": overall["gauc"], "logloss": overall["logloss"],
                "slots": per_slot}


def _train(df: pd.DataFrame, spec: FeatureSpec, config: BenchConfig, progress: bool):
    keras.utils.set_random_seed(config.seed)
    model = build_model(config.model, spec, **config.model_kwargs)
    compile_model(model, config.learning_rate)
    data = make_dataset(df, spec, config.batch_size, shuffle=True, seed=config.seed)
    started = time.time()
    model.fit(data, epochs=config.epochs, verbose=1 if progress else 0)
    logger.info("trained %s on %d rows in %.0f s", config.model, len(df), time.time() - started)
    return model


def _wrap(base: keras.Model, compensation: ErrorCompensation, center_features,
          config: BenchConfig) -> ReLoop2Model:
    model = ReLoop2Model(base, hidden_layer=config.hidden_layer, compensation=compensation)
    model.set_center(center_features)  # also builds the memory at the hidden width
    if not config.center:  # the ablation: hash raw (post-ReLU) hiddens
        model.memory.set_center(tf.zeros_like(model.memory.center))
    return model


def _warm_start(model: ReLoop2Model, features, labels) -> None:
    """Writes already-revealed rows so that the memory does not start empty."""
    if len(labels):
        logits, hidden = encode(model, features)
        model.compensation.update_memory(logits, hidden, labels)


def _replay(compensation, encoded, stream: _Stream, feedback_every, progress, desc):
    logits, hidden = encoded
    out = replay_encoded(compensation, logits, hidden, stream.labels, stream.sizes,
                         feedback_every, progress=progress, desc=desc)
    return out["probability"]


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    # The same float32 op as ErrorCompensation's base probability, so that lambda = 0 gives
    # back static exactly.
    return tf.sigmoid(np.asarray(logits, np.float32)).numpy()


def _score(stream: _Stream, probs: np.ndarray) -> tuple[float, float]:
    return (metrics.gauc(stream.labels, probs, stream.groups), metrics.auc(stream.labels, probs))


def sweep_memory(base, spec, history: pd.DataFrame, stream: _Stream, config: BenchConfig,
                 progress: bool) -> tuple[MemoryConfig, KNNConfig, dict]:
    """One-at-a-time sweeps on the validation stream (the paper's Figs. 5–6).

    Each parameter is swept with the others at their current best, in the order of the grid,
    and set to the value with the best validation gAUC (AUC breaks ties).
    """
    center = {k: v[-config.center_rows:] for k, v in features_from_frame(history, spec).items()}
    warm = history.iloc[-config.warm_start_rows:]
    warm_features, warm_labels = features_from_frame(warm, spec), warm["label"].to_numpy(np.float32)
    probe = _wrap(base, config.memory.layer(config.seed), center, config)
    encoded = encode(probe, stream.features)
    warm_encoded = encode(probe, warm_features)
    static = _score(stream, _sigmoid(encoded[0]))

    def evaluate(comp: ErrorCompensation) -> tuple[float, float]:
        comp.memory.build(tf.TensorShape([None, encoded[1].shape[1]]))
        comp.memory.set_center(probe.memory.center)
        comp.update_memory(warm_encoded[0], warm_encoded[1], warm_labels)
        return _score(stream, _replay(comp, encoded, stream, config.feedback_every, False, ""))

    grid = QUICK_SWEEP_GRID if config.quick else SWEEP_GRID
    best = MemoryConfig(**asdict(config.memory))
    curves: dict[str, list] = {}
    total = sum(len(v) for v in grid.values())
    bar = tqdm(total=total, desc="sweep (validation)", disable=not progress)
    for name, values in grid.items():
        points = []
        for value in values:
            candidate = MemoryConfig(**{**asdict(best), name: value})
            g, a = evaluate(candidate.layer(config.seed))
            points.append({"value": value, "gauc": g, "auc": a})
            bar.update()
        curves[name] = points
        choice = max(points, key=lambda p: (p["gauc"], p["auc"]))
        best = MemoryConfig(**{**asdict(best), name: choice["value"]})
    bar.close()

    knn_best = KNNConfig(**asdict(config.knn))
    knn_curves: dict[str, list] = {}
    if not config.quick:
        bar = tqdm(total=sum(len(v) for v in KNN_GRID.values()), desc="k-NN sweep (validation)",
                   disable=not progress)
        for name, values in KNN_GRID.items():
            points = []
            for value in values:
                candidate = KNNConfig(**{**asdict(knn_best), name: value})
                g, a = evaluate(candidate.layer())
                points.append({"value": value, "gauc": g, "auc": a})
                bar.update()
            knn_curves[name] = points
            choice = max(points, key=lambda p: (p["gauc"], p["auc"]))
            knn_best = KNNConfig(**{**asdict(knn_best), name: choice["value"]})
        bar.close()
    else:
        knn_best = KNNConfig(**{**asdict(knn_best), "compensation_weight": best.compensation_weight})
    # The practitioner's baselines get the same treatment: chosen on validation.
    base_probs = _sigmoid(encoded[0])
    warm_base = _sigmoid(warm_encoded[0])
    bias_best, bias_curves = {}, {}
    for name, key in BIAS_KEYS.items():
        points = []
        for candidate in BIAS_GRID:
            probs = candidate.replay(stream.df[key].to_numpy(), base_probs, stream.labels,
                                     stream.sizes, config.feedback_every,
                                     warm[key].to_numpy(), warm_base, warm_labels)
            g, a = _score(stream, probs)
            points.append({"value": asdict(candidate), "gauc": g, "auc": a})
        bias_curves[name] = points
        bias_best[name] = BiasMemory(**max(points, key=lambda p: (p["gauc"], p["auc"]))["value"])
    report = {"static": {"gauc": static[0], "auc": static[1]}, "lsh": curves, "knn": knn_curves,
              "bias": bias_curves,
              "chosen": {"lsh": asdict(best), "knn": asdict(knn_best),
                         **{name: asdict(b) for name, b in bias_best.items()}}}
    logger.info("validation: static gAUC %.4f; chosen sketch %s; chosen k-NN %s",
                static[0], asdict(best), asdict(knn_best))
    return best, knn_best, bias_best, report


def _fine_tune(model: keras.Model, features, labels, config: BenchConfig) -> None:
    data = tf.data.Dataset.from_tensor_slices((features, labels))
    data = data.shuffle(len(labels), seed=config.seed).batch(config.batch_size)
    model.fit(data, epochs=1, verbose=0)


def _copy(base: keras.Model, config: BenchConfig) -> keras.Model:
    clone = keras.models.clone_model(base)
    clone.set_weights(base.get_weights())
    return compile_model(clone, config.incremental_learning_rate)


def _incremental(base, stream: _Stream, config: BenchConfig, compensation=None, center=None,
                 history=None, progress=False) -> np.ndarray:
    """Incremental fine-tuning, optionally with a memory rebuilt after each model update."""
    model = _copy(base, config)
    wrapped = None
    if compensation is not None:
        wrapped = _wrap(model, compensation, center, config)
        _warm_start(wrapped, *history)
    probs = []
    desc = "incremental" + ("+reloop2" if wrapped else "")
    for a, b in tqdm(stream.bounds(), desc=desc, disable=not progress, leave=False):
        feats, labels = stream.rows(a, b), stream.labels[a:b]
        if wrapped is None:
            logits = encode_logits(model, feats)
            probs.append(_sigmoid(logits))
        else:
            encoded = encode(wrapped, feats)
            out = replay_encoded(wrapped.compensation, *encoded, labels, [b - a],
                                 config.feedback_every)
            probs.append(out["probability"])
        _fine_tune(model, feats, labels, config)
        if wrapped is not None:
            # The hidden space moved with the weights: re-encode the latest revealed rows.
            recent_feats, recent_labels = _recent(history, stream, b, config.rebuild_rows)
            wrapped.reset_memory()
            _warm_start(wrapped, recent_feats, recent_labels)
    return np.concatenate(probs)


def encode_logits(model: keras.Model, features, batch_size: int = 4096) -> np.ndarray:
    """Base logits ``[N]`` of a plain (unwrapped) model."""
    n = len(next(iter(features.values())))
    fn = _LOGIT_FNS.get(model)
    if fn is None:
        fn = _LOGIT_FNS[model] = tf.function(lambda f: model(f, training=False),
                                             reduce_retracing=True)
    return np.concatenate([fn({k: v[s:s + batch_size] for k, v in features.items()}).numpy()
                           .reshape(-1) for s in range(0, n, batch_size)])


def _recent(history, stream: _Stream, stop: int, rows: int):
    """The last ``rows`` revealed rows: the training tail followed by the test rows before ``stop``."""
    hist_features, hist_labels = history
    take_test = min(stop, rows)
    take_hist = min(rows - take_test, len(hist_labels))
    feats = {k: np.concatenate([hist_features[k][len(hist_labels) - take_hist:],
                                stream.features[k][stop - take_test:stop]])
             for k in stream.features}
    labels = np.concatenate([hist_labels[len(hist_labels) - take_hist:],
                             stream.labels[stop - take_test:stop]])
    return feats, labels


def run_benchmark(df: pd.DataFrame, config: BenchConfig, output_dir, progress: bool = True,
                  methods: tuple[str, ...] = METHODS) -> dict:
    """Runs the protocol on a time-ordered canonical frame; writes results.json and PNGs."""
    started = time.time()
    _check_frame(df)
    config.validate(len(df))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    spec = spec_for_frame(df, history_length=config.history_length)
    n = len(df)
    cut_val, cut_train = int(n * (config.train_fraction - config.validation_fraction)), int(
        n * config.train_fraction)
    train_df, test_df = df.iloc[:cut_train], df.iloc[cut_train:]
    test = _Stream(test_df, spec, config.num_slots)  # fails on an empty slot before training

    sweep_report = None
    if config.sweep:
        tuning_base = _train(df.iloc[:cut_val], spec, config, progress)
        validation = _Stream(df.iloc[cut_val:cut_train], spec, config.num_slots)
        config.memory, config.knn, config.bias, sweep_report = sweep_memory(
            tuning_base, spec, df.iloc[:cut_val], validation, config, progress)
        plot_sweeps(sweep_report, output_dir / "sweeps.png")

    base = _train(train_df, spec, config, progress)
    center_df = train_df.iloc[-config.center_rows:]
    center = features_from_frame(center_df, spec)
    warm_df = train_df.iloc[-config.warm_start_rows:]
    history = (features_from_frame(warm_df, spec), warm_df["label"].to_numpy(np.float32))
    probs: dict[str, np.ndarray] = {}

    sketch = _wrap(base, config.memory.layer(config.seed), center, config)
    encoded = encode(sketch, test.features)
    # Static is the base probability the sketch replay computes alongside its own output: the
    # very same tensor, so that lambda = 0 gives back static bit for bit.
    _warm_start(sketch, *history)
    out = replay_encoded(sketch.compensation, *encoded, test.labels, test.sizes,
                         config.feedback_every, progress=progress, desc="reloop2")
    probs["static"] = out["base_probability"]
    if "reloop2" in methods:
        probs["reloop2"] = out["probability"]
    if "reloop2-knn" in methods:
        knn = _wrap(base, config.knn.layer(), center, config)
        _warm_start(knn, *history)
        probs["reloop2-knn"] = _replay(knn.compensation, encoded, test, config.feedback_every,
                                       progress, "reloop2-knn")
    for name, key in BIAS_KEYS.items():
        if name in methods:
            warm_base = _sigmoid(encode(sketch, history[0])[0])
            probs[name] = config.bias[name].replay(
                test_df[key].to_numpy(), probs["static"], test.labels, test.sizes,
                config.feedback_every, warm_df[key].to_numpy(), warm_base, history[1])
    if "incremental" in methods:
        probs["incremental"] = _incremental(base, test, config, progress=progress)
    if "incremental+reloop2" in methods:
        probs["incremental+reloop2"] = _incremental(
            base, test, config, compensation=config.memory.layer(config.seed), center=center,
            history=history, progress=progress)

    results = {
        "dataset": config.dataset,
        "methods": {name: test.summarize(p) for name, p in probs.items()},
        "lift_vs_static": {},
        "split": {"rows": n, "train_rows": cut_train, "tuning_train_rows": cut_val,
                  "validation_rows": cut_train - cut_val, "test_rows": n - cut_train,
                  "test_start_timestamp": int(test_df["timestamp"].iloc[0]),
                  "slot_rows": test.sizes},
        "validation": sweep_report,
        "config": _jsonable(asdict(config)),
        "seed": config.seed,
    }
    for name, p in probs.items():
        if name == "static":
            continue
        delta, low, high = metrics.gauc_delta_ci(test.labels, probs["static"], p, test.groups,
                                                 seed=config.seed)
        static_m, m = results["methods"]["static"], results["methods"][name]
        results["lift_vs_static"][name] = {
            "auc": m["auc"] - static_m["auc"], "gauc": delta, "gauc_ci95": [low, high],
            "logloss": m["logloss"] - static_m["logloss"],
            "slots_ahead_of_incremental": (
                _slots_ahead(m, results["methods"]["incremental"])
                if "incremental" in results["methods"] and name != "incremental" else None),
        }
    if {"reloop2", "reloop2-knn"} <= set(probs):
        knn_lift = results["lift_vs_static"]["reloop2-knn"]["gauc"]
        results["sketch_share_of_knn_gauc_lift"] = (
            results["lift_vs_static"]["reloop2"]["gauc"] / knn_lift if knn_lift > 0 else None)
    results["wall_seconds"] = round(time.time() - started, 1)
    (output_dir / "results.json").write_text(json.dumps(_jsonable(results), indent=2))
    plot_slots(results, output_dir / "slots.png",
               title=f"{config.dataset} / {config.model}: per-slot test metrics")
    return results


def _slots_ahead(method: dict, reference: dict) -> int:
    return int(sum(a["gauc"] > b["gauc"] for a, b in zip(method["slots"], reference["slots"])))


def _jsonable(value):
    """results.json must be strict JSON: infinities become the string "inf", NaN becomes null."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    if isinstance(value, np.integer):
        return int(value)
    return value


def format_table(results: dict) -> str:
    """The overall figures per method and the lift over static, as plain text."""
    lines = [f"{'method':<22}{'AUC':>8}{'gAUC':>8}{'logloss':>9}{'ΔAUC':>8}{'ΔgAUC':>8}"
             f"{'ΔgAUC 95% CI':>18}"]
    for name, m in results["methods"].items():
        lift = results["lift_vs_static"].get(name)
        extra = (f"{100 * lift['auc']:+8.2f}{100 * lift['gauc']:+8.2f}"
                 f"   [{100 * lift['gauc_ci95'][0]:+.2f}, {100 * lift['gauc_ci95'][1]:+.2f}]"
                 if lift else "")
        lines.append(f"{name:<22}{100 * m['auc']:8.2f}{100 * m['gauc']:8.2f}"
                     f"{m['logloss']:9.4f}{extra}")
    return "\n".join(lines)


def quick_config(config: BenchConfig) -> BenchConfig:
    """A run of a few minutes on 2 cores (meant for ML-100K): one epoch, 5 slots, small sweeps."""
    config.quick = True
    config.epochs = 1
    config.num_slots = min(config.num_slots, 5)
    config.warm_start_rows = config.rebuild_rows = 5_000
    config.center_rows = 20_000
    config.knn = KNNConfig(**{**asdict(config.knn), "capacity": 10_000})
    return config
