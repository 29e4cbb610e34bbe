"""Export a ``ReLoop2Model`` as one TF-Serving SavedModel with ``predict`` and ``update_memory``.

The signature, input and output names below are a contract (clients and dashboards depend on
them); ``tests/test_export.py`` pins them:

* ``serving_default`` and ``predict`` (the same function): one input per raw feature, named after
  the base model's ``keras.Input``; outputs ``probability``, ``base_probability``,
  ``estimated_error``, ``memory_support`` (each ``[B]``) and, for the sketch memory,
  ``memory_keys`` (int32 ``[B, T]``: the row's bucket in every table).
* ``update_memory``: the features plus ``label`` and ``sample_weight`` (float32 ``[B]``) and
  ``write_id`` (string scalar); outputs ``weight_written`` and ``memory_weight`` (float32
  scalars).
* ``update_memory_by_keys`` (sketch memory): ``memory_keys``, ``base_probability`` (as predict
  returned them), ``label``, ``sample_weight`` and ``write_id``; the same outputs. It runs no
  base model.
* ``memory_snapshot`` (no inputs): ``sketch`` (float32 ``[num_cells, 3]``, true units) and
  ``memory_weight``.
* ``memory_restore`` (``sketch`` in, replaces the memory): output ``memory_weight``.
  ``memory_merge`` (``sketch`` and ``write_id`` in, added to the memory): outputs
  ``weight_written`` (the delta's weight) and ``memory_weight``.

Writes are idempotent by ``write_id``: a non-empty id among the last ``WRITE_ID_WINDOW`` ids
this model has written writes nothing and returns ``weight_written = 0``, so a client may retry
a write whose answer it lost. An empty id is never deduplicated. The window lives in the
served graph (not in the memory's snapshot): a restart or a new version starts it empty.
* ``memory_layout`` (no inputs): ``fingerprint`` (a string scalar, ``memory_fingerprint``): two
  models whose fingerprints are equal can take each other's snapshots; ``memory_weight``, the
  cheap way to read it (``memory_snapshot`` copies the whole state to return it too);
  ``trust_layout`` (``trust_fingerprint``) and ``trust_rows``: two models whose trust layouts are
  equal can take each other's self-tuning combiner, the last ``trust_rows`` rows of a snapshot,
  even when their fingerprints differ (a retrained model).

``update_memory_by_keys`` and the four ``memory_*`` signatures exist only for the sketch memory
(``LSHErrorMemory``); a ``KNNErrorMemory`` model gets ``serving_default``, ``predict`` and ``update_memory``.

TF Serving treats models as pure functions; see docs/serving.md for what a stateful model means
there (reloads reset the memory to the exported snapshot, replicas diverge unless synced,
warm-up must not write, batch padding must not write).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from reloop2_tf._keras import tf
from reloop2_tf.layers import _validation as v
from reloop2_tf.layers.lsh_memory import LSHErrorMemory
from reloop2_tf.wrapper import ReLoop2Model

logger = logging.getLogger(__name__)

PREDICT = "predict"
SERVING_DEFAULT = "serving_default"
UPDATE_MEMORY = "update_memory"
UPDATE_MEMORY_BY_KEYS = "update_memory_by_keys"
MEMORY_SNAPSHOT = "memory_snapshot"
MEMORY_RESTORE = "memory_restore"
MEMORY_MERGE = "memory_merge"
MEMORY_LAYOUT = "memory_layout"

LABEL = "label"
SAMPLE_WEIGHT = "sample_weight"
SKETCH = "sketch"
MEMORY_KEYS = "memory_keys"
BASE_PROBABILITY = "base_probability"
PREDICT_OUTPUTS = ("probability", "base_probability", "estimated_error", "memory_support")
UPDATE_OUTPUTS = ("weight_written", "memory_weight")
MEMORY_WEIGHT = "memory_weight"
FINGERPRINT = "fingerprint"
TRUST_LAYOUT = "trust_layout"
TRUST_ROWS = "trust_rows"
WRITE_ID = "write_id"
# The most recent write ids a served model remembers (2**17 >= 100,000): a retry older than
# this many newer writes would write again.
WRITE_ID_WINDOW = 2**17

READ_ONLY_SIGNATURES = (SERVING_DEFAULT, PREDICT, MEMORY_SNAPSHOT, MEMORY_LAYOUT)
WRITE_SIGNATURES = (UPDATE_MEMORY, UPDATE_MEMORY_BY_KEYS, MEMORY_RESTORE, MEMORY_MERGE)

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")

# TF op names (hence placeholder names) allow only these characters.
_VALID_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


@dataclasses.dataclass(frozen=True)
class PredictBatching:
    """In-graph batching of the ``predict`` signatures only (a TF ``BatchFunction`` op).

    TF Serving's ``--enable_batching`` wraps every SignatureDef, ``update_memory`` included, and
    pads a batch with copies of its first row, so padded rows would write memory again. Batching
    inside the predict graph leaves the write path unbatched. The fields are those of TF
    Serving's ``BatchingParameters``; ``from_file`` reads serving/batching_parameters.txt.

    Args:
        max_batch_size: int. Defaults to `256`.
        batch_timeout_micros: int. Defaults to `1000`.
        num_batch_threads: int. Defaults to `2`.
        max_enqueued_batches: int. Defaults to `100`.
        allowed_batch_sizes: tuple of ints, last one equal to ``max_batch_size``, or empty for
            no padding. Defaults to `()`.
    """

    max_batch_size: int = 256
    batch_timeout_micros: int = 1000
    num_batch_threads: int = 2
    max_enqueued_batches: int = 100
    allowed_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads",
                     "max_enqueued_batches"):
            value = getattr(self, name)
            lowest = 0 if name == "batch_timeout_micros" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ValueError(f"`{name}` should be an int >= {lowest}. Received: {name}={value!r}")
        sizes = tuple(self.allowed_batch_sizes)
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != self.max_batch_size):
            raise ValueError("`allowed_batch_sizes` should increase strictly and end with "
                             f"max_batch_size={self.max_batch_size}. Received: {sizes}")
        object.__setattr__(self, "allowed_batch_sizes", sizes)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> PredictBatching:
        """Reads a TF Serving ``BatchingParameters`` text file (``name { value: N }`` entries)."""
        text = re.sub(r"#[^\n]*", "", Path(path).read_text(encoding="utf-8"))
        entries = re.findall(r"([a-z_]+)\s*\{\s*value\s*:\s*(\d+)\s*\}", text)
        known = {f.name for f in dataclasses.fields(cls)}
        scalars: dict[str, int] = {}
        sizes: list[int] = []
        for name, value in entries:
            if name == "allowed_batch_sizes":
                sizes.append(int(value))
            elif name in known:
                scalars[name] = int(value)
            else:
                logger.info("%s: %s does not apply to in-graph batching; ignored", path, name)
        # allowed_batch_sizes is a repeated int field: `allowed_batch_sizes: 8` lines.
        sizes += [int(v) for v in re.findall(r"allowed_batch_sizes\s*:\s*(\d+)", text)]
        return cls(**scalars, allowed_batch_sizes=tuple(sizes))


def feature_specs(model: ReLoop2Model) -> dict[str, tf.TensorSpec]:
    """The named ``TensorSpec`` of every raw input of ``model.base_model`` (batch dim ``None``)."""
    base = model.base_model
    structure = base.input
    if isinstance(structure, Mapping):
        named = dict(structure)
    else:
        named = dict(zip(base.input_names, base.inputs))
    specs = {}
    for name, tensor in sorted(named.items()):
        if not _VALID_NAME.match(name):
            raise ValueError(f"Input names become signature inputs and must match "
                             f"{_VALID_NAME.pattern}. Received: input name {name!r}")
        if name in (LABEL, SAMPLE_WEIGHT, MEMORY_KEYS, BASE_PROBABILITY, WRITE_ID):
            raise ValueError(f"A base-model input may not be called {name!r}: the writing "
                             f"signatures take `{LABEL}`, `{SAMPLE_WEIGHT}`, `{MEMORY_KEYS}`, "
                             f"`{BASE_PROBABILITY}` and `{WRITE_ID}` themselves.")
        shape = tf.TensorShape([None]).concatenate(tensor.shape[1:])
        specs[name] = tf.TensorSpec(shape, tensor.dtype, name=name)
    if not specs:
        raise ValueError("`model.base_model` has no inputs.")
    return specs


def _dummy_batch(specs: Mapping[str, tf.TensorSpec]) -> dict[str, tf.Tensor]:
    return {name: tf.zeros([1, *spec.shape[1:]], spec.dtype) for name, spec in specs.items()}


def _checked(tensors: Mapping[str, tf.Tensor], order: list[str]) -> dict[str, tf.Tensor]:
    """``tensors`` gated by the request checks, so nothing downstream runs on bad input.

    Every input must have the same, non-zero number of rows and float inputs must be finite;
    ``label`` must be in [0, 1] and ``sample_weight`` >= 0 (checked on the finite-checked
    tensors, so NaN is reported as NaN). The memory checks its own inputs again, under its own
    argument names.
    """
    first = order[0]
    rows = tf.shape(tensors[first])[0]
    checks = [v.assert_that(rows > 0, f"the batch is empty: `{first}` has 0 rows; "
                                      "send at least one row")]
    tensors = {name: v.finite(t, name) if t.dtype.is_floating else t
               for name, t in tensors.items()}
    for name in order[1:]:
        checks.append(v.assert_that(
            tf.equal(tf.shape(tensors[name])[0], rows),
            f"`{name}` must have as many rows as `{first}` (one per example)"))
    if LABEL in tensors:
        checks.append(v.in_unit_interval(tensors[LABEL], LABEL))
    if SAMPLE_WEIGHT in tensors:
        checks.append(v.non_negative(tensors[SAMPLE_WEIGHT], SAMPLE_WEIGHT))
    with tf.control_dependencies(checks):
        return {name: tf.identity(tensors[name]) for name in order}


def memory_fingerprint(memory: LSHErrorMemory) -> str:
    """``"sha256:<hex>"`` of everything that decides what a snapshot's rows mean.

    That is the layout (tables, bits, seed and id hashes), the width ``d``, the state's shape,
    and the values of the projections and the centre. A snapshot restored into a model with
    another fingerprint would put every count in the wrong bucket.
    """
    if not isinstance(memory, LSHErrorMemory) or not memory.built:
        raise ValueError("`memory` should be a built LSHErrorMemory. "
                         f"Received: {type(memory).__name__}")
    digest = hashlib.sha256()
    digest.update(json.dumps({**memory.layout(), "dim": memory.dim,
                              "table_sizes": list(memory.table_sizes),
                              "state_shape": [memory.num_state_rows, 3]},
                             sort_keys=True).encode())
    for variable in (memory.projections, memory.center):
        digest.update(np.ascontiguousarray(variable.numpy(), dtype="<f4").tobytes())
    return "sha256:" + digest.hexdigest()


def trust_fingerprint(model: ReLoop2Model) -> str:
    """``"sha256:<hex>"`` of what decides what the self-tuning combiner's sums mean: the
    memory's layout except its seed (tables, bits, id groups, recent tables), the number of
    the combiner's features and the shrinkage ``prior_count``; ``""`` for a memory without a
    self-tuning combiner. Unlike ``memory_fingerprint`` it leaves out the seed, the projections
    and the centre, which a retrained model changes: two models with equal trust
    fingerprints can take each other's combiner (``LSHErrorMemory.set_trust_sums``, the
    durable memory's hand-over between versions, docs/serving.md)."""
    memory, compensation = model.memory, model.compensation
    if not isinstance(memory, LSHErrorMemory) or not compensation.self_tuning:
        return ""
    layout = {key: value for key, value in memory.layout().items() if key != "seed"}
    layout.update(num_trust_features=memory.num_trust_features,
                  prior_count=float(compensation.prior_count))
    return "sha256:" + hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()


def predict_outputs(model: ReLoop2Model) -> tuple[str, ...]:
    """The outputs of ``predict``: ``PREDICT_OUTPUTS``, plus ``memory_keys`` for the sketch."""
    return PREDICT_OUTPUTS + ((MEMORY_KEYS,) if isinstance(model.memory, LSHErrorMemory) else ())


class _ServingModule(tf.Module):
    """Holds the model so that its variables are tracked, and builds the signature functions."""

    def __init__(self, model: ReLoop2Model, specs: dict[str, tf.TensorSpec],
                 batching: PredictBatching | None):
        super().__init__(name="reloop2_serving")
        self.model = model
        self._specs = specs
        self._batching = batching
        # The recent write ids, as 62-bit hashes (0: an empty slot) in a ring; `write_count`
        # ids have been remembered so far. `write_id_index` holds the ids in the ring, so that
        # "seen?" is one hash lookup, not a scan of the window (~0.15 ms per write at 2**17).
        self.write_ids = tf.Variable(tf.zeros([WRITE_ID_WINDOW], tf.int64), trainable=False,
                                     name="write_ids")
        self.write_count = tf.Variable(tf.constant(0, tf.int64), trainable=False,
                                       name="write_count")
        self.write_id_index = tf.lookup.experimental.MutableHashTable(
            tf.int64, tf.int64, default_value=0, name="write_id_index")
        # Every access to the ring happens in the memory's lock (`exactly_once`), which writes
        # and merges take anyway: no mutex of its own.

    def exactly_once(self, write_id):
        """The guard of a write (``ErrorMemory.update``'s ``guard``) that makes ``write_id``
        count once: true, and the id remembered, unless it is a recent non-empty id; then
        false, and the write writes nothing.

        The memory runs it in its lock, after the write's inputs are checked: two calls with
        the same id (a client's retry while its first call still runs, a queue that delivers
        one event to two workers) cannot both see the id as new, and a rejected write
        remembers no id (``tests/test_exactly_once.py``).
        """
        given = tf.strings.length(write_id) > 0
        # +1 so that no id hashes to 0, the mark of an empty slot.
        code = tf.strings.to_hash_bucket_fast(write_id, 2**62) + 1

        def remember():
            # The id leaving the ring leaves the index (an empty slot's 0 is never in it).
            slot = tf.math.floormod(self.write_count.read_value(), WRITE_ID_WINDOW)
            leaving = tf.gather(self.write_ids, slot)
            with tf.control_dependencies([self.write_id_index.remove(leaving[None])]):
                inserted = self.write_id_index.insert(code[None], tf.ones([1], tf.int64))
            with tf.control_dependencies([inserted]):
                ring = self.write_ids.scatter_nd_update(slot[None, None], code[None])
            with tf.control_dependencies([ring]):
                counted = self.write_count.assign_add(1)
            with tf.control_dependencies([counted]):
                return tf.constant(True)

        def claim():
            seen = self.write_id_index.lookup(code) > 0
            return tf.cond(seen, lambda: tf.constant(False), remember)

        return lambda: tf.cond(given, claim, lambda: tf.constant(True))

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        specs, model = self._specs, self.model
        names = list(specs)
        outputs = predict_outputs(model)

        def compensate(*features):
            out = model.compensate(dict(zip(names, features)))
            return tuple(out[key] if key == MEMORY_KEYS else tf.reshape(out[key], [-1])
                         for key in outputs)

        if self._batching is not None:
            b = self._batching
            compensate = tf.nondifferentiable_batch_function(
                num_batch_threads=b.num_batch_threads, max_batch_size=b.max_batch_size,
                batch_timeout_micros=b.batch_timeout_micros,
                allowed_batch_sizes=list(b.allowed_batch_sizes) or None,
                max_enqueued_batches=b.max_enqueued_batches)(compensate)

        @tf.function(input_signature=[specs])
        def predict(features):
            features = _checked(features, names)
            return dict(zip(outputs, compensate(*(features[n] for n in names))))

        label_spec = tf.TensorSpec([None], tf.float32, name=LABEL)
        weight_spec = tf.TensorSpec([None], tf.float32, name=SAMPLE_WEIGHT)
        id_spec = tf.TensorSpec([], tf.string, name=WRITE_ID)

        @tf.function(input_signature=[specs, label_spec, weight_spec, id_spec])
        def update_memory(features, label, sample_weight, write_id):
            checked = _checked({**features, LABEL: label, SAMPLE_WEIGHT: sample_weight},
                               [*names, LABEL, SAMPLE_WEIGHT])
            written = model.update_memory({n: checked[n] for n in names}, checked[LABEL],
                                          checked[SAMPLE_WEIGHT],
                                          guard=self.exactly_once(write_id))
            # Read after the write: automatic control dependencies order ops on the variable.
            return {"weight_written": written, MEMORY_WEIGHT: model.memory.total_weight()}

        predict_fn = predict.get_concrete_function()
        functions = {SERVING_DEFAULT: predict_fn, PREDICT: predict_fn,
                     UPDATE_MEMORY: update_memory.get_concrete_function()}
        memory = model.memory
        if isinstance(memory, LSHErrorMemory):
            keys_spec = tf.TensorSpec([None, memory.num_key_columns], tf.int32, name=MEMORY_KEYS)
            base_spec = tf.TensorSpec([None], tf.float32, name=BASE_PROBABILITY)

            @tf.function(input_signature=[keys_spec, base_spec, label_spec, weight_spec, id_spec])
            def update_memory_by_keys(memory_keys, base_probability, label, sample_weight,
                                      write_id):
                checked = _checked({MEMORY_KEYS: memory_keys, BASE_PROBABILITY: base_probability,
                                    LABEL: label, SAMPLE_WEIGHT: sample_weight},
                                   [MEMORY_KEYS, BASE_PROBABILITY, LABEL, SAMPLE_WEIGHT])
                written = model.update_memory_by_keys(
                    checked[MEMORY_KEYS], checked[BASE_PROBABILITY], checked[LABEL],
                    checked[SAMPLE_WEIGHT], guard=self.exactly_once(write_id))
                return {"weight_written": written, MEMORY_WEIGHT: memory.total_weight()}

            functions[UPDATE_MEMORY_BY_KEYS] = update_memory_by_keys.get_concrete_function()
            functions.update(self._sketch_signatures(memory, id_spec))
        return functions

    def _sketch_signatures(self, memory: LSHErrorMemory, id_spec: tf.TensorSpec) -> dict:
        sketch_spec = tf.TensorSpec([memory.num_state_rows, 3], tf.float32, name=SKETCH)

        @tf.function(input_signature=[])
        def memory_snapshot():
            sketch = memory.snapshot()
            return {SKETCH: sketch, MEMORY_WEIGHT: sketch[memory.totals_row, 0]}

        @tf.function(input_signature=[sketch_spec])
        def memory_restore(sketch):
            memory.restore(sketch)
            return {MEMORY_WEIGHT: memory.total_weight()}

        @tf.function(input_signature=[sketch_spec, id_spec])
        def memory_merge(sketch, write_id):
            # Checked against the state it is added to, between writes (`_locked`); the weight
            # it added, once added.
            written = memory.merge(sketch, guard=self.exactly_once(write_id))
            return {"weight_written": written, MEMORY_WEIGHT: memory.total_weight()}

        # Computed now from the values being saved; a constant in the graph, so the sidecar can
        # read it over gRPC without loading the SavedModel.
        fingerprint, trust = memory_fingerprint(memory), trust_fingerprint(self.model)
        trust_rows = memory.num_trust_rows

        @tf.function(input_signature=[])
        def memory_layout():
            return {FINGERPRINT: tf.constant(fingerprint), MEMORY_WEIGHT: memory.total_weight(),
                    TRUST_LAYOUT: tf.constant(trust), TRUST_ROWS: tf.constant(trust_rows)}

        return {MEMORY_SNAPSHOT: memory_snapshot.get_concrete_function(),
                MEMORY_RESTORE: memory_restore.get_concrete_function(),
                MEMORY_MERGE: memory_merge.get_concrete_function(),
                MEMORY_LAYOUT: memory_layout.get_concrete_function()}


def signature_contract(model: ReLoop2Model) -> dict[str, dict[str, list[str]]]:
    """The input and output names of every signature ``export_serving_model`` writes."""
    names = list(feature_specs(model))
    predict = {"inputs": names, "outputs": list(predict_outputs(model))}
    contract = {
        SERVING_DEFAULT: predict,
        PREDICT: predict,
        UPDATE_MEMORY: {"inputs": [*names, LABEL, SAMPLE_WEIGHT, WRITE_ID],
                        "outputs": list(UPDATE_OUTPUTS)},
    }
    if isinstance(model.memory, LSHErrorMemory):
        contract[UPDATE_MEMORY_BY_KEYS] = {
            "inputs": [MEMORY_KEYS, BASE_PROBABILITY, LABEL, SAMPLE_WEIGHT, WRITE_ID],
            "outputs": list(UPDATE_OUTPUTS)}
        contract[MEMORY_SNAPSHOT] = {"inputs": [], "outputs": [SKETCH, MEMORY_WEIGHT]}
        contract[MEMORY_RESTORE] = {"inputs": [SKETCH], "outputs": [MEMORY_WEIGHT]}
        contract[MEMORY_MERGE] = {"inputs": [SKETCH, WRITE_ID], "outputs": list(UPDATE_OUTPUTS)}
        contract[MEMORY_LAYOUT] = {"inputs": [], "outputs": [FINGERPRINT, MEMORY_WEIGHT,
                                                             TRUST_LAYOUT, TRUST_ROWS]}
    return contract


def numbered_versions(base_dir: str | os.PathLike, complete: bool = True) -> dict[int, Path]:
    """The version directories of a TF-Serving base dir (names that are integers >= 0).

    With ``complete`` (the default) only those that hold a ``saved_model.pb``.
    """
    base = Path(base_dir)
    if not base.is_dir():
        return {}
    return {int(p.name): p for p in base.iterdir()
            if p.is_dir() and p.name.isdigit()
            and (not complete or (p / "saved_model.pb").is_file())}


def resolve_saved_model(model_dir: str | os.PathLike) -> tuple[str, int]:
    """A SavedModel dir, or the newest version of a TF-Serving base dir, as ``(path, version)``;
    any filesystem ``tf.io.gfile`` reads (local, ``gs://``).

    A bare SavedModel is version 1, as TF Serving would number it under a base dir.
    """
    path = str(model_dir).rstrip("/")
    if tf.io.gfile.exists(f"{path}/saved_model.pb"):
        return path, 1
    names = [n.rstrip("/") for n in tf.io.gfile.listdir(path)] if tf.io.gfile.isdir(path) else []
    versions = [int(n) for n in names
                if n.isdigit() and tf.io.gfile.exists(f"{path}/{n}/saved_model.pb")]
    if not versions:
        raise FileNotFoundError(f"{path} is neither a SavedModel (no saved_model.pb) nor a "
                                "TF-Serving base dir with numbered version subdirectories")
    newest = max(versions)
    return f"{path}/{newest}", newest


def resolve_model_dir(model_dir: str | os.PathLike) -> tuple[Path, int]:
    """``resolve_saved_model`` for a local directory, as a ``Path``."""
    path, version = resolve_saved_model(Path(model_dir))
    return Path(path), version


def write_warmup_requests(saved_model_dir: str | os.PathLike, features: Mapping[str, object],
                          signature_name: str = SERVING_DEFAULT, model_name: str = "reloop2") -> Path:
    """Writes ``assets.extra/tf_serving_warmup_requests`` with one Predict request.

    TF Serving replays these records at every load, so a record that called ``update_memory``
    would write the memory once per (re)load. Only read-only signatures are accepted.
    """
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    if signature_name not in READ_ONLY_SIGNATURES:
        raise ValueError(f"Warm-up requests must not write the memory: `signature_name` should be "
                         f"one of {READ_ONLY_SIGNATURES}. Received: signature_name={signature_name!r}")
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name))
    for name, value in features.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))
    path = Path(saved_model_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(log.SerializeToString())
    return path


def _warmup_features(specs: Mapping[str, tf.TensorSpec], features: Mapping[str, object]) -> dict:
    missing = sorted(set(specs) - set(features))
    if missing:
        raise ValueError(f"`warmup_features` lacks input(s) {missing}")
    out = {}
    for name, spec in specs.items():
        value = np.asarray(features[name])
        out[name] = value.astype(object) if spec.dtype == tf.string else value.astype(
            spec.dtype.as_numpy_dtype)
    return out


def _save(model: ReLoop2Model, path: str, batching: PredictBatching | None,
          warmup_features: Mapping[str, object] | None) -> None:
    specs = feature_specs(model)
    # A Keras model that was never called is saved without its Keras metadata; one call on a
    # dummy row builds it. `call` only reads the memory.
    if not model.built:
        model(_dummy_batch(specs))
    module = _ServingModule(model, specs, batching)
    tf.saved_model.save(module, path, signatures=module.signatures())
    if warmup_features is not None:
        write_warmup_requests(path, _warmup_features(specs, warmup_features))


def export_serving_model(model: ReLoop2Model, export_dir: str | os.PathLike,
                         version: int | str | None = None, *,
                         batching: PredictBatching | None = None,
                         warmup_features: Mapping[str, object] | None = None) -> str:
    """Writes ``model`` and its current memory as one SavedModel for TF Serving.

    The memory is saved as it is now (a snapshot): a server that loads the SavedModel starts
    from this state, whatever its previous version had learnt since.

    Args:
        model: a ``ReLoop2Model``.
        export_dir: with ``version=None``, the SavedModel directory itself (must not exist or
            be empty). Otherwise a TF-Serving base dir; the model goes to ``export_dir/<version>``.
        version: `None`, an int >= 0, or ``"auto"`` (the largest existing version + 1, or 1).
            Defaults to `None`.
        batching: optional ``PredictBatching``: batch ``predict`` in-graph. Defaults to `None`.
        warmup_features: optional dict of a few rows of raw features, written as a
            ``serving_default`` warm-up request. Defaults to `None`.

    Returns:
        The path of the SavedModel. It is written to a temporary directory beside it and renamed
        into place, so a polling server never sees a half-written version.
    """
    if not isinstance(model, ReLoop2Model):
        raise TypeError(f"`model` should be a ReLoop2Model. Received: model={type(model).__name__}")
    base = Path(export_dir).expanduser().absolute()
    if version is None:
        if base.exists() and (not base.is_dir() or any(base.iterdir())):
            raise FileExistsError(f"{base} exists and is not an empty directory")
        parent, final = base.parent, base
    elif version == "auto" or (isinstance(version, (int, np.integer))
                               and not isinstance(version, bool) and version >= 0):
        parent, final = base, None
    else:
        raise ValueError(f"`version` should be None, an int >= 0 or 'auto'. Received: version={version!r}")
    parent.mkdir(parents=True, exist_ok=True)

    # Not a number, so TF Serving's version poller ignores it while it is being written.
    tmp = parent / f".tmp-reloop2-export-{uuid.uuid4().hex}"
    try:
        _save(model, str(tmp), batching, warmup_features)
        if final is not None:
            if final.exists():
                final.rmdir()  # empty, checked above; rename cannot replace a non-empty dir
            os.rename(tmp, final)
        else:
            final = _publish_version(tmp, base, version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported ReLoop2 SavedModel to %s", final)
    return str(final)


def _publish_version(tmp: Path, base: Path, version: int | str) -> Path:
    for _ in range(100):
        taken = numbered_versions(base, complete=False)
        number = (max(taken, default=0) + 1) if version == "auto" else int(version)
        final = base / str(number)
        if final.exists():
            if version != "auto":
                raise FileExistsError(f"version {number} already exists in {base}")
            continue
        try:
            os.rename(tmp, final)
            return final
        except OSError:
            # Another exporter took this number between the check and the rename.
            if version != "auto":
                raise
    raise RuntimeError(f"could not find a free version number in {base}")


def memory_footprint_bytes(model: ReLoop2Model) -> int:
    """Bytes held by the memory's variables (sketch or ring buffer, projections, centre)."""
    return int(sum(np.prod(v.shape) * v.dtype.size for v in model.memory.variables))


__all__ = [
    "MEMORY_LAYOUT",
    "MEMORY_MERGE",
    "MEMORY_RESTORE",
    "MEMORY_SNAPSHOT",
    "PREDICT",
    "PREDICT_OUTPUTS",
    "SERVING_DEFAULT",
    "UPDATE_MEMORY",
    "UPDATE_MEMORY_BY_KEYS",
    "UPDATE_OUTPUTS",
    "WRITE_ID",
    "WRITE_ID_WINDOW",
    "PredictBatching",
    "export_serving_model",
    "feature_specs",
    "memory_fingerprint",
    "memory_footprint_bytes",
    "numbered_versions",
    "predict_outputs",
    "resolve_model_dir",
    "resolve_saved_model",
    "signature_contract",
    "write_warmup_requests",
]
