"""A GGUF model through llama-cpp-python: one `create_completion` per request, seeded.

The prompt goes in as raw text (no chat template). Sampling is temperature + top-p only (llama.cpp's
top-k, min-p and repeat penalty are switched off), temperature 0 is greedy. The context is reset
before every request, so a result never depends on what was generated before it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from stages.synth.backends import BackendError, Generation, Request, Sampling, content_hash

SEED_MOD = 0xFFFFFFFF  # llama.cpp seeds are uint32 and 0xFFFFFFFF means "random"


class GGUFBackend:
    """`llama_cpp.Llama` over one GGUF file; `threads` 0 = llama.cpp's default."""

    name = "gguf"

    def __init__(self, path: Path, sampling: Sampling, n_ctx: int = 2048, threads: int = 0):
        from llama_cpp import Llama

        self.path = Path(path)
        self.sampling = sampling
        self.retries: Counter = Counter()
        self.fingerprint = "gguf:" + content_hash(self.path)[:16]
        kwargs = {"n_threads": threads, "n_threads_batch": threads} if threads > 0 else {}
        self._llm: Llama | None = Llama(model_path=str(self.path), n_ctx=n_ctx, verbose=False,
                                        **kwargs)

    def generate(self, requests: list[Request]) -> Iterator[tuple[Request, Generation
                                                                   | BackendError]]:
        """One request at a time, in order."""
        for req in requests:
            yield req, self._one(req)

    def _one(self, req: Request) -> Generation | BackendError:
        if self._llm is None:
            return BackendError("closed", "the backend was closed")
        s = self.sampling
        try:
            self._llm.reset()  # no KV-cache prefix reuse from the previous request
            out = self._llm.create_completion(
                req.prompt, max_tokens=s.max_new_tokens, temperature=s.temperature,
                top_p=s.top_p, top_k=0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0,
                seed=req.seed % SEED_MOD)
        except ValueError as exc:  # e.g. "Requested tokens (N) exceed context window of M"
            return BackendError("context_length" if "context window" in str(exc)
                                else "gguf_error", str(exc)[:500])
        except Exception as exc:  # reported per request, never raised
            return BackendError("gguf_error", repr(exc)[:500])
        choice, usage = out["choices"][0], out.get("usage") or {}
        return Generation(text=choice["text"],
                          finish_reason="length" if choice["finish_reason"] == "length"
                          else "stop",
                          prompt_tokens=usage.get("prompt_tokens", 0),
                          completion_tokens=usage.get("completion_tokens", 0))

    def close(self) -> None:
        """Free the model now (llama-cpp's `__del__` at interpreter exit prints tracebacks)."""
        if self._llm is not None:
            self._llm.close()
            self._llm = None
