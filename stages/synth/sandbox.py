"""Run small, untrusted Python functions in a limited subprocess and trace what they do.

`run_calls` starts ONE child interpreter per function and runs every argument set in it, one
after the other; each call gets a fresh namespace (so calls cannot leak state into each other and
any call can be recomputed alone). The child runs with address-space, CPU and file-size limits,
a restricted builtins dict (no `open`, `__import__`, `exec`, `eval`, `print`, `getattr`, ...), a
per-call CPU-time alarm and `sys.settrace` on the function's own code object. The parent enforces
a wall-clock deadline per call, kills the child's whole process group when it passes, ignores
anything on the child's stdout that is not a result line, and never raises for a misbehaving
function: every call comes back as a `CallResult`. Results hold no timing data, and the child
runs with PYTHONHASHSEED=0, so they are deterministic.
"""

from __future__ import annotations

import ast
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

# Bump when the child's behaviour (trace format, limits semantics) changes: part of cache keys.
VERSION = 1
STARTUP_GRACE_S = 10.0  # wall-clock allowance for starting the child interpreter
_MAX_LINE_BYTES = 1 << 20  # a stdout line longer than this is garbage: the child is killed


@dataclass(frozen=True)
class Limits:
    """Per-call limits. `memory_mb` is address space on top of the child's idle interpreter."""

    timeout_s: float = 2.0  # CPU seconds per call (wall clock: 2x + 1 s, enforced by the parent)
    memory_mb: int = 256
    max_trace_steps: int = 200
    max_repr_chars: int = 200


@dataclass(frozen=True)
class CallResult:
    """One call's outcome: `value` is the repr of the return value when `ok`."""

    ok: bool
    value: str | None
    error: str | None  # "timeout", "memory", "killed", "exception: T: msg", "unrepresentable: .."
    trace: tuple[str, ...] = ()  # "line 3: total = 0", "line 5: return 6", "line 4: raises E"
    lines: int = 0  # executed line events of the function (all call depths)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "trace": list(self.trace)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallResult:
        return cls(
            ok=bool(data["ok"]),
            value=data.get("value"),
            error=data.get("error"),
            trace=tuple(data.get("trace", ())),
            lines=int(data.get("lines", 0)),
        )


def _failed(error: str) -> CallResult:
    return CallResult(ok=False, value=None, error=error)


# The child's program, run as `python -S -s -P -B -c _CHILD` with a clean environment. It reads
# one JSON request from stdin and writes one `<nonce>{json}` line per call to a private dup of
# its stdout; fd 0 and 1 are pointed at /dev/null before any function code runs.
_CHILD = r"""
import ast, json, opcode, os, re, reprlib, resource, signal, sys

req = json.loads(sys.stdin.buffer.read())
out = os.fdopen(os.dup(1), "wb")
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 1)
lim = req["limits"]
n_calls = len(req["args"])
MB = 1 << 20
try:
    with open("/proc/self/statm") as f:
        base = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
except Exception:
    base = 64 * MB


def limit(res, soft, hard):
    old = resource.getrlimit(res)[1]
    if old != resource.RLIM_INFINITY:
        soft, hard = min(soft, old), min(hard, old)
    resource.setrlimit(res, (soft, hard))


mem = base + int(lim["memory_mb"]) * MB
limit(resource.RLIMIT_AS, mem, mem)
cpu = int(lim["timeout_s"] * n_calls + 2)
limit(resource.RLIMIT_CPU, cpu, cpu + 1)
limit(resource.RLIMIT_FSIZE, 0, 0)
limit(resource.RLIMIT_CORE, 0, 0)

B = __builtins__ if isinstance(__builtins__, dict) else vars(__builtins__)
SAFE_BUILTINS = {k: B[k] for k in req["builtins"] if k in B}

reprlib._possibly_sorted = iter  # show dicts and sets in their real order
short = reprlib.Repr()
short.maxstring = short.maxother = short.maxlong = 40
short.maxlist = short.maxtuple = short.maxset = short.maxfrozenset = short.maxdeque = 8
short.maxdict = 6
short.maxlevel = 3


ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def srepr(v):
    try:
        return ADDRESS.sub("", short.repr(v))  # no memory addresses: deterministic
    except BaseException:
        return "<?>"


class Timeout(BaseException):
    pass


armed = [False]


def on_alarm(signum, frame):
    if armed[0]:
        raise Timeout


signal.signal(signal.SIGPROF, on_alarm)


def emit(i, ok, value=None, error=None, trace=(), lines=0):
    rec = {"i": i, "ok": ok, "value": value, "error": error, "trace": list(trace), "lines": lines}
    out.write((req["nonce"] + json.dumps(rec) + "\n").encode())
    out.flush()


def check_source(src):
    tree = ast.parse(src)
    for node in ast.walk(tree):
        name = getattr(node, "attr", None) or getattr(node, "id", None)
        if isinstance(name, str) and name.startswith("__"):
            raise ValueError("dunder name " + name)
    return compile(tree, "<function>", "exec")


try:
    code = check_source(req["source"])
    bad_source = None
except BaseException as e:
    code, bad_source = None, "invalid source: " + type(e).__name__ + ": " + str(e)[:100]

max_steps = int(lim["max_trace_steps"])
RETURN_OPS = {opcode.opmap[n] for n in ("RETURN_VALUE", "RETURN_CONST") if n in opcode.opmap}
max_chars = int(lim["max_repr_chars"])


class Tracer:
    def __init__(self, target):
        self.target, self.trace, self.lines, self.omitted, self.depth = target, [], 0, 0, 0

    def add(self, entry):
        if len(self.trace) < max_steps:
            self.trace.append(entry)
        else:
            self.omitted += 1

    def __call__(self, frame, event, arg):
        if event == "call" and frame.f_code is self.target:
            self.depth += 1
            return Frame(self, frame, self.depth)
        return None


class Frame:
    def __init__(self, tr, frame, depth):
        self.tr, self.depth, self.line, self.raised, self.last = tr, depth, None, None, None
        self.prefix = "" if depth == 1 else "depth %d, " % depth
        self.snap = self.snapshot(frame)

    def snapshot(self, frame):
        if len(self.tr.trace) >= max_steps:
            return {}
        return {k: srepr(v) for k, v in frame.f_locals.items()}

    def flush(self, frame):
        if self.line is None:
            return
        new = self.snapshot(frame)
        changed = ["%s = %s" % (k, v) for k, v in new.items() if self.snap.get(k) != v]
        self.snap = new
        if self.raised is not None:
            self.tr.add("line %d: %sraises %s" % (self.line, self.prefix, self.raised))
            self.raised = None
        else:
            self.tr.add("line %d: %s%s" % (self.line, self.prefix, ", ".join(changed)))

    def __call__(self, frame, event, arg):
        if event == "line":
            self.flush(frame)
            self.line = frame.f_lineno
            self.tr.lines += 1
        elif event == "exception":
            self.raised = self.last = arg[0].__name__
        elif event == "return":
            try:
                returned = frame.f_code.co_code[frame.f_lasti] in RETURN_OPS
            except Exception:
                returned = self.raised is None
            if returned:
                self.tr.add("line %d: %sreturn %s" % (self.line, self.prefix, srepr(arg)))
            else:
                raised = self.raised or self.last or "an exception"
                self.tr.add("line %d: %sraises %s" % (self.line, self.prefix, raised))
            self.tr.depth -= 1
        return self


def call(i, args_repr):
    if code is None:
        return emit(i, False, error=bad_source)
    ns = {"__builtins__": dict(SAFE_BUILTINS), "__name__": "sandbox"}
    tracer = None
    try:
        args = ast.literal_eval(args_repr)
        armed[0] = True
        signal.setitimer(signal.ITIMER_PROF, max(float(lim["timeout_s"]), 0.001), 0.05)
        exec(code, ns)
        fn = ns.get(req["func"])
        if type(fn).__name__ != "function":
            armed[0] = False
            return emit(i, False, error="invalid source: no function " + req["func"])
        tracer = Tracer(fn.__code__)
        sys.settrace(tracer)
        try:
            value = fn(*args)
        finally:
            sys.settrace(None)
        try:
            text = repr(value)
            if len(text) > max_chars:
                err = "unrepresentable: longer than %d chars" % max_chars
            else:
                ast.literal_eval(text)
                err = None
        except Timeout:
            raise
        except BaseException:
            err = "unrepresentable: not a literal"
        armed[0] = False
    except Timeout:
        armed[0], err, text = False, "timeout", None
    except MemoryError:
        armed[0], err, text = False, "memory", None
    except BaseException as e:
        armed[0] = False
        try:
            msg = str(e)[:100]
        except BaseException:
            msg = ""
        err, text = "exception: %s: %s" % (type(e).__name__, ADDRESS.sub("", msg)), None
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_PROF, 0)
    trace = list(tracer.trace) if tracer else []
    if tracer and tracer.omitted:
        trace.append("... %d more steps not shown" % tracer.omitted)
    lines = tracer.lines if tracer else 0
    if err in ("timeout", "memory"):  # how far it got depends on timing: keep no trace
        trace, lines = [], 0
    if err:
        return emit(i, False, error=err, trace=trace, lines=lines)
    emit(i, True, value=text, trace=trace, lines=lines)


for i, a in enumerate(req["args"]):
    try:
        try:
            call(i, a)
        except MemoryError:
            emit(i, False, error="memory")
    except Timeout:  # a late alarm outside `call`'s handlers; a duplicate line is ignored
        armed[0] = False
        signal.setitimer(signal.ITIMER_PROF, 0)
        emit(i, False, error="timeout")
"""

# The builtins a sandboxed function sees: no I/O, imports, code execution, introspection
# (getattr, vars, type, globals, id, hash) or output.
SAFE_BUILTINS = frozenset(
    """abs all any ascii bin bool bytearray bytes callable chr complex dict divmod enumerate
    filter float format frozenset hex int isinstance issubclass iter len list map max min next oct
    ord pow range repr reversed round set slice sorted str sum tuple zip
    ArithmeticError AssertionError AttributeError Exception IndexError KeyError LookupError
    NameError NotImplementedError OverflowError RecursionError RuntimeError StopIteration
    TypeError UnicodeDecodeError UnicodeEncodeError UnicodeError ValueError ZeroDivisionError
    """.split()
)

_CHILD_ENV = {
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "utf-8",
    "LC_ALL": "C",
}


def child_command() -> list[str]:
    """The child interpreter's command line: no site, no user site, no script dir on the path."""
    return [sys.executable, "-S", "-s", "-P", "-B", "-c", _CHILD]


def _args_repr(args: tuple) -> str:
    text = repr(tuple(args))
    try:
        same = ast.literal_eval(text) == tuple(args)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        same = False
    if not same:
        raise ValueError(f"arguments must be Python literals that round-trip: {text[:80]}")
    return text


def run_calls(
    source: str, func_name: str, arg_sets: list[tuple], limits: Limits
) -> list[CallResult]:
    """Call `func_name` (defined by `source`) once per argument set, in one sandboxed child.

    Raises ValueError only for arguments that are not round-tripping literals (a caller bug);
    whatever the function does comes back as results, one per argument set, in order.
    """
    if not arg_sets:
        return []
    request = {
        "nonce": os.urandom(8).hex() + ":",
        "source": source,
        "func": func_name,
        "args": [_args_repr(a) for a in arg_sets],
        "limits": asdict(limits),
        "builtins": sorted(SAFE_BUILTINS),
    }
    return _run_child(child_command(), request, limits)


def _run_child(cmd: list[str], request: dict, limits: Limits) -> list[CallResult]:
    """Run the child `cmd`, feed it `request`, collect one result per argument set."""
    n = len(request["args"])
    nonce = request["nonce"].encode()
    results: list[CallResult] = []
    per_call = max(2 * limits.timeout_s, limits.timeout_s + 1.0)
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_CHILD_ENV,
            cwd="/",
            start_new_session=True,
        )
    except OSError as e:
        return [_failed(f"killed: cannot start ({e.__class__.__name__})")] * n
    payload = json.dumps(request).encode()
    sel = selectors.DefaultSelector()
    for pipe, ev in ((proc.stdin, selectors.EVENT_WRITE), (proc.stdout, selectors.EVENT_READ)):
        os.set_blocking(pipe.fileno(), False)
        sel.register(pipe, ev)
    os.set_blocking(proc.stderr.fileno(), False)
    sel.register(proc.stderr, selectors.EVENT_READ)
    buf, err_tail, sent = b"", b"", 0
    deadline = time.monotonic() + STARTUP_GRACE_S + per_call
    reason: str | None = None
    open_pipes = 2
    try:
        while len(results) < n and open_pipes:
            left = deadline - time.monotonic()
            if left <= 0:
                reason = "timeout"
                break
            for key, _ in sel.select(timeout=min(left, 1.0)):
                pipe = key.fileobj
                if pipe is proc.stdin:
                    try:
                        sent += os.write(pipe.fileno(), payload[sent : sent + 65536])
                    except (BrokenPipeError, OSError):
                        sent = len(payload)
                    if sent >= len(payload):
                        sel.unregister(pipe)
                        pipe.close()
                    continue
                chunk = os.read(pipe.fileno(), 65536)
                if not chunk:
                    sel.unregister(pipe)
                    open_pipes -= 1
                    continue
                if pipe is proc.stderr:
                    err_tail = (err_tail + chunk)[-4096:]
                    continue
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    res = _parse_line(line, nonce, len(results))
                    if res is not None:
                        results.append(res)
                        deadline = time.monotonic() + per_call
                if len(buf) > _MAX_LINE_BYTES:
                    reason = "killed: garbage output"
                    break
            if reason:
                break
    finally:
        sel.close()
        _kill(proc)
    if len(results) < n:
        if reason is None:
            reason = _death_reason(proc.returncode, err_tail)
        results.append(_failed(reason))
        results.extend(_failed("killed") for _ in range(n - len(results)))
    return results


def _parse_line(line: bytes, nonce: bytes, index: int) -> CallResult | None:
    """A result line for call `index`, or None for anything else (garbage is ignored)."""
    if not line.startswith(nonce):
        return None
    try:
        data = json.loads(line[len(nonce) :])
        if data.get("i") != index or not isinstance(data.get("ok"), bool):
            return None
        res = CallResult.from_json(data)
        if not all(isinstance(t, str) for t in res.trace):
            return None
        if res.ok != isinstance(res.value, str) or (res.error is not None) == res.ok:
            return None
        return res
    except (ValueError, TypeError, AttributeError, KeyError):
        return None


def _kill(proc: subprocess.Popen) -> None:
    """Kill the child's process group (it is a session leader) and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe and not pipe.closed:
            pipe.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _death_reason(returncode: int | None, stderr: bytes) -> str:
    """Why a child died before reporting a call: timeout, memory or killed."""
    if returncode == -signal.SIGXCPU:
        return "timeout"
    if b"MemoryError" in stderr or b"memory" in stderr.lower():
        return "memory"
    return "killed"
