"""Synth: synthetic documents and a LIMO-style reasoning set, generated, cached and curated.

1. Jobs (`jobs`): reasoning problems with recomputable answers (arithmetic, word problems, unit
   conversions, list puzzles, and tracing small functions of the corpus's own code in a sandbox)
   and seed documents of the curated corpus (top textbook score per domain) under prompt
   templates from params.
2. Generation by one backend (`backends`): `templates` (no model; the default), `hf` (a local
   transformers model), `gguf` (llama.cpp) or `http` (an OpenAI-compatible endpoint). A model
   file is a declared input: it lives under `models/generator/`, a dependency of this stage.
3. The generation cache (`cache`): a backend is asked only for keys it has not answered before,
   across re-runs, kills, QC or mix changes, and machines sharing an S3 prefix.
4. Quality control (`qc`) with the curation stages' own code; the accepted documents go to
   `data/synth/generated` in the curated corpus's shard format plus provenance columns.
5. The LIMO-style set (`limo`) in `data/synth/limo/{train,eval}.jsonl`.
`mix` then combines the curated corpus with the accepted documents at a token ratio. This
module holds the params (imported by every stage's validation, so it stays light); the run is in
`stage`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from stages.params import StrictModel
from stages.synth.backends import Sampling
from stages.synth.problems import RENDERINGS, TASKS

CORPUS = "data/dedup/corpus"
SIGNALS = "data/signals"
HELDOUT = "data/ingest/heldout"
MODELS = "models/generator"
OUT = "data/synth"
GENERATED = "data/synth/generated"
LIMO = "data/synth/limo"
REPORT = "data/synth/report.json"
PROBLEMS = "data/synth/problems.jsonl"
# Columns every synthetic row carries besides the curated corpus's own.
PROVENANCE = ("origin", "backend", "model", "template", "seed_doc_id")

PROBLEM_PROMPT = (
    "Solve the following problem step by step. Explain each step in a sentence, then give the "
    "final answer on its own last line as `Answer: <answer>`.\n\n{question}")


class Endpoint(StrictModel):
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible base URL")
    model: str | None = Field(None, description="model name the endpoint serves")
    api: Literal["chat", "completions"] = "chat"


class SamplingParams(StrictModel):
    """Validated `backends.Sampling` (its defaults)."""

    max_new_tokens: int = Field(Sampling.max_new_tokens, ge=1)
    temperature: float = Field(Sampling.temperature, ge=0)
    top_p: float = Field(Sampling.top_p, gt=0, le=1)


class Seeds(StrictModel):
    rule: Literal["top_textbook", "random"] = "top_textbook"
    per_domain: dict[str, int] = Field(default_factory=lambda: {"prose": 30, "code": 30})
    max_chars: int = Field(3000, ge=100, description="seed text per prompt (whole lines)")


class PromptTemplate(StrictModel):
    domains: list[str] = Field(description="seed document domains it applies to")
    text: str = Field(description="the prompt; `{document}` is replaced by the seed text")
    output_domain: str | None = Field(None, description="domain of the result (default: seed's)")

    @field_validator("text")
    @classmethod
    def _has_slot(cls, text: str) -> str:
        if "{document}" not in text:
            raise ValueError("must contain {document}")
        return text


def _default_prompts() -> dict[str, PromptTemplate]:
    return {
        "textbook": PromptTemplate(domains=["prose"], text=(
            "Rewrite the following document as a clear textbook section for a student: define "
            "each concept, explain why it works, and give a worked example.\n\n{document}")),
        "qa": PromptTemplate(domains=["prose"], text=(
            "Write question and answer pairs that test understanding of the following document. "
            "Format each pair as `Q: ...` and `A: ...`.\n\n{document}")),
        "explain_code": PromptTemplate(domains=["code"], text=(
            "Explain what the functions in the following Python code do, step by step, for a "
            "reader learning Python.\n\n{document}")),
    }


class CodeTrace(StrictModel):
    timeout_s: float = Field(2.0, gt=0, description="per call, in the sandbox")
    memory_mb: int = Field(256, ge=32, description="address-space limit of the sandbox")
    max_lines: int = Field(15, ge=1, description="longest function traced")


class QC(StrictModel):
    rules: dict[str, list[str]] = Field(
        default_factory=lambda: {"prose": ["gopher_repetition", "language", "toxicity"],
                                 "reasoning": ["gopher_repetition", "toxicity"],
                                 "code": ["toxicity"]},
        description="filter rule groups (thresholds from `filter`) applied per domain")
    min_chars: int = Field(40, ge=0)

    @field_validator("rules")
    @classmethod
    def _corpus_rules_only(cls, rules: dict[str, list[str]]) -> dict[str, list[str]]:
        for domain, groups in rules.items():
            if "quality" in groups:
                raise ValueError(f"{domain}: `quality` ranks the corpus by its classifier (a "
                                 "corpus-relative cut); it is not a rule for generated text")
        return rules


class Limo(StrictModel):
    size: int = Field(300, ge=0)
    min_difficulty: int = Field(3, ge=1)
    prefer: list[str] = Field(default_factory=lambda: ["explained", "qa", "terse"])
    eval_fraction: float = Field(0.1, ge=0, lt=1)


class Client(StrictModel):
    """How backends are driven; never part of a result (not declared by the stage)."""

    concurrency: int = Field(4, ge=1, description="http requests in flight")
    api_key_env: str | None = Field(None, description="environment variable holding the key")
    timeout_s: float = Field(60.0, gt=0)
    attempts: int = Field(4, ge=1, description="tries per request (retries with backoff)")
    backoff_s: float = Field(0.5, ge=0)
    batch_size: int = Field(8, ge=1, description="hf prompts per batch")
    threads: int = Field(0, ge=0, description="hf/gguf CPU threads per worker; 0 = all cores "
                         "(with runtime.workers > 1, cores / workers)")
    chunk: int = Field(64, ge=1, description="requests per task on the stage's executor (hf, "
                       "gguf; each worker loads the model once) and per cache write")


class Params(StrictModel):
    backend: Literal["templates", "hf", "gguf", "http"] = "templates"
    model: str | None = Field(None, description=f"hf: a directory, gguf: a file, under {MODELS}/")
    endpoint: Endpoint = Endpoint()
    sampling: SamplingParams = SamplingParams()
    problems: dict[str, int] = Field(default_factory=lambda: {t: 100 for t in TASKS})
    max_steps: int = Field(6, ge=1, description="most reasoning steps per generated problem")
    renderings: list[Literal[RENDERINGS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(RENDERINGS), description="templates backend only")
    problem_prompt: str = PROBLEM_PROMPT
    seeds: Seeds = Seeds()
    prompts: dict[str, PromptTemplate] = Field(default_factory=_default_prompts)
    code_trace: CodeTrace = CodeTrace()
    qc: QC = QC()
    limo: Limo = Limo()
    max_failed_fraction: float = Field(0.02, ge=0, le=1,
                                       description="the stage fails above this share of jobs")
    samples: int = Field(3, ge=0, description="report samples per template and per reason")
    client: Client = Client()

    @field_validator("problems")
    @classmethod
    def _tasks(cls, counts: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(counts) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; known: {list(TASKS)}")
        if any(n < 0 for n in counts.values()):
            raise ValueError("counts must be >= 0")
        return counts

    @field_validator("problem_prompt")
    @classmethod
    def _question_slot(cls, text: str) -> str:
        if "{question}" not in text:
            raise ValueError("must contain {question}")
        return text

    @model_validator(mode="after")
    def _model_given(self) -> Params:
        if self.backend in ("hf", "gguf"):
            if not self.model or not self.model.startswith(MODELS + "/"):
                raise ValueError(f"backend {self.backend!r} needs `model`: a path under "
                                 f"{MODELS}/ (a declared input, so a new model re-runs synth)")
        if self.backend == "http" and not self.endpoint.model:
            raise ValueError("backend 'http' needs endpoint.model")
        return self


def run(params: Params, ctx) -> dict:
    from stages.synth.stage import run as run_synth

    return run_synth(params, ctx)

