"""Quality control of generated text with the curation stages' own code.

In order, a generated document is rejected for the first check it fails:
1. `empty`: shorter than `qc.min_chars`;
2. `wrong_answer` (problems only): its final `Answer:` line does not match the answer recomputed
   from the problem's spec (code tracing: the value the function returned in the sandbox);
3. a quality rule: `signals.compute` and the `filter` stage's rules and thresholds, for the rule
   groups `qc.rules` selects per domain (short texts fail Gopher's and C4's length rules by
   design, so those are not selected by default);
4. `decontaminated`: shares a `dedup.decontam_ngram`-gram with the held-out evaluation text;
5. `exact_duplicate[_of_corpus]`, `near_duplicate[_of_corpus]`: dedup's exact keys and MinHash
   near-duplicate groups over the curated corpus and the generated set together; the corpus
   always keeps its documents, then generated ones keep the earliest in job order.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np
import pyarrow as pa

from stages import dedup, signals
from stages.dedup import minhash
from stages.filter import Params as FilterParams
from stages.filter import decide
from stages.synth import problems
from stages.synth.jobs import Job


def answer_ok(problem: problems.Problem, text: str) -> bool:
    """The text's final answer is the recomputed one (for code tracing: the sandbox's value)."""
    if problem.task == "code_trace":
        found = problems.final_answer(text)
        return found is not None and (problems.normalize_answer(found)
                                      == problems.normalize_answer(problem.answer))
    return problems.verify(problem, text)


def quality_failures(texts: list[str], domains: list[str], signal_params: signals.Params,
                     filter_params: FilterParams, groups: dict[str, list[str]]) -> np.ndarray:
    """First failed curation rule per text ("" = passes), for the selected rule groups."""
    if not texts:
        return np.zeros(0, dtype=object)
    cols = signals.compute(texts, signal_params)
    table = pa.table({k: pa.array(v, pa.string()) if isinstance(v, list) else pa.array(v)
                      for k, v in cols.items()})
    rules = filter_params.model_copy(update={"apply": groups}).rules()
    return decide(table, np.array(domains, dtype=object), rules, failing=None)


def _scan(texts: Iterator[str] | list[str], heldout: np.ndarray, params: dedup.Params,
          seed: int, batch: int = 512) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {"exact": [], "sig": [], "shingled": [], "hits": [], "h": [],
                              "counts": []}
    chunk: list[str] = []

    def flush() -> None:
        scanned = dedup.scan_texts(chunk, heldout, params, seed)
        for key in parts:
            parts[key].append(scanned[key])
        chunk.clear()

    for text in texts:
        chunk.append(text)
        if len(chunk) == batch:
            flush()
    flush()
    return {k: np.concatenate(v) for k, v in parts.items()}


def duplicate_failures(texts: list[str], corpus_texts: Iterator[str], heldout: np.ndarray,
                       params: dedup.Params, seed: int, alive: np.ndarray) -> np.ndarray:
    """Per generated text among `alive`: "" or why dedup removes it (see module docstring)."""
    gen = _scan(texts, heldout, params, seed)
    corpus = _scan(corpus_texts, heldout, params, seed)
    m, n = len(corpus["exact"]), len(texts)
    out = np.full(n, "", dtype=object)
    contaminated = alive & (gen["hits"] > 0)
    out[contaminated] = "decontaminated"
    live = np.r_[np.ones(m, bool), alive & ~contaminated]
    cat = {k: np.concatenate([corpus[k], gen[k]])
           for k in ("exact", "sig", "shingled", "h", "counts")}
    keys = minhash.band_keys(cat["sig"], *params.lsh_shape())
    exact_rep, near_rep, _ = dedup.duplicates(
        live, cat["exact"], lambda band: keys[band], cat["shingled"], np.arange(m + n), params,
        partial(dedup.shingle_sets, cat["h"], cat["counts"], n=params.shingle_size))
    index = np.arange(m, m + n)
    for kind, rep in (("exact", exact_rep[m:]), ("near", near_rep[m:])):
        dup = (out == "") & live[m:] & (rep != index)
        out[dup & (rep < m)] = f"{kind}_duplicate_of_corpus"
        out[dup & (rep >= m)] = f"{kind}_duplicate"
    return out


def check(jobs: list[Job], texts: list[str], corpus_texts: Iterator[str], heldout: np.ndarray,
          *, min_chars: int, groups: dict[str, list[str]], signal_params: signals.Params,
          filter_params: FilterParams, dedup_params: dedup.Params, seed: int) -> np.ndarray:
    """Rejection reason per generated text, "" where it is accepted."""
    reason = np.full(len(texts), "", dtype=object)
    for i, (job, text) in enumerate(zip(jobs, texts, strict=True)):
        if len(text.strip()) < min_chars:
            reason[i] = "empty"
        elif job.problem is not None and not answer_ok(job.problem, text):
            reason[i] = "wrong_answer"
    todo = np.flatnonzero(reason == "")
    quality = quality_failures([texts[i] for i in todo], [jobs[i].domain for i in todo],
                               signal_params, filter_params, groups)
    reason[todo] = quality
    dup = duplicate_failures(texts, corpus_texts, heldout, dedup_params, seed, reason == "")
    reason[reason == ""] = dup[reason == ""]
    return reason
