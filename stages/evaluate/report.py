"""The lineage report: markdown tables, PNG charts, the quality goals and a summary written from
the numbers (no sentence in it is fixed text about results)."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

MIB = 2**20
# Quality goals (issue 14): a quant type's perplexity vs the full-precision GGUF, the q8_0 KV
# cache vs f16, Q4_K_M generation speed vs the f16 file.
PPL_GOALS = {"Q8_0": 0.005, "Q4_K_M": 0.05}
KV_GOAL = ("q8_0", 0.005, 0.55)  # type, max perplexity increase, max memory ratio to the first
SPEEDUP_GOAL = ("Q4_K_M", "F16", 1.5)


def ppl(row: dict) -> float:
    return math.exp(row["eval_loss"])


def change(new: float, old: float) -> str:
    return f"{100 * (new / old - 1):+.2f}%"


def reference_type(types: list[str]) -> str:
    """The full-precision file of a model: the converter's output (lower-case name)."""
    return next(t for t in types if t == t.lower())


def by_model(names) -> dict[str, list[str]]:
    """`<model>/<type>` names grouped by model."""
    out: dict[str, list[str]] = {}
    for name in names:
        model, _, qtype = name.partition("/")
        out.setdefault(model, []).append(qtype)
    return out


def goals(rows: dict, kv: dict, speeds: dict, kv_types: list[str]) -> dict:
    """Each goal per GGUF model: the measured value, the bound, whether it is met."""
    out: dict[str, dict] = {}
    for model, types in by_model(kv).items():
        ref = reference_type(types)
        base = rows[f"gguf/{model}/{ref}"]
        for qtype, bound in PPL_GOALS.items():
            if qtype in types:
                rise = ppl(rows[f"gguf/{model}/{qtype}"]) / ppl(base) - 1
                out[f"{model}/{qtype}_ppl_vs_{ref}"] = {
                    "value": rise, "bound": bound, "met": rise <= bound}
        kv_type, bound, memory = KV_GOAL
        if kv_type in kv_types and kv_types[0] != kv_type:
            table = kv[f"{model}/{ref}"]
            rise = ppl(table[kv_type]) / ppl(table[kv_types[0]]) - 1
            ratio = table[kv_type]["kv_bytes"] / table[kv_types[0]]["kv_bytes"]
            out[f"{model}/kv_{kv_type}_ppl_vs_{kv_types[0]}"] = {
                "value": rise, "bound": bound, "met": rise <= bound}
            out[f"{model}/kv_{kv_type}_memory_ratio"] = {
                "value": ratio, "bound": memory, "met": ratio <= memory}
        fast, slow, bound = SPEEDUP_GOAL
        slow = slow if slow in types else ref
        if fast in types:
            ratio = (speeds[f"{model}/{fast}"]["generation_tokens_per_s"]
                     / speeds[f"{model}/{slow}"]["generation_tokens_per_s"])
            out[f"{model}/{fast}_generation_speedup_vs_{slow}"] = {
                "value": ratio, "bound": bound, "met": ratio >= bound}
    return out


def summary(rows: dict, kv: dict, speeds: dict, kv_types: list[str]) -> list[str]:
    """What each stage bought, one line each, from the numbers."""
    r = rows
    lines = [
        f"**refine** (phase 2 + SFT): general {bpb(r['phase1'])} → {bpb(r['refined'])} bits/byte "
        f"({change(r['refined']['eval_bpb'], r['phase1']['eval_bpb'])}), reasoning loss "
        f"{r['phase1']['reasoning_loss']:.3f} → {r['refined']['reasoning_loss']:.3f}.",
        f"**adapt**: domain {r['refined']['domain_bpb']:.4f} → {r['adapted']['domain_bpb']:.4f} "
        f"bits/byte ({change(r['adapted']['domain_bpb'], r['refined']['domain_bpb'])}); general "
        f"{change(r['adapted']['eval_bpb'], r['refined']['eval_bpb'])}.",
        f"**distill**: the dense student ({r['student']['params_total'] / 1e6:.1f}M params, "
        f"{r['adapted']['params_active'] / 1e6:.1f}M active in its teacher) scores "
        f"{bpb(r['student'])} with KD vs {bpb(r['student_no_kd'])} without "
        f"({change(r['student']['eval_bpb'], r['student_no_kd']['eval_bpb'])}).",
        f"**qat**: int4 QAT {bpb(r['qat'])} vs the control quantized RTN "
        f"{bpb(r['qat_control_rtn'])} and unquantized {bpb(r['qat_control'])}.",
    ]
    for model in sorted({k.split("/")[1] for k in r if k.startswith("ptq/")}):
        methods = {k.split("/")[2]: v for k, v in r.items() if k.startswith(f"ptq/{model}/")}
        best = min(methods, key=lambda m: methods[m]["eval_bpb"])
        source = r["student" if model == "student" else "adapted"]
        lines.append(
            f"**ptq** ({model}): best {best} {bpb(methods[best])} vs full precision "
            f"{bpb(source)} ({change(methods[best]['eval_bpb'], source['eval_bpb'])}) at "
            f"{methods[best]['bytes'] / source['bytes']:.2f}× the size.")
    for model, types in by_model(kv).items():
        ref = reference_type(types)
        base = r[f"gguf/{model}/{ref}"]
        parts = [f"{t} {change(ppl(r[f'gguf/{model}/{t}']), ppl(base))} perplexity at "
                 f"{r[f'gguf/{model}/{t}']['bytes'] / base['bytes']:.2f}× the size, "
                 f"{speeds[f'{model}/{t}']['generation_tokens_per_s'] / speeds[f'{model}/{ref}']['generation_tokens_per_s']:.2f}× "  # noqa: E501
                 "the generation speed" for t in types if t != ref]
        lines.append(f"**gguf** ({model}, vs {ref}): " + "; ".join(parts) + ".")
        table = kv[f"{model}/{ref}"]
        first = table[kv_types[0]]
        lines.append(f"**KV cache** ({model} {ref}, vs {kv_types[0]}): " + "; ".join(
            f"{t} {change(ppl(table[t]), ppl(first))} perplexity, "
            f"{table[t]['kv_bytes'] / first['kv_bytes']:.2f}× the memory"
            for t in kv_types[1:]) + ".")
    return lines


def bpb(row: dict) -> str:
    return f"{row['eval_bpb']:.4f}"


def models_table(rows: dict, speeds: dict) -> list[str]:
    head = ("| model | stage | general bpb | domain bpb | reasoning loss | size MiB | params "
            "(total / active) | prompt tok/s | generation tok/s |")
    lines = [head, "|---" * 9 + "|"]
    for name, row in rows.items():
        speed = speeds.get(name.removeprefix("gguf/"), {})
        lines.append(
            f"| {name} | {row['stage']} | {row['eval_bpb']:.4f} | {row['domain_bpb']:.4f} | "
            f"{row['reasoning_loss']:.3f} | {row['bytes'] / MIB:.2f} | "
            f"{row['params_total'] / 1e6:.2f}M / {row['params_active'] / 1e6:.2f}M | "
            f"{speed.get('prompt_tokens_per_s', float('nan')):.0f} | "
            f"{speed.get('generation_tokens_per_s', float('nan')):.0f} |".replace("| nan ", "| "))
    return lines


def kv_lines(kv: dict, kv_types: list[str], context: int) -> list[str]:
    lines = ["| file | " + " | ".join(f"{t} ppl | {t} KV MiB" for t in kv_types) + " |",
             "|---" * (1 + 2 * len(kv_types)) + "|"]
    for name, table in kv.items():
        first = table[kv_types[0]]
        cells = [f"{ppl(table[t]):.3f} ({change(ppl(table[t]), ppl(first))}) | "
                 f"{table[t]['kv_bytes'] / MIB:.2f}" for t in kv_types]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + ["", f"KV memory at a context of {context} tokens, as llama.cpp allocates it."]


def goal_lines(goals: dict) -> list[str]:
    lines = ["| goal | measured | bound | met |", "|---|---|---|---|"]
    for name, g in goals.items():
        kind = "≥" if "speedup" in name else "≤"
        value = f"{g['value']:.2f}×" if "speedup" in name or "ratio" in name else \
            f"{100 * g['value']:+.2f}%"
        bound = f"{g['bound']:.2f}×" if "speedup" in name or "ratio" in name else \
            f"+{100 * g['bound']:.1f}%"
        lines.append(f"| {name} | {value} | {kind} {bound} | {'yes' if g['met'] else 'no'} |")
    return lines


CHARTS = ("quality_vs_size", "bpb_by_stage")  # PNGs beside the report, linked by name


def write(path: Path, charts: dict[str, Path], scores: dict, speeds: dict, goals: dict,
          produced_by: dict, scale: dict, kv_context: int, kv_types: list[str]) -> None:
    """`report.md` at `path` and its `CHARTS` at `charts[name]` (published beside it)."""
    rows, kv = scores["models"], scores["kv_cache"]
    plot_quality_vs_size(rows, charts["quality_vs_size"])
    plot_by_stage(rows, charts["bpb_by_stage"])
    text = [
        "# Lineage report",
        "",
        f"Demo scale: a {scale['phase1_params'] / 1e6:.1f}M-parameter MoE "
        f"({scale['phase1_active'] / 1e6:.1f}M active) pretrained on "
        f"{scale['pretrain_tokens'] / 1e6:.2f}M tokens and a "
        f"{scale['student_params'] / 1e6:.1f}M dense student, scored on "
        f"{scores['heldout_bytes']['eval']} bytes of general and "
        f"{scores['heldout_bytes']['domain']} of domain held-out text in windows of "
        f"{scores['window']} tokens. These numbers show "
        "that every stage runs and is measured the same way; at this scale they say little about "
        "what each technique buys in a real run.",
        "",
        "## What each stage bought",
        "",
        *(f"- {line}" for line in summary(rows, kv, speeds, kv_types)),
        "",
        "## Quality goals",
        "",
        *goal_lines(goals),
        "",
        "## Every model",
        "",
        "Bits per byte (bpb) on the same held-out windows; reasoning loss on synth's held-out "
        "reasoning items (responses only); GGUF files scored in llama.cpp with an f16 KV cache; "
        f"tokens/s on this machine ({next(iter(speeds.values()), {}).get('threads', '?')} "
        "threads, best of repeats).",
        "",
        *models_table(rows, speeds),
        "",
        "![quality vs size](quality_vs_size.png)",
        "",
        "![bits per byte by stage](bpb_by_stage.png)",
        "",
        "## KV-cache quantization",
        "",
        *kv_lines(kv, kv_types, kv_context),
        "",
        "## Reproduce a row",
        "",
        "The params.yaml values of the stage that produced each row (and of those before it); "
        "`dvc.lock` pins the code and data versions.",
        "",
        "```yaml",
        yaml.safe_dump(produced_by, sort_keys=False, width=100).rstrip(),
        "```",
        "",
    ]
    path.write_text("\n".join(text))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def family(name: str) -> tuple[str, str]:
    """(the model a row derives from, its short label): `gguf/student/Q8_0` -> (student, Q8_0),
    `ptq/teacher/gptq` -> (adapted, gptq), `qat_control_rtn` -> (qat, control_rtn)."""
    parts = name.split("/")
    if parts[0] == "gguf":
        return parts[1], parts[2]
    if parts[0] == "ptq":
        return {"teacher": "adapted"}.get(parts[1], parts[1]), parts[2]
    if name.startswith("qat"):
        return "qat", name.removeprefix("qat").lstrip("_") or "int4"
    return name, ""


def plot_quality_vs_size(rows: dict, path: Path) -> None:
    """One colour per model (its PTQ / QAT / GGUF variants with it); circles PyTorch, squares
    llama.cpp; each model's GGUF files joined from small to large."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(9, 5.5))
    groups: dict[str, list[str]] = {}
    for name in rows:
        groups.setdefault(family(name)[0], []).append(name)
    for i, names in enumerate(groups.values()):
        color = f"C{i % 10}"
        gguf = sorted((n for n in names if rows[n]["format"] == "gguf"),
                      key=lambda n: rows[n]["bytes"])
        ax.plot([rows[n]["bytes"] / MIB for n in gguf], [rows[n]["eval_bpb"] for n in gguf],
                color=color, lw=0.8, alpha=0.6)
        for n in names:
            x, y = rows[n]["bytes"] / MIB, rows[n]["eval_bpb"]
            ax.scatter([x], [y], color=color, marker="s" if n in gguf else "o")
            ax.annotate(family(n)[1], (x, y), fontsize=6, xytext=(2, 4),
                        textcoords="offset points", rotation=30)
    ax.set_xscale("log")
    ax.set_xlabel("size on disk (MiB, log); circles: PyTorch, squares: GGUF in llama.cpp")
    ax.set_ylabel("general held-out bits per byte (lower is better)")
    ax.set_title("quality vs size")
    ax.legend(handles=[Line2D([], [], color=f"C{i % 10}", marker="o", ls="", label=group)
                       for i, group in enumerate(groups)], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def plot_by_stage(rows: dict, path: Path) -> None:
    plt = _pyplot()
    names = [k for k, v in rows.items() if v["format"] == "transformers"]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.2))
    ys = range(len(names))
    for j, (key, label) in enumerate((("eval_bpb", "general"), ("domain_bpb", "domain"))):
        ax.barh([y + (j - 0.5) * 0.4 for y in ys], [rows[n][key] for n in names], height=0.4,
                label=label)
    ax.set_yticks(list(ys), names, fontsize=8)
    ax.invert_yaxis()
    low = min(min(rows[n]["eval_bpb"], rows[n]["domain_bpb"]) for n in names)
    ax.set_xlim(low * 0.95, None)
    ax.set_xlabel("held-out bits per byte (lower is better)")
    ax.set_title("quality by stage")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
