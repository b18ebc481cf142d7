"""GGUF files in llama.cpp: the one evaluation with each K/V cache type, KV memory, throughput."""

from __future__ import annotations

import time
from pathlib import Path

from stages.evaluate.config import Params, Speed
from stages.train.task import EvalSet

KV_BLOCK = 32  # elements per block of llama.cpp's q8_0, q5_0, q5_1, q4_0, q4_1


def files(gguf_dir: Path) -> dict[str, Path]:
    """`<model>/<type>` -> path of every GGUF file the gguf stage wrote, sorted."""
    return {f"{p.parent.name}/{p.stem.removeprefix(p.parent.name + '-')}": p
            for p in sorted(gguf_dir.glob("*/*.gguf"))}


def context_length(path: Path) -> int:
    """The context length the file declares (a sliding-window MoE declares its window)."""
    from stages import llama_cpp

    meta = llama_cpp.metadata(path)
    return int(meta[f"{meta['general.architecture']}.context_length"])


def head_dim(meta: dict[str, str]) -> int:
    arch = meta["general.architecture"]
    key = meta.get(f"{arch}.attention.key_length")
    return int(key) if key else (int(meta[f"{arch}.embedding_length"])
                                 // int(meta[f"{arch}.attention.head_count"]))


def check_kv_types(files: dict[str, Path], kv_types: list[str]) -> None:
    """A quantized KV cache stores rows of a head's dimension in blocks of 32: a clear error
    before any work, naming the file and the types to leave out, rather than llama.cpp's
    'Failed to create llama_context' midway."""
    from stages import llama_cpp

    blocked = [t for t in kv_types if t not in ("f32", "f16")]
    for path in files.values():
        dim = head_dim(llama_cpp.metadata(path))
        if blocked and dim % KV_BLOCK:
            raise ValueError(f"{path}: attention heads of {dim} dims cannot use the quantized "
                             f"KV cache types {blocked} (llama.cpp needs a multiple of "
                             f"{KV_BLOCK}); remove them from evaluate.kv_cache_types")


def kv_table(path: Path, evals: dict[str, EvalSet], params: Params, threads: int) -> dict:
    """Per K/V cache type: the file's scores (every set with the first, reference, type; general
    text with the others) and the KV memory llama.cpp allocates for `params.kv_context` tokens.
    Flash attention is on for all types (llama.cpp needs it to quantize V)."""
    import llama_cpp as L

    from stages import llama_cpp
    from stages.quant.heldout import GGUFScorer, score

    window = max(int(w.inputs.shape[1]) for w in evals.values())
    table = {}
    for i, kv in enumerate(params.kv_cache_types):
        ggml_type = getattr(L, f"GGML_TYPE_{kv.upper()}")
        cache = {"flash_attn": True, "n_threads": threads, "n_threads_batch": threads,
                 "type_k": ggml_type, "type_v": ggml_type}
        with llama_cpp.captured_log() as log:
            llama_cpp.load(path, n_ctx=params.kv_context, n_batch=16, **cache).close()
        llm = llama_cpp.load(path, n_ctx=window, n_batch=window, logits_all=True, **cache)
        try:
            sets = evals if i == 0 else {"eval": evals["eval"]}
            table[kv] = score(GGUFScorer(llm), sets, params.micro_seqs)
        finally:
            llm.close()
        table[kv]["kv_bytes"] = llama_cpp.kv_cache_bytes(log)
    return table


def speed(path: Path, heldout: list[int], params: Speed, context: int, threads: int) -> dict:
    """llama.cpp prompt-processing and generation tokens/s on this machine: the leading held-out
    tokens as a prompt (at most the file's context less the generated tokens) evaluated as one
    batch, then greedy tokens one at a time; the fastest of `params.repeats` runs after a
    warm-up."""
    from stages import llama_cpp

    n_prompt = max(1, min(params.prompt_tokens, context - params.generate_tokens))
    prompt = heldout[:n_prompt]
    llm = llama_cpp.load(path, n_ctx=n_prompt + params.generate_tokens + 8, n_batch=n_prompt,
                         n_threads=threads, n_threads_batch=threads)
    best_prompt, best_gen = float("inf"), float("inf")
    try:
        for _ in range(params.repeats + 1):  # the first is the warm-up
            llm.reset()
            tokens = llm.generate(prompt, top_k=1, temp=0.0, reset=True)
            start = time.perf_counter()
            next(tokens)
            prompted = time.perf_counter()
            for _ in range(params.generate_tokens - 1):
                next(tokens)
            done = time.perf_counter()
            best_prompt = min(best_prompt, prompted - start)
            best_gen = min(best_gen, done - prompted)
    finally:
        llm.close()
    return {"prompt_tokens": n_prompt, "generate_tokens": params.generate_tokens,
            "threads": threads, "prompt_tokens_per_s": n_prompt / best_prompt,
            "generation_tokens_per_s": (params.generate_tokens - 1) / best_gen}
