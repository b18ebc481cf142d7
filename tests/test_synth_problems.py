"""Problem generators of the synth stage: determinism, renderings, answer checks, text quality."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import subprocess
import sys
import types
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest

from stages import signals
from stages.filter.rules import GopherRepetition, rules_of
from stages.signals import language
from stages.synth import problems as P

GENERATED = ("arithmetic", "word_problem", "unit_conversion", "list_puzzle")
MAX_STEPS = 6
PER_TASK = 250


@pytest.fixture(scope="module")
def batch() -> dict[str, list[P.Problem]]:
    return {t: [P.generate(t, 7, i, MAX_STEPS) for i in range(PER_TASK)] for t in GENERATED}


def test_contract():
    assert P.TASKS == ("arithmetic", "word_problem", "unit_conversion", "list_puzzle",
                       "code_trace")
    assert set(P.GENERATORS) == set(GENERATED)
    with pytest.raises(ValueError):
        P.generate("code_trace", 0, 0, MAX_STEPS)  # code tracing comes from the corpus
    with pytest.raises(ValueError):
        P.generate("arithmetic", 0, 0, 0)
    with pytest.raises(ValueError):
        P.render(P.generate("arithmetic", 0, 0, MAX_STEPS), "poem")


@pytest.mark.parametrize("task", GENERATED)
def test_deterministic_and_stable_ids(task):
    a, b = P.generate(task, 3, 41, MAX_STEPS), P.generate(task, 3, 41, MAX_STEPS)
    assert a == b and a.id == f"{task}-000041"
    assert [P.render(a, s) for s in P.RENDERINGS] == [P.render(b, s) for s in P.RENDERINGS]
    gen = P.GENERATORS[task]
    assert gen(random.Random(5), 2, MAX_STEPS) == gen(random.Random(5), 2, MAX_STEPS)
    others = [P.generate(task, 3, i, MAX_STEPS) for i in range(42, 47)]
    assert all(o.question != a.question and o.id != a.id for o in others)
    assert P.generate(task, 4, 41, MAX_STEPS).question != a.question


def _digest() -> str:
    h = hashlib.sha256()
    for task in GENERATED:
        for i in range(30):
            p = P.generate(task, 11, i, MAX_STEPS)
            h.update(json.dumps(p.to_json(), sort_keys=True).encode())
            for style in P.RENDERINGS:
                h.update(P.render(p, style).encode())
    return h.hexdigest()


def test_same_problems_in_another_process():
    code = "from tests.test_synth_problems import _digest; print(_digest())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == _digest()


def test_every_rendering_verifies(batch):
    for task, items in batch.items():
        for p in items:
            assert P.recompute(p) == p.answer
            assert 1 <= p.difficulty <= MAX_STEPS and p.steps
            again = P.Problem.from_json(json.loads(json.dumps(p.to_json())))
            assert again == p and P.recompute(again) == p.answer
            for style in P.RENDERINGS:
                text = P.render(p, style)
                assert text.endswith(f"\n{P.ANSWER_PREFIX} {p.answer}"), (task, style)
                assert P.final_answer(text) == p.answer
                assert P.verify(p, text), (task, style, text)
            assert P.render(p, "terse").startswith(p.question + "\n")
            assert P.render(p, "explained").startswith(p.question + "\n")
            assert P.render(p, "qa").startswith(f"Question: {p.question}\nSolution: ")


@pytest.mark.parametrize("max_steps", [1, 2, 3, 10])
def test_difficulty_within_max_steps(max_steps):
    for task in GENERATED:
        for i in range(60):
            p = P.generate(task, 1, i, max_steps)
            assert 1 <= p.difficulty <= max_steps, (task, p)
            assert P.verify(p, P.render(p, "explained"))


def test_difficulty_spread_and_diversity(batch):
    for task, items in batch.items():
        levels = {p.difficulty for p in items}
        assert min(levels) <= 2 and max(levels) == MAX_STEPS, (task, sorted(levels))
        assert len({p.question for p in items}) >= 0.97 * len(items), task
        assert len({p.answer for p in items}) >= 0.3 * len(items), task
    assert len({p.spec["scenario"] for p in batch["word_problem"]}) >= 5
    assert len({p.spec["category"] for p in batch["unit_conversion"]}) >= 6
    assert len({p.spec["nouns"]["name"] for p in batch["word_problem"]}) >= 25
    ops = {op[0] for p in batch["list_puzzle"] for op in p.spec["ops"]}
    assert {"sort", "filter", "dedupe", "reverse", "count", "sum", "kth_largest"} <= ops
    assert {P.numeric_value(p.answer) is None for p in batch["list_puzzle"]} == {True, False}


def _wrong(answer: str) -> list[str]:
    """Answers that must not verify against `answer`."""
    value = P.numeric_value(answer)
    if value is not None:
        step = Fraction(1, 10 ** len(answer.split(".")[1])) if "." in answer else 1
        return [_num(value + 1), f"{answer}1", _num(-value - 1), _num(value + step),
                _num(value - step), f"{answer} + 1"]
    if ", " in answer:
        items = answer.split(", ")
        return [", ".join(items[:-1]), f"{answer}, 0", ", ".join(reversed(items))
                if items != items[::-1] else f"{answer}, {answer}"]
    return [answer + "s", "zebra" if answer != "zebra" else "apple", "1"]


def _num(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else str(float(x))


def test_wrong_answers_never_verify(batch):
    for items in batch.values():
        for p in items:
            text = P.render(p, "qa")
            for bad in _wrong(p.answer):
                assert not P.verify(p, text.rsplit("\n", 1)[0] + f"\nAnswer: {bad}"), (p, bad)
            # a right answer earlier does not save a wrong final line, and the reverse
            assert not P.verify(p, f"{text}\nAnswer: {_wrong(p.answer)[0]}")
            assert P.verify(p, f"Answer: {_wrong(p.answer)[0]}\n{text}")
            assert not P.verify(p, text.rsplit("\n", 1)[0])


def test_recompute_uses_spec_only(batch):
    for items in batch.values():
        for p in items[:60]:
            fake = dataclasses.replace(p, steps=("1 + 1 = 3",), answer="not this")
            assert P.recompute(fake) == p.answer
            assert P.verify(fake, P.render(p, "terse"))
            assert not P.verify(fake, P.render(fake, "terse"))


def test_spec_changes_change_the_answer():
    p = P.generate("arithmetic", 0, 0, MAX_STEPS)
    expr = json.loads(json.dumps(p.spec["expr"]))
    expr = ["+", expr, 1]
    assert P.recompute(dataclasses.replace(p, spec={**p.spec, "expr": expr})) == \
        str(int(p.answer) + 1)
    u = P.generate("unit_conversion", 0, 5, MAX_STEPS)
    doubled = str(Fraction(u.spec["value"]) * 2)
    changed = dataclasses.replace(u, spec={**u.spec, "value": doubled, "places": 6})
    assert P.numeric_value(P.recompute(changed)) != P.numeric_value(u.answer)


def test_final_answer_and_normalization():
    assert P.final_answer("Answer: 3\nsome text\n**Answer:** 5 \n") == "5"
    assert P.final_answer("answer: [1, 2]") == "[1, 2]"
    assert P.final_answer("no answer line here") is None
    assert P.same_answer("[1,2,  3].", "1, 2, 3") and P.same_answer("(a, b)", "a,b")
    assert not P.same_answer("1, 3, 2", "1, 2, 3")
    assert P.normalize_answer(" 1,000. ") == "1000"  # unchanged semantics (code tracing uses it)
    assert P.same_answer("12.0", "12") and P.same_answer("12 apples", "12")
    assert P.same_answer("$1,200", "1200") and P.same_answer("-40 °F", "-40")
    assert P.same_answer("Banana", "banana") and P.same_answer("0.50", "0.5")
    for bad in ("12 - 3", "1e3", "12/1", "13", "12, 13", "twelve"):
        assert not P.same_answer(bad, "12"), bad


def test_code_trace_dispatch_is_lazy(monkeypatch):
    fake = types.ModuleType("stages.synth.problems.code_trace")
    fake.recompute = lambda spec: spec["returned"]
    monkeypatch.setitem(sys.modules, "stages.synth.problems.code_trace", fake)
    p = P.Problem(task="code_trace", id="code_trace-x", question="What does `f(2)` return?",
                  steps=("Line 1 sets y = 4.", "Line 2 returns 4."), answer="4",
                  spec={"returned": "4"}, difficulty=2)
    assert P.recompute(p) == "4"
    for style in P.RENDERINGS:
        assert P.verify(p, P.render(p, style))
    assert not P.verify(p, "Answer: 5")


def _signal_table(texts: list[str]) -> pa.Table:
    cols = signals.compute(texts, signals.Params())
    return pa.table({k: pa.array(v, pa.string()) if isinstance(v, list) else pa.array(v)
                     for k, v in cols.items()})


@pytest.mark.parametrize("style", ["explained", "qa"])
def test_prose_renderings_pass_curation_signals(style, batch):
    """py3langid says English (>= 0.65) and Gopher's repetition rules pass, for >= 90%."""
    rules = rules_of("gopher_repetition", GopherRepetition())
    for task, items in batch.items():
        texts = [P.render(p, style) for p in items[:150]]
        langs, scores = language.identify(texts, 2000)
        english = np.mean([lang == "en" and s >= 0.65 for lang, s in zip(langs, scores,
                                                                           strict=True)])
        table = _signal_table(texts)
        failed = np.zeros(len(texts), dtype=bool)
        for rule in rules:
            failed |= rule.fails(table)
        print(f"{task}/{style}: english {english:.3f}, gopher_repetition {1 - failed.mean():.3f}")
        assert english >= 0.9, (task, style, english)
        assert 1 - failed.mean() >= 0.9, (task, style, failed.mean())
