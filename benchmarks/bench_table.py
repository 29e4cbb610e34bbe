"""Markdown tables from ``reloop2 bench`` results: overall figures, lift over static with the
95 % intervals of the lift (AUC: DeLong, paired; gAUC: user bootstrap, rows when a log has few
users; logloss: paired normal), and the validation choice.

    python benchmarks/bench_table.py runs/ml1m-dcn/results.json [more results.json ...]
    python benchmarks/bench_table.py --seeds runs/s0/results.json runs/s1/results.json ...

``--seeds`` treats the files as one log and model run with several seeds (what ``reloop2 bench
--seeds`` writes) and prints their mean and standard deviation per method.
"""

from __future__ import annotations

import json
import sys


def _ci(lift: dict, key: str, scale: float, fmt: str) -> str:
    """``+0.58 [+0.45, +0.69]``; the bare figure where a results.json predates the interval."""
    text = f"{scale * lift[key]:+{fmt}}"
    if lift.get(key + "_ci95"):
        lo, hi = lift[key + "_ci95"]
        text += f" [{scale * lo:+{fmt}}, {scale * hi:+{fmt}}]"
    return text


def table(path: str) -> str:
    r = json.load(open(path, encoding="utf-8"))
    cfg = r["config"]
    out = [f"**{r['dataset']} / {cfg['model']}** (hidden `{cfg['hidden_layer']}`, feedback "
           f"{'per slot' if not cfg['feedback_every'] else 'every %d rows' % cfg['feedback_every']},"
           f" {len(r['methods']['static']['slots'])} slots of ~{r['split']['slot_rows'][0]:,} rows,"
           f" seed {r['seed']}, {r['wall_seconds']:.0f} s)", "",
           "| method | AUC | gAUC | logloss | ΔAUC [95 % CI] | ΔgAUC [95 % CI] | Δlogloss [95 % CI] "
           "| slots ahead of incremental (gAUC) |",
           "|---|---|---|---|---|---|---|---|"]
    for name, m in r["methods"].items():
        lift = r["lift_vs_static"].get(name)
        if lift:
            ahead = lift["slots_ahead_of_incremental"]
            ahead = "" if ahead is None else f"{ahead}/{len(m['slots'])}"
            extra = (f"{_ci(lift, 'auc', 100, '.2f')} | {_ci(lift, 'gauc', 100, '.2f')} | "
                     f"{_ci(lift, 'logloss', 1, '.4f')} | {ahead}")
        else:
            extra = " | | | "
        out.append(f"| {name} | {100 * m['auc']:.2f} | {100 * m['gauc']:.2f} | "
                   f"{m['logloss']:.4f} | {extra} |")
    share = r.get("sketch_share_of_knn_gauc_lift")
    if share is not None:
        out += ["", f"Sketch share of the k-NN gAUC lift: {100 * share:.0f} %."]
    if r.get("validation"):
        chosen = r["validation"]["chosen"]
        default = chosen.get("reloop2", {})
        settings = {k: default[k] for k in ("prior_count", "half_life") if k in default}
        out += ["", f"Chosen on validation: reloop2 `{settings}` (id groups "
                f"`{['*'.join(g) for g in default.get('id_groups', [])]}`)" +
                (f"; reloop2-paper `{chosen['lsh']}`" if "lsh" in chosen else "") +
                (f"; k-NN `{chosen['knn']}`" if "knn" in chosen else "") +
                "".join(f"; {k} `{v}`" for k, v in chosen.items() if k.endswith("bias")) +
                (f"; ftrl-offset alpha {chosen['ftrl-offset']['alpha']}"
                 if "ftrl-offset" in chosen else "")]
    return "\n".join(out)


def seeds_table(paths: list[str]) -> str:
    from reloop2_tf.evaluation.seeds import format_seed_table, summarize_seeds

    return format_seed_table(summarize_seeds([json.load(open(p, encoding="utf-8"))
                                              for p in paths]))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--seeds"]:
        print(seeds_table(sys.argv[2:]))
    else:
        print("\n\n".join(table(p) for p in sys.argv[1:]))
