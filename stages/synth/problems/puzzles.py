"""List puzzles: a small seeded list of integers or words put through a chain of operations.

List operations: remove duplicates (first occurrences kept), sort (numbers by value, words
alphabetically), reverse, filter by a condition, map (add/subtract/multiply; words to their
lengths), keep or drop the first n. An optional final operation turns the list into one value:
count, sum, max/min (words: alphabetically last/first), range, k-th largest/smallest, first,
last, total number of letters. A list answer is written "3, 5, 8" (`normalize_answer` also
accepts "[3,5,8]"); words are lower case.

spec: `{"items": [...], "ops": [[op, *args], ...]}`.
"""

from __future__ import annotations

import random

from stages.synth.problems import Explanation, Problem

TASK = "list_puzzle"
WORDS = {
    "fruits": ("apple", "banana", "cherry", "grape", "kiwi", "lemon", "mango", "melon", "olive",
               "orange", "peach", "pear", "plum", "apricot", "fig", "lime", "papaya"),
    "animals": ("bear", "cat", "dog", "eagle", "fox", "goat", "horse", "lion", "mouse", "otter",
                "rabbit", "seal", "tiger", "whale", "zebra", "owl", "camel", "donkey"),
    "colors": ("amber", "black", "blue", "brown", "cyan", "gold", "gray", "green", "indigo",
               "lilac", "navy", "pink", "purple", "red", "silver", "teal", "violet", "white"),
    "instruments": ("banjo", "cello", "drum", "flute", "guitar", "harp", "oboe", "piano",
                    "trumpet", "tuba", "viola", "violin", "organ", "bagpipe", "horn"),
    "tools": ("anvil", "axe", "chisel", "drill", "file", "hammer", "ladder", "level", "pliers",
              "rake", "saw", "shovel", "spade", "wrench", "trowel", "clamp"),
}
ORDINALS = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth"}
TERMINAL_INT = ("count", "sum", "max", "min", "range", "kth_largest", "kth_smallest", "first",
                "last")
TERMINAL_WORD = ("count", "max", "min", "first", "last", "letters")


def _kind(items: list) -> str:
    return "ints" if not items or isinstance(items[0], int) else "words"


def _pred(name: str, arg, x) -> bool:
    if name == "even":
        return x % 2 == 0
    if name == "odd":
        return x % 2 == 1
    if name == "gt":
        return x > arg
    if name == "lt":
        return x < arg
    if name == "div":
        return x % arg == 0
    if name == "starts":
        return x.startswith(arg)
    if name == "ends":
        return x.endswith(arg)
    if name == "contains":
        return arg in x
    if name == "longer":
        return len(x) > arg
    raise ValueError(f"unknown condition {name!r}")


def _map(name: str, arg, x):
    return {"add": lambda: x + arg, "sub": lambda: x - arg, "mul": lambda: x * arg,
            "len": lambda: len(x)}[name]()


def apply(items: list, op: list):
    """One operation: a list operation returns a list, a final one a number or a word."""
    name, *args = op
    if name == "dedupe":
        return list(dict.fromkeys(items))
    if name == "sort":
        return sorted(items, reverse=args[0] == "desc")
    if name == "reverse":
        return items[::-1]
    if name == "filter":
        return [x for x in items if _pred(args[0], args[1], x)]
    if name == "map":
        return [_map(args[0], args[1], x) for x in items]
    if name == "take":
        return items[: args[0]]
    if name == "drop":
        return items[args[0]:]
    return _final(items, name, args)


def _final(items: list, name: str, args: list):
    if name == "count":
        return len(items)
    if name == "sum":
        return sum(items)
    if name == "max":
        return max(items)
    if name == "min":
        return min(items)
    if name == "range":
        return max(items) - min(items)
    if name == "kth_largest":
        return sorted(items, reverse=True)[args[0] - 1]
    if name == "kth_smallest":
        return sorted(items)[args[0] - 1]
    if name == "first":
        return items[0]
    if name == "last":
        return items[-1]
    if name == "letters":
        return sum(map(len, items))
    raise ValueError(f"unknown operation {name!r}")


def fmt(value) -> str:
    """Answer text of a list or a single value."""
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def run(spec: dict) -> list:
    """Every intermediate value: the items, then the result of each operation."""
    values = [list(spec["items"])]
    for op in spec["ops"]:
        values.append(apply(values[-1], op))
    return values


def recompute(spec: dict) -> str:
    return fmt(run(spec)[-1])


def _items(rng: random.Random) -> list:
    n = rng.randint(5, 10)
    if rng.random() < 0.6:
        hi = rng.choice((20, 50, 99))
        items = [rng.randint(1, hi) for _ in range(n)]
    else:
        pool = WORDS[rng.choice(tuple(WORDS))]
        items = [rng.choice(pool) for _ in range(n)]
    if rng.random() < 0.5:  # make a repeat likely, so that removing duplicates matters
        items[rng.randrange(n)] = items[rng.randrange(n)]
    return items


def _filter(rng: random.Random, items: list) -> list | None:
    """A condition that keeps some but not all items, or None."""
    if _kind(items) == "ints":
        options = [["even", None], ["odd", None], ["div", rng.choice((3, 4, 5))]]
        values = sorted(set(items))
        if len(values) > 1:
            options += [["gt", rng.choice(values[:-1])], ["lt", rng.choice(values[1:])]]
    else:
        letters = sorted({w[0] for w in items})
        ends = sorted({w[-1] for w in items})
        inner = sorted({c for w in items for c in w})
        lengths = sorted({len(w) for w in items})
        options = [["starts", rng.choice(letters)], ["ends", rng.choice(ends)],
                   ["contains", rng.choice(inner)]]
        if len(lengths) > 1:
            options.append(["longer", rng.choice(lengths[:-1])])
    rng.shuffle(options)
    for pred in options:
        kept = apply(items, ["filter", *pred])
        if 0 < len(kept) < len(items):
            return ["filter", *pred]
    return None


def _list_op(rng: random.Random, items: list, prev: str | None) -> list | None:
    """A list operation that changes `items` and does not undo or repeat the previous one."""
    names = ["dedupe", "sort", "reverse", "filter", "filter", "map", "take", "drop"]
    rng.shuffle(names)
    for name in names:
        if (name == prev and name not in ("filter", "map")) or {name, prev} == {"sort", "reverse"}:
            continue
        op = _list_candidate(rng, items, name)
        if op is not None:
            return op
    return None


def _list_candidate(rng: random.Random, items: list, name: str) -> list | None:
    n, ints = len(items), _kind(items) == "ints"
    if name == "dedupe":
        return ["dedupe"] if len(set(items)) < n else None
    if name == "sort":
        order = rng.choice(("asc", "desc"))
        return ["sort", order] if apply(items, ["sort", order]) != items else None
    if name == "reverse":
        return ["reverse"] if items != items[::-1] else None
    if name == "filter":
        return _filter(rng, items)
    if name == "map":
        if not ints:
            return ["map", "len", None]
        fn = rng.choice(("add", "sub", "mul"))
        if fn == "mul" and max(map(abs, items)) <= 60:
            return ["map", "mul", rng.randint(2, 5)]
        return ["map", "add" if fn == "mul" else fn, rng.randint(1, 15)]
    if name in ("take", "drop") and n >= 3:  # removes at least two entries
        return [name, rng.randint(1, n - 2)]
    return None


def _final_op(rng: random.Random, items: list, alone: bool) -> list | None:
    """A final operation; picking the first or last entry is not a puzzle on its own."""
    ints = _kind(items) == "ints"
    names = list(TERMINAL_INT if ints else TERMINAL_WORD)
    rng.shuffle(names)
    for name in names:
        if alone and name in ("first", "last"):
            continue
        if name in ("kth_largest", "kth_smallest"):
            if len(set(items)) == len(items) and len(items) >= 3:
                return [name, rng.randint(2, min(5, len(items)))]
            continue
        if name in ("max", "min", "range", "first", "last") and len(items) < 2:
            continue
        return [name]
    return None


def generate(rng: random.Random, index: int, max_steps: int) -> Problem:
    items = _items(rng)
    n_ops = rng.randint(1, max(1, max_steps))
    ops, value = [], items
    for i in range(n_ops):
        last = i == n_ops - 1
        op = _final_op(rng, value, not ops) if last and rng.random() < 0.7 else None
        op = op or _list_op(rng, value, ops[-1][0] if ops else None)
        if op is None:
            break
        ops.append(op)
        value = apply(value, op)
        if not isinstance(value, list):
            break
    if not ops:
        ops = [["count"]]
    spec = {"items": items, "ops": ops}
    steps = tuple(_steps(spec))
    return Problem(task=TASK, id=f"{TASK}-{index:06d}", question=_question(spec, rng),
                   steps=steps, answer=recompute(spec), spec=spec, difficulty=len(steps))


# ---- wording ----------------------------------------------------------------------------------

def _cond(pred: str, arg) -> str:
    """The condition as an adjective phrase: "even", "greater than 7", "starting with b"."""
    return {"even": "even", "odd": "odd", "gt": f"greater than {arg}", "lt": f"less than {arg}",
            "div": f"divisible by {arg}", "starts": f"starting with the letter {arg}",
            "ends": f"ending in the letter {arg}", "contains": f"containing the letter {arg}",
            "longer": f"longer than {arg} letters"}[pred]


def _noun(items: list) -> str:
    return "numbers" if _kind(items) == "ints" else "words"


def _instruction(op: list, items: list) -> str:
    """The operation as an imperative (lower case)."""
    name, *args = op
    noun = _noun(items)
    if name == "dedupe":
        return "remove repeated entries, keeping only the first copy of each"
    if name == "sort":
        if noun == "words":
            return "sort the words alphabetically" + (" in reverse" if args[0] == "desc" else "")
        return "sort the numbers from " + ("smallest to largest" if args[0] == "asc"
                                           else "largest to smallest")
    if name == "reverse":
        return "reverse the order of the list"
    if name == "filter":
        if args[0] in ("even", "odd"):
            return f"keep only the {args[0]} numbers"
        return f"keep only the {noun} {_cond(args[0], args[1])}"
    if name == "map":
        return {"add": f"add {args[1]} to every number",
                "sub": f"subtract {args[1]} from every number",
                "mul": f"multiply every number by {args[1]}",
                "len": "replace every word by its number of letters"}[args[0]]
    count = "entry" if args[0] == 1 else f"{args[0]} entries"
    return f"{'keep only' if name == 'take' else 'drop'} the first {count}"


def _ask(op: list, items: list) -> str:
    """A final operation as a question about the list in hand."""
    name, *args = op
    noun = _noun(items)
    return {
        "count": f"How many {noun} are left?",
        "sum": "What is the sum of the numbers?",
        "max": "Which word comes last alphabetically?" if noun == "words"
        else "What is the largest number?",
        "min": "Which word comes first alphabetically?" if noun == "words"
        else "What is the smallest number?",
        "range": "What is the difference between the largest and the smallest number?",
        "kth_largest": f"What is the {ORDINALS.get(args[0] if args else 0, '')} largest number?",
        "kth_smallest": f"What is the {ORDINALS.get(args[0] if args else 0, '')} smallest "
                        "number?",
        "first": f"Which {noun[:-1]} is first?",
        "last": f"Which {noun[:-1]} is last?",
        "letters": "How many letters do the words have in total?",
    }[name]


def _bracket(items: list) -> str:
    return "[" + ", ".join(map(str, items)) + "]"


def _question(spec: dict, rng: random.Random) -> str:
    items, ops = spec["items"], spec["ops"]
    shown = _bracket(items)
    special = _special(items, ops, shown)
    if special and rng.random() < 0.6:
        return special
    intro = rng.choice(("Start with the list {l}.", "You are given the list {l}.",
                        "Consider the list {l}.", "Take the list {l}."))
    parts, value = [intro.format(l=shown)], items
    list_ops = ops[:-1] if not isinstance(run(spec)[-1], list) else ops
    for i, op in enumerate(list_ops):
        link = ("First" if i == 0 else ("Then", "Next", "After that")[(i - 1) % 3]
                ) if len(list_ops) > 1 else ""
        text = _instruction(op, value)
        parts.append(f"{link}, {text}." if link else text[0].upper() + text[1:] + ".")
        value = apply(value, op)
    if len(list_ops) < len(ops):
        parts.append(_ask(ops[-1], value))
    else:
        parts.append(rng.choice(("What is the resulting list?", "What list do you end up with?",
                                 "Write down the final list.")))
        parts.append("Give it as a comma-separated list.")
    return " ".join(parts)


def _special(items: list, ops: list, shown: str) -> str | None:
    """A natural one-sentence question for common one- and two-step puzzles."""
    key = tuple(op[0] for op in ops)
    noun = _noun(items)
    if key == ("filter", "count"):
        return f"How many of the {noun} in {shown} are {_cond(ops[0][1], ops[0][2])}?"
    if key == ("filter", "sum"):
        cond = _cond(ops[0][1], ops[0][2])
        if ops[0][1] in ("even", "odd"):
            return f"What is the sum of the {cond} numbers in {shown}?"
        return f"What is the sum of the numbers {cond} in {shown}?"
    if key == ("dedupe", "count"):
        return f"How many different {noun} appear in {shown}?"
    if key in (("kth_largest",), ("kth_smallest",)):
        size = "largest" if key[0] == "kth_largest" else "smallest"
        return f"What is the {ORDINALS[ops[0][1]]} {size} number in {shown}?"
    if key == ("sort",) and noun == "numbers":
        order = "smallest to largest" if ops[0][1] == "asc" else "largest to smallest"
        return f"Sort {shown} from {order}. Give the result as a comma-separated list."
    if key == ("reverse",):
        return f"Write the list {shown} in reverse order, separated by commas."
    return None


def _steps(spec: dict) -> list[str]:
    values, steps = run(spec), []
    for op, before, after in zip(spec["ops"], values, values[1:], strict=False):
        label = _short(op, before) if isinstance(after, list) else _label(op)
        steps.append(f"{label[0].upper()}{label[1:]}: {fmt(after)}")
    return steps


def _short(op: list, before: list) -> str:
    """A compact label of a list operation for the terse steps."""
    name, *args = op
    if name == "sort":
        if _kind(before) == "words":
            return "alphabetical order" if args[0] == "asc" else "reverse alphabetical order"
        return "ascending order" if args[0] == "asc" else "descending order"
    if name == "filter":
        if args[0] in ("even", "odd"):
            return f"{args[0]} numbers"
        return f"{_noun(before)} {_cond(args[0], args[1])}"
    if name == "map":
        return {"add": f"each plus {args[1]}", "sub": f"each minus {args[1]}",
                "mul": f"each times {args[1]}", "len": "word lengths"}[args[0]]
    if name == "take":
        return f"first {args[0]}"
    if name == "drop":
        return f"without the first {args[0]}"
    return {"dedupe": "no repeats", "reverse": "reversed"}[name]


def _label(op: list) -> str:
    name, *args = op
    if name in ("kth_largest", "kth_smallest"):
        return f"{ORDINALS[args[0]]} {name.split('_')[1]}"
    return {"count": "count", "sum": "sum", "max": "maximum", "min": "minimum",
            "range": "largest minus smallest", "first": "first entry", "last": "last entry",
            "letters": "total letters"}[name]


def _prose(items: list) -> str:
    """A list in running text: "5, 3 and 8"."""
    words = list(map(str, items))
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


_VERBS = {"even": "are even", "odd": "are odd", "gt": "are greater than {}",
          "lt": "are less than {}", "div": "are divisible by {}", "starts": "start with {}",
          "ends": "end in {}", "contains": "contain {}", "longer": "have more than {} letters"}


def _list_clauses(op: list, before: list, after: list) -> tuple[str, ...]:
    """Ways to say what a list operation did (worded unlike the question's instructions)."""
    name, *args = op
    noun, result = _noun(before), _prose(after)
    if name == "dedupe":
        extra = _prose(list(dict.fromkeys(x for i, x in enumerate(before) if x in before[:i])))
        return (f"without the extra copies of {extra}, the list is {result}",
                f"dropping the later copies of {extra} leaves {result}")
    if name == "sort":
        order = {("numbers", "asc"): "increasing order", ("numbers", "desc"): "decreasing order",
                 ("words", "asc"): "alphabetical order",
                 ("words", "desc"): "reverse alphabetical order"}[noun, args[0]]
        return (f"in {order} the {noun} are {result}", f"putting them in {order} gives {result}")
    if name == "reverse":
        return (f"read backwards, the list is {result}", f"flipping the order gives {result}")
    if name == "filter":
        verb = _VERBS[args[0]].format(args[1])
        return (f"the {noun} that {verb} are {result}",
                f"filtering for {noun} that {verb} leaves {result}")
    if name == "map":
        k = args[1]
        return {"add": (f"each number plus {k} gives {result}",
                        f"after adding {k} to each, we have {result}"),
                "sub": (f"each number minus {k} gives {result}",
                        f"after subtracting {k} from each, we have {result}"),
                "mul": (f"each number times {k} gives {result}",
                        f"scaling each by {k} turns the list into {result}"),
                "len": (f"the word lengths are {result}",
                        f"counting letters turns the words into {result}")}[args[0]]
    count = "entry" if args[0] == 1 else f"{args[0]} entries"
    if name == "take":
        return (f"the first {count} {'is' if args[0] == 1 else 'are'} {result}",
                f"cutting the list after the first {count} leaves {result}")
    return (f"without the first {count}, what remains is {result}",
            f"skipping the first {count} leaves {result}")




def _clause(op: list, before: list, after, rng: random.Random, turn: int) -> str:
    """One operation as a clause of the worked solution."""
    name, *args = op
    if isinstance(after, list):
        options = _list_clauses(op, before, after)
        return options[turn % len(options)]
    if name == "count":
        return f"counting them, there {'is' if after == 1 else 'are'} {after} left"
    if name == "sum":
        if len(before) == 1:
            return f"only {after} is left, so the sum is {after}"
        return f"adding them up gives {' + '.join(map(str, before))} = {after}"
    if name == "letters":
        if len(before) == 1:
            return f"the only word left, {before[0]}, has {after} letters"
        lengths = " + ".join(str(len(w)) for w in before)
        return f"counting the letters gives {lengths} = {after}"
    if name in ("kth_largest", "kth_smallest"):
        order = "largest to smallest" if name == "kth_largest" else "smallest to largest"
        ranked = sorted(before, reverse=name == "kth_largest")
        return (f"ordered from {order} the numbers are {_prose(ranked)}, so the "
                f"{ORDINALS[args[0]]} one is {after}")
    if name == "range":
        return (f"the largest number is {max(before)} and the smallest is {min(before)}, so the "
                f"difference is {max(before)} - {min(before)} = {after}")
    return {"max": f"the {'alphabetically last' if _kind(before) == 'words' else 'largest'} "
                   f"of them is {after}",
            "min": f"the {'alphabetically first' if _kind(before) == 'words' else 'smallest'} "
                   f"of them is {after}",
            "first": f"the first entry is {after}",
            "last": f"the last entry is {after}"}[name]


def explanation(spec: dict, rng: random.Random) -> Explanation:
    values, turn = run(spec), rng.randrange(2)
    clauses = [_clause(op, before, after, rng, turn + i)
               for i, (op, before, after) in enumerate(zip(spec["ops"], values, values[1:],
                                                            strict=False))]
    result = values[-1]
    if isinstance(result, list):
        goal = rng.choice(("the final list", "the list that results", "the resulting list"))
        conclusion = rng.choice(("this list is the final answer", "no operations remain, so we "
                                 "are done", "that is the list the puzzle asks for"))
    else:
        goal = rng.choice(("the requested value", "the answer to the puzzle",
                           "the value the question asks for"))
        conclusion = f"the answer is {result}"
    return Explanation(goal, tuple(clauses), conclusion)
