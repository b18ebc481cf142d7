"""Unit conversions along chains of units: length, mass, time, volume, data, speed, temperature.

Each step converts between two neighboring units (1 mile = 1760 yards, 1 yard = 3 feet, ...;
Celsius/Fahrenheit/kelvin are affine). Arithmetic is exact (`Fraction`); the question states
the rounding rule: "exact" (the result is a decimal with at most 4 places) or "round to p
decimal places" (half away from zero). The answer is the number alone, without trailing zeros
("12.5", "-40", "298.15"); `verify` also accepts the number followed by a unit.

spec: `{"category": str, "value": "2.5", "chain": ["mi", "yd", "ft"], "places": int | None}`.
"""

from __future__ import annotations

import random
from fractions import Fraction
from functools import cache, lru_cache

from stages.synth.problems import Explanation, Problem

TASK = "unit_conversion"
EXACT_PLACES = 4  # an exact answer has at most this many decimal places
SHOW_PLACES = 6  # intermediate values that do not terminate sooner are shown to this many

# symbol: (singular, plural); speeds are written with their symbols ("km/h") after a number
UNITS = {
    "mm": ("millimeter", "millimeters"), "cm": ("centimeter", "centimeters"),
    "m": ("meter", "meters"), "km": ("kilometer", "kilometers"), "in": ("inch", "inches"),
    "ft": ("foot", "feet"), "yd": ("yard", "yards"), "mi": ("mile", "miles"),
    "um": ("micrometer", "micrometers"), "nmi": ("nautical mile", "nautical miles"),
    "fur": ("furlong", "furlongs"), "ug": ("microgram", "micrograms"),
    "ton": ("US short ton", "US short tons"), "us": ("microsecond", "microseconds"),
    "fn": ("fortnight", "fortnights"), "yr": ("common year", "common years"),
    "tbsp": ("US tablespoon", "US tablespoons"), "tsp": ("US teaspoon", "US teaspoons"),
    "cL": ("centiliter", "centiliters"), "PB": ("petabyte", "petabytes"),
    "TiB": ("tebibyte", "tebibytes"), "nib": ("nibble", "nibbles"),
    "ftps": ("foot per second", "ft/s"), "mpmin": ("meter per minute", "m/min"),
    "mg": ("milligram", "milligrams"), "g": ("gram", "grams"), "kg": ("kilogram", "kilograms"),
    "t": ("metric ton", "metric tons"), "oz": ("ounce", "ounces"), "lb": ("pound", "pounds"),
    "st": ("stone", "stone"),
    "ms": ("millisecond", "milliseconds"), "s": ("second", "seconds"),
    "min": ("minute", "minutes"), "h": ("hour", "hours"), "d": ("day", "days"),
    "wk": ("week", "weeks"),
    "mL": ("milliliter", "milliliters"), "L": ("liter", "liters"),
    "m3": ("cubic meter", "cubic meters"), "gal": ("US gallon", "US gallons"),
    "qt": ("US quart", "US quarts"), "pt": ("US pint", "US pints"), "cup": ("US cup", "US cups"),
    "bit": ("bit", "bits"), "B": ("byte", "bytes"), "kB": ("kilobyte", "kilobytes"),
    "MB": ("megabyte", "megabytes"), "GB": ("gigabyte", "gigabytes"),
    "TB": ("terabyte", "terabytes"), "KiB": ("kibibyte", "kibibytes"),
    "MiB": ("mebibyte", "mebibytes"), "GiB": ("gibibyte", "gibibytes"),
    "kmh": ("kilometer per hour", "km/h"), "mps": ("meter per second", "m/s"),
    "mph": ("mile per hour", "mph"),
    "kn": ("knot", "knots"),
    "C": ("degree Celsius", "degrees Celsius"), "F": ("degree Fahrenheit", "degrees Fahrenheit"),
    "K": ("kelvin", "kelvins"),
}
# (a, b, factor, well known): 1 a = factor b. Facts not well known are stated in the question.
EDGES = {
    "length": (("km", "m", "1000", True), ("m", "cm", "100", True), ("cm", "mm", "10", True),
               ("in", "cm", "2.54", False), ("ft", "in", "12", True), ("yd", "ft", "3", True),
               ("mi", "yd", "1760", False), ("mm", "um", "1000", True),
               ("nmi", "m", "1852", False), ("mi", "fur", "8", False),
               ("fur", "yd", "220", False)),
    "mass": (("t", "kg", "1000", True), ("kg", "g", "1000", True), ("g", "mg", "1000", True),
             ("lb", "kg", "0.45359237", False), ("lb", "oz", "16", False),
             ("st", "lb", "14", False), ("mg", "ug", "1000", True),
             ("ton", "lb", "2000", False)),
    "time": (("wk", "d", "7", True), ("d", "h", "24", True), ("h", "min", "60", True),
             ("min", "s", "60", True), ("s", "ms", "1000", True), ("ms", "us", "1000", True),
             ("fn", "d", "14", False), ("yr", "d", "365", False)),
    "volume": (("m3", "L", "1000", True), ("L", "mL", "1000", True),
               ("gal", "L", "3.785411784", False), ("gal", "qt", "4", False),
               ("qt", "pt", "2", False), ("pt", "cup", "2", False),
               ("cup", "tbsp", "16", False), ("tbsp", "tsp", "3", False),
               ("L", "cL", "100", True)),
    "data": (("TB", "GB", "1000", False), ("GB", "MB", "1000", False),
             ("MB", "kB", "1000", False), ("kB", "B", "1000", False), ("B", "bit", "8", True),
             ("GiB", "MiB", "1024", False), ("MiB", "KiB", "1024", False),
             ("KiB", "B", "1024", False), ("PB", "TB", "1000", False),
             ("TiB", "GiB", "1024", False), ("B", "nib", "2", False)),
    "speed": (("mps", "kmh", "3.6", False), ("mph", "kmh", "1.609344", False),
              ("kn", "kmh", "1.852", False), ("ftps", "kmh", "1.09728", False),
              ("mps", "mpmin", "60", True)),
    "temperature": (("C", "F", "affine", True), ("C", "K", "affine", True)),
}
CONTEXTS = {
    "length": ("A hiking trail is {v}.", "A rope measures {v}.", "A bridge is {v} long.",
               "The distance between two signs is {v}."),
    "mass": ("A bag of flour weighs {v}.", "A parcel has a mass of {v}.",
             "A truck carries a load of {v}."),
    "time": ("A long experiment runs for {v}.", "A road trip takes {v}.",
             "A timer is set to {v}."),
    "volume": ("A water tank holds {v}.", "A recipe calls for {v} of milk.",
               "A fuel can contains {v}."),
    "data": ("A video file is {v} in size.", "A backup takes up {v}.",
             "A photo library uses {v} of storage."),
    "speed": ("A car is moving at {v}.", "A ship sails at {v}.", "A cyclist rides at {v}."),
    "temperature": ("The thermometer shows {v}.", "An oven is set to {v}.",
                    "A lab sample is kept at {v}."),
}
_ASKS = ("Convert {v} to {to}.", "How many {to} is {v}?", "Express {v} in {to}.",
         "What is {v} in {to}?")
_ASKS_CONTEXT = ("What is that in {to}?", "Express this in {to}.", "How much is that in {to}?",
                 "Convert it to {to}.")


_AFFINE = {"C>F": (Fraction(9, 5), Fraction(32)), "F>C": (Fraction(5, 9), Fraction(-160, 9)),
           "C>K": (Fraction(1), Fraction("273.15")), "K>C": (Fraction(1), Fraction("-273.15"))}


@cache
def _edge(category: str, a: str, b: str) -> tuple[str, str, Fraction, Fraction]:
    """(how, factor text, scale, offset) for a -> b: how is "mul", "div" or "C>F"-style; the
    new value is value * scale + offset."""
    for x, y, f, _ in EDGES[category]:
        if {x, y} == {a, b}:
            if f == "affine":
                return (f"{a}>{b}", f, *_AFFINE[f"{a}>{b}"])
            scale = Fraction(f) if (x, y) == (a, b) else 1 / Fraction(f)
            return ("mul" if (x, y) == (a, b) else "div", f, scale, Fraction(0))
    raise ValueError(f"no conversion {a} -> {b} in {category}")


def convert(category: str, value: Fraction, a: str, b: str) -> Fraction:
    _, _, scale, offset = _edge(category, a, b)
    return value * scale + offset if offset else value * scale


def places_needed(x: Fraction) -> int | None:
    """Decimal places of x's exact expansion, or None if it does not terminate."""
    d, twos, fives = x.denominator, 0, 0
    while d % 2 == 0:
        d, twos = d // 2, twos + 1
    while d % 5 == 0:
        d, fives = d // 5, fives + 1
    return max(twos, fives) if d == 1 else None


def decimal(x: Fraction, places: int) -> str:
    """x rounded half away from zero to `places`, without trailing zeros."""
    q, r = divmod(abs(x.numerator) * 10**places, x.denominator)
    q += 2 * r >= x.denominator
    digits = str(q).rjust(places + 1, "0")
    text = f"{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".") if places else digits
    return text if x.numerator >= 0 or text == "0" else f"-{text}"


def answer_of(x: Fraction, places: int | None) -> str:
    return decimal(x, places_needed(x) if places is None else places)


def exact(category: str, value: Fraction, chain) -> Fraction:
    """`value` in chain[0] converted along the chain, exactly."""
    for a, b in zip(chain, chain[1:], strict=False):
        value = convert(category, value, a, b)
    return value


@lru_cache(maxsize=4096)
def _walk_of(category: str, value: str, chain: tuple[str, ...]) -> tuple:
    """(from unit, to unit, value before, value after, shown after, exact) per conversion."""
    x, out = Fraction(value), []
    for a, b in zip(chain, chain[1:], strict=False):
        y = convert(category, x, a, b)
        out.append((a, b, x, y, *show(y)))
        x = y
    return tuple(out)


def _walk(spec: dict) -> tuple:
    return _walk_of(spec["category"], spec["value"], tuple(spec["chain"]))


def recompute(spec: dict) -> str:
    return answer_of(_walk(spec)[-1][3], spec["places"])


def _adjacent(category: str) -> dict[str, list[str]]:
    adj: dict[str, list[str]] = {}
    for a, b, _, _ in EDGES[category]:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    return adj


@cache
def paths(category: str, length: int) -> tuple[tuple[str, ...], ...]:
    """Every simple path with `length` conversions in a category's unit graph."""
    adj = _adjacent(category)
    found = [(u,) for u in adj]
    for _ in range(length):
        found = [p + (v,) for p in found for v in adj[p[-1]] if v not in p]
    return tuple(found)


def show(x: Fraction) -> tuple[str, bool]:
    """A value as a step shows it, and whether that is exact (else rounded to SHOW_PLACES)."""
    p = places_needed(x)
    if p is not None and p <= SHOW_PLACES:
        return decimal(x, p), True
    return decimal(x, SHOW_PLACES), False


def _qty(value: str, unit: str) -> str:
    if unit in ("C", "F"):
        return f"{value} °{unit}"
    sing, plural = UNITS[unit]
    return f"{value} {sing if value == '1' else plural}"


def _start(rng: random.Random, category: str, chain: tuple[str, ...]) -> Fraction:
    if category == "temperature":
        lo, hi = {"C": (-40, 250), "F": (-40, 450), "K": (200, 520)}[chain[0]]
        v = Fraction(rng.randint(lo, hi))
        return v + Fraction(rng.choice((0, 0, 0, 5)), 10)
    v = Fraction(rng.randint(1, 120)) if rng.random() < 0.6 else Fraction(rng.randint(11, 999), 10)
    factor = exact(category, Fraction(1), chain)
    while v * factor < Fraction(1, 2):  # keep the result at least about 1
        v *= 10
    return v


def _value_text(v: Fraction) -> str:
    return decimal(v, places_needed(v) or 0)


def generate(rng: random.Random, index: int, max_steps: int) -> Problem:
    length = rng.randint(1, max(1, max_steps))
    while True:
        options = [c for c in EDGES if paths(c, length)]
        if options:
            break
        length -= 1
    category = rng.choice(options)
    chain = rng.choice(paths(category, length))
    value = _start(rng, category, chain)
    needed = places_needed(exact(category, value, chain))
    places = None if needed is not None and needed <= EXACT_PLACES else rng.choice((1, 2, 2, 3))
    spec = {"category": category, "value": _value_text(value), "chain": list(chain),
            "places": places}
    steps = tuple(_steps(spec))
    return Problem(task=TASK, id=f"{TASK}-{index:06d}", question=_question(spec, rng),
                   steps=steps, answer=recompute(spec), spec=spec, difficulty=len(steps))


def _fact(category: str, a: str, b: str) -> str:
    for x, y, f, _ in EDGES[category]:
        if {x, y} == {a, b}:
            return f"1 {UNITS[x][0]} = " + (f"{f} {_symbol(y)}" if category == "speed"
                                             else _qty(f, y))
    raise ValueError(f"no conversion {a} -> {b}")


def _question(spec: dict, rng: random.Random) -> str:
    category, chain = spec["category"], spec["chain"]
    v, to = _qty(spec["value"], chain[0]), UNITS[chain[-1]][1]
    if rng.random() < 0.5:
        text = rng.choice(CONTEXTS[category]).format(v=v) + " " + rng.choice(_ASKS_CONTEXT)
    else:
        text = rng.choice(_ASKS)
    text = text.format(v=v, to=to)
    if len(chain) > 2:
        route = _join([UNITS[u][1] for u in chain[1:-1]])
        text += rng.choice((f" Go through {route} on the way.",
                            f" Convert step by step via {route}.",
                            f" Work through the intermediate units: {route}."))
    facts = [_fact(category, a, b) for a, b in zip(chain, chain[1:], strict=False)
             if not any({x, y} == {a, b} and known for x, y, _, known in EDGES[category])]
    if facts:
        text += " Use " + _join(facts) + "."
    if spec["places"] is None:
        text += rng.choice((" Give the exact value.", " The answer is an exact decimal."))
    else:
        p = spec["places"]
        plural = "place" if p == 1 else "places"
        text += rng.choice((f" Round your answer to {p} decimal {plural}.",
                            f" Give the result rounded to {p} decimal {plural}."))
    return text


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


_TEMP = {"C>F": "{x} × 9/5 + 32 = {y}", "F>C": "({x} - 32) × 5/9 = {y}",
         "C>K": "{x} + 273.15 = {y}", "K>C": "{x} - 273.15 = {y}"}


def _shown(spec: dict) -> list[tuple[str, str, str, str, bool]]:
    """(from unit, to unit, value before as shown, value after as shown, after is exact)."""
    out, xs = [], spec["value"]
    for a, b, _, _, ys, y_exact in _walk(spec):
        out.append((a, b, xs, ys, y_exact))
        xs = ys if y_exact else f"{ys}..."
    return out


def _formula(category: str, a: str, b: str, xs: str, ys: str, y_exact: bool) -> str:
    how, f, _, _ = _edge(category, a, b)
    text = _TEMP[how] if how in _TEMP else f"{{x}} {'×' if how == 'mul' else '÷'} {f} = {{y}}"
    text = text.format(x=xs, y=f"{ys} {_symbol(b)}")
    return text if y_exact else text.replace(" = ", " ≈ ")


def _symbol(unit: str) -> str:
    return {"C": "°C", "F": "°F", "m3": "m³", "kmh": "km/h", "mps": "m/s", "um": "µm",
            "ug": "µg", "us": "µs", "ftps": "ft/s", "mpmin": "m/min"}.get(unit, unit)


def _steps(spec: dict) -> list[str]:
    steps = []
    for a, b, xs, ys, y_exact in _shown(spec):
        formula = _formula(spec["category"], a, b, xs, ys, y_exact)
        steps.append(f"{_symbol(a)} to {_symbol(b)}: {formula}")
    if spec["places"] is not None:
        steps[-1] += f", rounded to {recompute(spec)}"
    return steps


_MUL = ("since 1 {a1} is {f} {b}, we multiply {x} by {f} to get {y} {b}",
        "there are {f} {b} in one {a1}, so {x} {a} is {x} × {f} = {y} {b}",
        "converting {a} to {b} means multiplying by {f}, which gives {x} × {f} = {y}",
        "each {a1} equals {f} {b}, so we get {x} × {f} = {y} {b}",
        "multiplying {x} by {f} converts {a} to {b}, giving {y}",
        "we scale up by {f}, because every {a1} contains {f} {b}: {x} × {f} = {y}")
_DIV = ("because 1 {b1} is {f} {a}, we divide {x} by {f} and get {y} {b}",
        "one {b1} holds {f} {a}, so {x} ÷ {f} = {y} {b}",
        "going from {a} to the larger unit {b} means dividing by {f}, so {x} ÷ {f} = {y}",
        "since it takes {f} {a} to make one {b1}, we divide: {x} ÷ {f} = {y} {b}",
        "dividing {x} by {f} turns {a} into {b}, giving {y}",
        "we scale down by {f}, as a {b1} is made of {f} {a}: {x} ÷ {f} = {y}")
_TEMP_SAY = {
    "C>F": ("to go from Celsius to Fahrenheit we multiply by 9/5 and then add 32, so "
            "{x} × 9/5 + 32 = {y}",
            "the Fahrenheit value is the Celsius value times 9/5 plus 32: {x} × 9/5 + 32 = {y}"),
    "F>C": ("to go from Fahrenheit to Celsius we subtract 32 and then multiply by 5/9, so "
            "({x} - 32) × 5/9 = {y}",
            "removing the offset of 32 and scaling by 5/9 gives ({x} - 32) × 5/9 = {y}"),
    "C>K": ("adding 273.15 turns degrees Celsius into kelvins: {x} + 273.15 = {y}",
            "the kelvin scale starts 273.15 below zero Celsius, so {x} + 273.15 = {y}"),
    "K>C": ("subtracting 273.15 turns kelvins into degrees Celsius: {x} - 273.15 = {y}",
            "the Celsius value is 273.15 less than the kelvin value, so {x} - 273.15 = {y}"),
}


def explanation(spec: dict, rng: random.Random) -> Explanation:
    category, clauses, base = spec["category"], [], rng.randrange(len(_MUL))
    for i, (a, b, xs, ys, y_exact) in enumerate(_shown(spec)):
        how, f, _, _ = _edge(category, a, b)
        xs, ys = xs.rstrip("."), ys if y_exact else f"about {ys}"
        if how in _TEMP_SAY:
            clauses.append(rng.choice(_TEMP_SAY[how]).format(x=xs, y=ys))
            continue
        names = {"a": UNITS[a][1], "b": UNITS[b][1], "a1": UNITS[a][0], "b1": UNITS[b][0]}
        options = _MUL if how == "mul" else _DIV
        clauses.append(options[(base + i) % len(options)].format(f=f, x=xs, y=ys, **names))
    answer = recompute(spec)
    if spec["places"] is not None:
        p = spec["places"]
        unit = "place" if p == 1 else "places"
        options = [f", and rounding to {p} decimal {unit} gives {answer}"]
        if "which" not in clauses[-1]:
            options.append(f", which rounds to {answer} at {p} decimal {unit}")
        clauses[-1] += rng.choice(options)
    start, to = _qty(spec["value"], spec["chain"][0]), UNITS[spec["chain"][-1]][1]
    goal = rng.choice((f"how many {to} there are in {start}", f"the value of {start} in {to}",
                       f"what {start} is in {to}"))
    conclusion = rng.choice((f"{start} is {_qty(answer, spec['chain'][-1])}",
                             f"the converted value is {_qty(answer, spec['chain'][-1])}"))
    return Explanation(goal, tuple(clauses), conclusion)
