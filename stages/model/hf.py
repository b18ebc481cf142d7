"""Export to (and import from) a transformers checkpoint: safetensors + config.json.

The training model's parameter names are the transformers names, so export is a config mapping
plus a state-dict hand-over to the transformers class. config.json records the precision mode and
recipe that trained the weights (`training_precision`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MixtralConfig,
    PreTrainedConfig,
    Qwen2MoeConfig,
)

from stages.model.config import MoEConfig
from stages.model.moe import MoEForCausalLM


def to_hf_config(cfg: MoEConfig, **extra) -> PreTrainedConfig:
    """The transformers config whose model computes the same function as `MoEForCausalLM(cfg)`:
    Qwen2-MoE or Mixtral, or Llama for the dense variant."""
    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        hidden_act="silu", rms_norm_eps=cfg.norm_eps,
        max_position_embeddings=cfg.max_seq_len, initializer_range=cfg.init_std,
        tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        dtype="float32", **extra,
    )
    if cfg.dense:  # full attention in every layer (MoEConfig enforces it): Llama has no window
        return LlamaConfig(intermediate_size=cfg.ffn_size, head_dim=cfg.head_dim,
                           attention_bias=False, mlp_bias=False,
                           architectures=["LlamaForCausalLM"], **common)
    common |= dict(num_experts_per_tok=cfg.top_k, router_aux_loss_coef=cfg.aux_loss_coef)
    if cfg.arch == "mixtral":
        sliding = cfg.layer_types[0] == "sliding_attention"
        return MixtralConfig(num_local_experts=cfg.n_experts, intermediate_size=cfg.expert_size,
                             sliding_window=cfg.sliding_window if sliding else None,
                             architectures=["MixtralForCausalLM"], **common)
    return Qwen2MoeConfig(
        architectures=["Qwen2MoeForCausalLM"], num_experts=cfg.n_experts,
        moe_intermediate_size=cfg.expert_size, intermediate_size=cfg.expert_size,
        shared_expert_intermediate_size=cfg.shared_expert_size, norm_topk_prob=cfg.norm_topk_prob,
        qkv_bias=False, decoder_sparse_step=1, mlp_only_layers=[],
        use_sliding_window="sliding_attention" in cfg.layer_types,
        sliding_window=cfg.sliding_window, layer_types=cfg.layer_types, **common)


def save_hf(model: MoEForCausalLM, path: str | Path, precision: dict | None = None,
            state: dict | None = None) -> Path:
    """Write a transformers checkpoint through `save_pretrained`, so the on-disk layout is the
    canonical one (per-expert tensors) that llama.cpp's converter and older transformers read.
    config.json also carries `training_precision` and our own `moe_config`. `state` is the
    model's full state dict when the model itself holds only a shard (FSDP)."""
    cfg = model.config
    hf_config = to_hf_config(cfg, training_precision=precision or {"mode": "fp32"},
                             moe_config=cfg.to_dict())
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(hf_config)
    ours = model.state_dict() if state is None else state
    # FP8 modes add amax buffers: export only the tensors transformers' class has.
    hf.load_state_dict({k: ours[k].detach() for k in hf.state_dict()}, assign=True)
    hf.save_pretrained(path)
    return Path(path)


def load_hf(path: str | Path, **kwargs):
    """`AutoModelForCausalLM.from_pretrained` (what downstream tools do)."""
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def training_config(path: str | Path) -> MoEConfig:
    """The training model's config of a checkpoint written by `save_hf`, without its weights."""
    from transformers import AutoConfig

    return MoEConfig(**AutoConfig.from_pretrained(path).moe_config)


def load_training_model(path: str | Path, experts_impl: str = "grouped_mm") -> MoEForCausalLM:
    """Rebuild the training model from a checkpoint written by `save_hf`."""
    hf = load_hf(path)
    model = MoEForCausalLM(MoEConfig(**hf.config.moe_config), experts_impl)
    model.load_state_dict(hf.state_dict())
    return model
