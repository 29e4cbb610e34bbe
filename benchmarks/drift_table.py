"""Tables and plots for docs/drift.md from drift runs over several seeds.

    python benchmarks/drift_table.py runs/drift --dataset ml1m --seeds 0 1 2 --plots docs/img

reads RUNS/<dataset>-<scenario>-s<seed>/results.json (written by ``reloop2 bench --scenario``) and
prints one markdown table per scenario: mean over seeds with a 95 % t-interval (half-width after
"±"), recovery rows per seed. With ``--plots`` it also writes drift_<scenario>.png, the window
curves averaged over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats

from reloop2_tf.evaluation.drift_bench import add_won_back
from reloop2_tf.evaluation.plotting import plot_windows
from reloop2_tf.evaluation.scenarios import SCENARIOS


def _ci(values, digits: int = 2) -> str:
    """Mean ± 95 % t-interval half-width over seeds (a single seed: its value)."""
    values = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if values.size == 0:
        return "n/a"
    if values.size == 1:
        return f"{values[0]:.{digits}f}"
    half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
    return f"{values.mean():.{digits}f} ± {half:.{digits}f}"


def _rows(values) -> str:
    return "/".join("never" if v is None else f"{v / 1000:.0f}k" for v in values)


def table(runs: list[dict], metric: str = "auc") -> str:
    """One markdown table: every method of the runs, mean ± 95 % CI over the runs (seeds).

    Drop, recovery, regret and won-back are of ``metric``: AUC/gAUC in points, logloss as is.
    """
    scale, digits = (1, 3) if metric == "logloss" else (100, 2)
    name_of = {"auc": "AUC", "gauc": "gAUC", "logloss": "logloss"}[metric]
    within = "1 pt" if scale == 100 else "0.01"
    header = (f"| method | {name_of} drop | back within {within} after (rows; per seed) | "
              f"{name_of} regret | regret saved vs static | won back by end of slot 1 | won back in slot 2 | "
              "post AUC | post gAUC | post logloss |")
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for name in runs[0]["methods"]:
        ms = [r["methods"][name] for r in runs]
        rec = [m["recovery"][metric] for m in ms]
        lines.append("| " + " | ".join([
            name,
            _ci([scale * r["drop"] for r in rec], digits),
            _rows([r["recovery_rows"] for r in rec]),
            _ci([scale * r["regret"] for r in rec], 0 if scale == 100 else 1),
            _ci([scale * (s["recovery"][metric]["regret"] - r["regret"])  # paired by seed
                 for s, r in zip([x["methods"]["static"] for x in runs], rec)],
                0 if scale == 100 else 1),
            _ci([100 * m["won_back"][metric]["end_of_first_slot"] for m in ms], 0) + " %",
            _ci([100 * m["won_back"][metric]["second_slot"] for m in ms], 0) + " %",
            _ci([100 * m["steady_state"]["auc"] for m in ms]),
            _ci([100 * m["steady_state"]["gauc"] for m in ms]),
            _ci([m["steady_state"]["logloss"] for m in ms], 3),
        ]) + " |")
    return "\n".join(lines)


def onset_table(runs: list[dict], metric: str = "auc") -> str:
    """Per switch of a recurring shift (on, off, on, off): drop and regret, mean ± 95 % CI."""
    count = len(runs[0]["methods"]["static"]["onsets"])
    phases = ["on", "off"] * count
    cells = [f"{phases[i]} #{i // 2 + 1} {what}" for i in range(count) for what in ("drop", "regret")]
    lines = ["| method | " + " | ".join(cells) + " |", "|---" * (len(cells) + 1) + "|"]
    for name in runs[0]["methods"]:
        row = [name]
        for i in range(count):
            rec = [r["methods"][name]["onsets"][i][metric] for r in runs]
            row += [_ci([100 * r["drop"] for r in rec], 1), _ci([100 * r["regret"] for r in rec], 0)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def mean_curves(runs: list[dict]) -> dict:
    """A results-like dict whose window curves are the mean over the runs (truncated to the shortest)."""
    n = min(len(r["windows"]["edges"]) for r in runs) - 1
    merged = {"config": runs[0]["config"], "scenario": runs[0]["scenario"],
              "windows": {"edges": runs[0]["windows"]["edges"][:n + 1]}, "methods": {},
              "reference": {"windows": {
                  key: np.nanmean([r["reference"]["windows"][key][:n] for r in runs], axis=0).tolist()
                  for key in ("auc", "gauc")}}}
    for name in runs[0]["methods"]:
        merged["methods"][name] = {"windows": {
            key: np.nanmean([r["methods"][name]["windows"][key][:n] for r in runs], axis=0).tolist()
            for key in ("auc", "gauc")}}
    return merged


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--dataset", default="ml1m")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    parser.add_argument("--plots", type=Path, help="folder for drift_<scenario>.png")
    parser.add_argument("--main-only", action="store_true", help="plot without the ablation rows")
    args = parser.parse_args(argv)
    for scenario in args.scenarios:
        paths = [args.runs / f"{args.dataset}-{scenario}-s{seed}" / "results.json"
                 for seed in args.seeds]
        runs = [add_won_back(json.loads(p.read_text())) for p in paths if p.exists()]
        if not runs:
            continue
        seeds = [r["seed"] for r in runs]
        print(f"\n### {scenario} (seeds {', '.join(map(str, seeds))})\n")
        # Random positives turned negative are label noise no method can undo: AUC must fall.
        # What a label shift breaks, and what can be recovered, is calibration: logloss.
        print(table(runs, "logloss" if scenario == "label-shift" else "auc"))
        if len(runs[0]["methods"]["static"]["onsets"]) > 1:
            print(f"\nPer switch ({scenario}; AUC points, regret in points x 1,000 rows):\n")
            print(onset_table(runs))
        if args.plots:
            merged = mean_curves(runs)
            if args.main_only:
                merged["methods"] = {k: v for k, v in merged["methods"].items() if " " not in k}
            args.plots.mkdir(parents=True, exist_ok=True)
            plot_windows(merged, args.plots / f"drift_{scenario}.png",
                         title=f"{args.dataset} / {scenario}: mean over seeds {seeds}")


if __name__ == "__main__":
    main()
