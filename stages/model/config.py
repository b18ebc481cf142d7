"""Model and precision hyper-parameters as plain dataclasses.

No pydantic (the GPU box must import it bare) and no torch: params validation imports this module
in every stage's process, and torch + transformers would cost seconds there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MOE_ARCHS = ("qwen2_moe", "mixtral")
DENSE_ARCHS = ("llama",)  # n_experts = 0: a dense SwiGLU MLP of ffn_size in every layer
ARCHS = MOE_ARCHS + DENSE_ARCHS


@dataclass(frozen=True)
class MoEConfig:
    """Decoder-only MoE. `layer_pattern` repeats over the layers: 'S' sliding window, 'F' full.

    `arch="llama"` with `n_experts=0` is the dense variant (the distillation student): every
    layer's MLP is one SwiGLU of `ffn_size` (`mlp.{gate,up,down}_proj`, no router, no router
    losses), attention is full in every layer (transformers' Llama and llama.cpp's `llama` graph
    have no sliding window), and the expert fields are 0."""

    vocab_size: int = 8192
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 2
    n_experts: int = 8
    top_k: int = 2
    expert_size: int = 512
    shared_expert_size: int = 512
    sliding_window: int = 128
    layer_pattern: str = "SSSF"
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    max_seq_len: int = 4096
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.0
    tie_embeddings: bool = False
    init_std: float = 0.02
    arch: str = "qwen2_moe"
    ffn_size: int = 0  # dense (llama) only: the SwiGLU MLP's hidden size

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if not self.layer_pattern or set(self.layer_pattern) - {"S", "F"}:
            raise ValueError(f"layer_pattern must be a string of 'S'/'F': {self.layer_pattern!r}")
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError("d_model % n_heads and n_heads % n_kv_heads must be 0")
        if self.arch in DENSE_ARCHS:
            if self.n_experts or self.top_k or self.expert_size or self.shared_expert_size:
                raise ValueError(f"{self.arch} is dense: set n_experts, top_k, expert_size and "
                                 "shared_expert_size to 0 (its MLP size is ffn_size)")
            if self.ffn_size < 1 or set(self.layer_pattern) != {"F"}:
                raise ValueError(f"{self.arch} needs ffn_size >= 1 and layer_pattern 'F' (full "
                                 "attention: neither transformers' nor llama.cpp's graph has a "
                                 "sliding window)")
            return
        if self.ffn_size:
            raise ValueError(f"{self.arch} is an MoE: its MLPs are experts; ffn_size must be 0")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError("need 1 <= top_k <= n_experts")
        if self.arch == "mixtral" and (self.shared_expert_size or len(set(self.layer_types)) > 1):
            raise ValueError("mixtral has no shared expert and one window for all layers: use "
                             "layer_pattern 'S' or 'F' and shared_expert_size=0, or qwen2_moe")
        if self.arch == "qwen2_moe" and not self.shared_expert_size:
            raise ValueError("qwen2_moe always has a shared expert: set shared_expert_size > 0")

    @property
    def norm_topk_prob(self) -> bool:
        """Renormalise the top-k router probabilities: Mixtral does; Qwen2-MoE in llama.cpp never
        does (its transformers flag defaults to off), so the GGUF computes the same routing."""
        return self.arch == "mixtral"

    @property
    def dense(self) -> bool:
        return self.arch in DENSE_ARCHS

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def layer_types(self) -> list[str]:
        kinds = {"S": "sliding_attention", "F": "full_attention"}
        pattern = self.layer_pattern
        return [kinds[pattern[i % len(pattern)]] for i in range(self.n_layers)]

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES = {
    "fp32": ("none",),
    "bf16": ("none",),
    "fp8_emulated": ("delayed", "current"),
    "fp8_torchao": ("tensorwise", "rowwise"),
    "fp8_te": ("delayed", "current", "mxfp8", "nvfp4"),
}


@dataclass(frozen=True)
class PrecisionConfig:
    """A precision mode and its recipe (modes in `stages.model.precision`)."""

    mode: str = "fp32"
    recipe: str | None = None  # None: the mode's first recipe in RECIPES
    amax_history_len: int = 16
    margin: int = 0

    def __post_init__(self):
        if self.mode not in RECIPES:
            raise ValueError(f"precision mode must be one of {sorted(RECIPES)}, got {self.mode!r}")
        if self.recipe is None:
            object.__setattr__(self, "recipe", RECIPES[self.mode][0])
        if self.recipe not in RECIPES[self.mode]:
            raise ValueError(f"{self.mode} recipes: {RECIPES[self.mode]}, got {self.recipe!r}")
