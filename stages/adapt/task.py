"""Adapt's part of the shared loop: the refined MoE on the domain corpus, in one of three modes.

- full: every weight trains, as in pretraining.
- lora: the base is frozen; peft's LoRA adapters (fp32) on the linears and the expert tensors
  train (`lora.py`).
- qlora: as lora, on a base whose targeted weights are stored in 4-bit NF4 (`nf4.py`).

Evaluated before training (step 0) and on cadence, in bits per byte: general held-out text
(`eval`: tokenize's eval split, as pretrain and refine measure it), the domain's held-out documents
(`domain`: the gain) and the held-out documents of every other label (`other`: the forgetting).
The export is always one merged full-precision transformers checkpoint (LoRA folded into the
dequantised base for qlora), plus the adapter itself under `adapter/` for the LoRA modes.
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

from torch.utils.checkpoint import checkpoint

from stages.adapt import lora, nf4
from stages.adapt.config import Params
from stages.model import load_training_model, save_hf
from stages.model.precision import apply_precision, precision_metadata
from stages.train.batches import Split, eval_sets, global_batch, inputs_targets
from stages.train.loop import flops_per_token
from stages.train.task import Task

__all__ = ["Params", "adapted", "build", "metadata"]

ADAPTER = "adapter"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json")


def metadata(p: Params) -> dict:
    """What config.json records about how the weights were trained (`training_precision`)."""
    meta = {**precision_metadata(p.precision_config()), "adapt": p.mode}
    if p.mode == "qlora":
        meta["base_quantization"] = {"quant_type": "nf4", **p.qlora.model_dump()}
    return meta


def adapted(p: Params, moe):
    """The model that trains: the MoE itself (full), or a peft model of it whose only trainable
    parameters are the adapters, on an NF4 base for qlora."""
    if p.activation_checkpointing:
        checkpoint_blocks(moe)
    if p.mode == "full":
        return moe
    moe.requires_grad_(False)
    if p.mode == "qlora":
        q = p.qlora
        for module, name in _targets(moe, p):
            nf4.quantize(module, name, q.blocksize, q.double_quant, nf4.DTYPES[q.compute_dtype])
    return lora.add_adapters(moe, p.lora)


def checkpoint_blocks(moe) -> None:
    """Run each decoder block under `torch.utils.checkpoint` (non-reentrant): the backward pass
    recomputes the block's activations from its input instead of keeping them (the same
    gradients, bit for bit; the QLoRA recipe's activation checkpointing)."""
    for block in moe.model.layers:
        block.forward = partial(checkpoint, block.forward, use_reentrant=False)


def _targets(moe, p: Params) -> list:
    """(module, tensor name) of every weight LoRA adapts: the NF4 part of a qlora base."""
    linears = set(p.lora.target_modules)
    experts = {t.rpartition(".")[2] for t in p.lora.target_parameters}
    out = []
    for name, module in moe.named_modules():
        if name.rpartition(".")[2] in linears and hasattr(module, "weight"):
            out.append((module, "weight"))
        if name.endswith("mlp.experts"):
            out += [(module, tensor) for tensor in sorted(experts)]
    return out


def build(p: Params, spec: dict, acc) -> Task:
    base_dir, tok, domain = (Path(spec[k]) for k in ("model_dir", "tokens_dir", "domain_dir"))
    train = Split.open(domain / "train")
    pad = int(train.index["pad_id"])
    seq_len = train.seq_len
    evals = eval_sets({"eval": tok / "eval", "domain": domain / "domain",
                       "other": domain / "other"}, pad, p.eval.max_bytes)
    moe = load_training_model(base_dir)
    counts = {"total": moe.num_params(), "active": moe.num_params(active=True)}
    fpt, frozen = flops_per_token(moe, seq_len), moe.num_params(active=True, embeddings=False)
    pc = p.precision_config()
    autocast = apply_precision(moe, pc, acc.device.type)
    trained = adapted(p, moe)
    counts["trainable"] = lora.trainable(trained)
    if p.mode != "full":  # no weight gradients for the frozen base; the adapters' full 6 x
        fpt += 6 * counts["trainable"] - 2 * frozen
    g = p.batch.global_seqs
    total_steps = p.steps(seq_len)

    def batch(step: int) -> dict:
        x, y = inputs_targets(train, global_batch(train, step, g, spec["seed"], "uniform"), pad)
        return {"input_ids": x, "targets": y}

    def export(model, state: dict, out: Path) -> None:
        """The merged full-precision checkpoint (and the adapter). Ends the run: a LoRA model is
        merged in place."""
        if p.mode == "full":
            save_hf(model, out, metadata(p), state)
        else:
            nf4.dequantize_all(model)  # qlora: the NF4 base back to plain fp32 weights
            save_hf(lora.merge(model, out / ADAPTER), out, metadata(p))
        for name in TOKENIZER_FILES:
            if (base_dir / name).is_file():
                shutil.copy2(base_dir / name, out / name)

    return Task(
        model=trained, batch=batch, total_steps=total_steps, step_tokens=g * seq_len,
        evals=evals, export=export, flops_per_token=fpt, counts=counts, autocast=autocast,
        precision=metadata(p))
