"""Turn the schema SchemaGen inferred from one run into the reference later runs validate against.

TFX's workflow is: infer a schema once, curate it, then import it in every later run, so that
ExampleValidator compares new data with what the model was built for (a schema inferred from
the new data itself would accept a new column or a changed type). The curation below encodes
what the canonical CSV layout promises, so the reference is neither too strict for honest new
data nor too lax for broken data:

* ``user_id``, ``item_id``, ``timestamp`` and ``label`` are in every row; ``label`` is 0 or 1.
* Every other column may be missing in a row (a user's first row has an empty ``history``).
* Ids and the history have no value domain (new users and items are normal); categorical side
  features keep the domain SchemaGen found, but up to ``1 - min_domain_mass`` of their values
  may be new, so a new genre is tolerated while a corrupted column is not.
"""

from __future__ import annotations

import logging

from reloop2_tf._keras import tf

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp", "label")
OPEN_DOMAIN_COLUMNS = ("user_id", "item_id", "history")
LABEL_KEY = "label"


def curate_schema(schema, min_domain_mass: float = 0.99):
    """A curated copy of an inferred ``tensorflow_metadata`` Schema (see the module docstring)."""
    if not 0.0 < min_domain_mass <= 1.0:
        raise ValueError(f"`min_domain_mass` should be in (0, 1]. Received: {min_domain_mass!r}")
    curated = type(schema)()
    curated.CopyFrom(schema)
    names = {f.name for f in curated.feature}
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"the inferred schema lacks canonical column(s) {missing}")
    unused_domains = set()
    for feature in curated.feature:
        if feature.name in REQUIRED_COLUMNS:
            feature.presence.min_fraction = 1.0
            feature.presence.min_count = 1
        else:
            feature.presence.ClearField("min_fraction")
            feature.presence.min_count = 0
        if feature.name in OPEN_DOMAIN_COLUMNS:
            if feature.HasField("domain"):
                unused_domains.add(feature.domain)
            feature.ClearField("domain_info")
        elif feature.WhichOneof("domain_info") in ("domain", "string_domain"):
            feature.distribution_constraints.min_domain_mass = min_domain_mass
        if feature.name == LABEL_KEY:
            feature.int_domain.min = 0
            feature.int_domain.max = 1
    # Drop top-level string domains only the open-domain columns referred to.
    still_used = {f.domain for f in curated.feature if f.HasField("domain")}
    kept = [d for d in curated.string_domain
            if d.name not in unused_domains or d.name in still_used]
    del curated.string_domain[:]
    curated.string_domain.extend(kept)
    return curated


def read_schema_text(path: str):
    """A Schema proto from a ``schema.pbtxt`` file (any tf.io.gfile path)."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    with tf.io.gfile.GFile(path, "r") as fh:
        return text_format.Parse(fh.read(), schema_pb2.Schema())


def write_schema_text(schema, path: str) -> str:
    """Writes ``schema`` as text proto to ``path`` (via a temporary file, then a rename)."""
    from google.protobuf import text_format

    folder = path.rsplit("/", 1)[0] if "/" in path else "."
    tf.io.gfile.makedirs(folder)
    tmp = f"{path}.partial"
    with tf.io.gfile.GFile(tmp, "w") as fh:
        fh.write(text_format.MessageToString(schema))
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path
