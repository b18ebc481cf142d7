"""Reading a training run: the loss-curve PNG (training and evaluation losses, bits per byte) and
the tokens a run needs to reach a target."""

from __future__ import annotations

from pathlib import Path

COLORS = ("#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")


def tokens_to_reach(evals: list[dict], key: str, target: float) -> float | None:
    """Training tokens at which `key` first falls to `target` (linear interpolation between
    evaluations); None if it never does."""
    for prev, row in zip(evals, evals[1:], strict=False):
        if row[key] <= target:
            if prev[key] <= target:
                return float(prev["tokens"])
            frac = (prev[key] - target) / (prev[key] - row[key])
            return prev["tokens"] + frac * (row["tokens"] - prev["tokens"])
    return None


def eval_keys(evals: list[dict], suffix: str) -> list[str]:
    """Evaluation set names that have a `<name>_<suffix>` value, in first-seen order."""
    keys: dict[str, None] = {}
    for row in evals:
        keys.update({k[: -len(suffix) - 1]: None for k in row if k.endswith(f"_{suffix}")})
    return list(keys)


def plot_curves(curve: list[dict], evals: list[dict], path: Path, labels: dict | None = None,
                marks: dict[int, str] | None = None) -> None:
    """Left: train loss and every evaluation loss vs tokens; right: bits per byte of every text
    set. `labels` name the sets, `marks` draw a vertical line at a token count (e.g. where a
    supervised pass starts). Stable bytes (no timestamp in the PNG metadata)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or {}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    if curve:
        ax.plot([r["tokens"] for r in curve], [r["train_loss"] for r in curve], label="train",
                color="#4c72b0", linewidth=1)
    for i, key in enumerate(eval_keys(evals, "loss")):
        rows = [r for r in evals if f"{key}_loss" in r]
        ax.plot([r["tokens"] for r in rows], [r[f"{key}_loss"] for r in rows], "o-",
                label=labels.get(key, key), color=COLORS[i % len(COLORS)], markersize=3)
        if f"{key}_bpb" in rows[0]:
            bx.plot([r["tokens"] for r in rows], [r[f"{key}_bpb"] for r in rows], "o-",
                    label=labels.get(key, key), color=COLORS[i % len(COLORS)], markersize=3)
    for tokens, text in (marks or {}).items():
        for a in (ax, bx):
            a.axvline(tokens, color="grey", linestyle="--", linewidth=0.8)
        ax.text(tokens, ax.get_ylim()[1], f" {text}", va="top", fontsize=8, color="grey")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("loss")
    ax.legend(fontsize=8)
    bx.set_xlabel("training tokens")
    bx.set_ylabel("bits per byte")
    bx.set_title("held-out text, bits per UTF-8 byte")
    bx.legend(fontsize=8)
    for a in (ax, bx):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
