"""Multi-step word problems: collections, shopping, travel, production, reading and ages.

A problem is a starting amount changed by a chain of operations, each told as one event of a
scenario (names, objects and phrasing drawn from the problem's seed). The answer is a whole
number written without its unit ("19", not "19 apples"); `verify` also accepts the number followed
by unit words or after a currency sign ("19 apples", "$19"), see `problems.numeric_value`.

spec: `{"scenario": str, "start": int, "ops": [[op, *args], ...], "nouns": {...},
"wording": [int, ...]}` with op one of `add n`, `sub n`, `mul k`, `div k` (exact), `add_times k n`
(+ k*n), `sub_times k n` (- k*n) and `final_div k` (a last, exact division that also changes the
question: "how many does each friend get?"). The answer is the operations folded over `start`;
`nouns` and `wording` (template choices) only shape the text. Difficulty = number of operations.
"""

from __future__ import annotations

import random

from stages.synth.problems import Explanation, Problem, cap

TASK = "word_problem"

NAMES = (
    ("Maria", "she"), ("Ahmed", "he"), ("Priya", "she"), ("Kenji", "he"), ("Olga", "she"),
    ("Lucas", "he"), ("Amara", "she"), ("Diego", "he"), ("Fatima", "she"), ("Noah", "he"),
    ("Mei", "she"), ("Tariq", "he"), ("Sofia", "she"), ("Jonas", "he"), ("Aisha", "she"),
    ("Mateo", "he"), ("Hannah", "she"), ("Ravi", "he"), ("Chloe", "she"), ("Kwame", "he"),
    ("Elena", "she"), ("Omar", "he"), ("Yuki", "she"), ("Samuel", "he"), ("Leila", "she"),
    ("Ivan", "he"), ("Grace", "she"), ("Marcus", "he"), ("Nadia", "she"), ("Felix", "he"),
    ("Zara", "she"), ("Daniel", "he"), ("Ingrid", "she"), ("Hugo", "he"), ("Lina", "she"),
    ("Ben", "he"), ("Rosa", "she"), ("Pavel", "he"), ("Anna", "she"), ("Victor", "he"),
)
PRONOUNS = {"she": {"he": "she", "him": "her", "his": "her"},
            "he": {"he": "he", "him": "him", "his": "his"}}
TIMES = {2: "twice", 3: "three times", 4: "four times"}
PARTS = {2: "half", 3: "a third", 4: "a quarter"}

# objects: (plural, container, containers)
OBJECTS = (
    ("marbles", "jar", "jars"), ("stickers", "sheet", "sheets"), ("stamps", "album", "albums"),
    ("seashells", "bucket", "buckets"), ("trading cards", "pack", "packs"),
    ("pencils", "box", "boxes"), ("beads", "bag", "bags"), ("apples", "basket", "baskets"),
    ("cookies", "tin", "tins"), ("postcards", "envelope", "envelopes"),
    ("buttons", "pouch", "pouches"), ("toy cars", "crate", "crates"), ("eggs", "carton", "cartons"),
    ("crayons", "case", "cases"), ("oranges", "sack", "sacks"), ("books", "shelf", "shelves"),
)
# shop items: (singular, plural)
ITEMS = (
    ("notebook", "notebooks"), ("pen", "pens"), ("sandwich", "sandwiches"),
    ("concert ticket", "concert tickets"), ("comic book", "comic books"), ("plant", "plants"),
    ("candle", "candles"), ("mug", "mugs"), ("T-shirt", "T-shirts"), ("puzzle", "puzzles"),
    ("loaf of bread", "loaves of bread"), ("bus pass", "bus passes"), ("scarf", "scarves"),
)
PLACES = ("market", "bookstore", "street fair", "mall", "corner shop", "flea market")
CHORES = ("washing the car", "mowing the lawn", "walking a neighbor's dog", "tutoring a classmate",
          "helping at the bakery", "babysitting")
JOBS = ("work at the library", "work at a cafe", "gardening", "helping at a farm stand")
RELATIVES = ("grandmother", "uncle", "aunt", "grandfather", "older cousin")
VEHICLES = (("drives", "car"), ("cycles", "bike"), ("rides", "motorbike"), ("sails", "boat"))
PRODUCERS = (("bakery", "loaves"), ("bakery", "muffins"), ("factory", "toy robots"),
             ("farm", "eggs"), ("workshop", "chairs"), ("print shop", "posters"),
             ("kitchen", "dumplings"), ("orchard", "apples"))
TOWNS = ("Riverton", "Oakdale", "Hillsborough", "Lakeside", "Maplewood", "Stonebridge")
BOOKS = ("novel", "history book", "biography", "science book", "fantasy novel", "cookbook")

def _nouns(scenario: str, rng: random.Random) -> dict:
    """The names and nouns one problem's wording uses (all stored in its spec)."""
    (name, pron), (friend, _) = rng.sample(NAMES, 2)
    nouns = {"name": name, "pron": pron, "friend": friend}
    if scenario == "collection":
        nouns.update(zip(("obj", "box", "boxes"), rng.choice(OBJECTS), strict=True))
    elif scenario == "money":
        one, many = rng.choice(ITEMS)
        nouns.update(one=one, many=many, place=rng.choice(PLACES), chore=rng.choice(CHORES),
                     job=rng.choice(JOBS), relative=rng.choice(RELATIVES))
    elif scenario == "travel":
        verb, vehicle = rng.choice(VEHICLES)
        nouns.update(verb=verb, vehicle=vehicle, unit=rng.choice(("kilometers", "miles")),
                     town=rng.choice(TOWNS))
    elif scenario == "production":
        place, obj = rng.choice(PRODUCERS)
        nouns.update(place=place, obj=obj, town=rng.choice(TOWNS))
    elif scenario == "reading":
        nouns.update(book=rng.choice(BOOKS))
    elif scenario == "ages":
        nouns["people"] = [name, *[n for n, _ in rng.sample(NAMES, 8) if n != name][:6]]
    return nouns


# Per scenario: value range, number ranges, the statement templates (question) per operation
# with a short singular `tag` the explanation recalls them by, and the question / goal /
# conclusion wording. {he}/{him}/{his} follow the main person's pronoun.
SCENARIOS: dict[str, dict] = {
    "collection": {
        "limit": 500, "start": (5, 60), "add_n": (2, 30), "times_k": (2, 6), "times_n": (2, 12),
        "mul_k": (2, 3), "unit": "{obj}",
        "starts": ("{name} has {n} {obj}", "{name} starts the week with {n} {obj}",
                   "{name} keeps {n} {obj} in a drawer", "There are {n} {obj} in {name}'s room"),
        "add": (("{he} finds {n} more {obj} at {friend}'s house", "the visit to {friend}"),
                ("{friend} gives {him} {n} {obj} as a present", "the present from {friend}"),
                ("{he} buys another {n} {obj} at the shop", "the shopping trip")),
        "sub": (("{he} gives {n} {obj} to {friend}", "the gift to {friend}"),
                ("{he} loses {n} of the {obj} on the way to school", "the loss"),
                ("{he} trades away {n} {obj}", "the trade")),
        "add_times": (("{he} buys {k} {boxes} with {n} {obj} in each", "buying the {boxes}"),
                      ("{k} friends each give {him} {n} {obj}", "collecting the gifts"),
                      ("{he} wins {k} prizes of {n} {obj} each at a fair", "winning the prizes")),
        "sub_times": (("{he} hands {n} {obj} to each of {k} classmates", "the sharing out"),
                      ("{he} fills {k} {boxes} with {n} {obj} each and sends them away",
                       "the packing"),
                      ("{he} puts {n} {obj} into each of {k} gift bags", "filling the gift bags")),
        "mul": (("{his} collection grows to {times} its size after a lucky week",
                 "the lucky week"),),
        "div": (("{he} splits the {obj} into {k} equal {boxes} and keeps only one of them",
                 "the split"),),
        "final_div": (("{he} then shares all of them equally among {k} friends",
                       "the equal sharing", "How many {obj} does each friend get?",
                       "how many {obj} each friend gets", "each friend gets {r} {obj}"),),
        "questions": ("How many {obj} does {name} have now?",
                      "How many {obj} does {name} end up with?",
                      "At the end, how many {obj} does {name} have?"),
        "goal": ("how many {obj} {name} has at the end", "the final number of {obj}"),
        "conclusion": ("{name} ends up with {r} {obj}", "the final count is {r} {obj}"),
    },
    "money": {
        "limit": 1000, "start": (20, 200), "add_n": (5, 60), "times_k": (2, 6), "times_n": (2, 25),
        "mul_k": (2,), "unit": "dollars", "div_max_mid": 2,
        "starts": ("{name} has ${n}", "{name} goes to the {place} with ${n}",
                   "{name} has saved ${n}", "{name}'s wallet holds ${n}"),
        "add": (("{he} earns ${n} for {chore}", "the pay for {chore}"),
                ("{friend} pays back ${n} that {he} had lent", "the repayment from {friend}"),
                ("{he} sells an old game for ${n}", "the sale of the game")),
        "sub": (("{he} spends ${n} on a {one}", "the {one}"),
                ("{he} pays ${n} for lunch", "the lunch"),
                ("{he} donates ${n} to a local charity", "the donation")),
        "add_times": (("{he} earns ${n} an hour for {k} hours of {job}", "the {job}"),
                      ("{he} saves ${n} every week for {k} weeks", "the weekly saving"),
                      ("{he} gets ${n} of pocket money each week for {k} weeks",
                       "the pocket money")),
        "sub_times": (("{he} buys {k} {many} that cost ${n} each", "buying the {many}"),
                      ("{he} pays for {k} {many} at ${n} apiece", "paying for the {many}"),
                      ("{he} takes {k} bus rides at ${n} per ticket", "paying the bus fares")),
        "mul": (("{his} {relative} doubles whatever {he} has as a birthday gift",
                 "the birthday gift"),),
        "div": (("{he} splits {his} money equally with {friend}", "the split with {friend}"),),
        "final_div": (("{he} divides all of it equally into {k} envelopes",
                       "filling the envelopes", "How many dollars go in each envelope?",
                       "the amount in each envelope", "each envelope holds ${r}"),),
        "questions": ("How many dollars does {name} have now?",
                      "How much money, in dollars, does {name} have left?",
                      "How many dollars does {name} end up with?"),
        "goal": ("how much money {name} has at the end", "the amount of money that is left"),
        "conclusion": ("{name} is left with ${r}", "the money left comes to ${r}"),
    },
    "travel": {
        "limit": 2000, "start": (10, 120), "add_n": (5, 80), "times_k": (2, 5),
        "times_n": (20, 90), "mul_k": (2,), "unit": "{unit}", "div_max": 40,
        "quotient_max": 110,
        "starts": ("{name} {verb} {n} {unit} before lunch",
                   "On the first day of a {vehicle} trip, {name} covers {n} {unit}",
                   "{name} sets off from {town} and {verb} {n} {unit} in the morning"),
        "add": (("after a short rest, {he} {verb} another {n} {unit}", "the extra stretch"),
                ("a detour adds {n} {unit} to the trip", "the detour"),
                ("{he} takes a side road to visit {friend}, which adds {n} {unit}",
                 "the visit to {friend}")),
        "add_times": (("{he} then keeps a steady {n} {unit} per hour for {k} hours",
                       "the steady stretch"),
                      ("over the next {k} days {he} {verb} {n} {unit} each day",
                       "the rest of the trip"),
                      ("for {k} more hours the {vehicle} moves at {n} {unit} per hour",
                       "the final drive")),
        "mul": (("{he} comes back home along exactly the same route", "the return trip"),),
        "final_div": (("the whole journey takes {k} hours of travel",
                       "averaging over the travel time",
                       "What is {his} average speed in {unit} per hour?",
                       "the average speed", "the average speed is {r} {unit} per hour"),),
        "questions": ("How many {unit} does {name} travel in total?",
                      "What total distance, in {unit}, does {name} cover?",
                      "How far does {name} go altogether, in {unit}?"),
        "goal": ("the total distance {name} travels", "how far {name} goes altogether"),
        "conclusion": ("{name} travels {r} {unit} in all", "the total distance is {r} {unit}"),
    },
    "production": {
        "limit": 5000, "start": (20, 300), "add_n": (10, 150), "times_k": (2, 8),
        "times_n": (5, 60), "mul_k": (), "unit": "{obj}",
        "starts": ("A {place} in {town} has {n} {obj} ready in the morning",
                   "At 8 a.m., a {place} has {n} {obj} in stock",
                   "A small {place} starts the day with {n} {obj}"),
        "add": (("a delivery brings {n} more {obj}", "the delivery"),
                ("the night shift adds {n} {obj}", "the night shift"),
                ("the afternoon shift produces {n} more {obj}", "the afternoon shift")),
        "sub": (("{n} {obj} are sold before noon", "selling in the morning"),
                ("{n} of the {obj} turn out damaged and are thrown away", "the damage"),
                ("{n} {obj} are given away as free samples", "giving away samples")),
        "add_times": (("it then makes {n} {obj} per hour for {k} hours", "the hourly output"),
                      ("{k} workers each finish {n} more {obj}", "the extra work"),
                      ("{k} helpers each bring in {n} more {obj}", "the helpers' work")),
        "sub_times": (("{k} customers each buy {n} {obj}", "filling the customer orders"),
                      ("{k} shops order {n} {obj} each, and the orders are sent out",
                       "sending the shop orders"),
                      ("{k} school groups visit and each takes home {n} {obj}",
                       "the school visit")),
        "final_div": (("everything left is packed into boxes of {k}", "the packing",
                       "How many boxes are filled?", "the number of full boxes",
                       "{r} boxes are filled"),),
        "questions": ("How many {obj} does the {place} have at the end of the day?",
                      "How many {obj} are left at closing time?",
                      "How many {obj} remain in the {place}?"),
        "goal": ("how many {obj} remain", "the number of {obj} left at the end"),
        "conclusion": ("the {place} has {r} {obj} left", "{r} {obj} remain at closing time"),
    },
    "reading": {
        "limit": 1500, "start": (120, 600), "add_n": (8, 40), "times_k": (2, 7),
        "times_n": (5, 40), "mul_k": (), "unit": "pages",
        "starts": ("{name} starts a {book} that has {n} pages",
                   "The {book} {name} borrowed from the library is {n} pages long"),
        "sub": (("on Monday {he} reads {n} pages", "Monday's reading"),
                ("{he} reads {n} pages on the train", "the train ride"),
                ("{he} gets through {n} pages at the weekend", "the weekend")),
        "sub_times": (("{he} reads {n} pages every evening for {k} evenings",
                       "the evening reading"),
                      ("during a {k}-day holiday {he} reads {n} pages a day", "the holiday"),
                      ("for {k} mornings in a row {he} reads {n} pages before school",
                       "the morning reading")),
        "add": (("{his} teacher asks {him} to also read an appendix of {n} pages", "the appendix"),
                ("{friend} suggests adding the {n} pages of notes at the back",
                 "adding the notes"),
                ("{he} also has to read a preface of {n} pages", "the preface")),
        "final_div": (("{he} wants to finish the rest in {k} days, reading the same amount "
                       "each day", "the plan", "How many pages a day must {he} read?",
                       "the daily number of pages", "{name} must read {r} pages a day"),),
        "questions": ("How many pages does {name} still have to read?",
                      "How many pages are left for {name} to read?"),
        "goal": ("how many pages are left to read", "the number of unread pages"),
        "conclusion": ("{name} still has {r} pages to read", "{r} pages are left"),
    },
    "ages": {
        "limit": 95, "start": (4, 40), "add_n": (2, 30), "mul_k": (2, 3, 4), "unit": "years",
        "div_max_mid": 4,
        "add": (("{p} is {n} years older than {q}",), ("{q} is {n} years younger than {p}",)),
        "sub": (("{p} is {n} years younger than {q}",), ("{q} is {n} years older than {p}",)),
        "mul": (("{p} is {times} as old as {q}",),),
        "div": (("{p} is {part} as old as {q}",), ("{q} is {times} as old as {p}",)),
        "questions": ("How old is {last}?", "What is the age of {last}?"),
    },
}


def _fmt(template: str, nouns: dict, **values) -> str:
    pron = PRONOUNS[nouns["pron"]]
    return template.format(**{**nouns, **pron, **values})


def _choose_op(rng: random.Random, scen: dict, name: str, v: int, final: bool, used: set):
    """One feasible operation on the value `v` (with its arguments), or None. Outside the ages
    scenario a doubling or splitting event happens at most once."""
    ops = [op for op in ("add", "sub", "add_times", "sub_times", "mul", "div") if op in scen
           and (name == "ages" or op not in used or op not in ("mul", "div"))]
    if final and "final_div" in scen:
        ops += ["final_div"] * 2
    rng.shuffle(ops)
    limit = scen["limit"]
    for op in ops:
        if op == "add":
            n = rng.randint(*scen["add_n"])
            if v + n <= limit:
                return ["add", n]
        elif op == "sub" and v >= 3:  # leaves at least 1
            hi = min(v - 1, scen["add_n"][1]) if name != "reading" else min(v - 1, 90)
            return ["sub", rng.randint(2, hi)]
        elif op == "add_times":
            k, n = rng.randint(*scen["times_k"]), rng.randint(*scen["times_n"])
            if v + k * n <= limit:
                return ["add_times", k, n]
        elif op == "sub_times":
            k = rng.randint(*scen["times_k"])
            hi = min(scen["times_n"][1], (v - 1) // k)
            if hi >= 2:
                return ["sub_times", k, rng.randint(max(2, min(scen["times_n"][0], hi)), hi)]
        elif op == "mul" and scen["mul_k"]:
            k = rng.choice(scen["mul_k"])
            if v * k <= limit:
                return ["mul", k]
        elif op in ("div", "final_div"):
            top = scen.get("div_max", 10) if op == "final_div" else scen.get("div_max_mid", 10)
            ks = [k for k in range(2, top + 1)
                  if v % k == 0 and 2 <= v // k <= scen.get("quotient_max", limit)]
            if ks:
                return [op, rng.choice(ks)]
    return None


def apply(value: int, op: list) -> int:
    name, *args = op
    if name == "add":
        return value + args[0]
    if name == "sub":
        return value - args[0]
    if name == "add_times":
        return value + args[0] * args[1]
    if name == "sub_times":
        return value - args[0] * args[1]
    if name == "mul":
        return value * args[0]
    if value % args[0]:
        raise ValueError(f"inexact division {value} / {args[0]}")
    return value // args[0]


def recompute(spec: dict) -> str:
    value = spec["start"]
    for op in spec["ops"]:
        value = apply(value, op)
    return str(value)


def _args(op: list, a: int) -> dict:
    """Format fields of one operation applied to `a`."""
    name, *args = op
    out = {"a": a, "r": apply(a, op)}
    if name in ("add_times", "sub_times"):
        out.update(k=args[0], n=args[1], kn=args[0] * args[1])
    elif name in ("mul", "div", "final_div"):
        k = args[0]
        out.update(k=k, times=TIMES.get(k, f"{k} times"), part=PARTS.get(k, f"1/{k}"))
    else:
        out["n"] = args[0]
    return out


def generate(rng: random.Random, index: int, max_steps: int) -> Problem:
    name = rng.choice(tuple(SCENARIOS))
    scen = SCENARIOS[name]
    nouns = _nouns(name, rng)
    n_ops = rng.randint(min(2, max_steps), max(1, max_steps))
    if name == "ages":
        n_ops = min(n_ops, len(nouns["people"]) - 1)
    value = start = rng.randint(*scen["start"])
    ops = []
    for i in range(n_ops):
        op = _choose_op(rng, scen, name, value, i == n_ops - 1, {o[0] for o in ops})
        if op is None:
            break
        ops.append(op)
        value = apply(value, op)
        if op[0] == "final_div":
            break
    if not ops:  # the start allows no operation of this scenario: add always fits
        ops = [["add", scen["add_n"][0]]]
    choice = [rng.randrange(1000) for _ in range(len(ops) + 3)]
    spec = {"scenario": name, "start": start, "ops": ops, "nouns": nouns, "wording": choice}
    question, steps = _question(spec), _steps(spec)
    return Problem(task=TASK, id=f"{TASK}-{index:06d}", question=question, steps=tuple(steps),
                   answer=recompute(spec), spec=spec, difficulty=len(steps))


def _pick(options: tuple, spec: dict, slot: int):
    return options[spec["wording"][slot] % len(options)]


def _event(scen: dict, spec: dict, i: int) -> tuple:
    """The template of operation i; repeats of one operation take turns through its templates."""
    op = spec["ops"][i][0]
    same = [j for j in range(i + 1) if spec["ops"][j][0] == op]
    options = scen[op]
    return options[(spec["wording"][same[0] + 3] + len(same) - 1) % len(options)]


def _question(spec: dict) -> str:
    scen, nouns = SCENARIOS[spec["scenario"]], spec["nouns"]
    if spec["scenario"] == "ages":
        return _ages_question(spec)
    parts = [_fmt(_pick(scen["starts"], spec, 0), nouns, n=spec["start"])]
    value, ask = spec["start"], _pick(scen["questions"], spec, 1)
    for i, op in enumerate(spec["ops"]):
        template = _event(scen, spec, i)
        parts.append(_fmt(template[0], nouns, **_args(op, value)))
        if op[0] == "final_div":
            ask = template[2]
        value = apply(value, op)
    return " ".join(cap(p) + "." for p in parts) + " " + _fmt(ask, nouns)


def _ages_question(spec: dict) -> str:
    scen, people = SCENARIOS["ages"], spec["nouns"]["people"]
    parts = [f"{people[0]} is {spec['start']} years old"]
    value = spec["start"]
    for i, op in enumerate(spec["ops"]):
        template = _event(scen, spec, i)[0]
        parts.append(template.format(p=people[i + 1], q=people[i], **_args(op, value)))
        value = apply(value, op)
    ask = _pick(scen["questions"], spec, 1).format(last=people[len(spec["ops"])])
    return " ".join(cap(p) + "." for p in parts) + " " + ask


_SIGN = {"add": "+", "sub": "-", "mul": "×", "div": "÷", "final_div": "÷"}


def _formula(op: list, a: int) -> str:
    f = _args(op, a)
    if op[0] == "add_times":
        return f"{a} + {f['k']} × {f['n']} = {a} + {f['kn']} = {f['r']}"
    if op[0] == "sub_times":
        return f"{a} - {f['k']} × {f['n']} = {a} - {f['kn']} = {f['r']}"
    return f"{a} {_SIGN[op[0]]} {op[1]} = {f['r']}"


def _steps(spec: dict) -> list[str]:
    value, steps = spec["start"], []
    for op in spec["ops"]:
        steps.append(_formula(op, value))
        value = apply(value, op)
    return steps


_EFFECTS = {
    "add": ("after {tag}, the total is {a} + {n} = {r} {unit}",
            "{tag} adds {n}, so we compute {a} + {n} = {r}",
            "with {tag}, we add {n} to {a} and get {r} {unit}",
            "{tag} raises the amount to {a} + {n} = {r}"),
    "sub": ("{tag} takes away {n}, which leaves {a} - {n} = {r} {unit}",
            "after {tag}, only {a} - {n} = {r} {unit} remain",
            "we subtract {n} for {tag}, so {a} - {n} = {r}",
            "because of {tag}, the amount drops to {a} - {n} = {r}"),
    "add_times": ("{tag} brings {k} × {n} = {kn} {unit}, for a total of {a} + {kn} = {r}",
                  "for {tag} we multiply before adding: {k} × {n} = {kn}, and {a} + {kn} = {r}",
                  "{tag} is {k} groups of {n}, which is {kn}, so the amount grows to "
                  "{a} + {kn} = {r}"),
    "sub_times": ("{tag} uses up {k} × {n} = {kn} {unit}, leaving {a} - {kn} = {r}",
                  "{tag} removes {k} groups of {n}, that is {kn}, so {a} - {kn} = {r} remain",
                  "for {tag} we first find {k} × {n} = {kn} and then subtract, {a} - {kn} = {r}"),
    "mul": ("{tag} multiplies the amount by {k}, giving {a} × {k} = {r}",
            "because of {tag}, we multiply {a} by {k} and get {r} {unit}"),
    "div": ("{tag} divides the amount into {k} equal parts, and {a} ÷ {k} = {r}",
            "because of {tag}, we divide {a} by {k}, which gives {r}"),
    "final_div": ("{tag} means dividing {a} by {k}, which gives {r}",
                  "for {tag} we divide: {a} ÷ {k} = {r}",
                  "splitting {a} into {k} equal parts because of {tag} gives {r}"),
}
_STARTS = ("the initial amount is {n} {unit}", "initially we have {n} {unit}",
           "the problem opens with {n} {unit}", "the amount we start from is {n} {unit}")
_AGE_EFFECTS = {
    "add": ("adding {n} years to {a} gives the age of {x}, {a} + {n} = {r}",
            "{x} is older by {n} years, so {x} is {a} + {n} = {r}"),
    "sub": ("{x} is younger by {n} years, which makes {a} - {n} = {r}",
            "taking {n} years from {a} gives the age of {x}, {r}"),
    "mul": ("the age of {x} is {k} times {a}, that is {a} × {k} = {r}",
            "multiplying {a} by {k} gives the age of {x}, {r}"),
    "div": ("the age of {x} is {a} ÷ {k} = {r}",
            "dividing {a} by {k} gives {r}, the age of {x}"),
}


def _turn(options: tuple, ops: list, i: int, base: int) -> str:
    """Wording for operation i: repeats of one operation take turns through the options."""
    seen = sum(o[0] == ops[i][0] for o in ops[:i])
    return options[(base + seen) % len(options)]


def explanation(spec: dict, rng: random.Random) -> Explanation:
    scen, nouns = SCENARIOS[spec["scenario"]], spec["nouns"]
    value, clauses, base = spec["start"], [], rng.randrange(12)
    if spec["scenario"] == "ages":
        people = nouns["people"]
        clauses.append(f"we start from the age of {people[0]}, which is {value}")
        for i, op in enumerate(spec["ops"]):
            effect = _turn(_AGE_EFFECTS[op[0]], spec["ops"], i, base)
            clauses.append(effect.format(x=people[i + 1], **_args(op, value)))
            value = apply(value, op)
        last = people[len(spec["ops"])]
        return Explanation(f"the age of {last}", tuple(clauses), f"{last} is {value} years old")
    unit = _fmt(scen["unit"], nouns)
    clauses.append(rng.choice(_STARTS).format(n=spec["start"], unit=unit))
    for i, op in enumerate(spec["ops"]):
        tag = _fmt(_event(scen, spec, i)[1], nouns, **_args(op, value))
        effect = _turn(_EFFECTS[op[0]], spec["ops"], i, base).format(tag=tag, unit=unit,
                                                                       **_args(op, value))
        clauses.append(effect.replace("  ", " "))
        value = apply(value, op)
    if spec["ops"][-1][0] == "final_div":
        final = _event(scen, spec, len(spec["ops"]) - 1)
        goal, conclusion = _fmt(final[3], nouns), _fmt(final[4], nouns, r=value)
    else:
        goal = _fmt(rng.choice(scen["goal"]), nouns)
        conclusion = _fmt(rng.choice(scen["conclusion"]), nouns, r=value)
    return Explanation(goal, tuple(clauses), conclusion)
