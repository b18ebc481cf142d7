"""An OpenAI-compatible endpoint (`/v1/chat/completions` or `/v1/completions`) over `requests`.

`concurrency` worker threads, each with its own `requests.Session`, keep that many requests in
flight; results are yielded as they complete. Timeouts, connection errors, HTTP 429 / 5xx,
malformed JSON and responses without choices or text are retried with `Retry`; other 4xx are
not. The API key is read from the environment variable `api_key_env` at call time, sent as
`Authorization: Bearer`, and scrubbed from every error detail; the fingerprint is the model name
only, so hosts serving the same model share a cache.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Literal

import requests

from stages.synth.backends import BackendError, Generation, Request, Retry, Sampling

log = logging.getLogger(__name__)
PATHS = {"chat": "/chat/completions", "completions": "/completions"}
SEED_MOD = 1 << 31  # servers disagree on the seed's range; every one takes a non-negative int32
DETAIL_CHARS = 300


class HTTPBackend:
    """Requests to `base_url` (with or without a trailing `/v1`) for `model`."""

    name = "http"

    def __init__(self, base_url: str, model: str, sampling: Sampling,
                 api: Literal["chat", "completions"] = "chat", api_key_env: str | None = None,
                 concurrency: int = 4, timeout_s: float = 60.0,
                 retry: Retry = Retry()):  # noqa: B008 - never mutated
        if api not in PATHS:
            raise ValueError(f"api must be one of {sorted(PATHS)}, got {api!r}")
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        base = base_url.rstrip("/")
        self.url = (base if base.endswith("/v1") else base + "/v1") + PATHS[api]
        self.model, self.sampling, self.api = model, sampling, api
        self.api_key_env = api_key_env
        self.concurrency, self.timeout_s, self.retry = concurrency, timeout_s, retry
        self.fingerprint = "http:" + model
        self.retries: Counter = Counter()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._pool: ThreadPoolExecutor | None = None
        self._closed = threading.Event()

    def generate(self, requests: list[Request]) -> Iterator[tuple[Request, Generation
                                                                   | BackendError]]:
        """Up to `concurrency` requests in flight; results in completion order."""
        if self._pool is None and not self._closed.is_set():
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="synth-http")
        pool = self._pool
        todo = iter(requests)
        pending: dict[Future, Request] = {}

        def submit() -> None:
            req = next(todo, None)
            if req is None:
                return
            try:
                if pool is None:
                    raise RuntimeError("closed")
                fut = pool.submit(self._one, req)
            except RuntimeError:  # closed: the request still gets its result
                fut = Future()
                fut.set_result(_closed())
            pending[fut] = req

        for _ in range(2 * self.concurrency):  # a queue behind the workers: no idle gaps
            submit()
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    req = pending.pop(fut)
                    submit()
                    yield req, fut.result()
        finally:  # an abandoned iteration leaves nothing queued
            for fut in pending:
                fut.cancel()

    def _one(self, req: Request) -> Generation | BackendError:
        """One request with retries; never raises."""
        counted: Counter = Counter()
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        try:
            if self.api_key_env and not key:
                raise BackendError("missing_api_key",
                                   f"environment variable {self.api_key_env} is not set")
            return self.retry.call(lambda: self._attempt(req, key), counted)
        except BackendError as exc:
            return exc
        except Exception as exc:  # a bug must come back as this request's error, not vanish
            return BackendError("internal_error", _scrub(repr(exc), key)[:DETAIL_CHARS])
        finally:
            if counted:
                log.debug("synth http: request %s retried %s", req.key[:12], dict(counted))
                with self._lock:
                    self.retries.update(counted)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(session)
        return session

    def _body(self, req: Request) -> dict[str, Any]:
        s = self.sampling
        body: dict[str, Any] = {"model": self.model, "max_tokens": s.max_new_tokens,
                                "temperature": s.temperature, "top_p": s.top_p,
                                "seed": req.seed % SEED_MOD}
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": req.prompt}]
        else:
            body["prompt"] = req.prompt
        return body

    def _attempt(self, req: Request, key: str | None) -> Generation:
        """One HTTP round trip; a `BackendError` (retryable or not) for anything but a result.
        Errors are raised `from None`: a requests exception holds the request and its headers."""
        if self._closed.is_set():
            raise _closed()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            resp = self._session().post(self.url, json=self._body(req), headers=headers,
                                        timeout=self.timeout_s)
        except requests.Timeout:
            raise BackendError("timeout", f"no response within {self.timeout_s}s",
                               retryable=True) from None
        except requests.ConnectionError as exc:
            raise BackendError("connection", _scrub(str(exc), key)[:DETAIL_CHARS],
                               retryable=True) from None
        except requests.RequestException as exc:
            raise BackendError("request_error", _scrub(str(exc), key)[:DETAIL_CHARS],
                               retryable=True) from None
        code = resp.status_code
        if code != 200:
            detail = _scrub(resp.text, key)[:DETAIL_CHARS]
            raise BackendError(f"http_{code}", detail, retryable=code == 429 or code >= 500)
        try:
            data = resp.json()
        except ValueError:
            raise BackendError("malformed_json", _scrub(resp.text, key)[:DETAIL_CHARS],
                               retryable=True) from None
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.api == "chat" else choice["text"]
            if not isinstance(text, str):
                raise TypeError(f"text is {type(text).__name__}")
            usage = data.get("usage") or {}
            return Generation(
                text=text,
                finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise BackendError("bad_response", _scrub(f"{exc!r} in {resp.text}", key)
                               [:DETAIL_CHARS], retryable=True) from None

    def close(self) -> None:
        """Stop the workers and close their sessions; requests not yet sent (also those of an
        iteration still going on) come back as `closed` errors."""
        self._closed.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False)  # queued work drains at once: every attempt checks
            self._pool = None
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()


def _closed() -> BackendError:
    return BackendError("closed", "the backend was closed")


def _scrub(text: str, key: str | None) -> str:
    """`text` without the API key."""
    return text.replace(key, "[REDACTED]") if key else text
