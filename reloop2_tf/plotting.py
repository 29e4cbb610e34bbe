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
