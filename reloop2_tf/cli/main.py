"""The ``reloop2`` command line (SPEC section 6).

Heavy imports (TensorFlow, TFX) happen inside the commands, so ``reloop2 --help`` is fast and
prints no TensorFlow log lines; when a command loads TensorFlow, its C++ logging is off
(``TF_CPP_MIN_LOG_LEVEL=3``) unless the user sets the variable, and only this package's loggers
show INFO lines. Every command exits non-zero with a one-line error on bad arguments or bad data.

The serving and TFX command groups live with their subsystems (``reloop2_serving.cli``,
``reloop2_tfx.cli``); this module imports them, never the reverse.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace

from reloop2_serving import cli as serving_cli
from reloop2_serving.feedback_cli import register_feedback
from reloop2_serving.sync_cli import register_sync
from reloop2_tfx import cli as pipeline_cli

DATASETS = ("ml-100k", "ml-1m", "csv")
# The drift scenarios (reloop2_tf.evaluation.scenarios.SCENARIOS), repeated so that --help needs
# no pandas import; tests/test_layout.py checks that the two agree.
SCENARIO_NAMES = ("cold-start", "flip-gradual", "flip-sudden", "flip-users", "label-shift",
                  "recurring")


def _add_source_flags(parser: argparse.ArgumentParser, synthetic: bool = False) -> None:
    choices = DATASETS + (("synthetic",) if synthetic else ())
    parser.add_argument("--dataset", required=True, choices=choices)
    parser.add_argument("--data-dir", help="folder with the dataset's files (default: fetch and cache)")
    parser.add_argument("--csv", help="the log, for --dataset csv")
    parser.add_argument("--user-col")
    parser.add_argument("--item-col")
    parser.add_argument("--time-col")
    parser.add_argument("--label-col")
    parser.add_argument("--label-threshold", type=float,
                        help="label = value >= threshold (csv default: the column is already "
                             "0/1; MovieLens: rating >= 4)")
    parser.add_argument("--item-features", help="side table of item features (CSV/TSV)")
    parser.add_argument("--item-key")
    parser.add_argument("--user-features", help="side table of user features (CSV/TSV)")
    parser.add_argument("--user-key")
    parser.add_argument("--history-length", type=int, default=20)


def _source_kwargs(args) -> dict:
    return dict(csv=args.csv, user_col=args.user_col, item_col=args.item_col,
                time_col=args.time_col, label_col=args.label_col,
                label_threshold=args.label_threshold, item_features=args.item_features,
                item_key=args.item_key, user_features=args.user_features, user_key=args.user_key,
                data_dir=args.data_dir, history_length=args.history_length)


def _load_frame(args):
    from reloop2_tf import data

    if args.dataset == "csv":
        if not args.csv:
            raise data.DataError("--dataset csv needs --csv PATH")
        for flag in ("user_col", "item_col", "time_col", "label_col"):
            if not getattr(args, flag):
                raise data.DataError(f"--dataset csv needs --{flag.replace('_', '-')}")
        return data.load_csv(args.csv, args.user_col, args.item_col, args.time_col,
                             args.label_col, label_threshold=args.label_threshold,
                             item_features=args.item_features, item_key=args.item_key,
                             user_features=args.user_features, user_key=args.user_key,
                             history_length=args.history_length)
    return data.load_dataset(args.dataset, data_dir=args.data_dir,
                             history_length=args.history_length,
                             label_threshold=args.label_threshold)


def _prepare(args) -> int:
    from reloop2_tf import data

    path = data.prepare(args.dataset, args.output, **_source_kwargs(args))
    print(f"wrote {path}")
    return 0


def _feedback_every(value: str) -> int:
    """Rows per feedback window; 0 for 'slot' (once per slot; the flag's absence is None)."""
    if value == "slot":
        return 0
    try:
        rows = int(value)
    except ValueError:
        rows = 0
    if rows < 1:
        raise argparse.ArgumentTypeError(f"expected a number of rows >= 1 or 'slot', got {value!r}")
    return rows


def _rows(value: str) -> int:
    try:
        rows = int(value)
    except ValueError:
        rows = -1
    if rows < 0:
        raise argparse.ArgumentTypeError(f"expected a number of rows >= 0, got {value!r}")
    return rows


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {value!r}")
    return seconds


def _seeds(value: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in value.split(","))
    except ValueError:
        seeds = ()
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct integers >= 0 like '0,1,2', got {value!r}")
    return seeds


def _id_bits(value: str) -> int:
    try:
        bits = int(value)
    except ValueError:
        bits = 0
    if not 1 <= bits <= 24:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, 24], got {value!r}")
    return bits


def _id_groups(value: str) -> list:
    if value.strip().lower() == "none":
        return []
    groups = [[name.strip() for name in group.split("*")] for group in value.split(",")]
    if not all(all(groups_part) for groups_part in groups):
        raise argparse.ArgumentTypeError(f"expected names like 'item_id,user_id*genre', got {value!r}")
    return groups


def _bench(args) -> int:
    if args.seeds and (args.scenario or args.dataset == "synthetic"):
        raise ValueError("`--seeds` runs the streaming benchmark once per seed; the drift testbed "
                         "and the synthetic stream take one `--seed` (benchmarks/drift_runs.sh "
                         "loops over seeds)")
    if args.feedback_seconds is not None and (args.feedback_every is not None or args.scenario
                                              or args.dataset == "synthetic"):
        raise ValueError("`--feedback-seconds` cuts the streaming benchmark's feedback by the "
                         "log's timestamps: give it without `--feedback-every`, and not with "
                         "`--scenario` (the drift testbed writes every `--window` rows) or the "
                         "synthetic stream")
    # --half-life 0: no forgetting (the layers take None).
    half_life = None if args.half_life == 0 else args.half_life
    if args.dataset == "synthetic":
        from reloop2_tf.evaluation import synthetic_bench

        results = synthetic_bench.run(args.output, seed=args.seed, quick=args.quick)
        print(synthetic_bench.format_table(results))
    elif args.scenario:
        from reloop2_tf.evaluation import benchmark, drift_bench

        df = _load_frame(args)
        bench = benchmark.BenchConfig(dataset=args.dataset, model=args.model, num_slots=args.slots,
                                      seed=args.seed, history_length=args.history_length,
                                      hidden_layer=args.hidden_layer, center=not args.no_center)
        if args.epochs is not None:
            bench.epochs = args.epochs
        config = drift_bench.DriftConfig(scenario=args.scenario, bench=bench, cohort=args.cohort)
        if args.quick:
            config = drift_bench.quick_config(config)
        if args.warm_start_rows is not None:
            bench.warm_start_rows = args.warm_start_rows
        config.t0_slot = args.t0_slot if args.t0_slot is not None else config.t0_slot
        config.window = args.window if args.window is not None else config.window
        if args.half_life is not None:
            config.memory.half_life = half_life
        if args.id_bits is not None:
            config.memory.id_bits = args.id_bits
        if args.methods:
            config.methods = tuple(args.methods.split(","))
        results = drift_bench.run_drift(df, config, args.output)
        print(drift_bench.format_table(results))
        print(f"results: {args.output}/results.json, plot: {args.output}/windows.png "
              f"({results['wall_seconds']} s)")
        return 0
    else:
        from reloop2_tf.evaluation import benchmark

        df = _load_frame(args)
        config = benchmark.BenchConfig(dataset=args.dataset, model=args.model,
                                       num_slots=args.slots, seed=args.seed,
                                       history_length=args.history_length,
                                       feedback_seconds=args.feedback_seconds,
                                       sweep=not args.no_sweep, quick=args.quick,
                                       carry_trust=not args.cold_trust,
                                       hidden_layer=args.hidden_layer,
                                       center=not args.no_center)
        if args.feedback_every is not None:  # else the config's default (1,000 rows)
            config.feedback_every = args.feedback_every or None
        if args.half_life is not None:
            config.memory.half_life = half_life
            config.fixed_memory += ("half_life",)
        if args.id_groups is not None:
            config.memory.id_groups = args.id_groups
        if args.id_bits is not None:
            config.memory.id_bits = args.id_bits
        if args.epochs is not None:
            config.epochs = args.epochs
        if args.quick:
            config = benchmark.quick_config(config)
        if args.warm_start_rows is not None:
            config.warm_start_rows = args.warm_start_rows
        methods = tuple(args.methods.split(",")) if args.methods else benchmark.METHODS
        if args.ablations:
            methods += ("reloop2 no-centre", *benchmark.ablations(
                replace(config.memory, id_groups=config.memory.id_groups
                        or benchmark.id_groups_for_frame(df))))
        if args.seeds:
            from reloop2_tf.evaluation import seeds

            summary = seeds.run_seeds(df, config, args.output, args.seeds, methods=methods)
            print(seeds.format_seed_table(summary))
            print(f"results: {args.output}/seed-*/results.json, summary: {args.output}/"
                  f"summary.json, plot: {args.output}/seeds.png ({summary['wall_seconds']} s)")
            return 0
        results = benchmark.run_benchmark(df, config, args.output, methods=methods)
        print(benchmark.format_table(results))
    print(f"results: {args.output}/results.json, plot: {args.output}/slots.png "
          f"({results['wall_seconds']} s)")
    return 0


def _demo(args) -> int:
    from reloop2_tf.cli import demo
    from reloop2_tfx.local_runner import quiet_logs

    quiet_logs()
    report = demo.run_demo(args.output, dataset=args.dataset, model=args.model,
                           max_rows=args.max_rows, num_slots=args.slots,
                           batch_size=args.batch_size, target=args.target,
                           data_dir=args.data_dir, train_steps=args.train_steps)
    print(demo.format_report(report))
    print(f"report: {args.output}/report.json, plot: {args.output}/slots.png "
          f"({report['wall_seconds']} s; pipeline {report['pipeline']['wall_seconds']} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reloop2", description="ReLoop2 for Keras, TFX and TF Serving")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prepare = data_sub.add_parser("prepare", help="write a canonical, time-sorted data.csv")
    _add_source_flags(prepare)
    prepare.add_argument("--output", required=True, help="directory for data.csv and meta.json")
    prepare.set_defaults(func=_prepare)

    bench = sub.add_parser("bench", help="streaming benchmark: static vs incremental vs ReLoop2")
    _add_source_flags(bench, synthetic=True)
    bench.add_argument("--model", default="dcn", help="zoo model: deepfm, dcn, dcnv2, din, dien, bst")
    bench.add_argument("--slots", type=int, default=10, help="number of test slots T")
    bench.add_argument("--feedback-every", type=_feedback_every, default=None,
                       help="write labels every B rows (default 1000, as serving does), or "
                            "'slot': after each slot (the paper's protocol)")
    bench.add_argument("--feedback-seconds", type=_seconds, default=None,
                       help="write labels at the end of every S-second window of the log's "
                            "timestamps instead, as `reloop2 feedback run --window-seconds S` "
                            "does")
    bench.add_argument("--id-groups", type=_id_groups, default=None,
                       help="the memory's id groups, e.g. 'item_id,user_id*genre' ('*' crosses, "
                            "'user_id*item_id:popularity' crosses the user with the item's "
                            "count in the memory, 'none' for similarity only; default: found "
                            "in the log)")
    bench.add_argument("--id-bits", type=_id_bits, default=None,
                       help="each id table has 2^N buckets, N in [1, 24] (default: sized to the "
                            "keys of the newest 200,000 training rows, docs/core.md)")
    bench.add_argument("--epochs", type=int, default=None)
    bench.add_argument("--hidden-layer", default="hidden",
                       help="layer whose output keys the memory (default: the input of the logit)")
    bench.add_argument("--no-center", action="store_true",
                       help="ablation: do not centre hidden vectors before hashing")
    bench.add_argument("--half-life", type=float, default=None,
                       help="memory forgetting, in rows written (0: none; default: chosen on "
                            "the validation stream from 20000, 100000 and none; the drift "
                            "testbed's own setting with --scenario)")
    bench.add_argument("--methods", help="comma-separated subset of the methods (validation "
                       "sweeps only the settings of those it runs)")
    bench.add_argument("--ablations", action="store_true",
                       help="also run the default memory with each part switched off")
    bench.add_argument("--no-sweep", action="store_true",
                       help="skip the validation sweeps and use the default memory settings")
    bench.add_argument("--warm-start-rows", type=_rows, default=None,
                       help="the newest training rows written into every memory and baseline "
                            "before the test stream (default 20000; 0: none; more than the "
                            "training period: all of it)")
    bench.add_argument("--cold-trust", action="store_true",
                       help="start the memory's combiner at zero trust on the test stream "
                            "instead of with what it learnt on the validation stream")
    bench.add_argument("--scenario", choices=SCENARIO_NAMES,
                       help="drift testbed: inject this shift into the test stream (docs/drift.md)")
    bench.add_argument("--cohort", help="with --scenario: the shifted cohort as COLUMN=VALUE")
    bench.add_argument("--t0-slot", type=int, default=None,
                       help="with --scenario: the test slot where the shift starts (default 2)")
    bench.add_argument("--window", type=int, default=None,
                       help="with --scenario: rows per metric window and per memory feedback (1000)")
    bench.add_argument("--quick", action="store_true", help="a few minutes on 2 cores (ML-100K)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--seeds", type=_seeds, default=None,
                       help="run once per seed, e.g. 0,1,2 (OUTPUT/seed-N), and summarize the "
                            "lifts across seeds (OUTPUT/summary.json, seeds.png)")
    bench.add_argument("--output", required=True, help="directory for results.json and plots")
    bench.set_defaults(func=_bench)

    demo = sub.add_parser("demo", help="the main job: data → TFX → TF Serving → replay with feedback")
    demo.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m"])
    demo.add_argument("--data-dir", help="folder with the dataset's files (default: fetch and cache)")
    demo.add_argument("--model", default="dcn", help="zoo model: deepfm, dcn, dcnv2, din, dien, bst")
    demo.add_argument("--target", help="HOST:PORT of a real TF Serving that serves OUTPUT/serving "
                                       "(default: start the development server)")
    demo.add_argument("--max-rows", type=int, help="use only the first N rows (a quick slice)")
    demo.add_argument("--slots", type=int, default=10)
    demo.add_argument("--batch-size", type=int, default=256,
                      help="rows per predict/update round trip (the feedback granularity)")
    demo.add_argument("--train-steps", type=int, help="Trainer steps (default: the pipeline's)")
    demo.add_argument("--output", default="runs/demo")
    demo.set_defaults(func=_demo)

    # serve, replay; pipeline run|compile
    serving_cli.register(sub)
    pipeline_cli.register(sub)

    # feedback run: labelled rows to every replica's memory, once each (Beam)
    register_feedback(sub)

    memory = sub.add_parser("memory", help="the served memory: keep it durable, keep replicas in sync")
    memory_sub = memory.add_subparsers(dest="memory_command", required=True)
    serving_cli.register_keep(memory_sub)
    register_sync(memory_sub)
    return parser


# The loggers whose INFO lines a user of the command line reads; every other library's
# warnings and errors still show.
OWN_LOGGERS = ("reloop2_tf", "reloop2_serving", "reloop2_tfx")
# TensorFlow's Python logger (tf.function retracing notes, deprecation notices from TFMA and
# others): errors only. TFX's absl lines are filtered by the pipeline commands
# (`reloop2_tfx.local_runner.quiet_logs`): their progress lines are worth keeping.
QUIET_LOGGERS = ("tensorflow",)


def main(argv: list[str] | None = None) -> int:
    # Before a command imports TensorFlow: no C++ log lines (the CUDA plugin's "Unable to
    # register cuDNN factory" errors on every CPU machine), unless the user chose a level.
    # TensorFlow's real failures still reach the user as Python exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # DataError is a ValueError
        parser.exit(2, f"reloop2 {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
