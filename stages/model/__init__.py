"""Decoder-only MoE (or dense) language model, its transformers export and its precision modes.

Export architecture (`MoEConfig.arch`), checked against transformers 5.24 / 5.17 and the GGUF
converter of llama.cpp as vendored in llama-cpp-python 0.3.36:

- `qwen2_moe` (default) -> `Qwen2MoeForCausalLM`. Its config has `layer_types`, so any per-layer
  pattern of sliding and full attention exports exactly. What the architecture imposes: a gated
  shared expert (transformers always builds one) and top-k routing weights without
  renormalisation (llama.cpp's qwen2moe graph hard-codes that). llama.cpp converts it to its
  `qwen2moe` arch, but that converter reads the vocabulary through the GPT-2 BPE path, which
  rejects any freshly trained tokenizer; letting it try SentencePiece first, as llama.cpp's own
  Qwen2 converter does (`Qwen2MoeModel.set_vocab = Qwen2Model.set_vocab`), converts a
  SentencePiece tokenizer (seen working here on a tiny checkpoint).
- `mixtral` -> `MixtralForCausalLM` -> llama.cpp `llama` arch; a SentencePiece tokenizer converts
  unpatched. But Mixtral has one `sliding_window` for all layers: the pattern must be uniform
  ('S' or 'F') and there is no shared expert.
- `llama` (dense: `n_experts=0`, one SwiGLU MLP of `ffn_size` per layer; the distillation
  student) -> `LlamaForCausalLM` -> llama.cpp `llama` arch, SentencePiece vocabulary unpatched.
  Full attention in every layer (layer_pattern 'F'; neither graph has a sliding window), so its
  GGUF computes the same function at any context.

Neither MoE GGUF carries the window (llama.cpp runs both with full attention), so GGUF logits
match only for contexts up to the window. Not chosen: Qwen3-MoE (one window, no `layer_types`) and
GPT-OSS (`layer_types` and a window-aware llama.cpp arch, but its experts are a clamped SwiGLU
with biases plus attention sinks, and its converter has the same GPT-2 vocabulary path).
"""

from importlib import import_module

# Imported on first use (PEP 562): `stages.model.config` must stay importable without torch.
_EXPORTS = {
    "MoEConfig": "config", "MoEForCausalLM": "moe", "load_hf": "hf",
    "load_training_model": "hf", "save_hf": "hf", "to_hf_config": "hf",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
