"""The main job, end to end: data → TFX pipeline → TF Serving (gRPC) → replay with feedback.

1. Fetch a real time-ordered dataset and split it by time: the earlier part feeds the pipeline,
   the later part is held out for the replay.
2. Run the TFX pipeline on the local runner (validation, training of a zoo model with a
   warm-started error memory, evaluation, push to a serving directory).
3. Start the development PredictionService server on 127.0.0.1 over the pushed SavedModel, or
   use a real TF Serving address (``target``) that serves the same directory.
4. Replay the held-out period in time order through the gRPC client: predict each batch, then
   send its labels back with ``update_memory_by_keys`` (the keys predict returned).
5. Report AUC, gAUC and logloss of the base and the compensated predictions, per slot and
   overall (the same rows for both), as a table, ``report.json`` and ``slots.png``; stop the
   server.

TFX, the serving code and TensorFlow are imported inside ``run_demo`` so that importing this
module stays cheap.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from reloop2_tf.evaluation import metrics
from reloop2_tf.evaluation.plotting import plot_slots

logger = logging.getLogger(__name__)

METHOD_NAMES = {"base": "static (base model)", "reloop2": "reloop2 (served memory)"}


def _per_slot(pred: dict, num_slots: int) -> dict:
    """Per-slot and overall metrics of the base and compensated predictions, same rows for both."""
    edges = np.linspace(0, len(pred["labels"]), num_slots + 1).astype(int)
    methods = {}
    for key in ("base", "reloop2"):
        slots = []
        for a, b in zip(edges[:-1], edges[1:]):
            m = metrics.evaluate(pred["labels"][a:b], pred[key][a:b], pred["users"][a:b])
            slots.append({k: m[k] for k in ("auc", "gauc", "logloss", "rows")}
                         | {"first_timestamp": int(pred["timestamps"][a])})
        overall = metrics.evaluate(pred["labels"], pred[key], pred["users"])
        methods[METHOD_NAMES[key]] = {"auc": overall["auc"], "gauc": overall["gauc"],
                                      "logloss": overall["logloss"], "rows": overall["rows"],
                                      "slots": slots}
    return methods


def format_report(report: dict) -> str:
    lines = [f"{'slot':>4}  {'rows':>6}  {'AUC base':>9} {'AUC r2':>7}  {'gAUC base':>9} "
             f"{'gAUC r2':>8}  {'logloss base':>12} {'logloss r2':>10}"]
    base, comp = (report["methods"][METHOD_NAMES[k]] for k in ("base", "reloop2"))
    rows = list(zip(base["slots"], comp["slots"])) + [(base, comp)]
    for i, (b, c) in enumerate(rows, start=1):
        label = "all" if i == len(rows) else str(i)
        lines.append(f"{label:>4}  {b['rows']:>6}  {100 * b['auc']:9.2f} {100 * c['auc']:7.2f}  "
                     f"{100 * b['gauc']:9.2f} {100 * c['gauc']:8.2f}  {b['logloss']:12.4f} "
                     f"{c['logloss']:10.4f}")
    return "\n".join(lines)


def run_demo(output_dir, dataset: str = "ml-100k", model: str = "dcn",
             holdout_fraction: float = 0.2, max_rows: int | None = None, num_slots: int = 10,
             batch_size: int = 256, target: str | None = None, data_dir: str | None = None,
             train_steps: int | None = None, progress: bool = True) -> dict:
    """Runs the five steps; returns the report (also written to ``output_dir/report.json``).

    Args:
        output_dir: where data, the pipeline root, the serving directory and the report go.
        dataset: ``ml-100k`` or ``ml-1m`` (fetched and cached outside the repo if needed).
        model: a zoo model name.
        holdout_fraction: the later share of rows kept out of the pipeline and replayed.
        max_rows: use only the first N rows of the log (small slices for tests).
        target: ``HOST:PORT`` of a real TF Serving that serves ``output_dir/serving``; `None`
            starts the development server.
        train_steps: Trainer steps (default: the pipeline's).
    """
    from reloop2_tf import data
    from reloop2_serving.process import DevServerProcess
    from reloop2_serving.replay import replay
    from reloop2_tfx import local_runner

    if not 0 < holdout_fraction < 1:
        raise ValueError(f"`holdout_fraction` should be in (0, 1). Received: {holdout_fraction}")
    started = time.time()
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    logger.info("[1/5] preparing %s", dataset)
    frame = data.load_prepared(data.prepare(dataset, out / "data", data_dir=data_dir))
    if max_rows is not None:
        frame = frame.iloc[:max_rows]
    cut = int(len(frame) * (1 - holdout_fraction))
    pipeline_csv, holdout_csv = out / "pipeline_input.csv", out / "holdout.csv"
    frame.iloc[:cut].to_csv(pipeline_csv, index=False)
    frame.iloc[cut:].to_csv(holdout_csv, index=False)
    split = {"rows": len(frame), "pipeline_rows": cut, "holdout_rows": len(frame) - cut,
             "holdout_start_timestamp": int(frame["timestamp"].iloc[cut])}
    logger.info("split by time: %d rows to the pipeline, %d held out", cut, len(frame) - cut)

    logger.info("[2/5] running the TFX pipeline (local runner)")
    kwargs = {"train_steps": train_steps} if train_steps else {}
    serving_dir = out / "serving"
    result = local_runner.run(str(pipeline_csv), str(serving_dir),
                              pipeline_root=str(out / "tfx"), model_name=model, **kwargs)
    if result.pushed_version is None:
        raise RuntimeError("the pipeline did not push a model (not blessed); see "
                           f"{result.pipeline_root} and its evaluation: {result.evaluation}")
    logger.info("pushed version %s in %.0f s", result.pushed_version, result.wall_seconds)

    server = None
    try:
        if target is None:
            logger.info("[3/5] starting the development server over %s", serving_dir)
            server = DevServerProcess(serving_dir)
            target = server.target
        logger.info("[4/5] replaying %d held-out rows through %s", len(frame) - cut, target)
        replayed = replay(str(holdout_csv), target, batch_size=batch_size, progress=progress)
    finally:
        if server is not None:
            code = server.stop()
            logger.info("[5/5] development server (pid %d) stopped, exit code %s",
                        server.pid, code)
    pred = replayed.pop("predictions")
    report = {
        "dataset": dataset, "model": model, "split": split,
        "methods": _per_slot(pred, num_slots),
        "pipeline": {"pushed_version": result.pushed_version,
                     "wall_seconds": result.wall_seconds, "evaluation": result.evaluation,
                     "components": result.components},
        "serving": {"target": target, "development_server": server is not None,
                    "server_pid": server.pid if server else None,
                    "server_exit_code": server.proc.returncode if server else None,
                    "replay_seconds": replayed["seconds"], "batches": replayed["batches"],
                    "batch_size": batch_size, "memory_weight": replayed["memory_weight"]},
        "wall_seconds": round(time.time() - started, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    plot_slots(report, out / "slots.png",
               title=f"{dataset} / {model}: served predictions, base vs ReLoop2 (feedback every "
                     f"{batch_size} rows)")
    return report
