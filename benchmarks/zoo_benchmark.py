"""Zoo models vs logistic regression on the MovieLens 100K time split.

The first 80% of the ratings by time train, the last 20% test. Within the 80%, the last eighth
(by time) validates: early stopping on AUC picks each zoo model's epochs and the LR's ``C``;
then each is refit on the whole 80% (the rows nearest the test period matter most) and scored
on the test part: AUC, gAUC (per user), logloss, parameter count and training seconds per
epoch. The baseline is scikit-learn's LogisticRegression on one-hot user, item and side
features.

    TF_USE_LEGACY_KERAS=1 RELOOP2_DATA=../shared/data \\
        .venv/bin/python benchmarks/zoo_benchmark.py --output runs/zoo_benchmark.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import OneHotEncoder

from reloop2_tf import training
from reloop2_tf._keras import keras, tf
from reloop2_tf.data import load_dataset, time_split
from reloop2_tf.evaluation import metrics
from reloop2_tf.features import FeatureSpec
from reloop2_tf.models import MODELS, build_model, hidden_dim

logger = logging.getLogger("zoo_benchmark")

ONE_HOT_COLUMNS = ["user_id", "item_id", "age", "gender", "occupation", "genre", "release_year"]


def logistic_regression(train: pd.DataFrame, test: pd.DataFrame, c: float) -> dict:
    """One-hot LR; unseen categories of the test part get all-zero columns."""
    start = time.perf_counter()
    encoder = OneHotEncoder(handle_unknown="ignore")
    x_train = encoder.fit_transform(train[ONE_HOT_COLUMNS].astype(str))
    model = LogisticRegression(C=c, max_iter=1000)
    model.fit(x_train, train["label"].to_numpy())
    seconds = time.perf_counter() - start
    probs = model.predict_proba(encoder.transform(test[ONE_HOT_COLUMNS].astype(str)))[:, 1]
    result = metrics.evaluate(test["label"].to_numpy(), probs, test["user_id"].to_numpy())
    result.update(
        model=f"logistic regression (one-hot, C={c:g})",
        params=int(x_train.shape[1] + 1),
        epoch_seconds=seconds,
        epochs=1,
        hidden_dim=None,
    )
    return result


def zoo_model(
    name: str,
    spec: FeatureSpec,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    test: pd.DataFrame,
    args: argparse.Namespace,
) -> dict:
    """Early stopping on ``valid`` picks the epochs; then a fresh model trains that many on
    ``train + valid`` (the rows nearest the test period matter most under a time split)."""

    def fresh() -> keras.Model:
        keras.backend.clear_session()
        keras.utils.set_random_seed(args.seed)
        return build_model(name, spec, embedding_dim=args.embedding_dim)

    common = {
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "verbose": args.verbose,
    }
    model = fresh()
    history = training.fit(
        model, train, spec, validation_df=valid, epochs=args.epochs, patience=args.patience,
        **common,
    )
    logs = history.history
    best_epochs = int(np.argmax(logs["val_auc"])) + 1
    if args.refit:
        model = fresh()
        refit = training.fit(model, pd.concat([train, valid]), spec, epochs=best_epochs, **common)
        seconds = refit.history["epoch_seconds"]
    else:
        seconds = logs["epoch_seconds"]
    result = training.evaluate_frame(model, test, spec)
    result.update(
        model=name,
        params=int(model.count_params()),
        # The first epoch includes tracing the train step; the median is the steady state.
        epoch_seconds=float(np.median(seconds)),
        first_epoch_seconds=float(seconds[0]),
        epochs=best_epochs,
        best_val_auc=float(max(logs["val_auc"])),
        hidden_dim=hidden_dim(model),
    )
    return result


def aggregate(runs: list[dict]) -> dict:
    """Mean and standard deviation over seeds of the metrics; the rest from the first run."""
    out = dict(runs[0])
    for key in ("auc", "gauc", "logloss", "epoch_seconds", "first_epoch_seconds"):
        if key in out:
            values = np.array([r[key] for r in runs], dtype=np.float64)
            out[key], out[f"{key}_std"] = float(values.mean()), float(values.std())
    out["seeds"] = len(runs)
    out["per_seed"] = runs
    out["epochs"] = "/".join(str(r["epochs"]) for r in runs)
    return out


def markdown(results: list[dict]) -> str:
    lines = [
        "| model | test AUC | test gAUC | logloss | params | s / epoch | epochs | hidden |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        hidden = "" if r["hidden_dim"] is None else str(r["hidden_dim"])
        auc, gauc = f"{r['auc']:.4f}", f"{r['gauc']:.4f}"
        if r.get("seeds", 1) > 1:
            auc += f" ± {r['auc_std']:.4f}"
            gauc += f" ± {r['gauc_std']:.4f}"
        lines.append(
            f"| {r['model']} | {auc} | {gauc} | {r['logloss']:.4f} | "
            f"{r['params']:,} | {r['epoch_seconds']:.1f} | {r['epochs']} | {hidden} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--data-dir", default=None, help="folder of ml-100k (else RELOOP2_DATA)")
    parser.add_argument("--history-length", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--patience", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument(
        "--lr-c", type=float, nargs="+", default=[0.1, 0.3, 1.0, 3.0],
        help="inverse L2 strengths of the LR, chosen on the validation rows",
    )
    parser.add_argument(
        "--no-refit", dest="refit", action="store_false",
        help="test the early-stopped model instead of refitting on train + valid",
    )
    parser.add_argument(
        "--exclude", nargs="*", default=[], help="spec features the zoo models leave out"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="mean ± std over")
    parser.add_argument("--verbose", type=int, default=2)
    parser.add_argument("--output", default="runs/zoo_benchmark.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    df = load_dataset("ml-100k", data_dir=args.data_dir, history_length=args.history_length)
    train_all, test = time_split(df, 0.8)
    train, valid = time_split(train_all, 0.875)
    logger.info("rows: train %d, valid %d, test %d", len(train), len(valid), len(test))
    spec = FeatureSpec.movielens(history_length=args.history_length)
    if args.exclude:
        spec = FeatureSpec([f for f in spec if f.name not in args.exclude], spec.target_item)

    # C is chosen on the validation rows like the zoo's epochs, then refit on train + valid.
    c = max(args.lr_c, key=lambda c: logistic_regression(train, valid, c)["auc"])
    results = [logistic_regression(train_all if args.refit else train, test, c)]
    logger.info("LR: %s", results[-1])
    for name in args.models:
        runs = []
        for seed in args.seeds:
            args.seed = seed
            runs.append(zoo_model(name, spec, train, valid, test, args))
            logger.info("%s seed %d: %s", name, seed, runs[-1])
        results.append(aggregate(runs))

    table = markdown(results)
    print(table)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {
                "results": results,
                "args": vars(args),
                "rows": {"train": len(train), "valid": len(valid), "test": len(test)},
                "tensorflow": tf.__version__,
                "load_average_at_end": os.getloadavg(),
                "table": table,
            },
            indent=2,
        )
    )
    baseline = results[0]["auc"]
    losers = [r["model"] for r in results[1:] if not r["auc"] > baseline]
    if losers:
        logger.warning("not above the LR baseline's AUC %.4f: %s", baseline, losers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
