"""Code tracing: what does a small Python function from the corpus return?

`candidates` picks module-level functions, and methods that are static or never use `self`
(shown without `self`), that are small, pure and closed: every name they read is a parameter, a
local, the function itself (recursion) or a safe builtin.
`arg_sets` guesses argument types from parameter names, literal defaults and how the body uses
each parameter, and draws small seeded literal values. `problems` runs the calls in the
`sandbox` (one subprocess per function, optionally through a persistent `memo`) and keeps calls
that return a short, non-None literal; the answer is the repr of what the function actually
returned, and `recompute` re-runs the call from the problem's `spec`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

from stages.synth import sandbox
from stages.synth.problems import Problem
from stages.synth.sandbox import Limits

TASK = "code_trace"
MAX_STEPS = 12  # worked-solution steps shown; the rest is summarised in one step
ARG_SETS = 6  # argument sets tried per function
PER_FUNCTION = 3  # problems kept per function (round-robin picks the first ones first)

Memo = Callable[[str, Callable[[], list[dict]]], list[dict]]

_BANNED = (
    ast.Yield,
    ast.YieldFrom,
    ast.Await,
    ast.Global,
    ast.Nonlocal,
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.AsyncFor,
    ast.AsyncWith,
    ast.With,
)


@dataclass(frozen=True)
class Function:
    """A traceable function: `source` is only this def (unparsed: no docstring, annotations)."""

    doc_id: str
    name: str
    source: str
    params: tuple[str, ...]
    lineno: int
    defaults: tuple[str, ...] = ()  # reprs of the literal defaults of the last params


def candidates(doc_id: str, text: str, max_lines: int = 15) -> list[Function]:
    """Traceable functions of a file, in file order.

    Module-level functions, plus methods of module-level classes that are static or never use
    `self` (shown as plain functions without `self`, under the method's name).
    """
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    nodes = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            nodes.append(node)
        elif isinstance(node, ast.ClassDef):
            nodes.extend(m for m in map(_as_function, node.body) if m is not None)
    found = []
    for node in nodes:
        fn = _qualify(doc_id, node, max_lines)
        if fn is not None:
            found.append(fn)
    return found


def _as_function(node: ast.stmt) -> ast.FunctionDef | None:
    """A method as a plain function: a static method, or one that never uses `self`."""
    if not isinstance(node, ast.FunctionDef):
        return None
    decorators = [ast.unparse(d) for d in node.decorator_list]
    args = node.args
    if decorators == ["staticmethod"]:
        return ast.FunctionDef(**{**vars(node), "decorator_list": []})
    if decorators or not args.args or args.args[0].arg != "self" or args.posonlyargs:
        return None
    if any(isinstance(n, ast.Name) and n.id == "self" for n in ast.walk(node)):
        return None
    if len(args.defaults) == len(args.args):
        return None  # `self` itself has a default
    plain = ast.arguments(**{**vars(args), "args": args.args[1:]})
    return ast.FunctionDef(**{**vars(node), "args": plain})


def _qualify(doc_id: str, node: ast.FunctionDef, max_lines: int) -> Function | None:
    a = node.args
    params = [p.arg for p in a.posonlyargs + a.args]
    if node.decorator_list or a.vararg or a.kwarg or a.kwonlyargs or not 1 <= len(params) <= 3:
        return None
    try:
        defaults = tuple(repr(ast.literal_eval(d)) for d in a.defaults)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    body = node.body
    if (
        len(body) > 1
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    if not _closed(node.name, params, body):
        return None
    clean = ast.FunctionDef(
        name=node.name,
        args=ast.arguments(
            posonlyargs=[ast.arg(arg=p.arg) for p in a.posonlyargs],
            args=[ast.arg(arg=p.arg) for p in a.args],
            vararg=None,
            kwonlyargs=[],
            kw_defaults=[],
            kwarg=None,
            defaults=a.defaults,
        ),
        body=body,
        decorator_list=[],
        returns=None,
        type_comment=None,
    )
    try:
        source = ast.unparse(ast.fix_missing_locations(clean)) + "\n"
        tree = ast.parse(source)  # line numbers of the trace refer to this source
    except (ValueError, SyntaxError, RecursionError):
        return None
    if len(source.splitlines()) - 1 > max_lines or not isinstance(tree.body[0], ast.FunctionDef):
        return None
    return Function(doc_id, node.name, source, tuple(params), node.lineno, defaults)


def _closed(name: str, params: list[str], body: list[ast.stmt]) -> bool:
    """Pure, self-contained and worth tracing.

    No banned syntax; attributes only the public methods of builtin literal types (a parameter
    that needs `.read()` or `.prec` cannot be given as a literal); no calls of parameters; no
    free names but the function itself and safe builtins; some `return <value>`; a parameter
    is read.
    """
    local, loaded = set(params) | {name}, set()
    returns = False
    for stmt in body:
        for node in ast.walk(stmt):
            if isinstance(node, _BANNED):
                return False
            if isinstance(node, ast.Attribute) and node.attr not in _LITERAL_ATTRS:
                return False
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id in params:
                    return False
            if isinstance(node, ast.Name):
                if node.id.startswith("__"):
                    return False
                (loaded if isinstance(node.ctx, ast.Load) else local).add(node.id)
            elif isinstance(node, ast.arg):
                local.add(node.arg)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                local.add(node.name)
            elif isinstance(node, ast.Return) and node.value is not None:
                returns = returns or not (
                    isinstance(node.value, ast.Constant) and node.value.value is None
                )
    uses_params = bool(loaded & set(params))
    return returns and uses_params and loaded <= local | sandbox.SAFE_BUILTINS


_LITERAL_ATTRS = frozenset(
    a
    for t in (str, bytes, list, tuple, dict, set, frozenset, int, float, bool, complex)
    for a in dir(t)
    if not a.startswith("_")
)


# --- argument types and values -------------------------------------------------------------

KINDS = ("int", "str", "list", "float", "strlist", "char", "dict", "bool")
_STR_METHODS = frozenset(
    """capitalize casefold center count encode endswith expandtabs find format index isalnum
    isalpha isascii isdecimal isdigit isidentifier islower isnumeric isprintable isspace istitle
    isupper join ljust lower lstrip partition removeprefix removesuffix replace rfind rindex
    rjust rpartition rsplit rstrip split splitlines startswith strip swapcase title translate
    upper zfill""".split()
)
_LIST_METHODS = frozenset("append extend insert pop remove sort reverse clear copy".split())
_DICT_METHODS = frozenset("keys values items get setdefault update popitem".split())
_SEQ_FUNCS = frozenset("len sorted reversed enumerate list set tuple zip any all min max".split())
_INT_FUNCS = frozenset("range chr abs divmod pow hex bin oct".split())
_INT_NAMES = frozenset(
    """n i j k m x y num number count size width height index idx pos start end stop step
    length level depth base offset limit value val total year month day""".split()
)
_STR_NAMES = frozenset(
    """s text string word name line pattern pat prefix suffix sep delim path filename
    url msg message label key template format fmt mode chars source src data haystack
    needle sub header title""".split()
)
_CHAR_NAMES = frozenset("c ch char".split())
_WORDS = (
    "hello", "Hello World", "abc", "a,b,c", "spam eggs", "  padded  ", "banana", "x", "",
    "42", "3.14", "foo_bar", "CamelCase", "*.py", "a.b.c", "hello\tworld", "one\ntwo",
    "Mississippi", "a-b-c", "UPPER", "x=1", "key: value", "[abc]", "café", "1.2.3", "10",
)  # fmt: skip
_SHORT = ("a", "b", "ab", "cat", "dog", "x", "hello", "", "42", "spam")
_FLOATS = (0.0, 0.1, 0.2, 0.25, 0.3, 0.5, 0.6, 0.75, 0.8, 1.0, 1.5, 2.0)


def type_guesses(fn: Function) -> dict[str, list[str]]:
    """Argument kinds per parameter, most likely first (every kind in KINDS is listed)."""
    node = ast.parse(fn.source).body[0]
    score = {p: dict.fromkeys(KINDS, 0.0) for p in fn.params}

    def add(expr: ast.AST | None, **kinds: float) -> None:
        if isinstance(expr, ast.Name) and expr.id in score:
            for kind, points in kinds.items():
                score[expr.id][kind] += points

    for p in fn.params:
        if p in _INT_NAMES:
            score[p]["int"] += 1.5
        if p in _STR_NAMES:
            score[p]["str"] += 1.5
        if p in _CHAR_NAMES:
            score[p]["char"] += 2
        if len(p) > 2 and p.endswith("s") and p not in _STR_NAMES:
            score[p]["list"] += 1
    for p, default in zip(fn.params[len(fn.params) - len(fn.defaults) :], fn.defaults, strict=True):
        kind = {int: "int", float: "float", str: "str", bool: "bool", list: "list", dict: "dict"}
        got = kind.get(type(ast.literal_eval(default)))
        if got:
            score[p][got] += 5
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            f = sub.func
            if isinstance(f, ast.Attribute):
                if f.attr in _STR_METHODS:
                    add(f.value, str=3)
                if f.attr in _LIST_METHODS:
                    add(f.value, list=3, strlist=1)
                if f.attr in _DICT_METHODS:
                    add(f.value, dict=3)
                if f.attr == "join":
                    for arg in sub.args:
                        add(arg, strlist=3)
            elif isinstance(f, ast.Name):
                for arg in sub.args:
                    if f.id in _INT_FUNCS:
                        add(arg, int=3)
                    elif f.id == "ord":
                        add(arg, char=3)
                    elif f.id == "sum":
                        add(arg, list=3)
                    elif f.id in _SEQ_FUNCS:
                        add(arg, list=1.2, str=1)
                    elif f.id in ("int", "float"):
                        add(arg, str=1)
                    elif f.id == "round":
                        add(arg, float=2)
        elif isinstance(sub, ast.BinOp | ast.AugAssign):
            left, right = (
                (sub.left, sub.right) if isinstance(sub, ast.BinOp) else (sub.target, sub.value)
            )
            for this, other in ((left, right), (right, left)):
                const = other.value if isinstance(other, ast.Constant) else None
                if isinstance(const, bool) or const is None:
                    add(this, int=1)
                elif isinstance(const, int):
                    add(this, int=2)
                elif isinstance(const, float):
                    add(this, float=2.5)
                elif isinstance(const, str):
                    add(this, str=2)
                if isinstance(other, ast.List):
                    add(this, list=2)
        elif isinstance(sub, ast.Compare):
            for a, b in zip([sub.left, *sub.comparators], sub.comparators, strict=False):
                for this, other in ((a, b), (b, a)):
                    const = other.value if isinstance(other, ast.Constant) else None
                    if isinstance(const, float):
                        add(this, float=2)
                    elif isinstance(const, int) and not isinstance(const, bool):
                        add(this, int=1)
                    elif isinstance(const, str):
                        add(this, char=1.5 if len(const) == 1 else 0, str=1)
            for op, right in zip(sub.ops, sub.comparators, strict=True):
                if isinstance(op, ast.In | ast.NotIn):
                    add(right, list=1, str=1, dict=0.5)
        elif isinstance(sub, ast.Subscript):
            add(sub.value, list=1, str=1)
            add(sub.slice, int=2)
            if isinstance(sub.slice, ast.Slice):
                for bound in (sub.slice.lower, sub.slice.upper, sub.slice.step):
                    add(bound, int=2)
        elif isinstance(sub, ast.For | ast.comprehension):
            add(sub.iter, list=1.2, str=1)
        elif isinstance(sub, ast.UnaryOp) and isinstance(sub.op, ast.USub | ast.Invert):
            add(sub.operand, int=1)
    order = {k: i for i, k in enumerate(KINDS)}
    return {p: sorted(KINDS, key=lambda k, s=s: (-s[k], order[k])) for p, s in score.items()}


def _value(kind: str, rng: random.Random, consts: dict[type, list]):
    """A small literal of a kind; strings and ints sometimes from the function's own constants."""
    if kind in ("int", "str") and rng.random() < 0.3:
        pool = consts[int if kind == "int" else str]
        if pool:
            return rng.choice(pool)
    if kind == "int":
        return rng.randint(0, 20)
    if kind == "float":
        return rng.choice(_FLOATS)
    if kind == "str":
        return rng.choice(_WORDS)
    if kind == "char":
        return rng.choice("abcxyzAZ09 _-.")
    if kind == "list":
        return [rng.randint(0, 20) for _ in range(rng.randint(0, 6))]
    if kind == "strlist":
        return [rng.choice(_SHORT) for _ in range(rng.randint(0, 4))]
    if kind == "dict":
        return {w: rng.randint(0, 9) for w in rng.sample(_SHORT, rng.randint(0, 3))}
    return rng.choice((True, False))


def _constants(source: str) -> dict[type, list]:
    """Short str and small int constants of a function, sorted (a deterministic pool)."""
    found: dict[type, set] = {int: set(), str: set()}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, str) and len(v) <= 20 or type(v) is int and -5 <= v <= 100:
                found[type(v)].add(v)
    return {t: sorted(vs) for t, vs in found.items()}


def arg_sets(fn: Function, rng: random.Random, k: int) -> list[tuple]:
    """Up to `k` distinct argument tuples: the best type guess first, then alternatives."""
    guesses = type_guesses(fn)
    consts = _constants(fn.source)
    required = len(fn.params) - len(fn.defaults)
    found: list[tuple] = []
    for attempt in range(4 * k):
        if len(found) >= k:
            break
        main = attempt < (k + 1) // 2
        n_args = len(fn.params)
        if fn.defaults and rng.random() < 0.5:
            n_args = rng.randint(required, len(fn.params) - 1)
        args = tuple(
            _value(guesses[p][0] if main else rng.choice(guesses[p][:3]), rng, consts)
            for p in fn.params[:n_args]
        )
        if args and args not in found:
            found.append(args)
    return found


# --- problems --------------------------------------------------------------------------------


def memo_key(fn: Function, args: list[tuple], limits: Limits) -> str:
    """Cache key of one sandbox run: sha256 of the canonical JSON of what determines it."""
    payload = {
        "sandbox": sandbox.VERSION,
        "source": fn.source,
        "func": fn.name,
        "args": [repr(a) for a in args],
        "limits": asdict(limits),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _results(
    fn: Function, args: list[tuple], limits: Limits, memo: Memo | None
) -> list[sandbox.CallResult]:
    def compute() -> list[dict]:
        return [r.to_json() for r in sandbox.run_calls(fn.source, fn.name, args, limits)]

    rows = compute() if memo is None else memo(memo_key(fn, args, limits), compute)
    if len(rows) != len(args):  # a damaged cache entry: do not trust it
        rows = compute()
    return [sandbox.CallResult.from_json(r) for r in rows]


def problems(
    docs: Iterable[tuple[str, str]],
    n: int,
    seed: int,
    limits: Limits | None = None,
    memo: Memo | None = None,
    max_lines: int = 15,
) -> list[Problem]:
    """At most `n` problems, round-robin over distinct functions (of at most `max_lines` lines)
    in a seeded order."""
    limits = limits or Limits()
    funcs: dict[str, Function] = {}
    for doc_id, text in docs:
        for fn in candidates(doc_id, text, max_lines):
            funcs.setdefault(fn.source, fn)  # the same function in two files counts once
    order = sorted(funcs.values(), key=lambda f: (f.doc_id, f.lineno, f.name))
    random.Random(f"{TASK}:{seed}").shuffle(order)
    per_fn: list[list[Problem]] = []
    for fn in order:
        if len(per_fn) >= n:
            break
        rng = random.Random(f"{TASK}:{seed}:{fn.doc_id}:{fn.lineno}:{fn.name}")
        args = arg_sets(fn, rng, ARG_SETS)
        made = _function_problems(fn, args, _results(fn, args, limits, memo), limits)
        if made:
            per_fn.append(made)
    out: list[Problem] = []
    for round_ in range(PER_FUNCTION):
        for made in per_fn:
            if len(out) < n and round_ < len(made):
                out.append(made[round_])
    return out


def _function_problems(
    fn: Function, args: list[tuple], results: list[sandbox.CallResult], limits: Limits
) -> list[Problem]:
    """Problems from the calls that returned a short non-None literal; distinct answers first."""
    good = [
        (a, r) for a, r in zip(args, results, strict=True) if r.ok and r.value not in (None, "None")
    ]
    firsts, rest, seen = [], [], set()
    for a, r in good:
        (rest if r.value in seen else firsts).append((a, r))
        seen.add(r.value)
    return [_problem(fn, a, r, limits) for a, r in (firsts + rest)[:PER_FUNCTION]]


def _problem(fn: Function, args: tuple, res: sandbox.CallResult, limits: Limits) -> Problem:
    args_repr = repr(tuple(args))
    key = json.dumps([fn.doc_id, fn.name, fn.source, args_repr])  # methods may share a name
    digest = hashlib.sha256(key.encode()).hexdigest()
    call = f"{fn.name}({', '.join(repr(a) for a in args)})"
    question = f"What does `{call}` return?\n\n```python\n{fn.source}```"
    return Problem(
        task=TASK,
        id=f"{TASK}-{digest[:12]}",
        question=question,
        steps=explain(fn.source, res.trace, res.value or ""),
        answer=res.value or "",
        spec={
            "source": fn.source,
            "func": fn.name,
            "args": args_repr,
            "doc_id": fn.doc_id,
            "limits": asdict(limits),
        },
        difficulty=max(1, res.lines),
    )


def recompute(spec: dict) -> str:
    """Re-run the call of a problem's spec in a fresh sandbox; the repr of its return value."""
    args = ast.literal_eval(spec["args"])
    res = sandbox.run_calls(spec["source"], spec["func"], [args], Limits(**spec["limits"]))[0]
    if not res.ok or res.value is None:
        raise ValueError(f"code_trace call {spec['func']}{spec['args']} failed: {res.error}")
    return res.value


# --- worked solution ---------------------------------------------------------------------------

_ENTRY = re.compile(r"^line (\d+): (?:depth (\d+), )?(.*)$", re.S)


def _line_nodes(source: str) -> dict[int, ast.AST]:
    """The statement (or except clause) that starts on each line of the source."""
    nodes: dict[int, ast.AST] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.stmt | ast.ExceptHandler):
            nodes.setdefault(node.lineno, node)
    return nodes


def _snippet(node: ast.AST, limit: int = 50) -> str:
    text = ast.unparse(node).splitlines()[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _in_body(node: ast.AST, line: int | None) -> bool:
    body = getattr(node, "body", None)
    return bool(body) and line is not None and body[0].lineno <= line <= body[-1].end_lineno


def explain(source: str, trace: Sequence[str], answer: str) -> tuple[str, ...]:
    """Readable steps from a sandbox trace, capped at MAX_STEPS (the rest summarised)."""
    nodes = _line_nodes(source)
    parsed = []
    for entry in trace:
        m = _ENTRY.match(entry)
        if m:
            parsed.append((int(m[1]), int(m[2] or 1), m[3]))
    steps, loop_flags = [], []
    for i, (line, depth, rest) in enumerate(parsed):
        nxt = parsed[i + 1][0] if i + 1 < len(parsed) else None
        node = nodes.get(line)
        where = f"Line {line}" + (f" (call depth {depth})" if depth > 1 else "")
        iterates = False
        if rest.startswith("return "):
            value = answer if depth == 1 and i == len(parsed) - 1 else rest[7:]
            text = f"{where} returns {value}."
        elif rest.startswith("raises "):
            text = f"{where} raises {rest[7:]}."
        elif isinstance(node, ast.For):
            iterates = bool(rest)
            text = f"{where} loops: {rest}." if rest else f"{where}: the loop is done."
        elif isinstance(node, ast.While | ast.If):
            iterates = isinstance(node, ast.While) and _in_body(node, nxt)
            truth = "true" if _in_body(node, nxt) else "false"
            text = f"{where} tests `{_snippet(node.test)}`: {truth}."
        elif isinstance(node, ast.ExceptHandler):
            text = f"{where} catches the exception."
        elif rest:
            targets = {
                t.id
                for t in ast.walk(node or ast.Pass())
                if isinstance(t, ast.Name) and not isinstance(t.ctx, ast.Load)
            }
            changed = {part.split(" = ", 1)[0] for part in rest.split(", ") if " = " in part}
            text = f"{where} {'sets' if changed & targets else 'updates'} {rest}."
        else:
            text = f"{where} runs `{_snippet(node)}`." if node else f"{where} runs."
        steps.append(text)
        loop_flags.append(iterates)
    truncated = trace[-1] if trace and trace[-1].startswith("... ") else None
    keep = MAX_STEPS - 2
    if truncated:
        hidden = int(truncated.split()[1]) + max(0, len(steps) - MAX_STEPS + 1)
        steps = steps[: MAX_STEPS - 1] + [f"... {hidden} more steps, then it returns {answer}."]
    elif len(steps) > MAX_STEPS:
        loops = sum(loop_flags[keep:-1])
        note = f"... {len(steps) - keep - 1} more steps"
        note += f" ({loops} more loop iterations)." if loops else "."
        steps = steps[:keep] + [note, steps[-1]]
    return tuple(steps) or (f"It returns {answer}.",)
