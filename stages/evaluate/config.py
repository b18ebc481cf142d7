"""`evaluate` params: the held-out text every model is scored on, the KV-cache types, the speed
measurement."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stages.params import StrictModel

KV_TYPES = ("f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")


class Speed(StrictModel):
    """llama.cpp throughput of each GGUF file on this machine (best of `repeats`)."""

    prompt_tokens: int = Field(128, ge=1, description="tokens of one prompt, evaluated as a batch")
    generate_tokens: int = Field(64, ge=2, description="greedy tokens generated after it")
    repeats: int = Field(5, ge=1, description="measurements per file; the fastest is reported")


class Params(StrictModel):
    max_bytes: int = Field(32768, ge=0, description="leading held-out documents scored, general "
                           "and domain (UTF-8 bytes; 0: all of them)")
    window: int = Field(0, ge=0, description="tokens per scoring window, for every model; 0: the "
                        "shortest context of the GGUF files, at most the packed sequence length")
    micro_seqs: int = Field(8, ge=1, description="windows per forward pass (transformers)")
    kv_cache_types: list[Literal[KV_TYPES]] = Field(  # type: ignore[valid-type]
        ["f16", "q8_0", "q4_0"], min_length=1,
        description="llama.cpp K/V cache types each GGUF file is scored with (the first is the "
        "reference; quantized V needs flash attention, which is then on for all)")
    kv_context: int = Field(4096, ge=16, description="context at which KV memory is reported")
    speed: Speed = Speed()
