"""The quantization chart: held-out bits per byte of every artifact beside its source."""

from __future__ import annotations

from pathlib import Path


def plot_bpb(tables: dict[str, dict], path: Path, subtitle: str) -> None:
    """One panel per model: general and domain bits per byte of each of its rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 1.3 * max(len(t) for t in tables.values()) * len(tables) + 1
    fig, axes = plt.subplots(1, len(tables), figsize=(width, 3.6), squeeze=False)
    for ax, (name, table) in zip(axes[0], tables.items(), strict=True):
        methods = list(table)
        for j, (key, label) in enumerate((("eval_bpb", "general"), ("domain_bpb", "domain"))):
            values = [table[m][key] for m in methods]
            xs = [i + (j - 0.5) * 0.38 for i in range(len(methods))]
            bars = ax.bar(xs, values, width=0.38, label=label)
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        ax.set_xticks(range(len(methods)), methods)
        low = min(min(t["eval_bpb"], t["domain_bpb"]) for t in table.values())
        ax.set_ylim(low * 0.95, None)
        ax.set_title(f"{name}: {subtitle}")
        ax.set_ylabel("held-out bits per byte (lower is better)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
