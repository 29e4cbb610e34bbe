"""Read a local run back from ML Metadata: which component ran, how it ended, how long it took.

LocalDagRunner records every component execution in the SQLite store, attached to a
``node`` context named ``<pipeline>.<component id>`` and a ``pipeline_run`` context per run.
"""

from __future__ import annotations

import os
from typing import Any

STATE_NAMES = {0: "UNKNOWN", 1: "NEW", 2: "RUNNING", 3: "COMPLETE", 4: "FAILED", 5: "CACHED",
               6: "CANCELED"}


def open_store(path: str):
    """A read-only-in-spirit ``MetadataStore`` on the SQLite file ``path``."""
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no ML Metadata store at {path}")
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE
    return metadata_store.MetadataStore(config)


def _latest_run_context(store, pipeline_name: str):
    runs = [c for c in store.get_contexts_by_type("pipeline_run")]
    # Run contexts belong to a pipeline through their executions' node contexts; the newest
    # run with an execution of this pipeline is the one we want.
    prefix = f"{pipeline_name}."
    for context in sorted(runs, key=lambda c: c.create_time_since_epoch, reverse=True):
        executions = store.get_executions_by_context(context.id)
        for execution in executions:
            contexts = store.get_contexts_by_execution(execution.id)
            if any(c.name.startswith(prefix) for c in contexts):
                return context
    return None


def component_executions(path: str, pipeline_name: str,
                         run_id: str | None = None) -> list[dict[str, Any]]:
    """The component executions of one run (default: the latest), in start order.

    Each entry: ``component`` (node id), ``state`` (COMPLETE, FAILED, ...), ``seconds``
    (creation to last update of the execution), ``execution_id``, ``run_id``.
    """
    store = open_store(path)
    if run_id is None:
        context = _latest_run_context(store, pipeline_name)
    else:
        context = store.get_context_by_type_and_name("pipeline_run", run_id)
    if context is None:
        return []
    prefix = f"{pipeline_name}."
    rows = []
    for execution in store.get_executions_by_context(context.id):
        nodes = [c.name[len(prefix):] for c in store.get_contexts_by_execution(execution.id)
                 if c.name.startswith(prefix)]
        if not nodes:
            continue
        rows.append({
            "component": nodes[0],
            "state": STATE_NAMES.get(execution.last_known_state, str(execution.last_known_state)),
            "seconds": round((execution.last_update_time_since_epoch
                              - execution.create_time_since_epoch) / 1000.0, 1),
            "execution_id": execution.id,
            "run_id": context.name,
            "_start": execution.create_time_since_epoch,
        })
    rows.sort(key=lambda r: (r["_start"], r["execution_id"]))
    for row in rows:
        del row["_start"]
    return rows


def run_outputs(path: str, pipeline_name: str,
                run_id: str | None = None) -> dict[str, dict[str, list[str]]]:
    """``component -> output key -> artifact URIs`` of one run (default: the latest)."""
    from ml_metadata.proto import metadata_store_pb2

    store = open_store(path)
    if run_id is None:
        context = _latest_run_context(store, pipeline_name)
    else:
        context = store.get_context_by_type_and_name("pipeline_run", run_id)
    if context is None:
        return {}
    prefix = f"{pipeline_name}."
    outputs: dict[str, dict[str, list[str]]] = {}
    for execution in store.get_executions_by_context(context.id):
        nodes = [c.name[len(prefix):] for c in store.get_contexts_by_execution(execution.id)
                 if c.name.startswith(prefix)]
        if not nodes:
            continue
        events = [e for e in store.get_events_by_execution_ids([execution.id])
                  if e.type == metadata_store_pb2.Event.OUTPUT and e.path.steps]
        artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
        for event in events:
            key = event.path.steps[0].key
            outputs.setdefault(nodes[0], {}).setdefault(key, []).append(
                artifacts[event.artifact_id].uri)
    return outputs


def evaluation_summary(evaluation_uri: str) -> dict[str, Any]:
    """AUC of the candidate (and of the baseline, if any), and why it was not blessed.

    Keys: ``auc``, ``baseline_auc`` (None without a baseline), ``example_count``,
    ``validation_ok``, ``failures`` (TFMA's messages).
    """
    import tensorflow_model_analysis as tfma

    summary: dict[str, Any] = {"auc": None, "baseline_auc": None, "example_count": None}
    for metrics in tfma.load_metrics(evaluation_uri):
        if metrics.slice_key.single_slice_keys:
            continue  # only the overall slice
        for entry in metrics.metric_keys_and_values:
            name = entry.key.name
            value = entry.value.double_value.value
            if entry.key.is_diff:
                continue
            baseline = entry.key.model_name.endswith("baseline")
            if name == "auc":
                summary["baseline_auc" if baseline else "auc"] = round(value, 4)
            elif name == "example_count" and not baseline:
                summary["example_count"] = int(value)
    result = tfma.load_validation_result(evaluation_uri)
    summary["validation_ok"] = bool(result.validation_ok)
    summary["failures"] = [failure.message or describe_failure(failure)
                           for per_slice in result.metric_validations_per_slice
                           for failure in per_slice.failures]
    return summary


def describe_failure(failure) -> str:
    """``auc = 0.6719, needs >= 0.99`` for one TFMA ``ValidationFailure``."""
    key, threshold = failure.metric_key, failure.metric_threshold
    value = failure.metric_value.double_value.value
    if threshold.HasField("change_threshold"):
        change = threshold.change_threshold
        bound = change.absolute.value if change.HasField("absolute") else change.relative.value
        kind = "absolute" if change.HasField("absolute") else "relative"
        return (f"{key.name} change against the last blessed model = {value:+.4f}, needs "
                f"{kind} change >= {bound:+.4f}")
    bounds = threshold.value_threshold
    parts = []
    if bounds.HasField("lower_bound"):
        parts.append(f">= {bounds.lower_bound.value:g}")
    if bounds.HasField("upper_bound"):
        parts.append(f"<= {bounds.upper_bound.value:g}")
    return f"{key.name} = {value:.4f}, needs {' and '.join(parts)}"
