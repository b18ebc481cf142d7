"""The model-free backend: renders each job from its structured spec.

Problem jobs become one of the problem's renderings (`problems.render`: terse, explained,
question/answer; answers recomputed and checked in QC). Document jobs support two templates that
need no model: `qa` turns a seed document's definitional sentences ("X is a ...") into
question/answer pairs, and `explain_code` describes small functions of a seed code document from
their syntax tree (parameters, defaults, loops, raised exceptions, returns, docstring) beside their
source. Other document templates (e.g. `textbook` rephrasing) need a model backend; the stage does
not give them to this one.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from stages.synth import problems
from stages.synth.backends import BackendError, Generation, Request

DOCUMENT_TEMPLATES = ("qa", "explain_code")
_CODE = (Path(__file__), *sorted((Path(problems.__file__).parent).glob("*.py")))
_DEFINITION = re.compile(
    r"(?:^|(?<=[.!?]\s))((?:[A-Z][\w`'().-]*)(?: [\w`'().-]+){0,5}) (is|are) "
    r"((?:an?|the|used to|called) [^.!?\n]{12,220}[.!])")
_MAX_PAIRS = 6
_MAX_FUNCTIONS = 3
_MAX_FUNCTION_LINES = 25


def code_fingerprint() -> str:
    """Identity of the templates: a hash of this module and the problem generators' code."""
    h = hashlib.sha256()
    for path in _CODE:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return "templates:" + h.hexdigest()[:16]


class TemplatesBackend:
    name = "templates"

    def __init__(self) -> None:
        self.fingerprint = code_fingerprint()
        self.retries: Counter = Counter()

    def generate(
        self, requests: list[Request]
    ) -> Iterator[tuple[Request, Generation | BackendError]]:
        for request in requests:
            try:
                text = render(request.job)
            except (ValueError, KeyError) as exc:
                yield request, BackendError("template_error", f"{type(exc).__name__}: {exc}")
                continue
            # no tokenizer here: `completion_tokens` counts words
            yield request, Generation(text=text, completion_tokens=len(text.split()))

    def close(self) -> None:
        pass


def render(job: dict) -> str:
    if job["kind"] == "problem":
        return problems.render(problems.Problem.from_json(job["problem"]), job["style"])
    if job["template"] == "qa":
        return definition_qa(job["document"])
    if job["template"] == "explain_code":
        return explain_code(job["document"])
    raise ValueError(f"template {job['template']!r} needs a model backend")


def _title(text: str) -> str:
    for line in text.splitlines():
        line = line.strip(" #=*-`\t\"'")
        if len(line) >= 3:
            return line[:80]
    return "this text"


def definition_qa(text: str) -> str:
    """Question/answer pairs from the definitional sentences of a document ("" if none)."""
    pairs, seen = [], set()
    for subject, verb, rest in _DEFINITION.findall(" ".join(text.split())):
        key = subject.lower()
        if key in seen or len(subject) > 60:
            continue
        seen.add(key)
        pairs.append(f"Q: What {verb} {subject}?\nA: {subject} {verb} {rest}")
        if len(pairs) == _MAX_PAIRS:
            break
    if not pairs:
        return ""
    return f"Questions and answers about {_title(text)}.\n\n" + "\n\n".join(pairs) + "\n"


def _describe(fn: ast.FunctionDef, source: str) -> str:
    args = fn.args
    names = [a.arg for a in args.posonlyargs + args.args]
    defaults = dict(zip(names[len(names) - len(args.defaults):], args.defaults, strict=True))
    parts = []
    if names:
        described = [f"`{n}` (default `{ast.unparse(defaults[n])}`)" if n in defaults else f"`{n}`"
                     for n in names]
        parts.append(f"It takes {len(names)} parameter{'s' * (len(names) > 1)}: "
                     f"{', '.join(described)}.")
    else:
        parts.append("It takes no positional parameters.")
    nodes = list(ast.walk(fn))
    loops = sum(isinstance(n, (ast.For, ast.While)) for n in nodes)
    branches = sum(isinstance(n, ast.If) for n in nodes)
    raises = sorted({ast.unparse(n.exc.func if isinstance(n.exc, ast.Call) else n.exc)
                     for n in nodes if isinstance(n, ast.Raise) and n.exc is not None})
    returns = sum(isinstance(n, ast.Return) and n.value is not None for n in nodes)
    if loops or branches:
        parts.append(f"Its body has {loops} loop{'s' * (loops != 1)} and {branches} conditional "
                     f"branch{'es' * (branches != 1)}.")
    if raises:
        parts.append(f"It can raise {', '.join(f'`{r}`' for r in raises)}.")
    parts.append(f"It returns a value in {returns} place{'s' * (returns != 1)}." if returns
                 else "It returns nothing explicitly, so a call evaluates to `None`.")
    doc = ast.get_docstring(fn)
    if doc:
        parts.insert(0, f"Its documentation says: \"{doc.strip().splitlines()[0]}\"")
    return (f"The function `{fn.name}` is defined as follows.\n\n```python\n{source}\n```\n\n"
            + " ".join(parts))


def explain_code(text: str) -> str:
    """Explanations of up to three small documented functions of a module ("" if none)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return ""
    lines = text.splitlines()
    sections = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or not ast.get_docstring(node):
            continue
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        if node.end_lineno - start + 1 > _MAX_FUNCTION_LINES:
            continue
        sections.append(_describe(node, "\n".join(lines[start - 1:node.end_lineno])))
        if len(sections) == _MAX_FUNCTIONS:
            break
    if not sections:
        return ""
    return f"Reading the code of {_title(text)}.\n\n" + "\n\n".join(sections) + "\n"
