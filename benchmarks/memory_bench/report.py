"""The summary of one run: targets, the printed tables and the Markdown of docs/performance.md."""

from __future__ import annotations

import glob
import json
from pathlib import Path

from memory_bench.structures import TOP_K

REPO = Path(__file__).resolve().parents[2]


def gauc_share() -> dict:
    """``sketch_share_of_knn_gauc_lift`` from the streaming benchmark's runs, if any."""
    found = {}
    for path in sorted(glob.glob(str(REPO / "runs" / "*" / "results.json"))):
        try:
            with open(path) as f:
                results = json.load(f)
        except (OSError, ValueError):
            continue
        if "sketch_share_of_knn_gauc_lift" in results:
            lift = results.get("lift_vs_static", {})
            found[str(Path(path).relative_to(REPO))] = {
                "sketch_share_of_knn_gauc_lift": results["sketch_share_of_knn_gauc_lift"],
                "gauc_lift_sketch": lift.get("reloop2", {}).get("gauc"),
                "gauc_lift_knn": lift.get("reloop2-knn", {}).get("gauc"),
            }
    return found


def targets(results: dict) -> dict:
    out: dict = {}
    top = max(results["config"]["rows"])
    flat, speed, footprint = {}, {}, {}
    for block in results["memories"]:
        d = str(block["dim"])
        across = block["sketch_across_rows"]
        flat[d] = {kind: {b: max(t[r]["ratio_to_smallest"] for r in t) for b, t in across[kind].items()}
                   for kind in ("read", "write")}
        cell = next(c for c in block["cells"] if c["rows"] == top)
        speed[d] = {b: {name: t[name].get("ratio_to_sketch")
                        for name in ("knn", "faiss_flat", "faiss_ivf", "faiss_ivf_diffuse")}
                    for b, t in cell["read"].items()}
        speed[d]["faiss_recall"] = {name: cell["accuracy"][name]["recall_at_k"]
                                    for name in ("faiss_ivf", "faiss_ivf_diffuse")}
        footprint[d] = across["state_bytes"]
    knn = [v[n] for s in speed.values() for b, v in s.items() if b != "faiss_recall"
           for n in ("knn",) if v[n] is not None]
    ivf = [v[n] for s in speed.values() for b, v in s.items() if b != "faiss_recall"
           for n in ("faiss_ivf", "faiss_ivf_diffuse")]
    out["flat_in_rows"] = {"target": "sketch read/write cost flat from smallest to largest N: "
                                     "largest ratio (time at N / time at smallest N) near 1",
                           "measured": flat}
    out["reads_at_largest_rows"] = {
        "target": f"at N={top}: exact k-NN time / sketch time >= 100 and FAISS IVF time / sketch "
                  "time > 1 at recall >= 0.9",
        "measured_ratios_to_sketch": speed,
        "knn_at_least_100x_in_every_measured_batch": bool(knn) and min(knn) >= 100,
        "faiss_ivf_slower_in_every_batch": bool(ivf) and min(ivf) > 1,
    }
    dcn = results.get("dcn")
    if dcn:
        default = dcn["default_sketch"]
        out["dcn_overhead"] = {
            "target": "compensation adds <= 10% to a DCN forward at batch 1024",
            "tf_function": dcn["tf_function"][default]["overhead_vs_base"],
            "saved_model_signature": dcn.get("saved_model_signature", {}).get(
                default, {}).get("overhead_vs_base"),
        }
        out["dcn_overhead"]["met"] = out["dcn_overhead"]["tf_function"] <= 0.10
    out["footprint"] = {"target": "sketch state <= 32 MB, independent of rows written",
                        "sketch_bytes_by_dim": footprint,
                        "met": max(footprint.values()) <= 32 * 2**20}
    out["gauc_lift_share"] = {"target": "sketch keeps >= 90% of exact k-NN's gAUC lift "
                                        "(streaming benchmark)", "runs": gauc_share()}
    return out


def _ms(t: dict) -> str:
    if "median_ms" not in t:
        return f"{'skipped':>18}"
    return f"{t['median_ms']:9.3f} ({t['ratio_to_sketch']:6.1f}x)"


def print_tables(results: dict) -> None:
    names = ("knn", "faiss_flat", "faiss_ivf", "faiss_ivf_diffuse", "tf_call_floor")
    for block in results["memories"]:
        d = block["dim"]
        print(f"\nd = {d}: read + compensate, median ms (x = time / sketch time)")
        print(f"{'N':>9} {'batch':>6} {'sketch':>9} " + " ".join(f"{n:>18}" for n in names))
        for cell in block["cells"]:
            for batch, t in cell["read"].items():
                print(f"{cell['rows']:>9} {batch:>6} {t['sketch']['median_ms']:9.3f} "
                      + " ".join(_ms(t[n]) for n in names))
            acc = cell["accuracy"]
            print(f"{'':>17} FAISS IVF nprobe/nlist, recall@{TOP_K}: clustered "
                  f"{acc['faiss_ivf']['nprobe']}/{acc['faiss_ivf']['nlist']}, "
                  f"{acc['faiss_ivf']['recall_at_k']:.3f}; diffuse "
                  f"{acc['faiss_ivf_diffuse']['nprobe']}/{acc['faiss_ivf_diffuse']['nlist']}, "
                  f"{acc['faiss_ivf_diffuse']['recall_at_k']:.3f}")
        print(f"d = {d}: writes, rows/s (x = time / sketch time)")
        for cell in block["cells"]:
            for batch, t in cell["write"].items():
                print(f"{cell['rows']:>9} {batch:>6} " + "  ".join(
                    f"{name} {v['rows_per_s']:,.0f} ({v['ratio_to_sketch']:.2f}x)"
                    for name, v in t.items() if isinstance(v, dict)))
        across = block["sketch_across_rows"]
        for kind in ("read", "write"):
            print(f"d = {d}: sketch {kind} across N (time / time at smallest N): " + "; ".join(
                f"b={b}: " + ", ".join(f"{r}: {v['ratio_to_smallest']:.2f}" for r, v in t.items())
                for b, t in across[kind].items()))
    dcn = results.get("dcn")
    if dcn:
        tfn = dcn["tf_function"]
        print(f"\nDCN batch {dcn['batch']} (tf.function), base {tfn['base']['median_ms']:.2f} ms; "
              "overhead: " + ", ".join(f"{n} {100 * t['overhead_vs_base']:+.1f}%"
                                       for n, t in tfn.items() if n != "base" and ":" not in n)
              + "; parts of the default sketch as a share of the base forward: " + ", ".join(
                  f"{n.split(':')[1]} {100 * (1 + t['overhead_vs_base']):.0f}%"
                  for n, t in tfn.items() if ":" in n))
        sig = dcn.get("saved_model_signature")
        if sig:
            default = dcn["default_sketch"]
            print(f"DCN batch {dcn['batch']} (SavedModel signature): base "
                  f"{sig['base']['median_ms']:.2f} ms, {default} "
                  f"{100 * sig[default]['overhead_vs_base']:+.1f}%")
    print("\nload average: start", results["load_average"]["start"], "end",
          results["load_average"]["end"])


def _fmt_ms(ms: float) -> str:
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.3g}"


def _x(t: dict | None, digits: int = 1) -> str:
    if not t or "median_ms" not in t:
        return "—"
    return f"{_fmt_ms(t['median_ms'])} ms ({t['ratio_to_sketch']:,.{digits}f}×)"


def _memory_tables(results: dict, add) -> None:
    add("### Read + compensate (median ms per call; × = time / sketch time, same group)\n")
    add("| d | N | batch | sketch | exact k-NN (ours) | FAISS flat (exact) | FAISS IVF, clustered "
        "| FAISS IVF, diffuse | empty tf.function |")
    add("|---|---|---|---|---|---|---|---|---|")
    for block in results["memories"]:
        for cell in block["cells"]:
            for batch, t in cell["read"].items():
                add(f"| {block['dim']} | {cell['rows']:,} | {batch} | {_fmt_ms(t['sketch']['median_ms'])} "
                    f"| {_x(t.get('knn'))} | {_x(t.get('faiss_flat'))} | {_x(t.get('faiss_ivf'))} "
                    f"| {_x(t.get('faiss_ivf_diffuse'))} | {_x(t.get('tf_call_floor'), 2)} |")
    add("\n### FAISS IVF operating points and estimate accuracy (held-out queries)\n")
    add("| d | N | IVF clustered: nprobe/nlist, recall@32 | IVF diffuse: nprobe/nlist, recall@32 "
        "| mean abs. diff. of ȳ from exact k-NN: sketch / IVF clustered / IVF diffuse |")
    add("|---|---|---|---|---|")
    for block in results["memories"]:
        for cell in block["cells"]:
            a = cell["accuracy"]
            c, f = a["faiss_ivf"], a["faiss_ivf_diffuse"]
            key = "mean_abs_label_estimate_diff_vs_exact_knn"
            add(f"| {block['dim']} | {cell['rows']:,} | {c['nprobe']}/{c['nlist']}, "
                f"{c['recall_at_k']:.3f} | {f['nprobe']}/{f['nlist']}, {f['recall_at_k']:.3f} "
                f"| {a['sketch'][key]:.3f} / {c[key]:.3f} / {f[key]:.3f} |")
    wb = str(results["config"]["write_batch"])
    add(f"\n### Writes, batch {wb} (rows/s; × = time / sketch time)\n")
    add("| d | N | sketch | exact k-NN (ring buffer) | FAISS flat | FAISS IVF |")
    add("|---|---|---|---|---|---|")
    for block in results["memories"]:
        for cell in block["cells"]:
            t = cell["write"][wb]
            add(f"| {block['dim']} | {cell['rows']:,} | {t['sketch']['rows_per_s']:,.0f} | " + " | ".join(
                f"{t[n]['rows_per_s']:,.0f} ({t[n]['ratio_to_sketch']:.2f}×)"
                for n in ("knn", "faiss_flat", "faiss_ivf")) + " |")
    add("\n### The sketch alone across N (time / time at the smallest N, one interleaved group)\n")
    rows = results["config"]["rows"]
    add("| d | operation | batch | " + " | ".join(f"N = {n:,}" for n in rows) + " |")
    add("|---|---|---|" + "---|" * len(rows))
    for block in results["memories"]:
        across = block["sketch_across_rows"]
        for kind in ("read", "write"):
            for batch, t in across[kind].items():
                add(f"| {block['dim']} | {kind} | {batch} | " + " | ".join(
                    f"{t[str(n)]['ratio_to_smallest']:.2f} ({_fmt_ms(t[str(n)]['median_ms'])} ms)"
                    for n in rows) + " |")
    add("\n### State size (MB)\n")
    add("| d | N | sketch | exact k-NN | FAISS flat | FAISS IVF |")
    add("|---|---|---|---|---|---|")
    for block in results["memories"]:
        for cell in block["cells"]:
            b = cell["state_bytes"]
            add(f"| {block['dim']} | {cell['rows']:,} | " + " | ".join(
                f"{b[n] / 2**20:,.1f}" for n in ("sketch", "knn", "faiss_flat", "faiss_ivf")) + " |")


def markdown(results: dict) -> str:
    """The tables of docs/performance.md, from one run's results."""
    lines = []
    add = lines.append
    if results["memories"]:
        _memory_tables(results, add)
    rss = results.get("peak_rss", {})
    if rss.get("children"):
        add(f"\n### Peak RSS, one process per structure (d = {rss['children'][0]['dim']}, "
            f"N = {rss['rows']:,}, one read batch of {rss['read_batch']})\n")
        add("| structure | peak RSS (MB) | over the empty process (MB) | state (MB) |")
        add("|---|---|---|---|")
        for c in rss["children"]:
            if "peak_rss_mb" in c:
                add(f"| {c['structure']} | {c['peak_rss_mb']:,.0f} | "
                    f"{c['peak_over_empty_process_mb']:,.0f} | {c['state_bytes'] / 2**20:,.1f} |")
    dcn = results.get("dcn")
    if dcn:
        add(f"\n### DCN forward pass at batch {dcn['batch']} (hidden width {dcn['hidden_width']})\n")
        add("| call | variant | median ms | added to the base forward |")
        add("|---|---|---|---|")
        for name, t in dcn["tf_function"].items():
            share = (f"(a part: {100 * (1 + t['overhead_vs_base']):.0f}% of the base forward)"
                     if ":" in name else f"{100 * t['overhead_vs_base']:+.0f}%")
            add(f"| tf.function | {name} | {_fmt_ms(t['median_ms'])} | {share} |")
        for name, t in dcn.get("saved_model_signature", {}).items():
            if isinstance(t, dict):
                add(f"| SavedModel signature | {name} | {_fmt_ms(t['median_ms'])} | "
                    f"{100 * t['overhead_vs_base']:+.0f}% |")
    add(f"\nLoad average (1, 5, 15 min): start {results['load_average']['start']}, end "
        f"{results['load_average']['end']}; wall time {results.get('wall_seconds')} s.")
    return "\n".join(lines) + "\n"
