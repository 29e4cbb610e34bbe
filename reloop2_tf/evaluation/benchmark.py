"""Streaming benchmark on real time-ordered logs: static vs incremental vs ReLoop2 (SPEC 5–6).

Protocol. Rows are in time order. The base model trains on the first ``train_fraction`` of rows;
the rest is the test stream, cut into ``num_slots`` slots. Hyperparameters of the memories are
chosen on a validation stream from the training period only: a tuning model trains on the first
``train_fraction - validation_fraction`` rows and the next ``validation_fraction`` rows are
replayed. The test stream is never used for tuning. A self-tuning memory starts the test stream
with the combiner's sums the same memory learnt on the validation stream (``carry_trust``), as
a served memory would have learnt them from earlier traffic; its tables are warm-started from
the training tail. ``carry_trust=False`` starts the trust at zero.

Labels are revealed every ``feedback_every`` rows (1,000 by default, what serving does), once
per slot (``None``, the paper's protocol), or at the end of every ``feedback_seconds`` window
of the log's timestamps (what ``reloop2 feedback run --window-seconds`` does).

Methods, all from the same trained base model:
  static               the base model;
  reloop2              base + the default memory (SRP and id tables, self-tuning trust);
  reloop2-paper        base + the paper's sketch and read (64 x 12-bit SRP, lambda/gamma/tau);
  reloop2-knn          base + exact k-NN memory (the paper's read);
  incremental          one fine-tuning pass on each slot after it is revealed;
  incremental+reloop2  both; after each model update the new model takes over the memory as it
                       stands, as a served new version does (docs/serving.md, section 4);
  item-bias, user-bias per-key running residuals;
  ftrl-offset          FTRL-proximal logistic regression over the memory's id groups, with the
                       base logit as offset.
"""

from __future__ import annotations

import json
import logging
import math
import time
import weakref
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from reloop2_tf._keras import keras, tf
from reloop2_tf.data import DataError, id_bits_for_frame, id_groups_for_frame, slots as split_slots
from reloop2_tf.data.sides import token_slots
from reloop2_tf.evaluation import metrics
from reloop2_tf.evaluation.baselines import BiasMemory, FTRLOffset
from reloop2_tf.evaluation.plotting import plot_head_to_head, plot_slots, plot_sweeps
from reloop2_tf.evaluation.streaming import encode, memory_inputs, replay_encoded, warm_start
from reloop2_tf.evaluation.windows import feedback_chunks, feedback_windows
from reloop2_tf.features import FeatureSpec, SequenceFeature, SparseFeature, features_from_frame
from reloop2_tf.layers import ErrorCompensation, KNNErrorMemory, LSHErrorMemory
from reloop2_tf.layers.id_keys import each_of, long_id_tables, popularity_of
from reloop2_tf.models import build_model
from reloop2_tf.training import TrainingProgress, compile_model, make_dataset
from reloop2_tf.wrapper import ReLoop2Model, default_srp_centre

logger = logging.getLogger(__name__)

_LOGIT_FNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
METHODS = ("static", "reloop2", "reloop2-paper", "reloop2-knn", "incremental",
           "incremental+reloop2", "item-bias", "user-bias", "ftrl-offset")
BIAS_KEYS = {"item-bias": "item_id", "user-bias": "user_id"}
# The comparisons the claims rest on, besides every method against static: (reference, method),
# reported as the method's figures minus the reference's with paired intervals ("head_to_head"
# in results.json): the memory against each cheap baseline, and the incremental model with the
# memory against the memory alone (docs/benchmarks.md).
HEAD_TO_HEAD = (("item-bias", "reloop2"), ("user-bias", "reloop2"), ("ftrl-offset", "reloop2"),
                ("reloop2", "incremental+reloop2"), ("incremental", "incremental+reloop2"))
BIAS_GRID = [BiasMemory(lam, gamma, prior) for lam in (0.3, 0.6, 0.9) for gamma in (0.0, 1.0)
             for prior in (5.0, 20.0)]
FTRL_GRID = [FTRLOffset(alpha=a) for a in (0.01, 0.02, 0.05, 0.1)]


def ablations(memory: "MemoryConfig") -> dict[str, "MemoryConfig"]:
    """The default memory with one part switched off (or the bare user offset switched on)."""
    groups = [list(g) for g in memory.id_groups or []]
    out = {"reloop2 no-ids": replace(memory, id_groups=[]),
           "reloop2 no-srp": replace(memory, num_tables=0),
           "reloop2 no-crosses": replace(memory, id_groups=[g for g in groups if len(g) == 1]),
           "reloop2 fixed-trust": replace(memory, self_tuning=False),
           "reloop2 no-forgetting": replace(memory, half_life=None, trust_half_life=None,
                                            recent_groups=[]),
           "reloop2 no-recent": replace(memory, recent_groups=[]),
           "reloop2 no-pooling": replace(memory, pooled_groups=[]),
           "reloop2 no-srp-centre": replace(memory, centre_srp=False),
           "reloop2 slow-trust": replace(memory, trust_half_life=None),
           "reloop2 + user": replace(memory, id_groups=groups + [["user_id"]])}
    for g in groups:
        if len(g) > 1:
            out[f"reloop2 no-{'*'.join(g)}"] = replace(memory, id_groups=[h for h in groups if h != g])
    return out
# The default memory's structural settings picked on validation (its trust learns the rest).
DEFAULT_SWEEP_GRID = {"prior_count": [2.0, 5.0], "half_life": [20_000.0, 100_000.0, None]}
QUICK_DEFAULT_SWEEP_GRID = {"prior_count": [2.0, 5.0]}
# The paper's sketch, swept one parameter at a time, in this order, each at the others' current
# best. gamma and the shrinkage go first: with gamma = 1 the output leans on the neighbours'
# label average, and a lambda chosen under that setting flattens every later curve. lambda last.
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
    """The memory's and the compensation's settings (names from the paper); the defaults are
    the library's. ``id_groups=None`` means: the groups ``id_groups_for_frame`` finds in the log;
    ``id_bits=None``: the id tables sized to the training rows' keys (``id_bits_for_frame``), or
    the library's default for a config used alone (``fit_to_log`` fills both)."""

    num_tables: int = 4
    num_bits: int = 8
    half_life: float | None = 100_000.0
    id_groups: list | None = None
    id_bits: int | dict[str, int] | None = None
    trust_half_life: float | None = 20_000.0
    recent_groups: list | None = None
    recent_half_life: float = 5_000.0
    pooled_groups: list | None = None
    # The SRP tables' writes centred on the user when the memory holds the user's table
    # (``default_srp_centre``); `False`: the paper's plain residuals.
    centre_srp: bool = True
    compensation_weight: float = 1.0
    temperature: float = 1.0
    gamma: float = 0.0
    prior_count: float = 2.0
    self_tuning: bool = True

    def layer(self, seed: int) -> ErrorCompensation:
        id_bits = self.id_bits
        if isinstance(id_bits, dict):  # the log's sizes, for the tables these groups have
            names = {"*".join(t) for t in long_id_tables(self.id_groups or ())}
            id_bits = {name: bits for name, bits in id_bits.items() if name in names}
        memory = LSHErrorMemory(num_tables=self.num_tables, num_bits=self.num_bits, seed=seed,
                                half_life=self.half_life, id_groups=self.id_groups or (),
                                trust_half_life=self.trust_half_life,
                                recent_groups=self.recent_groups,
                                recent_half_life=self.recent_half_life,
                                pooled_groups=self.pooled_groups,
                                srp_centre=(default_srp_centre(self.id_groups or ())
                                            if self.centre_srp and self.num_tables else None),
                                **({} if id_bits is None else {"id_bits": id_bits}))
        return ErrorCompensation(memory, compensation_weight=self.compensation_weight,
                                 temperature=self.temperature, gamma=self.gamma,
                                 prior_count=self.prior_count, self_tuning=self.self_tuning)

    def fit_to_log(self, df: pd.DataFrame, train_df: pd.DataFrame) -> None:
        """Fills what the default memory reads off a log: its id groups from the columns of
        ``df`` and its id tables' size from the keys of the training rows ``train_df`` (never
        the test rows')."""
        if self.id_groups is None:
            self.id_groups = id_groups_for_frame(df)
        if self.id_bits is None:
            self.id_bits = id_bits_for_frame(train_df, self.id_groups)
            logger.info("id tables sized to the training rows' keys (bits): %s", self.id_bits)


def paper_memory() -> MemoryConfig:
    """The paper's configuration (``ErrorCompensation.paper()``), before the validation sweep."""
    return MemoryConfig(num_tables=64, num_bits=12, half_life=None, id_groups=[],
                        compensation_weight=0.5, temperature=1.0, gamma=1.0, prior_count=0.0,
                        self_tuning=False)


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
                                 temperature=self.temperature, gamma=self.gamma,
                                 self_tuning=False)


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
    feedback_every: int | None = 1000
    # Windows of this many seconds of the log's `timestamp` instead (feedback_every unused).
    feedback_seconds: float | None = None
    warm_start_rows: int = 20_000
    center_rows: int = 50_000
    hidden_layer: str = "hidden"
    center: bool = True
    history_length: int = 20
    sweep: bool = True
    carry_trust: bool = True
    # Settings of the default memory the user fixed (e.g. ``half_life`` from ``--half-life``):
    # the validation sweep leaves them as they are.
    fixed_memory: tuple[str, ...] = ()
    quick: bool = False
    seed: int = 0
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    paper: MemoryConfig = field(default_factory=paper_memory)
    knn: KNNConfig = field(default_factory=KNNConfig)
    model_kwargs: dict = field(default_factory=dict)
    bias: dict = field(default_factory=lambda: {name: BiasMemory() for name in BIAS_KEYS})
    ftrl: FTRLOffset = field(default_factory=FTRLOffset)

    def validate(self, rows: int) -> None:
        if not 0 < self.validation_fraction < self.train_fraction < 1:
            raise ValueError("need 0 < validation_fraction < train_fraction < 1. Received: "
                             f"{self.validation_fraction}, {self.train_fraction}")
        if self.warm_start_rows < 0:
            raise ValueError(f"`--warm-start-rows` should be >= 0. Received: {self.warm_start_rows}")
        if self.num_slots < 1:
            raise ValueError(f"`--slots` should be >= 1. Received: {self.num_slots}")
        if self.feedback_every is not None and self.feedback_every < 1:
            raise ValueError("`--feedback-every` should be a number of rows >= 1 or 'slot'. "
                             f"Received: {self.feedback_every}")
        if self.feedback_seconds is not None and not self.feedback_seconds > 0:
            raise ValueError("`--feedback-seconds` should be a number of seconds > 0. "
                             f"Received: {self.feedback_seconds}")
        test_rows = rows - int(rows * self.train_fraction)
        val_rows = int(rows * self.train_fraction) - int(rows * (self.train_fraction
                                                                  - self.validation_fraction))
        if min(test_rows, val_rows) < self.num_slots:
            raise DataError(f"{rows} rows leave {test_rows} test and {val_rows} validation rows: "
                            f"too few for {self.num_slots} non-empty slots")

    def feedback(self, sizes: list[int], times) -> np.ndarray:
        """The feedback windows (``windows.feedback_windows``) of rows cut into slots of
        ``sizes``, with timestamps ``times``."""
        return feedback_windows(sizes, self.feedback_every, times, self.feedback_seconds)


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
        self.times = df["timestamp"].to_numpy(np.float64)
        self.windows: np.ndarray | None = None  # window_groups, once the feedback is known

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
        out = {"auc": overall["auc"], "gauc": overall["gauc"], "logloss": overall["logloss"],
               "slots": per_slot}
        if self.windows is not None:
            out["gauc_window"] = metrics.gauc(self.labels, probs, self.windows)
        return out


def window_groups(users, windows) -> np.ndarray:
    """int ``[N]``: every row's (user, feedback window) group, ``windows`` from
    ``windows.feedback_windows``: the rows scored against one state of the memory, like the
    candidates of one served request. gAUC over these groups (``gauc_window``) is the order
    within them; plain gAUC pools a user's rows over the whole stream, where a correction that
    moves between windows also reorders a user's earlier rows against their later ones
    (docs/benchmarks.md)."""
    frame = pd.DataFrame({"user": np.asarray(users), "window": np.asarray(windows)})
    return frame.groupby(["user", "window"], sort=False).ngroup().to_numpy()


def _train(df: pd.DataFrame, spec: FeatureSpec, config: BenchConfig, progress: bool):
    keras.utils.set_random_seed(config.seed)
    model = build_model(config.model, spec, **config.model_kwargs)
    compile_model(model, config.learning_rate)
    data = make_dataset(df, spec, config.batch_size, shuffle=True, seed=config.seed)
    started = time.time()
    model.fit(data, epochs=config.epochs, verbose=0,
              callbacks=[TrainingProgress(f"train {config.model}")] if progress else [])
    logger.info("trained %s on %d rows in %.0f s", config.model, len(df), time.time() - started)
    return model


def _wrap(base: keras.Model, compensation: ErrorCompensation, center_features,
          config: BenchConfig) -> ReLoop2Model:
    model = ReLoop2Model(base, hidden_layer=config.hidden_layer, compensation=compensation)
    model.set_center(center_features)  # also builds the memory at the hidden width
    if not config.center:  # the ablation: hash raw (post-ReLU) hiddens
        model.memory.set_center(tf.zeros_like(model.memory.center))
    return model


def _encode_for(model: ReLoop2Model, features) -> tuple[np.ndarray, np.ndarray]:
    """Base logits and what the model's memory reads (keys for the sketch), for ``features``."""
    logits, hidden = encode(model, features)
    return logits, memory_inputs(model.memory, hidden, features)


def _warm_start(model: ReLoop2Model, features, labels, windows) -> None:
    """Writes already-revealed rows so that the memory does not start empty."""
    if len(labels):
        warm_start(model.compensation, *_encode_for(model, features), labels, windows)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    # The same float32 op as ErrorCompensation's base probability, so that lambda = 0 gives
    # back static exactly.
    return tf.sigmoid(np.asarray(logits, np.float32)).numpy()


def _score(stream: _Stream, probs: np.ndarray) -> tuple[float, float]:
    return (metrics.gauc(stream.labels, probs, stream.groups), metrics.auc(stream.labels, probs))


def _cross_keys(df: pd.DataFrame, groups) -> np.ndarray:
    """One column of joined id values per group, for ``FTRLOffset``; a group naming a
    multi-valued feature (``"genres:each"``) gives one column per token the memory keys (the
    first 4), `None` where a row has fewer (no feature)."""
    columns = []
    for group in groups:
        values = [df[group[0]].astype(str).to_numpy(object)]
        for name in group[1:]:
            if each_of(name):
                slots = token_slots(df[each_of(name)])
                values = [v + "\x1f" + t for v in values for t in slots]
                empty = [t == "" for t in slots]
            else:
                values = [v + "\x1f" + df[name].astype(str).to_numpy(object) for v in values]
        if len(values) > 1:
            values = [np.where(e, None, v) for v, e in zip(values, empty)]
        columns.extend(values)
    return np.stack(columns, 1)


def _ftrl_groups(groups) -> list:
    """The memory's id groups plus the bare first feature of every cross, as FTRL needs them
    (a cross alone would carry the user's offset the memory centres away). Crosses with a
    popularity bucket are left out: it is read off the memory's own counts."""
    out = [tuple(g) for g in groups if not any(popularity_of(n) for n in g)]
    for g in list(out):
        if len(g) > 1 and g[:1] not in out:
            out.append(g[:1])
    return out


class _Probe:
    """One base model over a stream and its warm rows, encoded once, for many memories."""

    def __init__(self, base, spec, history: pd.DataFrame, stream: _Stream, config: BenchConfig):
        self.base, self.stream, self.config = base, stream, config
        self.center = {k: v[-config.center_rows:]
                       for k, v in features_from_frame(history, spec).items()}
        warm = history.iloc[len(history) - min(config.warm_start_rows, len(history)):]
        self.warm_df = warm
        self.warm_features = features_from_frame(warm, spec)
        self.warm_labels = warm["label"].to_numpy(np.float32)
        self.windows, self.warm_windows = self.feedback(config.feedback_every)
        probe = _wrap(base, MemoryConfig(id_groups=[]).layer(config.seed), self.center, config)
        self.center_vector = probe.memory.center.numpy()
        self.logits, self.hidden = encode(probe, stream.features)
        self.warm_logits, self.warm_hidden = encode(probe, self.warm_features)
        self._inputs: dict = {}

    def feedback(self, feedback_every: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The feedback windows of the stream and of the warm rows: the config's, with
        ``feedback_every`` for its row count (`None`: once per slot)."""
        config = replace(self.config, feedback_every=feedback_every)
        return (config.feedback(self.stream.sizes, self.stream.times),
                config.feedback([len(self.warm_labels)], self.warm_df["timestamp"]))

    def replay(self, comp: ErrorCompensation, progress=False, desc="", trust_sums=None,
               feedback=None):
        """``comp`` warm-started, its combiner then set to ``trust_sums`` if given (the warm
        start's rows would otherwise age the sums), and replayed over the stream with the
        config's feedback windows (or ``feedback``, a ``self.feedback(...)`` pair); returns its
        output arrays."""
        windows, warm_windows = feedback or (self.windows, self.warm_windows)
        comp.memory.build(tf.TensorShape([None, self.hidden.shape[1]]))
        comp.memory.set_center(self.center_vector if self.config.center
                               else np.zeros_like(self.center_vector))
        layout = (json.dumps(comp.memory.layout()) if isinstance(comp.memory, LSHErrorMemory)
                  else "hidden") + str(self.config.center)
        # Keys depend only on the layout (and the centre), unless they read the memory's own
        # counts: then they are computed as the rows are served, by this memory.
        served = isinstance(comp.memory, LSHErrorMemory) and comp.memory.keys_read_state
        if served or layout not in self._inputs:
            self._inputs[layout] = (
                memory_inputs(comp.memory, self.warm_hidden, self.warm_features),
                memory_inputs(comp.memory, self.hidden, self.stream.features))
        warm_inputs, inputs = self._inputs[layout]
        warm_start(comp, self.warm_logits, warm_inputs, self.warm_labels, warm_windows)
        if trust_sums is not None:  # after the warm start, whose rows would age the sums
            comp.memory.set_trust_sums(*trust_sums)
        return replay_encoded(comp, self.logits, inputs, self.stream.labels, windows,
                              progress=progress, desc=desc)


def _config_key(config) -> str:
    """A settings dataclass as a key: equal settings, equal keys."""
    return json.dumps(asdict(config), sort_keys=True, default=str)


class _ValidationTrust:
    """The combiner's sums a memory learnt on the validation stream (one replay per memory
    setting), for the same memory on the test stream to start from (``carry_trust``)."""

    def __init__(self, probe: _Probe | None, seed: int):
        self.probe, self.seed = probe, seed
        self._learnt: dict[str, tuple] = {}

    def __call__(self, memory: MemoryConfig) -> tuple[np.ndarray, np.ndarray] | None:
        """``(curvature, moment)`` learnt by ``memory`` on the validation stream; `None`
        without a validation stream, or for a memory without a self-tuning combiner."""
        learnt = self._learn(memory)
        return None if learnt is None else learnt[:2]

    def trust(self, memory: MemoryConfig) -> list[float] | None:
        """The trust ``memory`` had learnt at the end of the validation stream."""
        learnt = self._learn(memory)
        return None if learnt is None else learnt[2].tolist()

    def keep(self, memory: MemoryConfig, comp: ErrorCompensation) -> None:
        """Records what ``comp`` (``memory``'s layer, just replayed over the validation stream
        by the sweep) learnt, so that it is not replayed again."""
        if self.probe is not None and memory.self_tuning:
            self._learnt[_config_key(memory)] = self._sums(comp)

    def _learn(self, memory: MemoryConfig):
        if self.probe is None or not memory.self_tuning:
            return None
        key = _config_key(memory)
        if key not in self._learnt:
            comp = memory.layer(self.seed)
            self.probe.replay(comp)
            self._learnt[key] = self._sums(comp)
        return self._learnt[key]


    @staticmethod
    def _sums(comp: ErrorCompensation) -> tuple:
        return (*(t.numpy() for t in comp.memory.trust_sums()), comp.memory.trust().numpy())


def _sweep(probe: _Probe, start, grid: dict, layer, seed_bar,
           learnt: _ValidationTrust | None = None) -> tuple[object, dict]:
    """One-at-a-time sweep on the validation stream: each parameter, at the others' current
    best, set to the value with the best validation gAUC (AUC breaks ties). ``learnt`` keeps
    what each candidate's combiner learnt. A candidate met again (the current best, in the
    next parameter's sweep) is scored once: a replay is deterministic."""
    best, curves, scores = start, {}, {}
    for name, values in grid.items():
        points = []
        for value in values:
            candidate = type(best)(**{**asdict(best), name: value})
            key = _config_key(candidate)
            if key not in scores:
                comp = layer(candidate)
                out = probe.replay(comp)
                if learnt is not None:
                    learnt.keep(candidate, comp)
                scores[key] = _score(probe.stream, out["probability"])
            g, a = scores[key]
            points.append({"value": value, "gauc": g, "auc": a})
            seed_bar.update()
        curves[name] = points
        choice = max(points, key=lambda p: (p["gauc"], p["auc"]))
        best = type(best)(**{**asdict(best), name: choice["value"]})
    return best, curves


def default_sweep_grid(config: BenchConfig) -> dict:
    """What validation chooses for the default memory: the grid, less what the user fixed."""
    grid = QUICK_DEFAULT_SWEEP_GRID if config.quick else DEFAULT_SWEEP_GRID
    return {name: values for name, values in grid.items() if name not in config.fixed_memory}


def sweep_memory(probe: _Probe, config: BenchConfig, progress: bool,
                 learnt: _ValidationTrust | None = None, methods: tuple[str, ...] = METHODS
                 ) -> tuple[MemoryConfig, MemoryConfig, KNNConfig, dict, FTRLOffset, dict]:
    """The validation sweeps on ``probe`` (the tuning model over the validation stream): the
    few structural settings of the default memory (``learnt`` keeps what each candidate's
    combiner learnt), always; the paper's Figs. 5–6 for the paper's sketch, the k-NN memory's
    and the baselines' own settings, each only if ``methods`` runs it (the others keep
    ``config``'s). The report holds the curves and choices of what was swept."""
    stream = probe.stream
    static = _score(stream, _sigmoid(probe.logits))
    quick = config.quick
    grids = {"default": default_sweep_grid(config),
             "paper": (QUICK_SWEEP_GRID if quick else SWEEP_GRID)
             if "reloop2-paper" in methods else {},
             "knn": KNN_GRID if "reloop2-knn" in methods and not quick else {}}
    bar = tqdm(total=sum(len(v) for g in grids.values() for v in g.values()),
               desc="sweep (validation)", disable=not progress)
    layer = lambda m: m.layer(config.seed)  # noqa: E731
    best, curves = _sweep(probe, config.memory, grids["default"], layer, bar, learnt)
    report = {"static": {"gauc": static[0], "auc": static[1]}, "reloop2": curves,
              "chosen": {"reloop2": asdict(best)}}
    paper, knn = config.paper, config.knn
    if grids["paper"]:
        paper, report["lsh"] = _sweep(probe, paper, grids["paper"], layer, bar)
        report["chosen"]["lsh"] = asdict(paper)
    if "reloop2-knn" in methods:
        if grids["knn"]:
            knn, report["knn"] = _sweep(probe, knn, grids["knn"], lambda k: k.layer(), bar)
        elif grids["paper"]:  # quick: the paper sketch's lambda
            knn = KNNConfig(**{**asdict(knn), "compensation_weight": paper.compensation_weight})
        report["chosen"]["knn"] = asdict(knn)
    bar.close()
    # The practitioner's baselines get the same treatment: chosen on validation.
    base_probs, warm_base = _sigmoid(probe.logits), _sigmoid(probe.warm_logits)
    warm = probe.warm_df
    bias_best = dict(config.bias)
    for name, key in BIAS_KEYS.items():
        if name not in methods:
            continue
        points = []
        for candidate in BIAS_GRID:
            probs = candidate.replay(stream.df[key].to_numpy(), base_probs, stream.labels,
                                     probe.windows, warm[key].to_numpy(), warm_base,
                                     probe.warm_labels)
            g, a = _score(stream, probs)
            points.append({"value": asdict(candidate), "gauc": g, "auc": a})
        report.setdefault("bias", {})[name] = points
        bias_best[name] = BiasMemory(**max(points, key=lambda p: (p["gauc"], p["auc"]))["value"])
        report["chosen"][name] = asdict(bias_best[name])
    ftrl = config.ftrl
    if "ftrl-offset" in methods:
        groups = _ftrl_groups(best.id_groups)
        points = []
        for candidate in FTRL_GRID:
            probs = candidate.replay(_cross_keys(stream.df, groups), base_probs, stream.labels,
                                     probe.windows, _cross_keys(warm, groups), warm_base,
                                     probe.warm_labels, probe.warm_windows)
            g, a = _score(stream, probs)
            points.append({"value": asdict(candidate), "gauc": g, "auc": a})
        ftrl = FTRLOffset(**max(points, key=lambda p: (p["gauc"], p["auc"]))["value"])
        report["ftrl"] = points
        report["chosen"]["ftrl-offset"] = asdict(ftrl)
    logger.info("validation: static gAUC %.4f; chosen %s", static[0], report["chosen"])
    return best, paper, knn, bias_best, ftrl, report


def _fine_tune(model: keras.Model, features, labels, config: BenchConfig) -> None:
    data = tf.data.Dataset.from_tensor_slices((features, labels))
    data = data.shuffle(len(labels), seed=config.seed).batch(config.batch_size)
    model.fit(data, epochs=1, verbose=0)


def _copy(base: keras.Model, config: BenchConfig) -> keras.Model:
    clone = keras.models.clone_model(base)
    clone.set_weights(base.get_weights())
    return compile_model(clone, config.incremental_learning_rate)


def _incremental(base, stream: _Stream, config: BenchConfig, compensation=None, center=None,
                 history=None, progress=False, trust_sums=None) -> np.ndarray:
    """Incremental fine-tuning, optionally with a memory that every updated model takes over
    (its combiner starting from ``trust_sums``, if given; ``history``: the warm rows' features,
    labels and feedback windows)."""
    model = _copy(base, config)
    wrapped = None
    windows = config.feedback(stream.sizes, stream.times)
    if compensation is not None:
        wrapped = _wrap(model, compensation, center, config)
        _warm_start(wrapped, *history)
        if trust_sums is not None:
            wrapped.memory.set_trust_sums(*trust_sums)
    probs = []
    desc = "incremental" + ("+reloop2" if wrapped else "")
    for a, b in tqdm(stream.bounds(), desc=desc, disable=not progress, leave=False):
        feats, labels = stream.rows(a, b), stream.labels[a:b]
        if wrapped is None:
            logits = encode_logits(model, feats)
            probs.append(_sigmoid(logits))
        else:
            out = replay_encoded(wrapped.compensation, *_encode_for(wrapped, feats), labels,
                                 windows[a:b])
            probs.append(out["probability"])
        # The updated model takes over the memory as it stands, as a new version of the same
        # export does when it is served (docs/serving.md, section 4): an id's bucket does not move
        # with the weights, and the SRP tables' rows keyed in the previous hidden space age out
        # at the half-life. Rebuilding them from recent rows re-encoded by the new model lost
        # their history and cost up to 0.8 gAUC points (docs/benchmarks.md).
        _fine_tune(model, feats, labels, config)
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
    test.windows = window_groups(test.groups, config.feedback(test.sizes, test.times))

    config.memory.fit_to_log(df, train_df)
    sweep_report, learnt = None, _ValidationTrust(None, config.seed)
    if config.sweep:
        tuning_base = _train(df.iloc[:cut_val], spec, config, progress)
        validation = _Stream(df.iloc[cut_val:cut_train], spec, config.num_slots)
        validation_probe = _Probe(tuning_base, spec, df.iloc[:cut_val], validation, config)
        if config.carry_trust:
            learnt = _ValidationTrust(validation_probe, config.seed)
        (config.memory, config.paper, config.knn, config.bias, config.ftrl,
         sweep_report) = sweep_memory(validation_probe, config, progress, learnt, methods)
        plot_sweeps(sweep_report, output_dir / "sweeps.png")

    base = _train(train_df, spec, config, progress)
    probe = _Probe(base, spec, train_df, test, config)
    probs: dict[str, np.ndarray] = {}
    # Static is the base probability the memory's replay computes alongside its own output: the
    # very same tensor, so that lambda = 0 gives back static bit for bit.
    out = probe.replay(config.memory.layer(config.seed), progress, "reloop2",
                       learnt(config.memory))
    probs["static"] = out["base_probability"]
    if "reloop2" in methods:
        probs["reloop2"] = out["probability"]
    for name, layer in (("reloop2-paper", lambda: config.paper.layer(config.seed)),
                        ("reloop2-knn", config.knn.layer)):
        if name in methods:
            probs[name] = probe.replay(layer(), progress, name)["probability"]
    for name, memory in ablations(config.memory).items():
        if name in methods and not (memory.num_tables == 0 and not memory.id_groups):
            probs[name] = probe.replay(memory.layer(config.seed), progress, name,
                                       learnt(memory))["probability"]
    if "reloop2 no-centre" in methods:
        uncentred = _Probe(base, spec, train_df, test, replace(config, center=False))
        probs["reloop2 no-centre"] = uncentred.replay(
            config.memory.layer(config.seed), progress, "no-centre",
            learnt(config.memory))["probability"]
    warm_df, warm_base = probe.warm_df, _sigmoid(probe.warm_logits)
    for name, key in BIAS_KEYS.items():
        if name in methods:
            probs[name] = config.bias[name].replay(
                test_df[key].to_numpy(), probs["static"], test.labels, probe.windows,
                warm_df[key].to_numpy(), warm_base, probe.warm_labels)
    if "ftrl-offset" in methods:
        groups = _ftrl_groups(config.memory.id_groups)
        probs["ftrl-offset"] = config.ftrl.replay(
            _cross_keys(test_df, groups), probs["static"], test.labels, probe.windows,
            _cross_keys(warm_df, groups), warm_base, probe.warm_labels, probe.warm_windows)
    history = (probe.warm_features, probe.warm_labels, probe.warm_windows)
    if "incremental" in methods:
        probs["incremental"] = _incremental(base, test, config, progress=progress)
    if "incremental+reloop2" in methods:
        probs["incremental+reloop2"] = _incremental(
            base, test, config, compensation=config.memory.layer(config.seed),
            center=probe.center, history=history, progress=progress,
            trust_sums=learnt(config.memory))

    results = {
        "dataset": config.dataset,
        "methods": {name: test.summarize(p) for name, p in probs.items()},
        "lift_vs_static": {},
        "split": {"rows": n, "train_rows": cut_train, "tuning_train_rows": cut_val,
                  "validation_rows": cut_train - cut_val, "test_rows": n - cut_train,
                  "test_start_timestamp": int(test_df["timestamp"].iloc[0]),
                  "slot_rows": test.sizes,
                  # How many times labels were written over the test stream.
                  "feedback_windows": len(feedback_chunks(probe.windows, len(test.labels)))},
        "validation": sweep_report,
        # The trust the test memory started from (learnt on the validation stream), or None.
        "trust_from_validation": learnt.trust(config.memory),
        "config": _jsonable(asdict(config)),
        "seed": config.seed,
    }
    for name, p in probs.items():
        if name == "static":
            continue
        m = results["methods"][name]
        results["lift_vs_static"][name] = {
            **_difference(test, results["methods"], "static", name, probs, config.seed),
            "slots_ahead_of_incremental": (
                _slots_ahead(m, results["methods"]["incremental"])
                if "incremental" in results["methods"] and name != "incremental" else None),
        }
    results["head_to_head"] = {
        f"{name} vs {reference}": _difference(test, results["methods"], reference, name, probs,
                                              config.seed)
        for reference, name in HEAD_TO_HEAD if reference in probs and name in probs}
    if {"reloop2-paper", "reloop2-knn"} <= set(probs):  # the paper's sketch against exact k-NN
        knn_lift = results["lift_vs_static"]["reloop2-knn"]["gauc"]
        results["sketch_share_of_knn_gauc_lift"] = (
            results["lift_vs_static"]["reloop2-paper"]["gauc"] / knn_lift if knn_lift > 0
            else None)
    results["wall_seconds"] = round(time.time() - started, 1)
    (output_dir / "results.json").write_text(json.dumps(_jsonable(results), indent=2))
    plot_slots(results, output_dir / "slots.png",
               title=f"{config.dataset} / {config.model}: per-slot test metrics")
    if results["head_to_head"]:
        plot_head_to_head(results, output_dir / "head_to_head.png",
                          run=f"{config.dataset} / {config.model}")
    return results


def _difference(test, summaries: dict, reference: str, name: str, probs: dict,
                seed: int) -> dict:
    """``name``'s figures minus ``reference``'s on the test stream, each with its paired 95 %
    interval: gAUC by a user bootstrap, AUC by DeLong's, logloss by the per-row differences'."""
    a, b = probs[reference], probs[name]
    gauc, low, high = metrics.gauc_delta_ci(test.labels, a, b, test.groups, seed=seed)
    _, auc_low, auc_high = metrics.auc_delta_ci(test.labels, a, b)
    _, ll_low, ll_high = metrics.logloss_delta_ci(test.labels, a, b)
    ref, m = summaries[reference], summaries[name]
    return {"auc": m["auc"] - ref["auc"], "auc_ci95": [auc_low, auc_high],
            "gauc": gauc, "gauc_ci95": [low, high],
            "gauc_window": m["gauc_window"] - ref["gauc_window"],
            "logloss": m["logloss"] - ref["logloss"], "logloss_ci95": [ll_low, ll_high]}


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
    width = max(22, *(len(name) + 2 for name in results["methods"]))
    lines = [f"{'method':<{width}}{'AUC':>8}{'gAUC':>8}{'logloss':>9}{'ΔAUC':>8}"
             f"{'ΔAUC 95% CI':>18}{'ΔgAUC':>8}{'ΔgAUC 95% CI':>18}{'ΔgAUCw':>9}"]
    for name, m in results["methods"].items():
        lift = results["lift_vs_static"].get(name)
        extra = (f"{100 * lift['auc']:+8.2f}"
                 f"   [{100 * lift['auc_ci95'][0]:+.2f}, {100 * lift['auc_ci95'][1]:+.2f}]"
                 f"{100 * lift['gauc']:+8.2f}"
                 f"   [{100 * lift['gauc_ci95'][0]:+.2f}, {100 * lift['gauc_ci95'][1]:+.2f}]"
                 + (f"{100 * lift['gauc_window']:+9.2f}" if "gauc_window" in lift else "")
                 if lift else "")
        lines.append(f"{name:<{width}}{100 * m['auc']:8.2f}{100 * m['gauc']:8.2f}"
                     f"{m['logloss']:9.4f}{extra}")
    pairs = results.get("head_to_head", {})
    if pairs:
        width = max(len(pair) for pair in pairs) + 2
        lines += ["", "head to head (the first method minus the second, paired 95 % intervals)",
                  f"{'':<{width}}{'ΔAUC':>8}{'ΔAUC 95% CI':>18}{'ΔgAUC':>8}{'ΔgAUC 95% CI':>18}"
                  f"{'Δlogloss':>10}{'Δlogloss 95% CI':>22}"]
        for pair, d in pairs.items():
            lines.append(f"{pair:<{width}}{100 * d['auc']:+8.2f}"
                         f"   [{100 * d['auc_ci95'][0]:+.2f}, {100 * d['auc_ci95'][1]:+.2f}]"
                         f"{100 * d['gauc']:+8.2f}"
                         f"   [{100 * d['gauc_ci95'][0]:+.2f}, {100 * d['gauc_ci95'][1]:+.2f}]"
                         f"{d['logloss']:+10.4f}"
                         f"   [{d['logloss_ci95'][0]:+.4f}, {d['logloss_ci95'][1]:+.4f}]")
    return "\n".join(lines)


def quick_config(config: BenchConfig) -> BenchConfig:
    """A run of a few minutes on 2 cores (meant for ML-100K): one epoch, 5 slots, small sweeps.

    The memories and baselines start from the full protocol's warm rows: a warm start costs
    seconds, and 5,000 rows changed which method led on a log with a long history
    (docs/history/benchmarks.md, twenty-fourth session)."""
    config.quick = True
    config.epochs = 1
    config.num_slots = min(config.num_slots, 5)
    config.center_rows = 20_000
    config.knn = KNNConfig(**{**asdict(config.knn), "capacity": 10_000})
    return config
