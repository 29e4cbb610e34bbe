"""The printed tables of the serving benchmark (Markdown, ready for docs/)."""

from __future__ import annotations

from collections.abc import Mapping


def _n(x: float, digits: int = 3) -> str:
    return f"{x:,.{digits}f}"


def tables(results: Mapping) -> str:
    lines = []
    predict = results.get("predict", {})
    if predict:
        lines += ["", "Predict over gRPC, dcn, base alone vs base + default memory (ms per call, "
                  "client side; blocks: runs of 20 calls per server, alternating; the others: "
                  "call by call, alternating servers)", "",
                  "| batch | request | base p50 | memory p50 | p50 overhead | base p99 | memory p99 "
                  "| p99 overhead |", "|---|---|---|---|---|---|---|---|"]
        for key, block in predict.items():
            for mode in ("blocks", "prebuilt", "client", "probability_only"):
                c = block[mode]
                o = c["overhead"]
                lines.append(
                    f"| {key.split('_')[1]} | {mode} | {_n(c['base']['p50_ms'])} | "
                    f"{_n(c['memory']['p50_ms'])} | {o['p50_ms']:+.3f} ms ({o['p50_percent']:+.1f} %) "
                    f"| {_n(c['base']['p99_ms'])} | {_n(c['memory']['p99_ms'])} | "
                    f"{o['p99_ms']:+.3f} ms ({o['p99_percent']:+.1f} %) |")
    writes = results.get("writes")
    if writes:
        lines += ["", f"Writes at batch {writes['batch']}, default memory on dcn (rows/s; one "
                  "client thread interleaved: per-call times summed; bursts: wall clock, median of runs)", "",
                  "| client | request | update_memory (features) | update_memory_by_keys | keys / "
                  "features | p50 ms features / keys |", "|---|---|---|---|---|---|"]
        for mode, c in writes["one_thread"].items():
            lines.append(f"| 1 thread, interleaved | {mode} | {c['by_features']['rows_per_s']:,.0f} | "
                         f"{c['by_keys']['rows_per_s']:,.0f} | ×{c['keys_over_features']:.2f} | "
                         f"{c['by_features']['p50_ms']:.3f} / {c['by_keys']['p50_ms']:.3f} |")
        for threads, t in writes.get("threads", {}).items():
            f, k = t["by_features"], t["by_keys"]
            lines.append(f"| {threads} thread{'s' if threads != '1' else ''}, burst of {k['calls']} "
                         f"calls | client | {f['rows_per_s']:,.0f} | {k['rows_per_s']:,.0f} | "
                         f"×{k['rows_per_s'] / f['rows_per_s']:.2f} | — |")
        for window, t in writes.get("in_flight", {}).items():
            f, k = t["by_features"], t["by_keys"]
            lines.append(f"| 1 thread, {window} writes in flight (`writer`), burst of "
                         f"{k['calls']} calls | client | {f['rows_per_s']:,.0f} | "
                         f"{k['rows_per_s']:,.0f} | ×{k['rows_per_s'] / f['rows_per_s']:.2f} | — |")
    session = results.get("session_ms")
    if session and predict and writes:
        lines += ["", "Where the time goes (ms): the signature run in process by the dev server's "
                  "Servable (TF1 Session, median) vs the same call over gRPC (predict: p50 of the "
                  "blocks; writes: mean ms per call of the one-thread burst)", "",
                  "| call | batch | Session run | over gRPC | gRPC + server "
                  "Python |", "|---|---|---|---|---|"]
        grpc_ms = {}
        for key, block in predict.items():
            b = key.split("_")[1]
            grpc_ms[("predict base", b)] = block["blocks"]["base"]["p50_ms"]
            grpc_ms[("predict memory", b)] = block["blocks"]["memory"]["p50_ms"]
        burst = writes["threads"]["1"]
        grpc_ms[("update_memory_by_keys", str(writes["batch"]))] = \
            1e3 * writes["batch"] / burst["by_keys"]["rows_per_s"]
        grpc_ms[("update_memory", str(writes["batch"]))] = \
            1e3 * writes["batch"] / burst["by_features"]["rows_per_s"]
        if results.get("memory_weight_rpc"):
            grpc_ms[("memory_weight", "1")] = results["memory_weight_rpc"]["p50_ms"]
        for batch, cell in session.items():
            for name, ms in cell.items():
                g = grpc_ms.get((name, batch))
                lines.append(f"| {name} | {batch} | {ms:.3f} | "
                             + (f"{g:.3f} | {g - ms:.3f} |" if g is not None else "— | — |"))
    replay = results.get("replay")
    if replay:
        lines += ["", f"Replay: {replay['batches']} batches ({replay['rows']:,} rows) written by keys "
                  "to one server and by features to another: snapshots "
                  f"{'EQUAL bit for bit' if replay['snapshots_equal'] else 'DIFFER'} "
                  f"(np.array_equal; shape {replay['shape_by_keys']}, max abs diff "
                  f"{replay['max_abs_diff']}); weight written {replay['weight_written_by_keys']:g} / "
                  f"{replay['weight_written_by_features']:g}; predictions after it equal: "
                  f"{replay['predictions_equal_after']}"]
    reads = results.get("reads")
    if reads:
        rows = [str(n) for n in reads["rows"]]
        lines += ["", "Default memory alone, in-process read (compensate in a tf.function), median "
                  "ms per call (ratio to the fewest rows)", "",
                  "| batch | " + " | ".join(f"{int(n):,} rows" for n in rows) + " |",
                  "|---|" + "---|" * len(rows)]
        for batch, cell in reads["batches"].items():
            lines.append(f"| {batch} | " + " | ".join(
                f"{cell['median_ms'][n]:.3f} (×{cell['ratio_to_fewest'][n]:.2f})" for n in rows) + " |")
        lines.append("| bytes of the memory's variables | " + " | ".join(
            f"{reads['footprint_bytes'][n]:,}" for n in rows) + " |")
    if results.get("verdicts"):
        lines += ["", "| target (issue 15) | measured | status |", "|---|---|---|"]
        for v in results["verdicts"]:
            m = v["measured"]
            shown = f"{m:,}" if isinstance(m, (int, float)) and not isinstance(m, bool) else str(m)
            lines.append(f"| {v['target']} | {shown} {v['unit']} | {'met' if v['met'] else 'missed'} |")
    return "\n".join(lines)
