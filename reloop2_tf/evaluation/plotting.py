"""Plots of results.json files: per-slot and per-window AUC and gAUC of every method over time."""

from __future__ import annotations

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402

from reloop2_tf.evaluation.recovery import trailing_mean  # noqa: E402


def plot_slots(results: dict, path, title: str = "", marker_slot: float | None = None) -> None:
    """Draws per-slot AUC and gAUC of each method in ``results["methods"]`` to ``path`` (PNG)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for name, method in results["methods"].items():
        x = list(range(1, len(method["slots"]) + 1))
        for ax, key in zip(axes, ("auc", "gauc")):
            ax.plot(x, [100 * s[key] for s in method["slots"]], marker="o", ms=3, label=name)
    for ax, key in zip(axes, ("AUC", "gAUC")):
        ax.set_xlabel("test slot (time order)")
        ax.set_ylabel(f"{key} (%)")
        ax.grid(alpha=0.3)
        if marker_slot is not None:
            ax.axvline(marker_slot, color="grey", ls="--", lw=1)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweeps(report: dict, path) -> None:
    """Validation gAUC/AUC against each swept hyperparameter: the paper sketch's (the paper's
    Figs. 5–6) if it was swept, else the default memory's; nothing is written without a
    curve."""
    curves = report.get("lsh") or report["reloop2"]
    if not curves:
        return
    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 3.2), squeeze=False)
    static = report["static"]
    for ax, (name, points) in zip(axes[0], curves.items()):
        labels = [str(p["value"]) for p in points]
        x = range(len(points))
        ax.plot(x, [100 * p["gauc"] for p in points], marker="o", label="gAUC")
        ax.plot(x, [100 * p["auc"] for p in points], marker="s", label="AUC")
        ax.axhline(100 * static["gauc"], color="C0", ls=":", lw=1)
        ax.axhline(100 * static["auc"], color="C1", ls=":", lw=1)
        ax.set_xticks(list(x), labels, fontsize=7)
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation metric (%); dotted: static")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("reloop2-paper" if report.get("lsh") else "reloop2", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_windows(results: dict, path, title: str = "", smooth: int | None = None) -> None:
    """Per-window AUC and gAUC of each method over test rows, with the shift's onsets marked.

    Curves are trailing means over ``smooth`` windows (default: the run's ``smooth``); ablation
    rows (names with a space) are drawn thin and dashed.
    """
    smooth = smooth or results["config"].get("smooth", 1)
    edges = np.asarray(results["windows"]["edges"])
    x = edges[1:] / 1000.0
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharex=True)
    colors = plt.get_cmap("tab10" if len(results["methods"]) <= 10 else "tab20").colors
    for index, (name, method) in enumerate(results["methods"].items()):
        ablation = " " in name
        for ax, key in zip(axes, ("auc", "gauc")):
            ax.plot(x, 100 * trailing_mean(method["windows"][key], smooth), lw=0.8 if ablation else 1.5,
                    ls="--" if ablation else "-", color=colors[index % len(colors)], label=name)
    if "reference" in results:
        for ax, key in zip(axes, ("auc", "gauc")):
            ax.plot(x, 100 * trailing_mean(results["reference"]["windows"][key], smooth),
                    color="black", lw=1.2, ls="-.", label="reference: no shift")
    for ax, key in zip(axes, ("AUC", "gAUC")):
        for i, onset in enumerate(results["scenario"]["onset_rows"]):
            ax.axvline(onset / 1000.0, color="black" if i == 0 else "grey", ls=":", lw=1.2)
        ax.set_xlabel("test rows (thousands); dotted: shift onset t0 (and switches)")
        ax.set_ylabel(f"{key} (%), mean of {smooth} windows")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 + 0.025 * (len(labels) // 6), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_seeds(summary: dict, path) -> None:
    """Every method's AUC and gAUC lift over static in every seed (dots) and their mean (bar),
    from a ``seeds.summarize_seeds`` summary."""
    names = [n for n, m in summary["methods"].items() if "lift_gauc" in m]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 * len(names) + 1.6), sharey=True)
    y = np.arange(len(names))
    for ax, key, label in zip(axes, ("lift_auc", "lift_gauc"), ("ΔAUC", "ΔgAUC")):
        means = [100 * summary["methods"][n][key]["mean"] for n in names]
        ax.barh(y, means, color="C0", alpha=0.35)
        for i, n in enumerate(names):
            values = [100 * v for v in summary["methods"][n][key]["values"]]
            ax.plot(values, [i] * len(values), "o", color="C0", ms=4)
        ax.axvline(0.0, color="grey", lw=1)
        ax.set_xlabel(f"{label} vs static (points); dots: seeds {summary['seeds']}")
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"{summary['dataset']} / {summary['model']}: lift over static per seed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_head_to_head(results: dict, path, run: str = "") -> None:
    """Every head-to-head difference of a ``reloop2 bench`` run (the first method minus the
    second) with its paired 95 % interval, for gAUC, AUC and logloss: a tie is a bar across 0.
    ``run`` (e.g. ``"ml-1m / dcn"``) starts the title."""
    pairs = results["head_to_head"]
    names = list(pairs)
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.45 * len(names) + 1.6), sharey=True)
    y = np.arange(len(names))
    for ax, key, scale, label in zip(axes, ("gauc", "auc", "logloss"), (100, 100, 1),
                                     ("ΔgAUC (points)", "ΔAUC (points)", "Δlogloss")):
        value = np.array([scale * pairs[n][key] for n in names])
        low, high = (np.array([scale * pairs[n][f"{key}_ci95"][i] for n in names]) for i in (0, 1))
        ax.errorbar(value, y, xerr=[value - low, high - value], fmt="o", color="C0", capsize=3)
        ax.axvline(0.0, color="grey", lw=1)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"{run + ': ' if run else ''}the first method minus the second, paired 95 % "
                 "intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
