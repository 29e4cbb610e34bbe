"""ReLoop2Model: any Keras CTR model plus an error memory, with ``predict`` and ``update_memory``."""

from __future__ import annotations

from reloop2_tf._keras import keras, tf
from reloop2_tf.layers.compensation import ErrorCompensation, probability_to_logit
from reloop2_tf.layers.id_keys import POPULARITY, each_of
from reloop2_tf.layers.lsh_memory import LSHErrorMemory


def _layer_output(model: keras.Model, spec: str):
    """The output of layer ``name``, or of its ``index``-th call for ``"name:index"``.

    A layer called more than once (an embedding shared by the target item and the history)
    has one output per call; the index picks one.
    """
    name, _, index = spec.partition(":")
    try:
        layer = model.get_layer(name)
    except ValueError as err:
        raise ValueError(
            f"`hidden_layer` should name a layer of `base_model`. Received: hidden_layer={spec!r};"
            f" layers: {[l.name for l in model.layers]}"
        ) from err
    if index:
        return layer.get_output_at(int(index))
    calls = len(layer.inbound_nodes)
    if calls > 1:  # `layer.output` would silently return the first call's output
        raise ValueError(f"`hidden_layer` {name!r} is called {calls} times; pick a call with "
                         f"hidden_layer='{name}:0' (or :1, ...)")
    return layer.output


def default_id_groups(input_names, item: str = "item_id", user: str = "user_id",
                      item_features=(), user_features=()) -> list[tuple[str, ...]]:
    """The id groups the default memory keys rows by (measured in docs/benchmarks.md).

    The item alone; the user crossed with every item-side feature (taste: ``user x genre``);
    the item crossed with every user-side feature (``item x age``); the user crossed with the
    item's popularity (``(user, "item:popularity")``: how popular or niche the items a user
    takes to are, read off the memory's own item counts, so any log has it). Crosses are read
    as deviations from their first feature's residual, so no group is a bare per-user offset
    (it lowers per-user ranking, gAUC; add ``(user,)`` yourself where calibration matters
    more). A feature may be named ``"<name>:each"`` when its values list several tokens
    (``"Comedy|Drama"``): the cross is then made with each of them. Names that are not inputs
    are skipped.
    """
    names = set(input_names)
    groups: list[tuple[str, ...]] = [(item,)] if item in names else []
    if user in names and item in names:
        groups += [(user, f) for f in item_features if (each_of(f) or f) in names]
    if item in names:
        groups += [(item, f) for f in user_features if (each_of(f) or f) in names]
    if user in names and item in names:
        groups.append((user, f"{item}{POPULARITY}"))
    return groups


def default_srp_centre(id_groups, user: str = "user_id") -> str | None:
    """The feature the default memory centres its SRP tables' writes on
    (``LSHErrorMemory(srp_centre=...)``): the user, when the memory holds the user's table (a
    group, or the first feature of a cross such as ``user x genre``), else `None`.

    The hidden vector a base model gives carries the user's own embedding, so a user with many
    rows fills SRP buckets of their own, and a plain SRP residual becomes that user's running
    offset, which re-ranks the user's rows for the worse (as a bare ``(user,)`` group does);
    centred, the buckets hold similar rows' errors beyond their users' levels
    (docs/history/benchmarks.md, "A log the project never saw").
    """
    firsts = {tuple(g)[0] if not isinstance(g, str) else g for g in id_groups}
    return user if user in firsts else None


def _input_names(model: keras.Model) -> set[str]:
    return {i.name.split(":")[0] for i in model.inputs}


@keras.saving.register_keras_serializable(package="reloop2_tf")
class ReLoop2Model(keras.Model):
    """Wraps a base model so that its output is corrected by an error memory.

    The base model either returns ``(logits, hidden)``, or returns its output and names the layer
    whose output is the hidden vector (``hidden_layer``; the zoo models call it ``"hidden"``).

    Args:
        base_model: a functional ``keras.Model``.
        hidden_layer: name of the layer that gives the hidden vector, or `None` if the base model
            returns ``[logits, hidden]``. Defaults to `"hidden"`.
        compensation: an ``ErrorCompensation``. Defaults to `ErrorCompensation()`.
        output_is_logits: whether the base output is a logit (`True`) or a probability.
            Defaults to `True`.

    The memory's ``id_groups`` name inputs of the base model; their raw values key its id
    tables. The default memory keys by ``default_id_groups`` of the inputs (the item, and the
    user crossed with the item's popularity, unless side features are named) and centres its SRP
    tables on the user (``default_srp_centre``).

    Example:

    >>> model = ReLoop2Model(base_model, hidden_layer="hidden")
    >>> probs = model.predict(features)
    >>> model.update_memory(features, labels)
    """

    def __init__(self, base_model: keras.Model, hidden_layer: str | None = "hidden",
                 compensation: ErrorCompensation | None = None, output_is_logits: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        if isinstance(base_model, dict):
            base_model = keras.saving.deserialize_keras_object(base_model)
        if isinstance(compensation, dict):
            compensation = keras.saving.deserialize_keras_object(compensation)
        if hidden_layer is None:
            if len(base_model.outputs) != 2:
                raise ValueError(
                    "`base_model` must return [logits, hidden] when `hidden_layer` is None. "
                    f"Received a model with {len(base_model.outputs)} output(s)."
                )
            outputs = list(base_model.outputs)
        else:
            outputs = [base_model.output, _layer_output(base_model, hidden_layer)]
        self.base_model = base_model
        self.hidden_layer = hidden_layer
        self.output_is_logits = bool(output_is_logits)
        self.encoder = keras.Model(base_model.inputs, outputs, name="encoder")
        if compensation is None:
            groups = default_id_groups(_input_names(base_model))
            compensation = ErrorCompensation(LSHErrorMemory(
                id_groups=groups, srp_centre=default_srp_centre(groups)))
        self.compensation = compensation
        missing = sorted(set(self.id_features) - _input_names(base_model))
        if missing:
            raise ValueError(f"the memory's id groups read {missing}, which are not inputs of "
                             f"`base_model`; inputs: {sorted(_input_names(base_model))}")

    @property
    def id_features(self) -> tuple[str, ...]:
        """The raw inputs that key the memory's id tables."""
        return getattr(self.compensation.memory, "id_features", ())

    def _ids(self, features):
        return {n: features[n] for n in self.id_features} if self.id_features else None

    def encode(self, features) -> tuple[tf.Tensor, tf.Tensor]:
        """Base logits ``[B]`` and hidden ``[B, d]`` of a batch of features."""
        output, hidden = self.encoder(features, training=False)
        output = tf.reshape(tf.cast(output, tf.float32), [-1])
        logits = output if self.output_is_logits else probability_to_logit(output)
        return logits, tf.cast(hidden, tf.float32)

    def call(self, features, training=None):
        logits, hidden = self.encode(features)
        return self.compensation(logits, hidden, self._ids(features))

    def compensate(self, features) -> dict[str, tf.Tensor]:
        """``probability``, ``base_probability``, ``estimated_error``, ``memory_support`` (each
        ``[B]``) and, with a sketch memory, ``memory_keys`` (int32 ``[B, T]``)."""
        return self.compensation.compensate(*self.encode(features), self._ids(features))

    def memory_keys(self, features) -> tf.Tensor:
        """int32 ``[B, T]``: the memory buckets of ``features`` (what ``predict`` returns)."""
        return self.memory.keys(self.encode(features)[1], self._ids(features))

    def update_memory(self, features, labels, sample_weight=None,
                      learn_trust: bool = True, guard=None) -> tf.Tensor:
        """Writes the revealed labels of ``features``; returns the total weight written.

        ``learn_trust=False`` for rows the base model was trained on (a warm start from the
        training tail): they fill the tables but do not teach the combiner
        (``ErrorCompensation.update_memory``, which also says what ``guard`` does).
        """
        logits, hidden = self.encode(features)
        return self.compensation.update_memory(logits, hidden, labels, sample_weight,
                                               self._ids(features), learn_trust=learn_trust,
                                               guard=guard)

    def update_memory_by_keys(self, memory_keys, base_probability, labels,
                              sample_weight=None, learn_trust: bool = True,
                              guard=None) -> tf.Tensor:
        """Writes rows by the ``memory_keys`` and ``base_probability`` that ``compensate``
        returned, without running the base model."""
        return self.compensation.update_memory_by_keys(memory_keys, base_probability, labels,
                                                       sample_weight, learn_trust=learn_trust,
                                                       guard=guard)

    def set_center(self, features, batch_size: int = 8192) -> tf.Tensor:
        """Centres the memory on the mean hidden vector of ``features`` (e.g. training rows).

        Post-ReLU hiddens are all >= 0, so uncentred SRP bits are correlated (SPEC section 2).
        """
        total, count = None, 0
        n = int(tf.shape(tf.nest.flatten(features)[0])[0])
        for start in range(0, n, batch_size):
            batch = tf.nest.map_structure(lambda x: x[start:start + batch_size], features)
            hidden = self.encode(batch)[1]
            self.memory._ensure_built(hidden)
            part = tf.reduce_sum(hidden, axis=0)
            total = part if total is None else total + part
            count += int(hidden.shape[0])
        if not count:
            raise ValueError("`features` must hold at least one row to compute a center.")
        center = total / count
        self.memory.set_center(center)
        return center

    def reset_memory(self) -> None:
        self.compensation.reset_memory()

    @property
    def memory(self):
        return self.compensation.memory

    def get_config(self):
        return {
            "name": self.name,
            "base_model": keras.saving.serialize_keras_object(self.base_model),
            "hidden_layer": self.hidden_layer,
            "compensation": keras.saving.serialize_keras_object(self.compensation),
            "output_is_logits": self.output_is_logits,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
