"""The two custom components of the pipeline: a validation gate and an atomic filesystem Pusher.

* ``ValidationGate``: ExampleValidator only *records* anomalies; no standard component reads
  them, so a pipeline would train on data it flagged (tensorflow/tfx-addons#153). The gate fails
  when any split has an anomaly, and otherwise passes the schema through. The Trainer and the
  Evaluator take their schema from the gate, so they cannot start on flagged data.
* ``AtomicPusher``: the stock filesystem Pusher copies the model file by file into
  ``<base>/<unix time>`` (``saved_model.pb`` last). A TF Serving poller can list that directory
  while it is incomplete, and two pushes within one second collide. On a local filesystem this
  Pusher copies into a hidden temporary directory and renames it to the next free version
  number, which is atomic; elsewhere (gs://, s3://) it falls back to the stock behaviour.
"""

# No `from __future__ import annotations`: the @component decorator reads the real type
# hints of ValidationGate, not strings.
import logging
import os
import time
import uuid
from typing import Any

from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils
from tfx.v1.components import Pusher
from tfx.v1.dsl.components import InputArtifact, OutputArtifact, component
from tfx.v1.proto import PushDestination
from tfx.v1.types.standard_artifacts import ExampleAnomalies, Schema

logger = logging.getLogger(__name__)

ANOMALIES_FILE = "SchemaDiff.pb"
SCHEMA_FILE = "schema.pbtxt"


class DataAnomaliesError(RuntimeError):
    """ExampleValidator found anomalies; the pipeline stops before training."""


def describe_anomalies(anomalies_uri: str, split_names: list[str]) -> list[str]:
    """One line per anomaly, ``split: feature: description``, from ExampleValidator's output."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    lines = []
    for split in split_names:
        path = os.path.join(anomalies_uri, f"Split-{split}", ANOMALIES_FILE)
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(io_utils.read_bytes_file(path))
        for feature, info in sorted(anomalies.anomaly_info.items()):
            lines.append(f"{split}: {feature}: {info.description or info.short_description}")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            lines.append(f"{split}: (dataset): {info.description or info.short_description}")
    return lines


@component
def ValidationGate(
        anomalies: InputArtifact[ExampleAnomalies],
        schema: InputArtifact[Schema],
        validated_schema: OutputArtifact[Schema]) -> None:
    """Fails on any ExampleValidator anomaly; otherwise outputs the schema the data passed."""
    splits = artifact_utils.decode_split_names(anomalies.split_names)
    problems = describe_anomalies(anomalies.uri, splits)
    if problems:
        # Raising fails this execution, so LocalDagRunner and Kubeflow skip everything
        # downstream: no training, no evaluation, no push.
        raise DataAnomaliesError(
            f"ExampleValidator found {len(problems)} anomal{'y' if len(problems) == 1 else 'ies'}"
            f" against the schema at {schema.uri}: " + "; ".join(problems))
    io_utils.copy_file(os.path.join(schema.uri, SCHEMA_FILE),
                       os.path.join(validated_schema.uri, SCHEMA_FILE))
    logger.info("no anomalies in splits %s; schema passed to training", splits)


def _is_local(path: str) -> bool:
    return "://" not in path


def next_version(base_dir: str) -> int:
    """A version number above every existing one, and at least the current Unix time.

    Unix time keeps the stock Pusher's numbering (so mixed histories still sort), and the
    ``+ 1`` guarantees a new version even for two pushes in the same second.
    """
    taken = [int(name) for name in os.listdir(base_dir) if name.isdigit()] if os.path.isdir(
        base_dir) else []
    return max(int(time.time()), max(taken, default=0) + 1)


class AtomicPushExecutor(pusher_executor.Executor):
    """The stock Pusher executor, but a local push appears in one rename."""

    def Do(self, input_dict: dict[str, list[types.Artifact]],
           output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        destination = PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        base = destination.filesystem.base_directory
        if destination.WhichOneof("destination") != "filesystem" or not _is_local(base):
            super().Do(input_dict, output_dict, exec_properties)
            return

        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        os.makedirs(base, exist_ok=True)
        # The temporary name is not a number, so TF Serving's version poller ignores it.
        tmp = os.path.join(base, f".tmp-push-{uuid.uuid4().hex}")
        io_utils.copy_dir(model_path, tmp)
        for _ in range(100):
            version = str(next_version(base))
            target = os.path.join(base, version)
            try:
                os.rename(tmp, target)  # fails if a concurrent push took the number
                break
            except OSError:
                if not os.path.exists(target):
                    raise
        else:
            raise RuntimeError(f"could not find a free version number in {base}")
        logger.info("pushed %s to %s", model_path, target)
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=target, pushed_version=version)


class AtomicPusher(Pusher):
    """``tfx.v1.components.Pusher`` with ``AtomicPushExecutor``."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(AtomicPushExecutor)
