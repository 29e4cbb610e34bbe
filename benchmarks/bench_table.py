"""Markdown tables from ``reloop2 bench`` results: overall figures, lift over static with the
user-bootstrap 95 % CI of the gAUC lift, per-slot gAUC, and the validation choice.

    python benchmarks/bench_table.py runs/ml1m-dcn/results.json [more results.json ...]
"""

from __future__ import annotations

import json
import sys


def table(path: str) -> str:
    r = json.load(open(path, encoding="utf-8"))
    cfg = r["config"]
    out = [f"**{r['dataset']} / {cfg['model']}** (hidden `{cfg['hidden_layer']}`, feedback "
           f"{'per slot' if not cfg['feedback_every'] else 'every %d rows' % cfg['feedback_every']},"
           f" {len(r['methods']['static']['slots'])} slots of ~{r['split']['slot_rows'][0]:,} rows,"
           f" seed {r['seed']}, {r['wall_seconds']:.0f} s)", "",
           "| method | AUC | gAUC | logloss | ΔAUC | ΔgAUC [95 % CI] | slots ahead of incremental (gAUC) |",
           "|---|---|---|---|---|---|---|"]
    for name, m in r["methods"].items():
        lift = r["lift_vs_static"].get(name)
        if lift:
            lo, hi = lift["gauc_ci95"]
            ahead = lift["slots_ahead_of_incremental"]
            ahead = "" if ahead is None else f"{ahead}/{len(m['slots'])}"
            extra = (f"{100 * lift['auc']:+.2f} | {100 * lift['gauc']:+.2f} "
                     f"[{100 * lo:+.2f}, {100 * hi:+.2f}] | {ahead}")
        else:
            extra = " | | "
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
                f"`{['*'.join(g) for g in default.get('id_groups', [])]}`); reloop2-paper "
                f"`{chosen['lsh']}`; k-NN `{chosen['knn']}`" +
                "".join(f"; {k} `{v}`" for k, v in chosen.items() if k.endswith("bias")) +
                (f"; ftrl-offset alpha {chosen['ftrl-offset']['alpha']}"
                 if "ftrl-offset" in chosen else "")]
    return "\n".join(out)


if __name__ == "__main__":
    print("\n\n".join(table(p) for p in sys.argv[1:]))
