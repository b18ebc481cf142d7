"""A local transformers causal LM: batched generation with the KV cache, per-request seeds.

Prompts are sorted by token length and cut into batches of `batch_size` (less padding), LEFT
padded, and generated with `model.generate(..., use_cache=True)` and greedy decoding. Sampling
is the Gumbel-max trick in a logits processor: scores / temperature, top-p mask, plus Gumbel
noise from a generator seeded by (request seed, step) for each row, then argmax. So a request
samples the same tokens whatever batch it lands in (up to float noise from padding);
temperature 0 is plain greedy.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessor

from stages.synth.backends import BackendError, Generation, Request, Sampling, content_hash


def step_seed(seed: int, step: int) -> int:
    """The generator seed of one request at one decoding step."""
    data = f"synth-hf:{seed}:{step}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") >> 1


class GumbelSampler(LogitsProcessor):
    """Temperature and top-p, then Gumbel noise seeded per row by (seed, step): argmax of the
    result samples from the top-p renormalised softmax(scores / temperature)."""

    def __init__(self, seeds: list[int], prompt_width: int, temperature: float, top_p: float):
        self.seeds, self.prompt_width = seeds, prompt_width
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width
        scores = scores.float() / self.temperature
        if self.top_p < 1.0:
            ordered, idx = scores.sort(dim=-1, descending=False)
            cum = ordered.softmax(dim=-1).cumsum(dim=-1)
            drop = cum <= 1 - self.top_p
            drop[..., -1] = False  # always keep the most likely token
            scores = scores.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
        noise = torch.stack([
            torch.rand(scores.shape[-1], generator=torch.Generator().manual_seed(
                step_seed(seed, step)), dtype=torch.float64)
            for seed in self.seeds])
        gumbel = -torch.log(-torch.log(noise.clamp_(1e-300, 1.0 - 1e-16)))
        return scores + gumbel.to(device=scores.device, dtype=scores.dtype)


class HFBackend:
    """`AutoModelForCausalLM` + `AutoTokenizer` from `model_dir`, fp32, CUDA when available."""

    name = "hf"

    def __init__(self, model_dir: Path, sampling: Sampling, batch_size: int = 8,
                 threads: int = 0):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if threads > 0:
            torch.set_num_threads(threads)
        self.model_dir = Path(model_dir)
        self.sampling = sampling
        self.batch_size = batch_size
        self.retries: Counter = Counter()
        self.fingerprint = "hf:" + content_hash(self.model_dir)[:16]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(
            str(self.model_dir), dtype=torch.float32).to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        if not eos_ids:
            raise ValueError(f"{model_dir}: the tokenizer and model define no EOS token")
        self.eos_ids = sorted(eos_ids)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]

    def encode(self, prompt: str) -> list[int]:
        """Prompt token ids: through the chat template when the tokenizer has one."""
        tok = self.tokenizer
        if tok.chat_template:
            text = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                           add_generation_prompt=True, tokenize=False)
            ids = tok(text, add_special_tokens=False).input_ids
        else:
            ids = tok(prompt).input_ids
        return ids or [tok.bos_token_id if tok.bos_token_id is not None else self.eos_ids[0]]

    def generate(self, requests: list[Request]) -> Iterator[tuple[Request, Generation
                                                                   | BackendError]]:
        """Batches of similar prompt length; each batch's results as it completes."""
        encoded = []
        for req in requests:
            try:
                encoded.append((req, self.encode(req.prompt)))
            except Exception as exc:  # one bad prompt must not stop the rest
                yield req, BackendError("tokenize_error", repr(exc)[:500])
        encoded.sort(key=lambda item: len(item[1]))
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start:start + self.batch_size]
            try:
                results = self._generate_batch(batch)
            except Exception as exc:  # reported per request, never raised
                results = [BackendError("generation_error", repr(exc)[:500])] * len(batch)
            yield from zip((req for req, _ in batch), results, strict=True)

    @torch.no_grad()
    def _generate_batch(self, batch: list[tuple[Request, list[int]]]) -> list[Generation]:
        width = max(len(ids) for _, ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, ids) in enumerate(batch):  # left padding: prompts end where generation starts
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            mask[row, width - len(ids):] = 1
        s = self.sampling
        config = GenerationConfig(
            max_new_tokens=s.max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
            eos_token_id=self.eos_ids, pad_token_id=self.pad_id, repetition_penalty=1.0,
            no_repeat_ngram_size=0, min_new_tokens=0)
        processors = []
        if s.temperature > 0:
            processors.append(GumbelSampler([req.seed for req, _ in batch], width,
                                             s.temperature, s.top_p))
        out = self.model.generate(input_ids=input_ids.to(self.device),
                                  attention_mask=mask.to(self.device),
                                  generation_config=config, logits_processor=processors)
        results = []
        eos = set(self.eos_ids)
        for row, (_, ids) in enumerate(batch):
            new = out[row, width:].tolist()
            stop = next((i for i, t in enumerate(new) if t in eos), None)
            tokens = new if stop is None else new[:stop]
            results.append(Generation(
                text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                finish_reason="length" if stop is None else "stop",
                prompt_tokens=len(ids), completion_tokens=len(tokens)))
        return results

    def close(self) -> None:
        """Drop the model (frees its memory once nothing else holds it)."""
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
