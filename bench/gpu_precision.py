"""GPU training throughput by precision: BF16 autocast vs torchao float8 (tensorwise, rowwise) vs
Transformer Engine FP8, on a d_model >= 2048 MoE. One run, ratios within it.

Reports tokens/s, MFU against the 989 TFLOP/s dense-bf16 datasheet peak and against a bf16 matmul
rate measured in the same run, and peak memory. Model FLOPs per token = 6 * active non-embedding
params + 12 * heads * head_dim * mean causal context per layer (attention). Each variant runs in
try/except and the run keeps to a time budget. Blocks are torch.compile'd one by one (float8 needs
compile for speed); a variant whose compiled warm-up fails is rerun eager, and an fp8 variant
whose FP8 grouped GEMM for the experts fails is rerun with bf16 experts. `name: value` lines
last; JSON to $OUT/gpu_precision.json when OUT is set. Standalone: needs only torch (+ torchao /
transformer_engine for those variants) and this repository on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stages.model.config import MoEConfig  # noqa: E402
from stages.model.moe import Experts, MoEForCausalLM  # noqa: E402
from stages.model.precision import PrecisionConfig, apply_precision  # noqa: E402

PEAK_BF16 = 989e12  # H100/H200 SXM dense bf16 datasheet
VARIANTS = {
    "bf16": PrecisionConfig("bf16"),
    "fp8_torchao_tensorwise": PrecisionConfig("fp8_torchao", "tensorwise"),
    "fp8_torchao_rowwise": PrecisionConfig("fp8_torchao", "rowwise"),
    "fp8_te": PrecisionConfig("fp8_te", "delayed"),
}


def model_config(args) -> MoEConfig:
    if args.tiny:
        return MoEConfig(vocab_size=512, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2,
                         n_experts=4, top_k=2, expert_size=128, shared_expert_size=128,
                         sliding_window=32, layer_pattern=args.pattern)
    return MoEConfig(vocab_size=32768, d_model=args.d_model, n_layers=args.layers,
                     n_heads=args.d_model // 128, n_kv_heads=args.d_model // 512,
                     n_experts=args.experts, top_k=args.top_k, expert_size=args.expert_size,
                     shared_expert_size=args.expert_size, sliding_window=args.window,
                     layer_pattern=args.pattern, max_seq_len=args.seq)


def flops_per_token(model: MoEForCausalLM, seq: int) -> float:
    cfg = model.config
    attn = 0.0
    for layer_type in cfg.layer_types:
        window = cfg.sliding_window if layer_type == "sliding_attention" else seq
        mean_ctx = sum(min(t + 1, window) for t in range(seq)) / seq
        attn += 12 * cfg.n_heads * cfg.head_dim * mean_ctx
    return 6 * model.num_params(active=True, embeddings=False) + attn


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: torch.device, n: int) -> float:
    """bf16 (n x n) @ (n x n) FLOP/s, mean of 10 after 3 warm-ups."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 10 * 2 * n**3 / (time.perf_counter() - t0)


def run_variant(pc: PrecisionConfig, cfg: MoEConfig, args, device, compiled: bool,
                fp8_experts: bool, deadline: float) -> dict:
    torch.manual_seed(0)
    with device:
        model = MoEForCausalLM(cfg)
    context = apply_precision(model, pc, device.type)
    if not fp8_experts:
        for m in model.modules():
            if isinstance(m, Experts):
                m.__class__, m.align = Experts, 1
    if compiled:
        for layer in model.model.layers:
            layer.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    batch = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=device)

    def step():
        with context():
            loss = model(batch[:, :-1], batch[:, 1:]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        loss = step()
    sync(device)
    warmup_s = time.perf_counter() - t0
    steps, t0 = 0, time.perf_counter()
    while steps < args.steps and (steps < 2 or time.perf_counter() < deadline):
        loss = step()
        steps += 1
    sync(device)
    seconds = (time.perf_counter() - t0) / steps
    tokens_per_s = args.batch * args.seq / seconds
    achieved = flops_per_token(model, args.seq) * tokens_per_s
    return {
        "tokens_per_s": tokens_per_s, "step_s": seconds, "steps": steps, "warmup_s": warmup_s,
        "compiled": compiled, "fp8_experts": fp8_experts, "loss": loss.item(),
        "achieved_tflops": achieved / 1e12,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "_achieved": achieved,
    }


def attempt(name: str, pc: PrecisionConfig, cfg, args, device, deadline: float) -> dict:
    """Compiled first (unless --compile off), then eager; fp8 experts first, then bf16 experts."""
    errors = []
    compile_modes = {"auto": [True, False], "on": [True], "off": [False]}[args.compile]
    expert_modes = [True, False] if pc.mode == "fp8_torchao" and device.type == "cuda" else [True]
    for fp8_experts in expert_modes:
        for compiled in compile_modes:
            if time.perf_counter() > deadline - args.min_variant_s:
                errors.append("skipped: out of time budget")
                return {"error": " | ".join(errors)}
            try:
                result = run_variant(pc, cfg, args, device, compiled, fp8_experts, deadline)
                return {**result, **({"errors_before": errors} if errors else {})}
            except Exception as e:  # report and continue: one shot on the device
                msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                print(f"# {name} compiled={compiled} fp8_experts={fp8_experts} failed: {msg}")
                traceback.print_exc(limit=4)
                errors.append(msg)
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return {"error": " | ".join(errors)}


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny config to check the logic on CPU")
    ap.add_argument("--d-model", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--expert-size", type=int, default=2048)
    ap.add_argument("--pattern", default="F", help="'S'/'F' layer pattern (S uses a masked SDPA)")
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--budget-s", type=float, default=270.0, help="whole-run time budget")
    ap.add_argument("--min-variant-s", type=float, default=25.0,
                    help="do not start a variant with less time than this left")
    ap.add_argument("--matmul-n", type=int, default=8192)
    args = ap.parse_args()
    if args.tiny:
        args.seq, args.batch, args.steps, args.warmup = 64, 2, 2, 1
        args.matmul_n = min(args.matmul_n, 512)
    start = time.perf_counter()
    deadline = start + args.budget_s
    device = torch.device(args.device)
    cfg = model_config(args)

    env = {"torch": torch.__version__, "torchao": package_version("torchao"),
           "transformer_engine": package_version("transformer_engine"),
           "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    print(f"# env: {json.dumps(env)}", flush=True)
    matmul = matmul_rate(device, args.matmul_n)
    print(f"# bf16 matmul {args.matmul_n}^3: {matmul / 1e12:.1f} TFLOP/s", flush=True)
    results = {}
    for name in args.variants.split(","):
        te_missing = importlib.util.find_spec("transformer_engine") is None
        if VARIANTS[name].mode == "fp8_te" and te_missing:
            results[name] = {"error": "not installed (import transformer_engine fails)"}
        else:
            results[name] = attempt(name, VARIANTS[name], cfg, args, device, deadline)
        print(f"# {name}: {json.dumps(results[name], default=str)}", flush=True)

    summary = {"matmul_bf16_tflops": matmul / 1e12, "total_s": time.perf_counter() - start}
    base = results.get("bf16", {}).get("tokens_per_s")
    for name, r in results.items():
        if "error" in r:
            summary[f"{name}_error"] = r["error"]
            continue
        achieved = r.pop("_achieved")
        summary[f"{name}_tokens_per_s"] = r["tokens_per_s"]
        summary[f"{name}_mfu_vs_989"] = achieved / PEAK_BF16
        summary[f"{name}_mfu_vs_measured_matmul"] = achieved / matmul
        summary[f"{name}_compiled"] = r["compiled"]
        if base and name != "bf16":
            summary[f"{name}_speedup_vs_bf16"] = r["tokens_per_s"] / base
    with torch.device("meta"):
        shape_only = MoEForCausalLM(cfg)
    summary["params_total_m"] = shape_only.num_params() / 1e6
    summary["params_active_nonembed_m"] = shape_only.num_params(True, False) / 1e6
    report = {"env": env, "config": cfg.to_dict(), "batch": args.batch, "seq": args.seq,
              "results": results, "summary": summary}
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_precision.json").write_text(json.dumps(report, indent=2, default=str))
    for key, value in summary.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
