"""Turn the schema SchemaGen inferred from one run into the reference later runs validate against.

TFX's workflow is: infer a schema once, curate it, then import it in every later run, so that
ExampleValidator compares new data with what the model was built for (a schema inferred from
the new data itself would accept a new column or a changed type). The curation below encodes
what the canonical CSV layout promises, so the reference is neither too strict for honest new
data nor too lax for broken data:

* ``user_id``, ``item_id``, ``timestamp`` and ``label`` are in every row; ``label`` is 0 or 1.
* Every other column may be missing in a row (a user's first row has an empty ``history``).
* Feature values have no closed vocabulary: new users, items, ages or genres are normal in a
  newer window, and the models hash whatever they get. SchemaGen's domains come from the
  values one run happened to see, so they are dropped, except for the columns named in
  ``closed_domains`` (a product decision; or edit ``schema.pbtxt`` by hand).

So ExampleValidator still catches a new or missing column, a label outside {0, 1}, a
non-integer label or timestamp, a missing id, and more than one value in a cell.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from reloop2_tfx.examples import read_schema

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp", "label")
LABEL_KEY = "label"

__all__ = ["REQUIRED_COLUMNS", "curate_schema", "read_schema", "write_schema"]


def curate_schema(schema, closed_domains: Sequence[str] = ()):
    """A curated copy of an inferred ``tensorflow_metadata`` Schema (see the module docstring)."""
    curated = type(schema)()
    curated.CopyFrom(schema)
    names = {f.name for f in curated.feature}
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"the inferred schema lacks canonical column(s) {missing}")
    for feature in curated.feature:
        if feature.name in REQUIRED_COLUMNS:
            feature.presence.min_fraction = 1.0
            feature.presence.min_count = 1
        else:
            feature.presence.ClearField("min_fraction")
            feature.presence.min_count = 0
        if feature.name == LABEL_KEY:
            feature.int_domain.min = 0
            feature.int_domain.max = 1
        elif feature.name not in closed_domains:
            feature.ClearField("domain_info")
    still_used = {f.domain for f in curated.feature if f.HasField("domain")}
    kept = [d for d in curated.string_domain if d.name in still_used]
    del curated.string_domain[:]
    curated.string_domain.extend(kept)
    return curated


def write_schema(schema, path: str) -> str:
    """Writes ``schema`` as a text proto to ``path`` (a temporary file, then a rename)."""
    import tensorflow as tf
    from google.protobuf import text_format

    folder = path.rsplit("/", 1)[0] if "/" in path else "."
    tf.io.gfile.makedirs(folder)
    tmp = f"{path}.partial"
    with tf.io.gfile.GFile(tmp, "w") as fh:
        fh.write(text_format.MessageToString(schema))
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path
