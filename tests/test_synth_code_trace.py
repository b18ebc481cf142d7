"""The code-tracing task: sandboxed calls, candidate functions, problems and recomputation."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from stages.synth import sandbox
from stages.synth.problems import Problem
from stages.synth.problems import code_trace as ct
from stages.synth.sandbox import CallResult, Limits, run_calls

FAST = Limits(timeout_s=0.5)
SUM = "def f(n):\n    total = 0\n    for i in range(n):\n        total += i\n    return total\n"


def one(source: str, arg: tuple = (1,), limits: Limits = FAST, func: str = "f") -> CallResult:
    return run_calls(source, func, [arg], limits)[0]


# --- sandbox ---------------------------------------------------------------------------------


def test_calls_return_reprs_and_traces():
    ok, bad = run_calls(SUM, "f", [(3,), ("x",)], FAST)
    assert ok == CallResult(
        ok=True,
        value="3",
        error=None,
        trace=(
            "line 2: total = 0",
            "line 3: i = 0",
            "line 4: ",
            "line 3: i = 1",
            "line 4: total = 1",
            "line 3: i = 2",
            "line 4: total = 3",
            "line 3: ",
            "line 5: return 3",
        ),
        lines=9,
    )
    assert not bad.ok and bad.value is None
    assert bad.error.startswith("exception: TypeError: 'str' object cannot be interpreted")
    assert bad.trace[-1] == "line 3: raises TypeError"
    assert CallResult.from_json(json.loads(json.dumps(ok.to_json()))) == ok
    assert run_calls(SUM, "f", [], FAST) == []


def test_trace_is_capped():
    res = one(SUM, (50,), Limits(max_trace_steps=5))
    assert res.ok and res.value == "1225" and res.lines == 103
    assert len(res.trace) == 6 and res.trace[-1] == "... 98 more steps not shown"


@pytest.mark.timeout(120)
def test_infinite_loop_times_out_and_later_calls_still_run():
    src = "def f(n):\n    while n:\n        n += 1\n    return 'done'\n"
    res = run_calls(src, "f", [(1,), (0,), (2,)], FAST)
    assert [r.error for r in res] == ["timeout", None, "timeout"]
    assert res[1].value == "'done'"
    assert res[0].trace == () and res[0].lines == 0  # how far it got is not deterministic
    assert one(SUM, (4,)).value == "6"  # and the next function is unaffected


@pytest.mark.timeout(120)
def test_a_function_that_swallows_the_alarm_is_stopped_by_the_cpu_limit():
    src = (
        "def f(n):\n    while True:\n        try:\n            while True:\n"
        "                n += 1\n        except:\n            pass\n"
    )
    res = run_calls(src, "f", [(1,), (2,)], Limits(timeout_s=0.3))
    assert [r.error for r in res] == ["timeout", "killed"]


@pytest.mark.timeout(120)
def test_unbounded_allocation_is_a_memory_error_in_the_child_only():
    src = "def f(n):\n    x = []\n    while n:\n        x.append('a' * 10**6)\n    return len(x)\n"
    res = run_calls(src, "f", [(1,), (0,)], Limits(memory_mb=64))
    assert res[0].error in ("memory", "killed") and not res[0].ok
    assert res[1] == CallResult(
        True, "0", None, ("line 2: x = []", "line 3: ", "line 5: return 0"), 3
    )
    assert len("b" * 10**7) == 10**7  # this process still allocates freely


def test_exceptions_recursion_and_unrepresentable_values():
    assert one("def f(n):\n    raise ValueError('bad %d' % n)\n").error == (
        "exception: ValueError: bad 1"
    )
    deep = one("def f(n):\n    return f(n + 1)\n")
    assert deep.error.startswith("exception: RecursionError")
    assert one("def f(n):\n    return list(range(10**5))\n").error.startswith("unrepresentable")
    assert one("def f(n):\n    return len\n").error.startswith("unrepresentable")
    assert one("def f(n):\n    return float('nan')\n").error.startswith("unrepresentable")
    assert one("def f(n):\n    return 10 ** 5000\n").error.startswith("unrepresentable")
    assert one("def f(n):\n    return [n, (n, 'a'), {'k': {2, 1}}]\n").value == (
        "[1, (1, 'a'), {'k': {1, 2}}]"
    )


def test_no_dangerous_builtins_or_escapes():
    assert one("def f(n):\n    return open('/etc/passwd').read()\n").error == (
        "exception: NameError: name 'open' is not defined"
    )
    assert one("def f(n):\n    import os\n    return 1\n").error.startswith(
        "exception: ImportError"
    )
    for name in ("__import__('os')", "eval('1')", "exec('1')", "compile('1', '', 'eval')",
                 "globals()", "getattr(n, 'real')", "print(n)", "input()", "type(n)"):  # fmt: skip
        res = one(f"def f(n):\n    return {name}\n")
        assert not res.ok and ("NameError" in res.error or "invalid source" in res.error), name
    assert one("def f(n):\n    return ().__class__.__base__\n").error.startswith("invalid source")
    assert one("def f(n):\n  return (\n").error.startswith("invalid source: SyntaxError")
    assert one("x = 1\n").error == "invalid source: no function f"


def test_results_are_deterministic_with_fixed_string_hashing():
    src = "def f(w):\n    return list({'apple', 'banana', 'cherry', 'date', w})\n"
    runs = {one(src, ("egg",)).value for _ in range(3)}
    assert len(runs) == 1


def test_arguments_must_be_literals():
    with pytest.raises(ValueError, match="literals"):
        run_calls(SUM, "f", [(object(),)], FAST)


def _fake_child(monkeypatch, script: str) -> None:
    monkeypatch.setattr(sandbox, "child_command", lambda: [sys.executable, "-c", script])


def test_garbage_on_the_childs_stdout_is_ignored(monkeypatch):
    _fake_child(
        monkeypatch,
        "import json, sys\n"
        "req = json.loads(sys.stdin.read())\n"
        "nonce = req['nonce']\n"
        "print('garbage {')\n"
        "print(nonce + '{not json')\n"
        "print(nonce + json.dumps({'i': 5, 'ok': True, 'value': '1', 'error': None}))\n"
        "print(nonce + json.dumps({'i': 0, 'ok': True, 'value': None, 'error': None}))\n"
        "print(nonce + json.dumps({'i': 0, 'ok': True, 'value': '7', 'error': None,"
        " 'trace': [], 'lines': 1}))\n"
        "sys.stdout.write('x' * 100000)\n",
    )
    assert run_calls(SUM, "f", [(1,), (2,)], FAST) == [
        CallResult(True, "7", None, (), 1),
        CallResult(False, None, "killed"),
    ]


@pytest.mark.timeout(120)
def test_wall_clock_deadline_kills_the_whole_process_group(monkeypatch, tmp_path):
    pid_file = tmp_path / "pid"
    _fake_child(
        monkeypatch,
        "import subprocess, time\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n",
    )
    monkeypatch.setattr(sandbox, "STARTUP_GRACE_S", 1.0)
    res = run_calls(SUM, "f", [(1,), (2,)], Limits(timeout_s=0.2))
    assert [r.error for r in res] == ["timeout", "killed"]
    stat = Path(f"/proc/{pid_file.read_text()}/stat")
    if stat.exists():  # killed; a zombie until its new parent reaps it
        assert stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")


# --- candidates ------------------------------------------------------------------------------


GOOD = '''
def add(a: int, b=2) -> int:
    """Sum."""
    return a + b

def fact(n):
    return 1 if n <= 1 else n * fact(n - 1)

def words(s):
    out = [w.upper() for w in s.split() if w]
    return ", ".join(sorted(out))

class C:
    def no_self(self, x):
        return x * 2

    @staticmethod
    def static(x, y):
        return max(x, y)

    def uses_self(self, x):
        return self.k + x
'''

BAD = (
    """
import os
X = 3

def uses_global(a):
    return a + X

def imports(a):
    import math
    return math.sqrt(a)

@decorated
def deco(a):
    return a

def star(*a):
    return a

def kw(a, *, b):
    return a

def kwargs(a, **k):
    return a

def four(a, b, c, d):
    return a

def zero():
    return 1

def gen(a):
    yield a

def nested(a):
    def g():
        return a
    return g()

def reads(f):
    return f.read()

def calls(f):
    return f(1)

def no_value(a):
    a.append(1)

def private(a):
    return a._x

def uses_os(a):
    return os.path.join(a, "b")

def long(a):
"""
    + "    a += 1\n" * 20
    + "    return a\n"
)


def test_candidates_accept_small_pure_functions():
    found = ct.candidates("doc", GOOD)
    assert [f.name for f in found] == ["add", "fact", "words", "no_self", "static"]
    add = found[0]
    assert add.source == "def add(a, b=2):\n    return a + b\n"  # no annotations, docstring
    assert add.params == ("a", "b") and add.defaults == ("2",) and add.lineno == 2
    assert found[3].source == "def no_self(x):\n    return x * 2\n"
    assert found[4].params == ("x", "y")


def test_candidates_reject_impure_or_unsuitable_functions():
    assert ct.candidates("doc", BAD) == []
    assert ct.candidates("doc", "def f(a):\n  return (\n") == []
    assert ct.candidates("doc", "def f(a):\n" + "    a += 1\n" * 20 + "    return a\n", 30)


def test_argument_types_are_guessed_from_usage():
    (fn,) = ct.candidates("d", "def f(s, n, xs):\n    return s.lower()[:n] + str(sum(xs))\n")
    guesses = ct.type_guesses(fn)
    assert [guesses[p][0] for p in fn.params] == ["str", "int", "list"]
    sets = ct.arg_sets(fn, random.Random(0), 6)
    assert sets == ct.arg_sets(fn, random.Random(0), 6) and len(sets) == 6
    assert all(isinstance(a[0], str) and isinstance(a[1], int) for a in sets[:3])


# --- problems --------------------------------------------------------------------------------

STDLIB = Path(sysconfig.get_paths()["stdlib"])
FILES = ("colorsys.py", "string.py", "calendar.py", "_pydecimal.py", "posixpath.py",
         "textwrap.py", "heapq.py", "bisect.py", "fnmatch.py")  # fmt: skip


@pytest.fixture(scope="module")
def docs() -> list[tuple[str, str]]:
    return [(f"stdlib:{f}", (STDLIB / f).read_text(encoding="utf-8")) for f in FILES]


@pytest.mark.timeout(300)
def test_problems_from_stdlib_are_recomputable_and_deterministic(docs):
    probs = ct.problems(docs, 25, seed=7, limits=FAST)
    assert len(probs) == 25
    assert len({p.id for p in probs}) == 25
    first_round = [(p.spec["doc_id"], p.spec["func"]) for p in probs[:10]]
    assert len(set(first_round)) == 10  # round-robin: distinct functions first
    for p in probs:
        assert p.task == "code_trace" and p.id.startswith("code_trace-")
        assert p.answer != "None" and p.difficulty >= 1
        assert f"```python\n{p.spec['source']}```" in p.question
        assert p.question.startswith(f"What does `{p.spec['func']}(")
        assert 1 <= len(p.steps) <= ct.MAX_STEPS
        assert set(p.spec) == {"source", "func", "args", "doc_id", "limits"}
        assert ct.recompute(p.spec) == p.answer
        assert Problem.from_json(json.loads(json.dumps(p.to_json()))) == p
    again = ct.problems(docs, 25, seed=7, limits=FAST)
    assert [p.to_json() for p in again] == [p.to_json() for p in probs]
    other = ct.problems(docs, 25, seed=8, limits=FAST)
    assert [p.id for p in other] != [p.id for p in probs]


def test_recompute_fails_clearly():
    spec = {"source": SUM, "func": "f", "args": "('x',)", "doc_id": "d", "limits": {}}
    with pytest.raises(ValueError, match="TypeError"):
        ct.recompute(spec)


@pytest.mark.timeout(300)
def test_memo_makes_warm_runs_start_no_subprocess(docs, monkeypatch):
    store: dict[str, list[dict]] = {}

    def memo(key, compute):
        if key not in store:
            store[key] = json.loads(json.dumps(compute()))
        return store[key]

    cold = ct.problems(docs, 12, seed=1, memo=memo)
    assert store and all(len(k) == 64 for k in store)

    def no_calls(*args, **kwargs):
        raise AssertionError("sandbox used on a warm run")

    monkeypatch.setattr(sandbox, "run_calls", no_calls)
    monkeypatch.setattr(subprocess, "Popen", no_calls)
    warm = ct.problems(docs, 12, seed=1, memo=memo)
    assert [p.to_json() for p in warm] == [p.to_json() for p in cold]


def test_explain_summarises_long_traces():
    res = one(SUM, (10,))
    steps = ct.explain(SUM, res.trace, res.value)
    assert len(steps) == ct.MAX_STEPS
    assert steps[:3] == (
        "Line 2 sets total = 0.",
        "Line 3 loops: i = 0.",
        "Line 4 runs `total += i`.",
    )
    assert steps[-2] == "... 12 more steps (5 more loop iterations)."
    assert steps[-1] == "Line 5 returns 45."
    capped = one(SUM, (50,), Limits(max_trace_steps=30))
    steps = ct.explain(SUM, capped.trace, capped.value)
    assert len(steps) == ct.MAX_STEPS and steps[-1].endswith("then it returns 1225.")
