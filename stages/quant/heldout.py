"""One evaluation for every exported model: bits per byte on the same held-out text.

The sets are the general held-out slice (ingest's, packed by `tokenize`: `eval`) and the domain's
held-out documents (packed by `adapt`: `domain`), windowed by `stages.train.batches.eval_sets`
and scored by the training loop's own `evaluate`, so a quantized artifact's `eval_bpb` compares
with every training stage's. A transformers model (fp32, compressed-tensors, torchao) is scored
through `CausalLMScorer`, a GGUF file in llama.cpp through `GGUFScorer`: both give it the training
model's `(inputs, targets) -> .ce` call.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.train.batches import IGNORE, Split, eval_sets
from stages.train.task import EvalSet

DOMAIN_SPLIT = "corpus/domain"  # inside adapt's output (`stages.adapt.CORPUS_SPLITS`)


def heldout_sets(tokens: Path, adapt: Path, max_bytes: int, window: int = 0
                 ) -> dict[str, EvalSet]:
    """`eval` (general held-out text) and `domain` (the adapted domain's held-out documents), in
    windows of `window` tokens (0: the packed sequence length)."""
    pad = int(Split.open(tokens / "eval").index["pad_id"])
    return eval_sets({"eval": tokens / "eval", "domain": adapt / DOMAIN_SPLIT}, pad, max_bytes,
                     window)


class CausalLMScorer(nn.Module):
    """A transformers causal LM behind the training model's call: mean next-token CE over the
    targets that are not IGNORE (the loop's `evaluate` weights it by their count)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> SimpleNamespace:
        logits = self.model(input_ids=inputs).logits.float()
        return SimpleNamespace(ce=F.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                                  ignore_index=IGNORE))


class GGUFScorer(nn.Module):
    """A GGUF file in llama.cpp (`stages.llama_cpp.load(..., logits_all=True)`) behind the same
    call: each window is evaluated from an empty KV cache, up to its last scored target."""

    def __init__(self, llm):
        super().__init__()
        self.llm = llm

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> SimpleNamespace:
        nll, count = torch.zeros((), dtype=torch.float64), 0
        for x, y in zip(inputs, targets, strict=True):
            scored = (y != IGNORE).nonzero()
            if not len(scored):
                continue
            end = int(scored.max()) + 1
            self.llm.reset()
            self.llm.eval(x[:end].tolist())
            logits = torch.from_numpy(np.asarray(self.llm.scores[:end], dtype=np.float32))
            nll += F.cross_entropy(logits, y[:end], ignore_index=IGNORE, reduction="sum").double()
            count += len(scored)
        return SimpleNamespace(ce=nll / max(count, 1))


@torch.no_grad()
def score(model: nn.Module, evals: dict[str, EvalSet], micro: int) -> dict[str, float]:
    """`<set>_loss` and `<set>_bpb` of a model on each set: a transformers model, or a scorer
    (`GGUFScorer`) as is."""
    from stages.train.loop import evaluate_model

    scorer = model if isinstance(model, GGUFScorer) else CausalLMScorer(model)
    out = evaluate_model(scorer.eval(), evals, micro)
    return {k: v for k, v in out.items() if not k.endswith("_ppl")}


@torch.no_grad()
def divergence(reference: nn.Module, model: nn.Module, evals: dict[str, EvalSet], micro: int
               ) -> dict[str, float]:
    """How far `model`'s predictions moved from `reference`'s on each set, whatever either's
    quality: `<set>_kl`, the mean KL(reference || model) per scored token (nats), and
    `<set>_top1`, the share of tokens where both predict the same next token. Far more sensitive
    to quantization error than bits per byte (llama.cpp's `perplexity --kl-divergence`)."""
    out = {}
    for key, windows in evals.items():
        kl, same, count = 0.0, 0, 0
        for start in range(0, len(windows.inputs), micro):
            x = windows.inputs[start:start + micro]
            scored = windows.targets[start:start + micro] != IGNORE
            p = F.log_softmax(reference(input_ids=x).logits.float()[scored], dim=-1)
            q = F.log_softmax(model(input_ids=x).logits.float()[scored], dim=-1)
            kl += F.kl_div(q, p, log_target=True, reduction="sum").item()
            same += int((p.argmax(-1) == q.argmax(-1)).sum())
            count += int(scored.sum())
        out |= {f"{key}_kl": kl / count, f"{key}_top1": same / count}
    return out
