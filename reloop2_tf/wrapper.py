"""ReLoop2Model: any Keras CTR model plus an error memory, with ``predict`` and ``update_memory``."""

from __future__ import annotations

from reloop2_tf._keras import keras, tf
from reloop2_tf.layers.compensation import ErrorCompensation, probability_to_logit
from reloop2_tf.layers.id_code import IdCode


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
        id_feature: the input whose ids key the memory's id tables, when the memory is an
            ``LSHErrorMemory(num_id_tables=J, id_dims=m)``: its ``IdCode`` is appended to the
            hidden vector. Defaults to `None`.

    Example:

    >>> model = ReLoop2Model(base_model, hidden_layer="hidden")
    >>> probs = model.predict(features)
    >>> model.update_memory(features, labels)
    """

    def __init__(self, base_model: keras.Model, hidden_layer: str | None = "hidden",
                 compensation: ErrorCompensation | None = None, output_is_logits: bool = True,
                 id_feature: str | None = None, **kwargs):
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
        self.compensation = compensation if compensation is not None else ErrorCompensation()
        # Id tables (LSHErrorMemory(num_id_tables=..., id_dims=...)) read an IdCode of one input
        # feature appended to the hidden vector.
        id_dims = getattr(self.compensation.memory, "id_dims", 0)
        if bool(id_dims) != (id_feature is not None):
            raise ValueError("`id_feature` names the input whose ids key the memory's id tables; "
                             "give it exactly when the memory has `id_dims` > 0. Received: "
                             f"id_feature={id_feature!r}, id_dims={id_dims}")
        if id_feature is not None and id_feature not in {i.name.split(":")[0]
                                                         for i in base_model.inputs}:
            raise ValueError(f"`id_feature` {id_feature!r} is not an input of `base_model`; inputs: "
                             f"{[i.name for i in base_model.inputs]}")
        self.id_feature = id_feature
        self.id_code = IdCode(id_dims, seed=self.compensation.memory.seed) if id_feature else None

    def encode(self, features) -> tuple[tf.Tensor, tf.Tensor]:
        """Base logits ``[B]`` and hidden ``[B, d]`` of a batch of features."""
        output, hidden = self.encoder(features, training=False)
        output = tf.reshape(tf.cast(output, tf.float32), [-1])
        logits = output if self.output_is_logits else probability_to_logit(output)
        hidden = tf.cast(hidden, tf.float32)
        if self.id_code is not None:
            hidden = tf.concat([hidden, self.id_code(features[self.id_feature])], axis=-1)
        return logits, hidden

    def call(self, features, training=None):
        logits, hidden = self.encode(features)
        return self.compensation(logits, hidden)

    def compensate(self, features) -> dict[str, tf.Tensor]:
        """``probability``, ``base_probability``, ``estimated_error``, ``memory_support``: ``[B]``."""
        return self.compensation.compensate(*self.encode(features))

    def update_memory(self, features, labels, sample_weight=None) -> tf.Tensor:
        """Writes the revealed labels of ``features``; returns the total weight written."""
        logits, hidden = self.encode(features)
        return self.compensation.update_memory(logits, hidden, labels, sample_weight)

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
            "id_feature": self.id_feature,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
