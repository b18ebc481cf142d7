"""The KD-vs-baseline chart: held-out loss and bits per byte of both students against tokens."""

from __future__ import annotations

from pathlib import Path


def plot_kd_vs_baseline(kd: list[dict], baseline: list[dict], target: float,
                        reached: float | None, path: Path, settings) -> None:
    """Left: held-out loss (solid) and validation loss (dotted) of both runs, the baseline's final
    held-out loss as the target line and where the KD student reaches it; right: held-out bits
    per byte. Stable bytes (no timestamp in the PNG metadata)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    kd_label = (f"KD ({settings.divergence}, alpha {settings.alpha:g}, "
                f"T {settings.temperature:g})")
    for rows, label, color in ((baseline, "no KD (baseline)", "#4c72b0"),
                               (kd, kd_label, "#dd8452")):
        tokens = [r["tokens"] for r in rows]
        ax.plot(tokens, [r["eval_loss"] for r in rows], "o-", color=color, markersize=3,
                label=f"{label}, held-out")
        if "val_loss" in rows[0]:
            ax.plot(tokens, [r["val_loss"] for r in rows], ":", color=color, linewidth=1,
                    label=f"{label}, validation")
        bx.plot(tokens, [r["eval_bpb"] for r in rows], "o-", color=color, markersize=3,
                label=label)
    ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
    if reached is not None:
        ax.axvline(reached, color="grey", linestyle="--", linewidth=0.8)
        share = reached / baseline[-1]["tokens"]
        ax.text(reached, target, f" KD reaches it at {share:.0%} of the tokens", va="bottom",
                fontsize=8, color="grey")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("student loss (dashed: baseline's final held-out loss)")
    bx.set_ylabel("bits per byte")
    bx.set_title("held-out text, bits per UTF-8 byte")
    for a in (ax, bx):
        a.set_xlabel("training tokens")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
