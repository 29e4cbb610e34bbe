"""Time-based split of a canonical CSV into the two input folders CsvExampleGen reads.

CsvExampleGen can only hash-split its input, which would mix future rows into training. The
canonical CSV (``reloop2 data prepare``) is sorted by time, so the first ``train_fraction`` of its
rows go to ``<output>/train/data.csv`` and the rest to ``<output>/eval/data.csv``; the pipeline's
``input_config`` maps one split to each folder. The file is streamed twice (count, then copy),
so its size is bounded by disk, not memory, and ``gs://`` paths work through ``tf.io.gfile``.

Run it by hand to stage the input of a Kubeflow run::

    python -m reloop2_tfx.data_split --data runs/ml100k --output gs://bucket/reloop2/input
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import os
import sys

from reloop2_tf.data.errors import DataError

logger = logging.getLogger(__name__)

DATA_FILE = "data.csv"
TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp", "label")


@dataclasses.dataclass(frozen=True)
class SplitResult:
    """What ``split_csv`` wrote: the input root of CsvExampleGen and the row counts."""

    input_dir: str
    train_rows: int
    eval_rows: int
    columns: tuple[str, ...]
    # Last training / first evaluation timestamp: eval data starts at or after train data ends.
    train_end: int | None
    eval_start: int | None


def resolve_csv(data: str | os.PathLike) -> str:
    """The CSV file of ``data``: a prepared directory (``data.csv`` inside) or a CSV file."""
    import tensorflow as tf

    path = os.fspath(data)
    if tf.io.gfile.isdir(path):
        path = os.path.join(path, DATA_FILE)
    if not tf.io.gfile.exists(path):
        raise DataError(f"{path} does not exist; run `reloop2 data prepare --output DIR` first")
    return path


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def split_csv(data: str | os.PathLike, output_dir: str | os.PathLike,
              train_fraction: float = 0.8) -> SplitResult:
    """Writes ``output_dir/{train,eval}/data.csv``: the first and the last rows of ``data``.

    Args:
        data: a canonical CSV (rows sorted by ``timestamp``) or the directory holding it.
        output_dir: str. Replaced: any previous ``train``/``eval`` folders are emptied first.
        train_fraction: float in (0, 1). Share of rows, from the oldest, used for training.
            Defaults to `0.8`.

    Raises:
        DataError: a missing file or canonical column, unsorted timestamps, or a split that
            would be empty. Values of the wrong type are left for ExampleValidator to report.
    """
    import tensorflow as tf

    if isinstance(train_fraction, bool) or not 0.0 < float(train_fraction) < 1.0:
        raise DataError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
    source = resolve_csv(data)
    with tf.io.gfile.GFile(source, "r") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise DataError(f"{source} is empty")
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataError(f"{source} lacks column(s) {', '.join(missing)}; columns: "
                            f"{', '.join(header)}")
        time_index = header.index("timestamp")
        rows, previous = 0, None
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            rows += 1
            stamp = _int_or_none(row[time_index]) if len(row) > time_index else None
            if stamp is not None:
                if previous is not None and stamp < previous:
                    raise DataError(f"{source}:{line}: timestamps go back in time ({stamp} < "
                                    f"{previous}); the split is by row order, so rows must be "
                                    "sorted by timestamp (reloop2 data prepare sorts them)")
                previous = stamp
    n_train = round(rows * float(train_fraction))
    if n_train == 0 or n_train == rows:
        raise DataError(f"train_fraction={train_fraction} of {rows} rows leaves an empty split")

    out = os.fspath(output_dir)
    paths = {}
    for split in (TRAIN_SPLIT, EVAL_SPLIT):
        folder = os.path.join(out, split)
        if tf.io.gfile.exists(folder):
            tf.io.gfile.rmtree(folder)  # stale files would match the split pattern
        tf.io.gfile.makedirs(folder)
        paths[split] = os.path.join(folder, DATA_FILE)

    train_end = eval_start = None
    with tf.io.gfile.GFile(source, "r") as fh, \
            tf.io.gfile.GFile(paths[TRAIN_SPLIT], "w") as train, \
            tf.io.gfile.GFile(paths[EVAL_SPLIT], "w") as evaluation:
        reader = csv.reader(fh)
        writers = {TRAIN_SPLIT: csv.writer(train, lineterminator="\n"),
                   EVAL_SPLIT: csv.writer(evaluation, lineterminator="\n")}
        header = next(reader)
        for writer in writers.values():
            writer.writerow(header)
        written = 0
        for row in reader:
            if not row:
                continue
            split = TRAIN_SPLIT if written < n_train else EVAL_SPLIT
            writers[split].writerow(row)
            stamp = _int_or_none(row[time_index]) if len(row) > time_index else None
            if split == TRAIN_SPLIT and stamp is not None:
                train_end = stamp
            elif split == EVAL_SPLIT and eval_start is None and stamp is not None:
                eval_start = stamp
            written += 1
    logger.info("time split of %s: %d train rows (until %s), %d eval rows (from %s) -> %s",
                source, n_train, train_end, rows - n_train, eval_start, out)
    return SplitResult(out, n_train, rows - n_train, tuple(header), train_end, eval_start)


def main(argv: list[str] | None = None) -> int:
    """``python -m reloop2_tfx.data_split --data DIR_OR_CSV --output DIR``."""
    parser = argparse.ArgumentParser(prog="python -m reloop2_tfx.data_split",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="prepared dir (data.csv) or a CSV file")
    parser.add_argument("--output", required=True, help="input root: gets train/ and eval/")
    parser.add_argument("--train-fraction", type=float, default=0.8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = split_csv(args.data, args.output, args.train_fraction)
    except DataError as err:
        print(f"data_split: error: {err}", file=sys.stderr)
        return 2
    print(f"{result.train_rows} train rows, {result.eval_rows} eval rows in {result.input_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
