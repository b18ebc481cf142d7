"""The loss-curve PNG: training loss and evaluation losses / bits per byte against tokens."""

from __future__ import annotations

from pathlib import Path


def plot_curves(curve: list[dict], evals: list[dict], path: Path) -> None:
    """Left: train, validation and held-out loss vs tokens; right: held-out bits per byte.
    Stable bytes (no timestamp in the PNG metadata)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    if curve:
        ax.plot([r["tokens"] for r in curve], [r["train_loss"] for r in curve], label="train",
                color="#4c72b0", linewidth=1)
    for key, label, color in (("val_loss", "validation", "#dd8452"),
                              ("eval_loss", "held-out (ingest)", "#55a868")):
        rows = [r for r in evals if key in r]
        if rows:
            ax.plot([r["tokens"] for r in rows], [r[key] for r in rows], "o-", label=label,
                    color=color, markersize=3)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("loss")
    ax.legend()
    rows = [r for r in evals if "eval_bpb" in r]
    bx.plot([r["tokens"] for r in rows], [r["eval_bpb"] for r in rows], "o-", color="#55a868",
            markersize=3)
    bx.set_xlabel("training tokens")
    bx.set_ylabel("bits per byte")
    bx.set_title("held-out text, bits per UTF-8 byte")
    for a in (ax, bx):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
