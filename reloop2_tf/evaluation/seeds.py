"""The streaming benchmark over several seeds: how much of a lift is the log, how much the seed.

A seed changes the base model's initialisation and shuffling, the memory's projections and id
hashes, and the bootstrap. On MovieLens 1M the default memory's gAUC lift over static moves by
about 0.15 points between seeds (docs/benchmarks.md), as much as its 95 % interval within one
run: a claim about one log should hold across seeds, not only in one.

    reloop2 bench --dataset ml-1m --model dcn --seeds 0,1,2 --output runs/ml1m-dcn-seeds

writes one ``reloop2 bench`` run per seed (``OUTPUT/seed-N/results.json``), then
``OUTPUT/summary.json`` (per method: every seed's figures, their mean and standard deviation)
and ``OUTPUT/seeds.png``.
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

import pandas as pd

from reloop2_tf.evaluation.benchmark import METHODS, BenchConfig, _jsonable, run_benchmark
from reloop2_tf.evaluation.plotting import plot_seeds

# A method's figures in the summary: these metrics, and (but for static) their lifts over
# static as "lift_<metric>"; gauc_window where every run has it (runs before the tenth session
# do not).
METRICS = ("auc", "gauc", "logloss", "gauc_window")


def summarize_seeds(runs: list[dict]) -> dict:
    """Per method, every run's figures (``METRICS`` and their lifts) and their mean and
    standard deviation (sample, ``None`` for one run). The runs must be of one log, model and
    feedback protocol, with the same methods and distinct seeds."""
    if not runs:
        raise ValueError("no runs to summarize")
    names = list(runs[0]["methods"])
    setup = _setup(runs[0])
    for run in runs[1:]:
        if _setup(run) != setup:
            raise ValueError("runs of different logs, models or feedback protocols cannot be "
                             f"summarized as seeds: {setup} vs {_setup(run)}")
        if list(run["methods"]) != names:
            raise ValueError(f"runs with different methods cannot be summarized: {names} vs "
                             f"{list(run['methods'])}")
    seeds = [run["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the runs must have distinct seeds. Received: seeds {seeds}")
    methods = {}
    for name in names:
        keys = [k for k in METRICS if all(k in run["methods"][name] for run in runs)]
        figures = {key: _spread([run["methods"][name][key] for run in runs]) for key in keys}
        if name != "static":
            figures.update({f"lift_{key}": _spread([run["lift_vs_static"][name][key]
                                                    for run in runs]) for key in keys})
        methods[name] = figures
    # The head-to-head differences every run has (runs before the fourteenth session have none),
    # with how many seeds' 95 % intervals lie wholly above zero and wholly below it.
    pairs = [pair for pair in runs[0].get("head_to_head", {})
             if all(pair in run.get("head_to_head", {}) for run in runs)]
    head_to_head = {}
    for pair in pairs:
        diffs = [run["head_to_head"][pair] for run in runs]
        head_to_head[pair] = {key: _spread([d[key] for d in diffs]) for key in ("auc", "gauc", "logloss")}
        head_to_head[pair]["gauc_seeds_above"] = sum(d["gauc_ci95"][0] > 0 for d in diffs)
        head_to_head[pair]["gauc_seeds_below"] = sum(d["gauc_ci95"][1] < 0 for d in diffs)
    return {"dataset": runs[0]["dataset"], "model": runs[0]["config"]["model"],
            "seeds": seeds, "methods": methods, "head_to_head": head_to_head}


def _spread(values: list[float]) -> dict:
    return {"values": values, "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None}


def _setup(run: dict) -> tuple:
    """What runs summarized as seeds of one another must share."""
    return (run["dataset"], run["config"]["model"], run["config"].get("feedback_every"),
            run["config"].get("feedback_seconds"), run.get("split", {}).get("rows"))


def run_seeds(df: pd.DataFrame, config: BenchConfig, output_dir, seeds, progress: bool = True,
              methods: tuple[str, ...] = METHODS) -> dict:
    """``run_benchmark`` once per seed into ``output_dir/seed-N``, each from a fresh copy of
    ``config`` (a run writes its validation choices into its config); returns the summary,
    also written to ``output_dir/summary.json`` with its plot ``seeds.png``."""
    output_dir = Path(output_dir)
    runs = []
    for seed in seeds:
        run_config = copy.deepcopy(config)
        run_config.seed = seed
        runs.append(run_benchmark(df, run_config, output_dir / f"seed-{seed}", progress, methods))
    summary = summarize_seeds(runs)
    summary["wall_seconds"] = round(sum(run["wall_seconds"] for run in runs), 1)
    (output_dir / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2))
    plot_seeds(summary, output_dir / "seeds.png")
    return summary


def format_seed_table(summary: dict) -> str:
    """Mean ± standard deviation over the seeds, and every seed's gAUC lift, as plain text."""
    width = max(22, *(len(name) + 2 for name in summary["methods"]))
    seeds = summary["seeds"]
    lines = [f"{summary['dataset']} / {summary['model']}, seeds {', '.join(map(str, seeds))}: "
             "mean ± sd (points; logloss as is)",
             f"{'method':<{width}}{'AUC':>15}{'gAUC':>15}{'logloss':>18}{'ΔAUC':>15}"
             f"{'ΔgAUC':>15}{'ΔgAUC window':>15}   ΔgAUC per seed"]

    def cell(figure, scale, digits, sign=""):
        text = f"{scale * figure['mean']:{sign}.{digits}f}"
        if figure["sd"] is not None:
            text += f" ± {scale * figure['sd']:.{digits}f}"
        return text

    for name, m in summary["methods"].items():
        row = (f"{name:<{width}}{cell(m['auc'], 100, 2):>15}{cell(m['gauc'], 100, 2):>15}"
               f"{cell(m['logloss'], 1, 4):>18}")
        if "lift_gauc" in m:
            window = m.get("lift_gauc_window")
            row += (f"{cell(m['lift_auc'], 100, 2, '+'):>15}{cell(m['lift_gauc'], 100, 2, '+'):>15}"
                    f"{cell(window, 100, 2, '+') if window else '':>15}   "
                    + " ".join(f"{100 * v:+.2f}" for v in m["lift_gauc"]["values"]))
        lines.append(row)
    pairs = summary.get("head_to_head", {})
    if pairs:
        width = max(len(pair) for pair in pairs) + 2
        lines += ["", "head to head (the first method minus the second): mean ± sd; seeds whose "
                  "ΔgAUC interval is above / below 0",
                  f"{'':<{width}}{'ΔAUC':>15}{'ΔgAUC':>15}{'Δlogloss':>18}{'above / below':>16}"]
        for pair, d in pairs.items():
            lines.append(f"{pair:<{width}}{cell(d['auc'], 100, 2, '+'):>15}"
                         f"{cell(d['gauc'], 100, 2, '+'):>15}{cell(d['logloss'], 1, 4, '+'):>18}"
                         f"{d['gauc_seeds_above']:>9} / {d['gauc_seeds_below']}")
    return "\n".join(lines)
