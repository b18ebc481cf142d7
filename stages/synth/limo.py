"""A LIMO-style reasoning set: few, verified, hard and diverse demonstrations for SFT.

Rule, applied to the accepted problem documents (so every answer is verified and none is an exact
or near duplicate of another or of the corpus):
1. difficulty (reasoning steps) at least `min_difficulty`;
2. one demonstration per problem: the first accepted rendering in `prefer` order (a model
   backend has one per problem);
3. diversity: tasks take turns (round robin), each task's problems hardest first (ties by a
   seeded hash), until `size` are chosen;
4. a seeded `eval_fraction` of them is held out (`eval.jsonl`) for measuring reasoning loss.
Records are `{"id", "prompt", "response", "answer", "task", "template", "difficulty",
"backend", "model"}`; the loss of an SFT pass belongs to `response` only.
"""

from __future__ import annotations

from typing import Any

from stages.synth.jobs import Job, seeded_hash

RULE = ("accepted problems with difficulty >= min_difficulty; one rendering per problem (first "
        "in `prefer`); tasks in turn, hardest first (ties: seeded hash); a seeded "
        "eval_fraction held out")


def split_response(job: Job, text: str) -> str:
    """The solution part of a generated problem document (its question removed)."""
    question = job.problem.question if job.problem else ""
    for prefix in (question, f"Question: {question}", f"Problem: {question}"):
        if question and text.startswith(prefix):
            return text[len(prefix):].lstrip()
    return text


def select(items: list[tuple[Job, str]], *, size: int, min_difficulty: int, prefer: list[str],
           eval_fraction: float, seed: int, backend: str, model: str
           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(train records, eval records, selection counts) from accepted (job, response) pairs."""
    rank = {style: i for i, style in enumerate(prefer)}
    best: dict[str, tuple[int, Job, str]] = {}
    hard_enough = 0
    for job, response in items:
        p = job.problem
        if p is None or p.difficulty < min_difficulty:
            continue
        hard_enough += 1
        order = rank.get(job.template.split("/", 1)[1], len(rank))
        if p.id not in best or order < best[p.id][0]:
            best[p.id] = (order, job, response)
    by_task: dict[str, list[tuple[Job, str]]] = {}
    for _, job, response in best.values():
        by_task.setdefault(job.problem.task, []).append((job, response))
    for task in by_task:
        by_task[task].sort(key=lambda jr: (-jr[0].problem.difficulty,
                                           seeded_hash("limo", seed, jr[0].problem.id)))
    chosen: list[tuple[Job, str]] = []
    queues = [by_task[t] for t in sorted(by_task)]
    while len(chosen) < size and any(queues):
        for queue in queues:
            if queue and len(chosen) < size:
                chosen.append(queue.pop(0))
    train, held = [], []
    for job, response in chosen:
        p = job.problem
        record = {"id": p.id, "prompt": p.question, "response": response, "answer": p.answer,
                  "task": p.task, "template": job.template, "difficulty": p.difficulty,
                  "backend": backend, "model": model}
        is_eval = seeded_hash("limo-eval", seed, p.id) / 2**64 < eval_fraction
        (held if is_eval else train).append(record)
    counts = {
        "candidates": len(items), "difficulty_at_least_min": hard_enough,
        "distinct_problems": len(best), "selected": len(chosen), "train": len(train),
        "eval": len(held),
        "by_task": {t: sum(r["task"] == t for r in train + held) for t in sorted(by_task)},
        "mean_difficulty": round(sum(r["difficulty"] for r in train + held)
                                 / max(1, len(chosen)), 3),
    }
    return train, held, counts
