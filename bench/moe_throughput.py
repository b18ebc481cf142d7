"""CPU training throughput of the MoE (fused AdamW, fp32, router aux loss on), ratios from one run.

Variants, interleaved round by round so machine noise hits them alike (best round reported, and
ours vs dense round by round: median and range): our model (eager with its fused elementwise
kernels, as `compile: kernels` trains, and torch.compile),
transformers' class of the same architecture on the same weights with each experts
implementation (`grouped_mm`, `eager`, and `grouped_mm` compiled; `batched_mm` gathers expert
weights per token and ran out of memory here), and a dense Llama with the same active parameters
(eager and compiled). Every variant runs the same `seq` input tokens per row (transformers'
classes shift their labels inside, so they score one position fewer).
MFU = 6 * active non-embedding params * tokens/s over a 1024^3 fp32 matmul rate measured in the
same rounds. Peak memory of a step = peak RSS of a fresh process running two steps minus its RSS
before building the model (params, grads, AdamW state and activations). `name: value` lines last.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from stages.model import MoEConfig, MoEForCausalLM, load_hf, save_hf  # noqa: E402
from stages.model.moe import fused_kernels  # noqa: E402

ARCHS = {
    "qwen2_moe": dict(shared_expert_size=512, layer_pattern="SSSF", sliding_window=128),
    "mixtral": dict(shared_expert_size=0, layer_pattern="F", arch="mixtral"),
}


def moe_config(arch: str) -> MoEConfig:
    return MoEConfig(vocab_size=8192, d_model=256, n_layers=4, n_heads=8, n_kv_heads=2,
                     n_experts=8, top_k=2, expert_size=512, **ARCHS[arch])


def dense_model(cfg: MoEConfig) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        intermediate_size=cfg.top_k * cfg.expert_size + cfg.shared_expert_size))


def build(name: str, cfg: MoEConfig, ckpt: Path):
    """(model, loss_fn, model FLOPs per token) for a variant name (`*_compiled`: torch.compile)."""
    compiled = name.endswith("_compiled")
    if name.startswith("ours"):
        model = MoEForCausalLM(cfg)
        model.load_state_dict(torch.load(ckpt / "ours.pt"))
        flops = 6 * model.num_params(active=True, embeddings=False)
        if compiled:
            run = torch.compile(model)
            return model, lambda x: run(x[:, :-1], x[:, 1:]).loss, flops

        def loss(x):  # eager with the fused elementwise kernels: training's `compile: kernels`
            with fused_kernels():
                return model(x[:, :-1], x[:, 1:]).loss
        return model, loss, flops
    if name.startswith("hf_"):
        impl = name.removeprefix("hf_").removesuffix("_compiled")
        model = load_hf(ckpt, experts_implementation=impl)
        flops = 6 * MoEForCausalLM(cfg).num_params(active=True, embeddings=False)
        run = torch.compile(model) if compiled else model
        return model, lambda x: run(
            x[:, :-1], labels=x[:, :-1], output_router_logits=True).loss, flops
    model = dense_model(cfg)
    flops = 6 * (sum(p.numel() for p in model.parameters()) - cfg.vocab_size * cfg.d_model)
    run = torch.compile(model) if compiled else model
    return model, lambda x: run(x[:, :-1], labels=x[:, :-1]).loss, flops


def make_step(model, loss_fn):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as pretrain trains
    model.train()

    def step(x):
        loss_fn(x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def matmul_seconds(n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(3):
        a @ b
    return (time.perf_counter() - t0) / 3


def rss_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def peak_memory(name: str, cfg: MoEConfig, ckpt: Path, batch: torch.Tensor) -> None:
    """Child process: print the step's peak RSS over the RSS before the model existed, in MB."""
    base = rss_kb("VmRSS")
    step = make_step(*build(name, cfg, ckpt)[:2])
    for _ in range(2):
        step(batch)
    print(json.dumps({"peak_mb": (rss_kb("VmHWM") - base) / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="qwen2_moe")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--peak-mem", help=argparse.SUPPRESS)  # internal: child process mode
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cfg = moe_config(args.arch)
    batch = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1),
                          generator=torch.Generator().manual_seed(0))
    if args.peak_mem:
        return peak_memory(args.peak_mem, cfg, Path(args.ckpt), batch)

    names = ["ours", "hf_grouped_mm", "hf_eager", "dense"]
    if not args.no_compile:
        names += ["ours_compiled", "hf_grouped_mm_compiled", "dense_compiled"]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp)
        torch.manual_seed(0)
        init = MoEForCausalLM(cfg)
        save_hf(init, ckpt)
        torch.save(init.state_dict(), ckpt / "ours.pt")
        variants, flops = {}, {}
        for name in names:
            model, loss_fn, flops[name] = build(name, cfg, ckpt)
            variants[name] = make_step(model, loss_fn)
            t0 = time.perf_counter()
            variants[name](batch)  # warm-up (and compilation)
            print(f"# {name}: warm-up {time.perf_counter() - t0:.1f} s", flush=True)
        rounds: dict[str, list[float]] = {name: [] for name in names}
        best_mm = float("inf")
        for _ in range(args.rounds):
            best_mm = min(best_mm, matmul_seconds())
            for name, step in variants.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step(batch)
                rounds[name].append((time.perf_counter() - t0) / args.steps)
        del variants
        peak = {}
        for name in ("ours", "hf_grouped_mm", "hf_eager", "dense"):
            out = subprocess.run(
                [sys.executable, __file__, "--arch", args.arch, "--batch", str(args.batch),
                 "--seq", str(args.seq), "--peak-mem", name, "--ckpt", str(ckpt)],
                capture_output=True, text=True, check=True).stdout
            peak[name] = json.loads(out.strip().splitlines()[-1])["peak_mb"]

    tokens = args.batch * args.seq
    tps = {name: tokens / min(secs) for name, secs in rounds.items()}
    matmul_gflops = 2 * 1024**3 / best_mm / 1e9
    results = {"arch": args.arch, "matmul_gflops_fp32": matmul_gflops,
               "params_active_nonembed": flops["ours"] // 6}
    results |= {f"tokens_per_s_{n}": v for n, v in tps.items()}
    results |= {f"mfu_{n}": flops[n] * v / (matmul_gflops * 1e9) for n, v in tps.items()}
    hf_best = max(tps["hf_grouped_mm"], tps["hf_eager"])
    results["ratio_ours_vs_hf_fastest"] = tps["ours"] / hf_best
    results["ratio_ours_vs_dense"] = tps["ours"] / tps["dense"]
    # The same pair round by round (adjacent in time, so machine drift mostly cancels): the spread
    # says how far to trust the best-of ratio above.
    paired = sorted(d / o for o, d in zip(rounds["ours"], rounds["dense"], strict=True))
    results["ratio_ours_vs_dense_per_round_median"] = statistics.median(paired)
    results["ratio_ours_vs_dense_per_round_min"] = paired[0]
    results["ratio_ours_vs_dense_per_round_max"] = paired[-1]
    if not args.no_compile:
        hf_best = max(hf_best, tps["hf_grouped_mm_compiled"])
        results["ratio_ours_compiled_vs_hf_fastest"] = tps["ours_compiled"] / hf_best
        results["ratio_ours_compiled_vs_dense_eager"] = tps["ours_compiled"] / tps["dense"]
        results["ratio_ours_compiled_vs_dense_compiled"] = (
            tps["ours_compiled"] / tps["dense_compiled"])
    results |= {f"peak_step_mem_mb_{n}": v for n, v in peak.items()}
    for key, value in results.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
