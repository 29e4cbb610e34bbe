"""Adds a read-only ``predict_examples`` signature (serialized tf.Examples in) to a SavedModel.

TFMA 0.47 calls a generic SavedModel either with the parsed features, matched by input name,
or, when the signature has a single string input, with the serialized examples. The first way
breaks here: the statistics-driven parse gives int64 ids (CsvExampleGen typed the MovieLens ids
as INT) while the serving signatures take strings. So the Evaluator calls this signature,
which parses the examples with ``examples.parse_examples`` (the Trainer's own parsing) and then
calls the exported ``predict`` signature: what TFMA scores is what TF Serving serves.

``export_serving_model`` has no hook for extra signatures, so the exported SavedModel is loaded
and saved again with its signatures plus this one. Re-saving keeps the variables, the memory
included (its value at export), and ``update_memory`` still writes in a TF1 Session.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from reloop2_tf._keras import tf
from reloop2_tf.export import PREDICT
from reloop2_tf.features import FeatureSpec
from reloop2_tfx.examples import parse_examples

logger = logging.getLogger(__name__)

EXAMPLES_SIGNATURE = "predict_examples"
EXAMPLES_INPUT = "examples"
_EXTRA_ASSETS = "assets.extra"


def add_examples_signature(exported_dir: str, output_dir: str, types: Mapping[str, str],
                           spec: FeatureSpec) -> str:
    """Saves ``exported_dir`` again to ``output_dir`` with ``predict_examples`` added.

    Args:
        exported_dir: str. A SavedModel from ``export_serving_model``.
        output_dir: str. Must not hold a SavedModel yet; may be remote (gs://).
        types: column name -> schema type (``examples.column_types``).
        spec: the model's ``FeatureSpec``.

    Returns:
        ``output_dir``.
    """
    loaded = tf.saved_model.load(exported_dir)
    signatures = dict(loaded.signatures)
    if EXAMPLES_SIGNATURE in signatures:
        raise ValueError(f"{exported_dir} already has a {EXAMPLES_SIGNATURE!r} signature")
    predict = signatures[PREDICT]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def predict_examples(examples):
        # Only `predict` is called: evaluating must never write the memory.
        features = parse_examples(examples, types, spec, with_label=False)
        return predict(**features)

    signatures[EXAMPLES_SIGNATURE] = predict_examples.get_concrete_function()
    tf.saved_model.save(loaded, output_dir, signatures=signatures)
    source_assets = f"{exported_dir}/{_EXTRA_ASSETS}"
    if tf.io.gfile.isdir(source_assets):
        # Warm-up requests live outside the SavedModel proto; save() does not carry them.
        target_assets = f"{output_dir}/{_EXTRA_ASSETS}"
        tf.io.gfile.makedirs(target_assets)
        for name in tf.io.gfile.listdir(source_assets):
            tf.io.gfile.copy(f"{source_assets}/{name}", f"{target_assets}/{name}", overwrite=True)
    logger.info("saved %s with signatures %s", output_dir, sorted(signatures))
    return output_dir
