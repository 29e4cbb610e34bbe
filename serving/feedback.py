"""``reloop2 feedback run``: an Apache Beam pipeline that delivers labelled rows to every serving
replica's memory exactly once.

::

    rows (CSV / JSON lines / Pub/Sub / Kafka)
      -> parse (raw features, or memory_keys + base_probability; label, sample_weight)
      -> window (--window-rows N: row index // N | --window-seconds S: FixedWindows(S))
      -> CombinePerKey(WindowBatchFn): one columnar batch per window
      -> one key, in window order: the local copy of the model writes the window,
         delta = snapshot after - snapshot before
      -> memory_merge(delta, write_id) on every target; failures healed with memory_restore

The write id is derived from the input, the windowing, the window index and the window's rows
(``feedback_rows.write_id``), so re-running the pipeline on the same input adds nothing to any
replica. docs/feedback.md has the figures and the limits.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms import window as beam_window

from reloop2_serving.client import parse_targets
from reloop2_serving.feedback_apply import (
    DUPLICATE,
    FAILED,
    HEAL_FAILED,
    HEALED,
    MERGED,
    NAMESPACE,
    ApplyWindowsInOrder,
    ApplyWindowsStateful,
)
from reloop2_serving.feedback_rows import (
    RowError,
    WindowBatchFn,
    parse_json,
    parse_row,
    row_digest,
)

logger = logging.getLogger(__name__)
FORMATS = ("csv", "jsonl")
STREAM_PREFIXES = ("pubsub:", "kafka:")
_NOT_FEATURES = ("label", "sample_weight", "write_id")


def model_schema(model_dir: str) -> tuple[str, dict[str, str], int]:
    """The SavedModel to load (``model_dir`` itself, or its newest numbered version), the dtype
    name of each feature input of ``update_memory``, and the number of memory keys per row."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    from reloop2_tf.export import resolve_saved_model

    path = resolve_saved_model(model_dir)[0]
    with tf.io.gfile.GFile(f"{path}/saved_model.pb", "rb") as fh:
        saved = saved_model_pb2.SavedModel.FromString(fh.read())
    sigs = saved.meta_graphs[0].signature_def
    needed = ("update_memory", "update_memory_by_keys", "memory_snapshot", "memory_merge")
    missing = [name for name in needed if name not in sigs]
    if missing:
        raise ValueError(f"{path} has no {missing} signature(s): feedback needs a sketch memory")
    features = {name: tf.dtypes.as_dtype(info.dtype).name
                for name, info in sigs["update_memory"].inputs.items() if name not in _NOT_FEATURES}
    num_tables = sigs["update_memory_by_keys"].inputs["memory_keys"].tensor_shape.dim[1].size
    return path, features, int(num_tables)


class ReadRows(beam.DoFn):
    """A matched file -> ``(path, line number, row)``; CSV with a header, or JSON lines. Rows
    that cannot be written are counted (``rows_rejected``) and logged, never sent."""

    def __init__(self, fmt: str, features: dict[str, str], num_tables: int):
        self.fmt, self.features, self.num_tables = fmt, features, num_tables
        self.rejected = Metrics.counter(NAMESPACE, "rows_rejected")

    def process(self, readable):
        import csv
        import io

        path = readable.metadata.path
        with readable.open() as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            if self.fmt == "csv":
                records = ((n, r) for n, r in enumerate(csv.DictReader(text)))
            else:
                records = ((n, line) for n, line in enumerate(
                    line for line in text if line.strip()))
            for number, record in records:
                try:
                    row = (parse_row(record, self.features, self.num_tables)
                           if self.fmt == "csv"
                           else parse_json(record, self.features, self.num_tables))
                except RowError as err:
                    self.rejected.inc()
                    logger.warning("%s row %d dropped: %s", path, number + 1, err)
                    continue
                yield path, number, row


class ParseMessages(beam.DoFn):
    """A Pub/Sub or Kafka payload (one or more JSON lines) -> rows ordered by event time."""

    def __init__(self, features: dict[str, str], num_tables: int):
        self.features, self.num_tables = features, num_tables
        self.rejected = Metrics.counter(NAMESPACE, "rows_rejected")

    def process(self, payload, timestamp=beam.DoFn.TimestampParam):
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        for line in (s for s in text.splitlines() if s.strip()):
            try:
                row = parse_json(line, self.features, self.num_tables)
            except RowError as err:
                self.rejected.inc()
                logger.warning("message dropped: %s", err)
                continue
            row["order"] = (float(timestamp), row_digest(row))
            yield row


def _offsets(counts: dict[str, int]) -> dict[str, int]:
    """First row index of each file: files in path order, rows in file order."""
    out, total = {}, 0
    for path in sorted(counts):
        out[path], total = total, total + counts[path]
    return out


def _indexed(element, offsets: dict[str, int]) -> dict:
    path, number, row = element
    return {**row, "order": (offsets[path] + number, "")}  # inputs are never mutated


def _event_time(row: dict):
    if row["timestamp"] is None:
        raise ValueError("--window-seconds over files needs a `timestamp` column in every row")
    return beam_window.TimestampedValue(row, row["timestamp"])


class KeyByWindow(beam.DoFn):
    """``(window index, row)`` for a row in a ``FixedWindows(seconds)`` window."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def process(self, row, window=beam.DoFn.WindowParam):
        yield round(float(window.start) / self.seconds), row


def read_source(pipeline, source: str, fmt: str, features: dict, num_tables: int,
                messages=None):
    """The rows of ``source``: a file pattern, ``pubsub:projects/P/subscriptions/S``,
    ``pubsub:projects/P/topics/T`` or ``kafka:BOOTSTRAP_SERVERS/TOPIC``; or of ``messages``, a
    PCollection of payloads from any other unbounded source (JSON lines, timestamped). Returns
    ``(rows, bounded)``."""
    if messages is not None:
        pass
    elif source.startswith("pubsub:"):
        name = source[len("pubsub:"):]
        kind = "topic" if "/topics/" in name else "subscription"
        messages = pipeline | "ReadFromPubSub" >> beam.io.ReadFromPubSub(**{kind: name})
    elif source.startswith("kafka:"):
        from apache_beam.io.kafka import ReadFromKafka

        servers, _, topic = source[len("kafka:"):].rpartition("/")
        if not servers or not topic:
            raise ValueError(f"a Kafka source is kafka:BOOTSTRAP_SERVERS/TOPIC, got {source!r}")
        messages = (pipeline
                    | "ReadFromKafka" >> ReadFromKafka(
                        consumer_config={"bootstrap.servers": servers}, topics=[topic])
                    | "Values" >> beam.Values())
    else:
        files = (pipeline | "Match" >> fileio.MatchFiles(source) | "Open" >> fileio.ReadMatches())
        parsed = files | "Parse" >> beam.ParDo(ReadRows(fmt, features, num_tables))
        offsets = (parsed
                   | "PathOfRow" >> beam.Map(lambda e: (e[0], 1))
                   | "RowsPerFile" >> beam.CombinePerKey(sum)
                   | "AllFiles" >> beam.combiners.ToDict()
                   | "Offsets" >> beam.Map(_offsets))
        rows = parsed | "Index" >> beam.Map(_indexed, beam.pvalue.AsSingleton(offsets))
        return rows, True
    return messages | "ParseMessages" >> beam.ParDo(ParseMessages(features, num_tables)), False


def build_feedback(pipeline, *, model_path: str, features: dict, num_tables: int, source: str,
                   targets: Sequence[str], fmt: str = "csv", window_rows: int | None = None,
                   window_seconds: float | None = None, model_name: str = "reloop2",
                   batch_size: int = 1024, retries: int = 3, timeout: float = 30.0,
                   source_id: str = "", on_window: Callable[[int], None] | None = None,
                   messages=None):
    """Adds the feedback transforms to ``pipeline``; returns the PCollection of reports (one per
    window, then one ``{"final": True, ...}`` for a bounded source). ``messages`` replaces
    ``source`` by a PCollection of unbounded payloads (see ``read_source``)."""
    if (window_rows is None) == (window_seconds is None):
        raise ValueError("give exactly one of --window-rows and --window-seconds")
    rows, bounded = read_source(pipeline, source, fmt, features, num_tables, messages)
    if window_rows is not None:
        if not bounded:
            raise ValueError("--window-rows needs a file input; use --window-seconds for a stream")
        if window_rows < 1:
            raise ValueError(f"--window-rows must be >= 1, got {window_rows}")
        keyed = rows | "WindowByRows" >> beam.Map(lambda r: (r["order"][0] // window_rows, r))
        spec = f"rows={window_rows}"
    else:
        if not window_seconds > 0:
            raise ValueError(f"--window-seconds must be > 0, got {window_seconds}")
        if bounded:
            rows = rows | "EventTime" >> beam.Map(_event_time)
        keyed = (rows
                 | "FixedWindows" >> beam.WindowInto(beam_window.FixedWindows(window_seconds))
                 | "KeyByWindow" >> beam.ParDo(KeyByWindow(window_seconds)))
        spec = f"seconds={window_seconds}"
    config = {"model_path": model_path, "targets": list(targets), "model_name": model_name,
              "timeout": timeout, "retries": retries, "batch_size": batch_size,
              "source_id": source_id, "window_spec": spec, "on_window": on_window}
    batches = (keyed
               | "WindowBatch" >> beam.CombinePerKey(WindowBatchFn(features, num_tables))
               | "GlobalWindow" >> beam.WindowInto(beam_window.GlobalWindows())
               | "OneKey" >> beam.Map(lambda kv: (0, kv)))
    if bounded:
        return (batches
                | "AllWindows" >> beam.GroupByKey()
                | "ApplyInOrder" >> beam.ParDo(ApplyWindowsInOrder(config)))
    return batches | "ApplyAsTheyFire" >> beam.ParDo(ApplyWindowsStateful(config))


def default_source_id(source: str) -> str:
    """The input as the write ids name it: a local path made absolute, anything else as given."""
    if source.startswith(STREAM_PREFIXES) or "://" in source:
        return source
    return os.path.abspath(source)


def _log_report(report: dict) -> dict:
    logger.info("feedback window %s: %d rows, targets %s", report["window"], report["rows"],
                report["targets"])
    return report


def feedback_pipeline(model: str, input: str, targets: str | Sequence[str], *,  # noqa: A002
                      window_rows: int | None = None, window_seconds: float | None = None,
                      fmt: str | None = None, model_name: str = "reloop2",
                      batch_size: int = 1024, retries: int = 3, timeout: float = 30.0,
                      source_id: str | None = None, report: str | None = None,
                      beam_args: Sequence[str] = (),
                      on_window: Callable[[int], None] | None = None) -> tuple[beam.Pipeline, dict]:
    """Builds (never runs) the feedback pipeline under ``beam_args``; returns it and a dict with
    ``targets``, ``streaming`` and ``report`` (the JSON-lines report of a bounded run)."""
    targets = parse_targets(targets)
    streaming = input.startswith(STREAM_PREFIXES)
    fmt = fmt or ("jsonl" if input.endswith((".jsonl", ".json")) else "csv")
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if window_rows is None and window_seconds is None:
        if streaming:
            raise ValueError("a Pub/Sub or Kafka source needs --window-seconds")
        window_rows = 10_000
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    model_path, features, num_tables = model_schema(model)
    options = PipelineOptions(list(beam_args))
    if streaming:
        options.view_as(StandardOptions).streaming = True
    pipeline = beam.Pipeline(options=options)
    reports = build_feedback(
        pipeline, model_path=model_path, features=features, num_tables=num_tables,
        source=input, targets=targets, fmt=fmt, window_rows=window_rows,
        window_seconds=window_seconds, model_name=model_name, batch_size=batch_size,
        retries=retries, timeout=timeout,
        source_id=default_source_id(input) if source_id is None else source_id,
        on_window=on_window)
    if streaming:
        _ = reports | "LogReport" >> beam.Map(_log_report)
    else:
        if report is None:
            report = os.path.join(tempfile.mkdtemp(prefix="reloop2-feedback-"), "report.jsonl")
        _ = (reports
             | "ToJson" >> beam.Map(json.dumps)
             | "WriteReport" >> beam.io.WriteToText(report, shard_name_template=""))
    return pipeline, {"targets": targets, "streaming": streaming, "report": report}


def run_feedback(model: str, input: str, targets: str | Sequence[str], *,  # noqa: A002
                 report: str | None = None, **kwargs) -> dict:
    """Runs the feedback pipeline and returns its summary (``summarize``).

    Takes the arguments of ``feedback_pipeline``. ``beam_args`` are Beam pipeline options
    (``--runner``, ``--project``, ...; DirectRunner by default). ``report`` is where the
    per-window reports are written (JSON lines; by default a local temporary file, removed after
    reading, which a remote runner cannot write: give a ``gs://`` path there).
    ``on_window(index)`` is called before each window is applied (monitoring, fault tests).
    A streaming source returns at once with the job's state; its reports go to the log.
    """
    keep = report is not None
    started = time.perf_counter()
    pipeline, info = feedback_pipeline(model, input, targets, report=report, **kwargs)
    result = pipeline.run()
    if info["streaming"]:
        return {"streaming": True, "state": str(result.state), "targets": info["targets"]}
    result.wait_until_finish()
    seconds = time.perf_counter() - started
    report = info["report"]
    with FileSystems.open(report) as fh:
        lines = [json.loads(line) for line in fh.read().decode().splitlines() if line.strip()]
    rejected = result.metrics().query(MetricsFilter().with_name("rows_rejected"))["counters"]
    summary = summarize(lines, seconds, info["targets"])
    summary["rows_rejected"] = int(sum(c.committed or 0 for c in rejected))
    summary["report"] = report if keep else None
    if not keep:
        FileSystems.delete([report])
        os.rmdir(os.path.dirname(report))
    return summary


def summarize(reports: Sequence[dict], seconds: float, targets: Sequence[str]) -> dict:
    """Rows, windows, rows/s, bytes per merge and, per target, merges sent, dropped as
    duplicates, failed (with the windows missed) and heals (with the window, or "end")."""
    windows = sorted((r for r in reports if not r.get("final")), key=lambda r: r["window"])
    final = next((r for r in reports if r.get("final")), {})
    per = {t: {MERGED: 0, DUPLICATE: 0, FAILED: 0, HEALED: 0, HEAL_FAILED: 0,
               "missed_windows": [], "healed_at": []} for t in targets}
    for r in windows:
        for target, outcome in r["targets"].items():
            per[target][outcome] += 1
            if outcome in (FAILED, HEAL_FAILED):
                per[target]["missed_windows"].append(r["window"])
            elif outcome == HEALED:
                per[target]["healed_at"].append(r["window"])
    for target, outcome in final.get("targets", {}).items():
        per[target][outcome] += 1
        if outcome == HEALED:
            per[target]["healed_at"].append("end")
    rows = sum(r["rows"] for r in windows)
    n = max(len(windows), 1)
    return {
        "rows": rows, "windows": len(windows), "seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds, 1) if seconds > 0 else None,
        "merge_bytes": windows[0]["merge_bytes"] if windows else 0,
        "duplicate_windows": sum(r["duplicate"] for r in windows),
        "local_seconds_per_window": round(sum(r["local_seconds"] for r in windows) / n, 4),
        "send_seconds_per_window": round(sum(r["send_seconds"] for r in windows) / n, 4),
        "reference": final.get("reference"), "excluded": final.get("excluded", {}),
        "unhealed": final.get("unhealed", []), "targets": per,
    }
