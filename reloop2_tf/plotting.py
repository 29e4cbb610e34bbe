"""Per-slot plots of a results.json: AUC and gAUC of every method over time."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402


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
    """Validation gAUC/AUC against each swept hyperparameter (the paper's Figs. 5–6)."""
    curves = report["lsh"]
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
