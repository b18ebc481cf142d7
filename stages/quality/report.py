"""The quality stage's plot: score distributions per domain, held-out classes overlaid."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def histograms(scores: dict[str, np.ndarray], held: dict[str, tuple[np.ndarray, np.ndarray]],
               path: Path) -> None:
    """One panel per domain: every document's score, and the held-out positives and negatives
    (density, so the small held-out sets stay visible). PNG with stable bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scores), figsize=(5 * len(scores), 3.5), dpi=100,
                             squeeze=False)
    bins = np.linspace(0, 1, 41)
    for ax, (domain, all_scores) in zip(axes[0], scores.items(), strict=True):
        ax.hist(all_scores, bins=bins, density=True, color="#b0b0b0",
                label=f"all documents ({len(all_scores)})")
        pos, neg = held[domain]
        for values, colour, name in ((pos, "#2a9d4b", "held-out positives"),
                                     (neg, "#c44e52", "held-out negatives")):
            if len(values):
                ax.hist(values, bins=bins, density=True, histtype="step", linewidth=1.5,
                        color=colour, label=f"{name} ({len(values)})")
        ax.set_title(f"{domain}: quality classifier score")
        ax.set_xlabel("P(reference-like)")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
