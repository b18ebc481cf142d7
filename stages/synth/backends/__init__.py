"""Generator backends behind one interface.

A backend turns `Request`s into `Generation`s. `templates` renders from the structured job (no
model); `hf`, `gguf` and `http` send `Request.prompt` to a language model. Every backend has a
`fingerprint`: the identity of the model it uses (hash of the model files, endpoint model name, or
the template code), which is part of every cache key. Transient failures are retried inside the
backend with `Retry`; what still fails comes back as a `BackendError` with a reason, never raised
for one item and never dropped.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


def content_hash(path: Path) -> str:
    """sha256 of a file's bytes, or of a directory's files: sorted relative paths, sizes, bytes.
    What identifies a local model (hf: a directory, gguf: a file) in every cache key."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        files = [(b"", path)]
    else:
        files = [(p.relative_to(path).as_posix().encode(), p)
                 for p in sorted(q for q in path.rglob("*") if q.is_file())]
    for rel, file in files:
        if rel:
            digest.update(len(rel).to_bytes(8, "big") + rel)
            digest.update(file.stat().st_size.to_bytes(8, "big"))
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Sampling:
    """How to sample; part of every cache key."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95


@dataclass(frozen=True)
class Request:
    """One generation: the full prompt, its seed, and the structured job it came from."""

    key: str  # the cache key (hex digest); identifies the request in results
    prompt: str  # full prompt text (for chat endpoints: the user message)
    seed: int  # per-request sampling seed
    job: dict[str, Any] = field(default_factory=dict)  # JSON-able spec (templates render it)


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str = "stop"  # "stop" | "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0


class BackendError(Exception):
    """A request that failed for good (after retries); `reason` is a short countable label."""

    def __init__(self, reason: str, detail: str = "", retryable: bool = False):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.retryable = retryable


class Backend(Protocol):
    name: str
    fingerprint: str
    retries: Counter  # retried attempts per reason (what was retried, not what finally failed)

    def generate(
        self, requests: list[Request]
    ) -> Iterator[tuple[Request, Generation | BackendError]]:
        """Results in any order as they complete, exactly one per request."""
        ...

    def close(self) -> None: ...


@dataclass
class Retry:
    """Retry a call on retryable `BackendError`s with exponential backoff."""

    attempts: int = 4  # total tries
    backoff_s: float = 0.5  # first wait; doubles each retry
    max_backoff_s: float = 8.0
    sleep: Callable[[float], None] = time.sleep

    def call(self, fn: Callable[[], T], retries: Counter) -> T:
        wait = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except BackendError as exc:
                if not exc.retryable or attempt == self.attempts:
                    raise
                retries[exc.reason] += 1
                self.sleep(min(wait, self.max_backoff_s))
                wait *= 2
        raise AssertionError("unreachable")
