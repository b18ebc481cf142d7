"""Reasoning problems whose answers are checked by recomputation.

A `Problem` carries its question, a worked solution (one step per entry), the answer and the
`spec` the answer is recomputed from, independently of the worked solution. Every rendering of a
problem ends with the line `Answer: <answer>`, so the same check (`verify`) applies to template
renderings and to what a language model writes.

Tasks (one module each): `arithmetic` (multi-step arithmetic), `word_problem`, `unit_conversion`,
`list_puzzle` (sort / count / select over small lists) and `code_trace` (what a small Python
function from the corpus returns; run in a sandboxed subprocess, `sandbox`).

Each task module has `recompute(spec) -> str`; the four generated tasks also have
`generate(rng, index, max_steps) -> Problem` (`GENERATORS`) and `explanation(spec, rng) ->
Explanation`, the prose `render` builds the `explained` and `qa` renderings from (a task without
it, like `code_trace`, is explained from its steps). Answers compare
as normalized text, or as exact numbers when both sides are numeric (`same_answer`).
"""

from __future__ import annotations

import importlib
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

ANSWER_PREFIX = "Answer:"
RENDERINGS = ("terse", "explained", "qa")
TASKS = ("arithmetic", "word_problem", "unit_conversion", "list_puzzle", "code_trace")
_MODULES = {"arithmetic": "arithmetic", "word_problem": "word_problem",
            "unit_conversion": "units", "list_puzzle": "puzzles", "code_trace": "code_trace"}
_ANSWER_LINE = re.compile(r"(?im)^[ \t]*[*_]*answer[*_]*[ \t]*:[*_ \t]*(.+?)[*_ \t]*$")


@dataclass(frozen=True)
class Problem:
    task: str  # one of TASKS
    id: str  # stable id: the same (task, seed, index) gives the same id
    question: str
    steps: tuple[str, ...]  # the worked solution, one step each, without the answer line
    answer: str  # canonical answer text
    spec: dict[str, Any]  # JSON-able: what `recompute` derives the answer from
    difficulty: int  # reasoning steps it takes (>= 1)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "steps": list(self.steps)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Problem:
        return cls(**{**data, "steps": tuple(data["steps"])})


def final_answer(text: str) -> str | None:
    """The last `Answer: ...` line of a text, or None (markdown emphasis around it ignored:
    `**Answer:** 5`, `Answer: **5**`)."""
    found = _ANSWER_LINE.findall(text)
    return found[-1] if found else None


def normalize_answer(answer: str) -> str:
    """Comparison form: case, surrounding punctuation/whitespace and thousands commas ignored."""
    answer = answer.strip().strip(".").strip()
    answer = re.sub(r"(?<=\d),(?=\d{3}\b)", "", answer)
    return " ".join(answer.lower().split())


def list_form(answer: str) -> str:
    """`normalize_answer`, also ignoring enclosing brackets and the spacing around commas, so
    that a list answer may be written "[3,5, 8]" for "3, 5, 8" (not used for code tracing,
    where a tuple is not a list)."""
    answer = normalize_answer(answer)
    if answer[:1] + answer[-1:] in ("[]", "()"):
        answer = answer[1:-1].strip()
    return re.sub(r"\s*,\s*", ", ", answer)


_NUMBER = re.compile(r"^[$€£]?\s*(-?\d+(?:\.\d+)?)(?:\s*[a-zµ°%/²³][a-zµ°%/²³ .]*)?$")


def numeric_value(answer: str) -> Fraction | None:
    """The exact value of a numeric answer, or None. A leading currency sign and trailing unit
    words are allowed and ignored: "12", "12.0", "$12" and "12 apples" are all 12; "12 - 3",
    "1e3" or "12/4" are not numbers."""
    m = _NUMBER.match(normalize_answer(answer))
    return Fraction(m.group(1)) if m else None


def same_answer(found: str, expected: str) -> bool:
    """Equal `list_form`, or (both numeric) equal exact value; see `numeric_value`."""
    if list_form(found) == list_form(expected):
        return True
    a, b = numeric_value(found), numeric_value(expected)
    return a is not None and a == b


def _module(task: str):
    if task not in _MODULES:
        raise ValueError(f"unknown task {task!r}; known: {TASKS}")
    return importlib.import_module(f"{__name__}.{_MODULES[task]}")


def generate(task: str, seed: int, index: int, max_steps: int) -> Problem:
    """Problem number `index` of `task` for a run seed: a pure function of its arguments."""
    if task not in GENERATORS:
        raise ValueError(f"no generator for task {task!r}; generated: {sorted(GENERATORS)}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    return GENERATORS[task](random.Random(f"{task}:{seed}:{index}"), index, max_steps)


def recompute(problem: Problem) -> str:
    """The answer derived from `problem.spec` alone (never its steps or answer)."""
    return _module(problem.task).recompute(problem.spec)


def verify(problem: Problem, text: str) -> bool:
    """The text's last `Answer:` line equals the recomputed answer (`same_answer`)."""
    found = final_answer(text)
    return found is not None and same_answer(found, recompute(problem))


# ---- renderings -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Explanation:
    """What a task module says about a solution; `render` adds the connectives.

    `goal` is a noun phrase ("the value of the expression"), `clauses` are the steps as clauses
    (no final period; lower-case start unless a name), and so is `conclusion`."""

    goal: str
    clauses: tuple[str, ...]
    conclusion: str


_INTROS = (
    "To find {goal}, we work through the problem one step at a time.",
    "We want {goal}, so we go through the calculation step by step.",
    "The task is to work out {goal}. We can do this in a few short steps.",
    "Let us determine {goal} by breaking the problem into smaller steps.",
    "Our goal is {goal}, and the clearest way to reach it is to take one step at a time.",
    "To work out {goal}, it helps to handle each part of the problem in order.",
)
_ONE_STEP_INTROS = (
    "To find {goal}, a single step is enough.",
    "We want {goal}, and it takes only one step.",
    "Finding {goal} needs just one calculation.",
)
_FIRST = ("First", "To begin", "As a first step", "To start", "First of all")
_MIDDLE = ("Next", "Then", "After that", "Now", "In the next step", "Following this",
           "Moving on", "With that done", "Continuing")
_LAST = ("Finally", "Lastly", "As a last step", "To finish", "In the final step")
_CONCLUDE = ("Therefore", "So", "Thus", "As a result", "Hence", "", "")
_QA_LINKS = ("", "Then, ", "Next, ", "After that, ", "")


def cap(text: str) -> str:
    """First character upper-cased (the rest untouched)."""
    return text[:1].upper() + text[1:]


def sentence(text: str) -> str:
    """Capitalized, ending with a period unless it already ends with a sentence mark."""
    text = cap(text.strip())
    return text if text.endswith((".", "!", "?")) else text + "."


def _explanation(problem: Problem, rng: random.Random) -> Explanation:
    hook = getattr(_module(problem.task), "explanation", None)
    if hook is not None:
        return hook(problem.spec, rng)
    clauses = tuple(_uncap(s.rstrip(".")) for s in problem.steps) or ("we read off the result",)
    return Explanation("the answer", clauses, f"the answer is {problem.answer}")


def _uncap(text: str) -> str:
    """First letter lower-cased when the first word looks like an ordinary capitalized word."""
    word = text.split(" ", 1)[0]
    return text[:1].lower() + text[1:] if word.isalpha() and word[1:].islower() else text


def _explained(problem: Problem, rng: random.Random) -> str:
    ex = _explanation(problem, rng)
    n = len(ex.clauses)
    if n == 1:
        body = [rng.choice(_ONE_STEP_INTROS).format(goal=ex.goal), sentence(ex.clauses[0])]
    else:
        middle = rng.sample(_MIDDLE, min(len(_MIDDLE), n - 2))
        links = [rng.choice(_FIRST), *middle, *[""] * (n - 2 - len(middle)), rng.choice(_LAST)]
        body = [rng.choice(_INTROS).format(goal=ex.goal)]
        body += [sentence(f"{link}, {c}" if link else c)
                 for link, c in zip(links, ex.clauses, strict=True)]
    link = rng.choice(_CONCLUDE)
    body.append(sentence(f"{link}, {ex.conclusion}" if link else ex.conclusion))
    return f"{problem.question}\n\n{' '.join(body)}\n{ANSWER_PREFIX} {problem.answer}"


def _qa(problem: Problem, rng: random.Random) -> str:
    ex = _explanation(problem, rng)
    parts = []
    for i, clause in enumerate(ex.clauses):
        link = rng.choice(_QA_LINKS) if i else ""
        if link and clause.lower().startswith(link.split(",")[0].split()[0].lower()):
            link = ""  # no "After that, after ..."
        parts.append(sentence(f"{link}{clause}"))
    parts.append(sentence(ex.conclusion))
    return f"Question: {problem.question}\nSolution: {' '.join(parts)}\n" \
           f"{ANSWER_PREFIX} {problem.answer}"


def _terse(problem: Problem) -> str:
    steps = [f"{i}. {s}" for i, s in enumerate(problem.steps, 1)]
    return "\n".join([problem.question, *steps, f"{ANSWER_PREFIX} {problem.answer}"])


def render(problem: Problem, style: str) -> str:
    """The problem as a document in one of `RENDERINGS`; every one ends `Answer: <answer>`.
    Wording choices are seeded by the problem id and style, so renderings are reproducible."""
    if style == "terse":
        return _terse(problem)
    rng = random.Random(f"render:{style}:{problem.id}")
    if style == "explained":
        return _explained(problem, rng)
    if style == "qa":
        return _qa(problem, rng)
    raise ValueError(f"unknown rendering {style!r}; known: {RENDERINGS}")


from stages.synth.problems import arithmetic, puzzles, units, word_problem  # noqa: E402

GENERATORS: dict[str, Callable[[random.Random, int, int], Problem]] = {
    "arithmetic": arithmetic.generate,
    "word_problem": word_problem.generate,
    "unit_conversion": units.generate,
    "list_puzzle": puzzles.generate,
}
