"""The single declaration of every pipeline stage.

`dvc.yaml` is generated from this list (`python -m orchestration gen-dvc`) and the Dagster assets
are built from it, so both front ends run the same command over the same inputs.

Each stage has at most one cached data output (a directory or file): its data version. Data deps
name whole outputs of earlier stages, so a dependency in DVC is exactly an edge in Dagster and the
two agree on what a change invalidates. Stages may read sub-paths of a dep (`data/ingest/heldout`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Code every stage runs through (runner, atomic writes, params loading).
COMMON_CODE = ("stages/runner.py", "stages/atomic.py", "stages/params.py", "stages/executor.py")
# What every training stage runs: the shared loop, the model, packed-token reading.
TRAINING_CODE = ("stages/train", "stages/model", "stages/tokenize/pack.py")
# The shared training params (`stages.train.config.TrainParams`) a training stage declares: all
# but `checkpoint`, whose cadence never changes a result.
TRAINING_PARAMS = ("precision", "optimizer", "schedule", "batch", "train_tokens", "compile",
                   "seed", "log_every", "eval")


def training_params(section: str, *own: str) -> tuple[str, ...]:
    """`section.<key>` for the shared training keys and the stage's own keys."""
    return tuple(f"{section}.{k}" for k in (*own, *TRAINING_PARAMS))


@dataclass(frozen=True)
class MetricCheck:
    """A plain-Python test of a stage's metrics (its first metrics file), run as a Dagster check.
    A `goal` (a quality target the run may miss, not a broken output) fails as a warning."""

    name: str
    description: str
    test: Callable[[dict[str, Any]], bool]
    goal: bool = False


@dataclass(frozen=True)
class Stage:
    """One stage: the command it runs, what it reads and writes, and what it needs."""

    name: str
    description: str
    code: tuple[str, ...]  # files or packages (dirs) whose content defines the stage's logic
    out: str  # the cached data output; its DVC md5 is the stage's data version
    deps: tuple[str, ...] = ()  # data it reads: outs of earlier stages (or external paths)
    params: tuple[str, ...] = ()  # params.yaml keys (sections or dotted keys) it depends on
    metrics: tuple[str, ...] = ()  # small JSON metrics, kept in git, not in the DVC cache
    plots: tuple[str, ...] = ()  # PNG images or JSON/CSV data plots, kept in git
    plot_x: str | None = None  # x-axis field of the data plots (DVC's default: row index)
    documents: tuple[str, ...] = ()  # human-readable reports (markdown), kept in git
    persist: tuple[str, ...] = ()  # state kept across runs (resumable checkpoints)
    gpu: bool = False  # runs in the GPU concurrency pool
    checks: tuple[MetricCheck, ...] = ()  # sanity checks on the metrics after each run
    module: str = ""  # module with `Params` and `run`; default `stages.<name>`

    @property
    def cmd(self) -> str:
        return f"python -m stages run {self.name}"

    @property
    def module_name(self) -> str:
        return self.module or f"stages.{self.name}"

    def code_files(self, root: Path = ROOT) -> tuple[str, ...]:
        """Sorted code dependency files, directories expanded to their `.py` files."""
        files: set[str] = set(COMMON_CODE)
        for entry in self.code:
            path = root / entry
            if path.is_dir():
                files.update(p.relative_to(root).as_posix() for p in path.rglob("*.py"))
            elif path.is_file():
                files.add(entry)
            else:
                raise FileNotFoundError(f"stage {self.name!r}: code path {entry!r} does not exist")
        return tuple(sorted(files))

    @property
    def all_outs(self) -> tuple[str, ...]:
        return (self.out, *self.persist, *self.metrics, *self.plots, *self.documents)


STAGES: tuple[Stage, ...] = (
    Stage(
        name="ingest",
        description="Raw corpus from the declared sources, sharded, with a held-out slice.",
        code=("stages/ingest", "stages/textstats/shard_cache.py"),
        params=("base.seed", "ingest"),
        out="data/ingest",
        metrics=("reports/ingest/metrics.json",),
        checks=(
            MetricCheck(
                "corpus_not_empty", "the corpus holds documents", lambda m: m["corpus"]["docs"] > 0
            ),
            MetricCheck(
                "counts_reconcile",
                "read = kept + sum(skipped), kept = corpus + heldout",
                lambda m: (
                    m["read"] == m["kept"] + sum(m["skipped"].values())
                    and m["kept"] == m["corpus"]["docs"] + m["heldout"]["docs"]
                ),
            ),
        ),
    ),
    Stage(
        name="signals",
        description="Per-document quality, repetition, language and toxicity signals.",
        code=("stages/signals", "stages/textstats"),
        deps=("data/ingest",),
        params=("signals",),
        out="data/signals",
        metrics=("reports/signals/metrics.json",),
        checks=(
            MetricCheck(
                "one_row_per_document",
                "a signal row for every corpus document",
                lambda m: m["docs"] == sum(m["docs_by_domain"].values()) > 0,
            ),
        ),
    ),
    Stage(
        name="quality",
        description="A DCLM-style n-gram quality classifier trained on a reference, and every "
        "document's score.",
        code=("stages/quality", "stages/textstats/shards.py"),
        deps=("data/ingest", "data/signals"),
        params=("base.seed", "quality"),
        out="data/quality",
        metrics=("reports/quality/metrics.json",),
        plots=("reports/quality/scores.png",),
        checks=(
            MetricCheck(
                "separates_heldout",
                "each domain's held-out ROC AUC is at least 0.7 (positives from negatives)",
                lambda m: all(d["heldout"] is None or d["heldout"]["roc_auc"] is None
                              or d["heldout"]["roc_auc"] >= 0.7 for d in m["domains"].values()),
                goal=True,
            ),
            MetricCheck(
                "every_document_scored",
                "a score for every corpus document",
                lambda m: m["docs"] == sum(d["scores"]["docs"] for d in m["domains"].values()) > 0,
            ),
        ),
    ),
    Stage(
        name="filter",
        description="Thresholds from params applied to the stored signals: the filtered corpus.",
        code=("stages/filter", "stages/filter/identity_terms.yaml", "stages/textstats"),
        deps=("data/ingest", "data/signals", "data/quality"),
        params=("filter",),
        out="data/filter",
        metrics=("reports/filter/metrics.json",),
        checks=(
            MetricCheck(
                "bias_audit_clean",
                "no rule removes documents mentioning an identity group more often than the "
                "rest (95% lower bound of the rate ratio above filter.bias_audit.max_ratio)",
                lambda m: not m["bias_audit"]["flagged"],
                goal=True,
            ),
            MetricCheck(
                "kept_fraction_sane",
                "keeps between 0.5% and 99.5% of the documents",
                lambda m: 0.005 <= m["kept_fraction"] <= 0.995,
            ),
            MetricCheck(
                "counts_reconcile",
                "docs_in = docs_kept + docs_removed",
                lambda m: m["docs_in"] == m["docs_kept"] + m["docs_removed"],
            ),
        ),
    ),
    Stage(
        name="dedup",
        description="Exact and MinHash near-duplicate removal, decontamination, SoftDedup weights.",
        code=("stages/dedup", "stages/textstats"),
        deps=("data/filter", "data/ingest"),
        params=("base.seed", "dedup"),
        out="data/dedup",
        metrics=("reports/dedup/metrics.json",),
        plots=("reports/dedup/weights.png", "reports/dedup/lsh_s_curve.png"),
        checks=(
            MetricCheck("not_empty", "documents survive dedup", lambda m: m["docs_kept"] > 0),
            MetricCheck(
                "weights_sum_to_count",
                "SoftDedup weights sum to the kept count",
                lambda m: abs(m["weights_sum"] - m["docs_kept"]) <= 1e-6 * m["docs_kept"],
            ),
            MetricCheck(
                "counts_reconcile",
                "in = kept + exact + near duplicates + decontaminated",
                lambda m: (
                    m["docs_in"]
                    == m["docs_kept"]
                    + m["exact_duplicates_removed"]
                    + m["near_duplicates_removed"]
                    + m["decontaminated"]
                ),
            ),
        ),
    ),
    Stage(
        name="synth",
        description="Synthetic documents and a LIMO-style reasoning set, generated and curated.",
        # its QC runs the curation stages' own code
        code=("stages/synth", "stages/signals", "stages/filter", "stages/dedup",
              "stages/textstats"),
        deps=("data/dedup", "data/signals", "data/ingest", "models/generator"),
        params=(
            "base.seed", "synth.backend", "synth.model", "synth.endpoint", "synth.sampling",
            "synth.problems", "synth.max_steps", "synth.renderings", "synth.problem_prompt",
            "synth.seeds", "synth.prompts", "synth.code_trace", "synth.qc", "synth.limo",
            "synth.max_failed_fraction", "synth.samples", "signals", "filter.gopher_quality",
            "filter.gopher_repetition", "filter.c4", "filter.fineweb", "filter.language",
            "filter.toxicity", "filter.code", "dedup.shingle_size", "dedup.num_perm",
            "dedup.bands", "dedup.rows", "dedup.jaccard_threshold", "dedup.false_negative_rate",
            "dedup.decontam_ngram",
        ),
        out="data/synth",
        metrics=("reports/synth/metrics.json",),
        checks=(
            MetricCheck(
                "generated_documents_accepted",
                "some generated documents pass QC",
                lambda m: m["accepted"] > 0,
            ),
            MetricCheck(
                "counts_reconcile",
                "jobs = generated + failed, generated = accepted + rejected",
                lambda m: (
                    m["jobs"] == m["generated"] + m["failed"]
                    and m["generated"] == m["accepted"] + m["rejected"]
                ),
            ),
        ),
    ),
    Stage(
        name="mix",
        description="The synthetic-augmented corpus: curated + accepted synthetic documents.",
        code=("stages/mix", "stages/synth/__init__.py", "stages/textstats/shards.py"),
        deps=("data/dedup", "data/synth"),
        params=("base.seed", "mix"),
        out="data/mix",
        metrics=("reports/mix/metrics.json",),
        checks=(
            MetricCheck(
                "ratio_reached",
                "the synthetic share is within 2 points of the target, or every document is used",
                lambda m: (
                    abs(m["synthetic_fraction"] - m["synthetic_fraction_target"]) <= 0.02
                    or m["synthetic_docs"] == m["synthetic_available_docs"]
                ),
            ),
        ),
    ),
    Stage(
        name="tokenize",
        description="SentencePiece tokenizer (HF format) and packed train/validation/eval tokens.",
        code=("stages/tokenize", "stages/textstats/shards.py"),
        deps=("data/mix", "data/dedup", "data/ingest", "data/filter"),
        params=("base.seed", "tokenize"),
        out="data/tokenize",
        metrics=("reports/tokenize/metrics.json",),
        checks=(
            MetricCheck(
                "splits_not_empty",
                "train and eval hold packed sequences",
                lambda m: (
                    m["splits"]["train"]["sequences"] > 0 and m["splits"]["eval"]["sequences"] > 0
                ),
            ),
            MetricCheck(
                "tokens_reconcile",
                "per split, sequences x seq_len = tokens + pad tokens",
                lambda m: all(
                    s["sequences"] * m["seq_len"] == s["tokens"] + s["pad_tokens"]
                    for s in m["splits"].values()
                ),
            ),
        ),
    ),
    Stage(
        name="pretrain",
        description="Phase-1 MoE pretraining on the packed tokens; exact resume from checkpoints.",
        code=("stages/pretrain", *TRAINING_CODE),
        deps=("data/tokenize",),
        params=("base.seed", *training_params("pretrain", "model", "sampling")),
        out="data/pretrain",
        metrics=("reports/pretrain/metrics.json",),
        plots=(
            "reports/pretrain/loss.png",
            "reports/pretrain/train_curve.json",
            "reports/pretrain/eval_curve.json",
        ),
        plot_x="tokens",
        persist=("checkpoints/pretrain",),
        gpu=True,
        checks=(
            MetricCheck(
                "loss_finite_and_learning",
                "held-out bits per byte is finite and below its value at initialisation",
                lambda m: m["eval_bpb"] == m["eval_bpb"] and m["eval_bpb"] < m["eval_bpb_at_init"],
            ),
        ),
    ),
    Stage(
        name="refine",
        description="Phase-2 annealing on a high-quality mix from the stable-phase checkpoint, "
        "then a LIMO-style SFT pass.",
        code=("stages/refine", *TRAINING_CODE),
        deps=("data/pretrain", "data/tokenize", "data/dedup", "data/signals", "data/synth",
              "data/ingest"),
        params=("base.seed", *training_params("refine", "init", "mix", "curated_top_fraction",
                                              "synthetic_templates", "sft")),
        out="data/refine",
        metrics=("reports/refine/metrics.json",),
        plots=(
            "reports/refine/loss.png",
            "reports/refine/train_curve.json",
            "reports/refine/eval_curve.json",
        ),
        plot_x="tokens",
        persist=("checkpoints/refine",),
        gpu=True,
    ),
    Stage(
        name="adapt",
        description="Domain adaptation of the refined model: full, LoRA or QLoRA, merged.",
        code=("stages/adapt", *TRAINING_CODE),
        deps=("data/refine", "data/tokenize", "data/dedup", "data/ingest"),
        params=(
            "base.seed",
            *training_params("adapt", "mode", "corpus", "activation_checkpointing", "lora",
                             "qlora"),
        ),
        out="data/adapt",
        metrics=("reports/adapt/metrics.json",),
        plots=(
            "reports/adapt/loss.png",
            "reports/adapt/train_curve.json",
            "reports/adapt/eval_curve.json",
        ),
        plot_x="tokens",
        persist=("checkpoints/adapt",),
        gpu=True,
        checks=(
            MetricCheck(
                "domain_learned",
                "domain held-out bits per byte is finite and below its value before adapting",
                lambda m: m["domain_bpb"] == m["domain_bpb"]
                and m["domain_bpb"] < m["domain_bpb_at_init"],
            ),
            MetricCheck(
                "trainable_counts_sane",
                "full trains every weight; lora and qlora only adapters, a fraction of them",
                lambda m: m["params_trainable"] == m["params_total"]
                if m["mode"] == "full"
                else 0 < m["params_trainable"] < m["params_total"],
            ),
        ),
    ),
    Stage(
        name="teacher_logits",
        description="The adapted teacher's top-k log-probabilities on the distillation tokens.",
        code=("stages/teacher_logits", *TRAINING_CODE),
        deps=("data/adapt", "data/tokenize"),
        params=("base.seed", "teacher_logits"),
        out="data/teacher_logits",
        metrics=("reports/teacher_logits/metrics.json",),
        gpu=True,
        checks=(
            MetricCheck(
                "topk_scored",
                "tokens were scored, the teacher's CE is finite and its top-k holds probability",
                lambda m: (m["tokens_scored"] > 0 and m["teacher_ce"] == m["teacher_ce"]
                           and 0 < m["topk_mass_mean"] <= 1 + 1e-6),
            ),
        ),
    ),
    Stage(
        name="distill",
        description="A dense student trained on the teacher's top-k logits; its no-KD baseline.",
        code=("stages/distill", "stages/teacher_logits/cache.py", *TRAINING_CODE),
        deps=("data/teacher_logits", "data/tokenize"),
        params=("base.seed", *training_params("distill", "student", "kd")),
        out="data/distill",
        metrics=("reports/distill/metrics.json",),
        plots=(
            "reports/distill/loss.png",
            "reports/distill/train_curve.json",
            "reports/distill/eval_curve.json",
            "reports/distill/kd_vs_baseline.png",
            "reports/distill/baseline/loss.png",
            "reports/distill/baseline/train_curve.json",
            "reports/distill/baseline/eval_curve.json",
        ),
        plot_x="tokens",
        persist=("checkpoints/distill",),
        gpu=True,
        checks=(
            MetricCheck(
                "students_learning",
                "both students' held-out bits per byte are finite and below their initial value",
                lambda m: (m["eval_bpb"] < m["eval_bpb_at_init"]
                           and m["baseline_eval_bpb"] < m["baseline_eval_bpb_at_init"]),
            ),
            MetricCheck(
                "kd_reaches_baseline",
                "the KD student reaches the no-KD baseline's final held-out loss within the "
                "budget (tokens_to_target_fraction is finite)",
                lambda m: m["tokens_to_target_fraction"] is not None,
                goal=True,
            ),
        ),
    ),
    Stage(
        name="qat",
        description="Quantization-aware training of the student (torchao int4), its "
        "full-precision control, both quantized and scored.",
        code=("stages/qat", "stages/quant", *TRAINING_CODE),
        deps=("data/distill", "data/tokenize", "data/adapt"),
        params=("base.seed", *training_params("qat", "quant")),
        out="data/qat",
        metrics=("reports/qat/metrics.json",),
        plots=(
            "reports/qat/loss.png",
            "reports/qat/train_curve.json",
            "reports/qat/eval_curve.json",
            "reports/qat/bpb.png",
            "reports/qat/control/loss.png",
            "reports/qat/control/train_curve.json",
            "reports/qat/control/eval_curve.json",
        ),
        plot_x="tokens",
        persist=("checkpoints/qat",),
        gpu=True,
        checks=(
            MetricCheck(
                "quantized_model_scored",
                "the QAT model's held-out bits per byte is finite and its weights are stored as "
                "integers",
                lambda m: (m["table"]["qat"]["eval_bpb"] == m["table"]["qat"]["eval_bpb"]
                           and m["table"]["qat"]["quantized_tensors"] > 0),
            ),
        ),
    ),
    Stage(
        name="ptq",
        description="RTN, GPTQ and AWQ int4 of the student and the MoE teacher (llm-compressor), "
        "each scored on the held-out text.",
        code=("stages/ptq", "stages/quant", "stages/model", "stages/train/batches.py",
              "stages/train/loop.py", "stages/train/task.py", "stages/tokenize/pack.py"),
        deps=("data/distill", "data/adapt", "data/tokenize"),
        params=("base.seed", "ptq"),
        out="data/ptq",
        metrics=("reports/ptq/metrics.json",),
        plots=("reports/ptq/bpb.png",),
        gpu=True,
        checks=(
            MetricCheck(
                "artifacts_scored",
                "every quantized artifact's held-out bits per byte is finite",
                lambda m: all(row["eval_bpb"] == row["eval_bpb"] < float("inf")
                              for name in ("student", "teacher")
                              for row in m.get(name, {}).values()),
            ),
            MetricCheck(
                "no_expert_uncalibrated",
                "every expert of the teacher is calibrated on at least one token",
                lambda m: m["goals"].get("no_expert_uncalibrated", True),
            ),
        ),
    ),
    Stage(
        name="gguf",
        description="GGUF files of the student, the QAT student and the MoE checkpoints, in "
        "llama.cpp's quant types, each checked in llama.cpp.",
        code=("stages/gguf", "stages/llama_cpp.py", "stages/model/hf.py",
              "stages/train/batches.py", "stages/tokenize/pack.py"),
        deps=("data/distill", "data/qat", "data/pretrain", "data/adapt", "data/tokenize"),
        params=("gguf",),
        out="data/gguf",
        metrics=("reports/gguf/metrics.json",),
        checks=(
            MetricCheck(
                "full_precision_matches",
                "every full-precision GGUF reproduces its model's logits within tolerance",
                lambda m: all(v["logits_max_abs_diff"] <= 1e-2 for v in m["models"].values()),
            ),
        ),
    ),
)


def lineage_params(*stages: str) -> tuple[str, ...]:
    """The params keys the named stages declare, in order, without repeats."""
    by_name = {s.name: s for s in STAGES}
    return tuple(dict.fromkeys(k for name in stages for k in by_name[name].params))


# The report: every model scored the same way; it shows the params that produced each row, so it
# declares them (an edit to any re-renders it, as the edited stage's new output would anyway).
STAGES += (
    Stage(
        name="evaluate",
        description="One report comparing every model of the lineage: held-out bits per byte, "
        "reasoning loss, size, speed, KV-cache types.",
        code=("stages/evaluate", "stages/quant/heldout.py", "stages/llama_cpp.py",
              "stages/model", "stages/train/batches.py", "stages/train/loop.py",
              "stages/train/task.py", "stages/train/sft.py", "stages/train/corpus.py",
              "stages/tokenize/pack.py"),
        deps=("data/pretrain", "data/refine", "data/adapt", "data/distill", "data/qat",
              "data/ptq", "data/gguf", "data/tokenize", "data/synth"),
        params=("evaluate", *lineage_params("pretrain", "refine", "adapt", "teacher_logits",
                                            "distill", "qat", "ptq", "gguf")),
        out="data/evaluate",
        metrics=("reports/evaluate/metrics.json",),
        plots=("reports/evaluate/quality_vs_size.png", "reports/evaluate/bpb_by_stage.png"),
        documents=("reports/evaluate/report.md",),
        checks=(
            MetricCheck(
                "every_model_scored",
                "every model's general held-out bits per byte is finite",
                lambda m: all(r["eval_bpb"] == r["eval_bpb"] < float("inf")
                              for r in m["models"].values()),
            ),
            MetricCheck(
                "quality_goals_met",
                "every GGUF quant-type, KV-cache and speed goal of the report is met",
                lambda m: all(g["met"] for g in m["goals"].values()),
                goal=True,
            ),
        ),
    ),
)


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    known = ", ".join(s.name for s in STAGES)
    raise KeyError(f"unknown stage {name!r}; known stages: {known}")


def producer_of(path: str) -> Stage | None:
    """The stage whose data output is exactly `path`, or None for an external input."""
    for s in STAGES:
        if s.out == path:
            return s
    return None


def upstream(s: Stage) -> tuple[str, ...]:
    """Names of the stages `s` reads from, in declaration order."""
    return tuple(p.name for d in s.deps if (p := producer_of(d)) is not None)


def check_registry(stages: tuple[Stage, ...] = STAGES) -> None:
    """Structural rules: unique names and outputs, deps on whole outputs of earlier stages."""
    seen_names: set[str] = set()
    produced: dict[str, str] = {}
    for s in stages:
        if s.name in seen_names:
            raise ValueError(f"duplicate stage name {s.name!r}")
        seen_names.add(s.name)
        for dep in s.deps:
            inside = [o for o, n in produced.items() if dep.startswith(o + "/")]
            if inside:
                raise ValueError(
                    f"stage {s.name!r}: dep {dep!r} is inside output {inside[0]!r}; "
                    "depend on the whole output and read the sub-path"
                )
            if dep not in produced and any(x.out == dep for x in stages):
                raise ValueError(f"stage {s.name!r}: dep {dep!r} is produced by a later stage")
        for out in s.all_outs:
            if out in produced:
                raise ValueError(
                    f"output {out!r} of {s.name!r} is also produced by {produced[out]!r}"
                )
            produced[out] = s.name
