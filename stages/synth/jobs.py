"""What to generate: seed documents picked from the curated corpus, problems, and their prompts.

A `Job` is one generation. Problem jobs come from the problem generators (code tracing from the
corpus's own code); document jobs pair a seed document with a prompt template. Everything here is
a pure function of the corpus, the signals and the params, so the same inputs give the same jobs
and therefore the same cache keys.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from stages.synth import problems
from stages.textstats.shards import list_shards, read_batches


@dataclass(frozen=True)
class Job:
    id: str  # stable and unique within a run
    template: str  # "<task>/<rendering>" for problems, the prompt id for documents
    domain: str  # of the generated document: reasoning (problems), code (traces), or the seed's
    prompt: str  # what a model backend receives
    spec: dict[str, Any]  # what the templates backend renders
    seed_doc_id: str = ""
    problem: problems.Problem | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SeedDoc:
    doc_id: str
    domain: str
    text: str
    score: float


def seeded_hash(*parts: object) -> int:
    """A stable 64-bit hash of the parts (seeded orders and choices in synth)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def corpus_docs(corpus: Path, domain: str | None = None) -> Iterator[tuple[str, str, str]]:
    """(doc_id, domain, text) of the curated corpus, in corpus order."""
    for shard in list_shards(corpus):
        for table in read_batches(shard, ["doc_id", "domain", "text"]):
            for doc_id, dom, text in zip(*(table[c].to_pylist() for c in
                                           ("doc_id", "domain", "text")), strict=True):
                if domain is None or dom == domain:
                    yield doc_id, dom, text or ""


def textbook_scores(signals: Path) -> dict[str, float]:
    scores: dict[str, float] = {}
    for shard in list_shards(signals):
        table = pq.read_table(shard, columns=["doc_id", "textbook_score"])
        scores.update(zip(table["doc_id"].to_pylist(), table["textbook_score"].to_pylist(),
                          strict=True))
    return scores


def select_seeds(corpus: Path, signals: Path, rule: str, per_domain: dict[str, int],
                 seed: int) -> list[SeedDoc]:
    """Seed documents per domain: the top textbook scores (`top_textbook`, ties by seeded hash)
    or a seeded sample (`random`); in (domain, rank) order."""
    scores = textbook_scores(signals) if rule == "top_textbook" else {}
    by_domain: dict[str, list[SeedDoc]] = {}
    for doc_id, domain, text in corpus_docs(corpus):
        if per_domain.get(domain, 0) > 0:
            by_domain.setdefault(domain, []).append(
                SeedDoc(doc_id, domain, text, float(scores.get(doc_id, 0.0))))
    chosen = []
    for domain in sorted(by_domain):
        ranked = sorted(by_domain[domain],
                        key=lambda d: (-d.score, seeded_hash("synth-seed", seed, d.doc_id)))
        chosen += ranked[: per_domain[domain]]
    return chosen


def excerpt(text: str, max_chars: int, code: bool = False) -> str:
    """The document's leading whole lines up to `max_chars` characters; for code, cut before the
    last top-level statement that does not fit, so every definition shown is complete."""
    if len(text) <= max_chars:
        return text
    cut = text.rfind("\n", 0, max_chars)
    if code:
        top = [m.start() for m in re.finditer(r"(?m)^(?=[^\s#])", text[: cut + 1])]
        cut = top[-1] - 1 if len(top) > 1 else cut
    return text[: cut if cut > 0 else max_chars]


def problem_jobs(items: list[problems.Problem], renderings: list[str], prompt: str,
                 model_backend: bool) -> list[Job]:
    """Templates render every problem in each rendering; a model gets each problem once."""
    jobs = []
    for p in items:
        domain = "code" if p.task == "code_trace" else "reasoning"
        for style in (["model"] if model_backend else renderings):
            jobs.append(Job(
                id=f"{p.id}/{style}", template=f"{p.task}/{style}",
                domain=domain, prompt=prompt.format(question=p.question),
                spec={"kind": "problem", "problem": p.to_json(), "style": style},
                seed_doc_id=p.spec.get("doc_id", ""), problem=p))
    return jobs


def document_jobs(seeds: list[SeedDoc], prompts: dict[str, Any], max_chars: int,
                  supported: tuple[str, ...] | None) -> tuple[list[Job], dict[str, int]]:
    """Every seed document with every prompt template of its domain. With `supported` (the
    templates backend) other templates are skipped; returns the jobs and the skipped counts."""
    jobs, skipped = [], {}
    for doc in seeds:
        document = excerpt(doc.text, max_chars, code=doc.domain == "code")
        for template, spec in sorted(prompts.items()):
            if doc.domain not in spec.domains:
                continue
            if supported is not None and template not in supported:
                skipped[template] = skipped.get(template, 0) + 1
                continue
            jobs.append(Job(
                id=f"{template}/{doc.doc_id}", template=template,
                domain=spec.output_domain or doc.domain,
                prompt=spec.text.format(document=document),
                spec={"kind": "document", "template": template, "document": document},
                seed_doc_id=doc.doc_id))
    return jobs, skipped
