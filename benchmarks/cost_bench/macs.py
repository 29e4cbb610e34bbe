"""Multiply-adds per row: the Keras model's dense layers vs the memory's read.

Model (``model_macs``): every ``Dense`` layer the model calls, at any depth (inside custom
layers too, e.g. DIN's attention scorer and the DCN cross layers' inner ``Dense``), counts
``rows x kernel_in x kernel_out`` per call, where ``rows`` is the product of the call's input
shape except the last axis (a ``[1, 20, 48]`` history input to a ``Dense`` is 20 rows). The
shapes come from one eager call on a batch of one row, so a layer called twice counts twice.
Embedding lookups, element-wise ops and biases are not multiply-adds of a kernel and are left
out (they are memory-bound, not compute-bound).

Memory (``memory_macs``): the read of an ``LSHErrorMemory`` under the self-tuning combiner:
the SRP projections ``d x K x L`` and their bit packing (one ``[K*L, K]`` matmul: ``K x L x K``)
per row, the combiner's read-outs (the rows' ``3 T`` cells by ``read_weights``, ``3 T x U``;
``readouts``) and its dot product ``F`` per row. The ``F x F`` solve of the trust (LU:
``F^3/3 + F^2``) is made when the memory is written, not on reads; it is reported per write call
(``trust_solve_per_write``) and left out of the read's total. Id tables cost hashes and gathers,
no multiply-adds.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def dense_layers(model) -> list:
    """Every ``keras.layers.Dense`` reachable from ``model`` (nested layers included), once."""
    from reloop2_tf._keras import keras

    seen, out = set(), []
    for layer in [model, *model.submodules]:
        if isinstance(layer, keras.layers.Dense) and id(layer) not in seen:
            seen.add(id(layer))
            out.append(layer)
    return out


def model_macs(model, inputs: Mapping) -> dict:
    """Multiply-adds of the kernels of ``model``'s ``Dense`` calls on ``inputs`` (one eager
    call): ``{"total": int, "per_layer": {name: int}}``. Divide by the batch for per-row."""
    layers = dense_layers(model)
    counts: dict[str, int] = {}
    originals = {}

    def hook(layer, call):
        def wrapped(x, *args, **kwargs):
            rows = int(np.prod(x.shape[:-1]))
            kernel = layer.kernel.shape
            counts[layer.name] = counts.get(layer.name, 0) + rows * int(kernel[0]) * int(kernel[1])
            return call(x, *args, **kwargs)
        return wrapped

    for layer in layers:
        originals[layer] = layer.call
        layer.call = hook(layer, layer.call)
    try:
        model(dict(inputs), training=False)
    finally:
        for layer in originals:
            del layer.call  # back to the class's method
    return {"total": int(sum(counts.values())), "per_layer": counts}


def memory_macs(dim: int, num_tables: int, num_bits: int, num_trust_features: int,
                batch: int = 1, self_tuning: bool = True, readouts: int = 0) -> dict:
    """Multiply-adds per row of one read of an ``LSHErrorMemory`` (see the module docstring)."""
    if min(dim, batch) < 1 or min(num_tables, num_bits, num_trust_features, readouts) < 0:
        raise ValueError(f"sizes should be positive. Received: {dim=}, {num_tables=}, "
                         f"{num_bits=}, {num_trust_features=}, {batch=}")
    f = num_trust_features if self_tuning else 0
    parts = {
        "srp_projections": dim * num_tables * num_bits,
        "srp_bit_packing": num_tables * num_bits * num_tables,
        "combiner_readouts": readouts if self_tuning else 0,
        "combiner_dot": f,
    }
    parts["total"] = float(sum(parts.values()))
    parts["trust_solve_per_write"] = f**3 / 3 + f**2
    return parts


def memory_macs_of(model, batch: int = 1) -> dict:
    """``memory_macs`` for a built ``ReLoop2Model``'s sketch memory."""
    memory = model.memory
    dim = int(memory.dim)
    return memory_macs(dim, memory.num_tables, memory.num_bits, memory.num_trust_features,
                       batch, model.compensation.self_tuning,
                       readouts=int(np.prod(memory.read_weights.shape)))
