"""Multi-step integer arithmetic: + - * and exact division, with parentheses.

spec: `{"expr": tree, "style": "ascii" | "math"}` where a tree is an int leaf or
`[op, left, right]` with op in `+ - * /` (every division is exact). The worked steps evaluate
the tree bottom-up, left to right, which is the usual order of operations for the printed
expression (parentheses first, then * and /, then + and -, each left to right).
"""

from __future__ import annotations

import random

from stages.synth.problems import Explanation, Problem

TASK = "arithmetic"
OPS = ("+", "-", "*", "/")
PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
SYMBOLS = {"ascii": {"+": "+", "-": "-", "*": "*", "/": "/"},
           "math": {"+": "+", "-": "-", "*": "×", "/": "÷"}}
MAX_PRODUCT = 2000
NAMES = {"+": "addition", "-": "subtraction", "*": "multiplication", "/": "division"}

_QUESTIONS = (
    "Evaluate {e}.", "What is {e}?", "Compute {e}.", "Calculate the value of {e}.",
    "Find the value of {e}, using the standard order of operations.",
    "Work out {e}.", "Simplify {e} to a single integer.", "What number does {e} equal?",
    "Determine the value of the expression {e}.",
    "Using the usual order of operations, what is {e}?",
)
_VERBS = {
    "+": ("we add {a} and {b} to get {r}", "adding {b} to {a} gives {r}",
          "{a} plus {b} is {r}", "the sum of {a} and {b} is {r}"),
    "-": ("we subtract {b} from {a} to get {r}", "{a} minus {b} equals {r}",
          "taking {b} away from {a} leaves {r}", "the difference {a} - {b} is {r}"),
    "*": ("we multiply {a} by {b} to get {r}", "{a} times {b} is {r}",
          "multiplying {a} by {b} gives {r}", "the product of {a} and {b} is {r}"),
    "/": ("we divide {a} by {b} to get {r}", "{a} divided by {b} is {r}",
          "dividing {a} by {b} gives {r}", "the quotient of {a} and {b} is {r}"),
}
_REASONS = {
    "parens": ("because the parentheses come first, ", "starting inside the parentheses, ",
               "since brackets are worked out before anything else, "),
    "precedence": ("since {hi} is done before {lo}, ", "because {hi} takes priority over {lo}, ",
                   "following the rule that {hi} comes before {lo}, "),
    "left": ("working from left to right, ", "going from left to right, "),
}


def apply(op: str, a: int, b: int) -> int:
    """One operation; division must be exact."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0 or a % b:
        raise ValueError(f"inexact division {a} / {b}")
    return a // b


def evaluate(node) -> int:
    if isinstance(node, int):
        return node
    op, left, right = node
    return apply(op, evaluate(left), evaluate(right))


def recompute(spec: dict) -> str:
    return str(evaluate(spec["expr"]))


def _num(v: int) -> str:
    return str(v) if v >= 0 else f"({v})"


def show(node, sym: dict[str, str]) -> str:
    """Infix form with only the parentheses the tree needs (right operands of the same
    precedence are bracketed so that left-to-right reading follows the tree)."""
    if isinstance(node, int):
        return _num(node)
    op, left, right = node
    ls, rs = show(left, sym), show(right, sym)
    if isinstance(left, list) and PREC[left[0]] < PREC[op]:
        ls = f"({ls})"
    if isinstance(right, list) and PREC[right[0]] <= PREC[op]:
        rs = f"({rs})"
    return f"{ls} {sym[op]} {rs}"


def _leaf(rng: random.Random) -> int:
    return rng.randint(2, 12) if rng.random() < 0.6 else rng.randint(1, 60)


def _tree(rng: random.Random, n_ops: int) -> tuple[object, int]:
    """A random expression tree with `n_ops` operations (fewer if a division cannot be made
    exact), and its value."""
    if n_ops == 0:
        v = _leaf(rng)
        return v, v
    n_left = rng.randint(0, n_ops - 1)
    left, a = _tree(rng, n_left)
    right, b = _tree(rng, n_ops - 1 - n_left)
    op = rng.choices(OPS, weights=(3, 3, 3, 2))[0]
    if op == "*" and abs(a * b) > MAX_PRODUCT:
        op = rng.choice("+-")
    if op == "/" and (b in (0, 1, -1) or a % b):
        divisors = [d for d in range(2, 13) if a and a % d == 0 and abs(a) != d]
        if isinstance(right, int) and divisors:
            right = b = rng.choice(divisors)
        else:
            op = rng.choice("+-")
    return [op, left, right], apply(op, a, b)


def count_ops(node) -> int:
    return 0 if isinstance(node, int) else 1 + count_ops(node[1]) + count_ops(node[2])


def walk(expr) -> list[dict]:
    """Evaluation steps in order: operands, result and why it comes now."""
    root = [_copy(expr)]
    steps: list[dict] = []

    def visit(parent: list, i: int, parent_op: str | None, side: int, inside: bool) -> int:
        node = parent[i]
        if isinstance(node, int):
            return node
        op = node[0]
        bracketed = parent_op is not None and (
            PREC[op] < PREC[parent_op] or (side == 2 and PREC[op] == PREC[parent_op]))
        a = visit(node, 1, op, 1, inside or bracketed)
        b = visit(node, 2, op, 2, inside or bracketed)
        r = apply(op, a, b)
        parent[i] = r
        if parent_op is None:
            reason = "last"
        elif bracketed:
            reason = "parens"
        elif PREC[op] > PREC[parent_op]:
            reason = "precedence"
        else:
            reason = "parens" if inside else "left"
        steps.append({"op": op, "a": a, "b": b, "r": r, "reason": reason,
                      "parent": parent_op})
        return r

    visit(root, 0, None, 0, False)
    return steps


def _copy(node):
    return node if isinstance(node, int) else [node[0], _copy(node[1]), _copy(node[2])]


def generate(rng: random.Random, index: int, max_steps: int) -> Problem:
    low = min(2, max_steps)
    expr, _ = _tree(rng, rng.randint(low, max(low, max_steps)))
    style = rng.choice(("ascii", "ascii", "math"))
    sym = SYMBOLS[style]
    question = rng.choice(_QUESTIONS).format(e=show(expr, sym))
    spec = {"expr": expr, "style": style}
    used: set[str] = set()
    steps = [f"{_label(s, rng, used)}: {_num(s['a'])} {sym[s['op']]} {_num(s['b'])} = {s['r']}"
             for s in walk(expr)]
    return Problem(task=TASK, id=f"{TASK}-{index:06d}", question=question, steps=tuple(steps),
                   answer=recompute(spec), spec=spec, difficulty=len(steps))


_LABELS = {
    "parens": ("Parentheses first", "Inside the brackets", "Bracket first", "Grouped part",
               "Innermost group", "Inside the parentheses"),
    "precedence": ("{Hi} before {lo}", "{Hi} first", "{Hi} takes priority", "{Hi} comes first",
                   "{Hi} outranks {lo}"),
    "left": ("Left to right", "Leftmost first", "Working left to right", "Leftmost operation",
             "Reading left to right"),
    "last": ("Last {op}", "Final {op}", "Finally, {op}", "Remaining {op}", "One {op} left"),
}


def _label(step: dict, rng: random.Random, used: set[str]) -> str:
    """A short reason for a terse step ("Multiplication before addition"), preferring one not
    `used` yet in this problem."""
    hi, lo = NAMES[step["op"]], NAMES.get(step["parent"], "")
    options = [o.format(Hi=hi.capitalize(), lo=lo, op=hi) for o in _LABELS[step["reason"]]]
    label = rng.choice([o for o in options if o not in used] or options)
    used.add(label)
    return label


def explanation(spec: dict, rng: random.Random) -> Explanation:
    steps = walk(spec["expr"])
    said: set[str] = set()
    clauses = []
    for step in steps:
        verb = rng.choice(_VERBS[step["op"]])
        clause = verb.format(a=_num(step["a"]), b=_num(step["b"]), r=step["r"])
        kind = step["reason"]
        if kind in _REASONS and kind not in said and rng.random() < 0.8:
            said.add(kind)
            reason = rng.choice(_REASONS[kind]).format(hi=NAMES[step["op"]],
                                                       lo=NAMES[step["parent"]])
            clause = reason + clause
        clauses.append(clause)
    goal = rng.choice(("the value of the expression", "the value of this expression",
                       "what the expression equals"))
    value = recompute(spec)
    conclusion = rng.choice((f"the expression equals {value}", f"the final value is {value}",
                             f"the whole expression works out to {value}",
                             f"the result of the calculation is {value}"))
    return Explanation(goal, tuple(clauses), conclusion)
