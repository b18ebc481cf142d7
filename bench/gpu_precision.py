"""GPU training throughput by precision: BF16 autocast vs torchao float8 (tensorwise, rowwise) vs
Transformer Engine FP8, on a d_model >= 2048 MoE. One run, ratios within it.

Reports tokens/s, MFU against the 989 TFLOP/s dense-bf16 datasheet peak and against a bf16 matmul
rate measured in the same run, and peak memory. Model FLOPs per token = 6 * active non-embedding
params + 12 * heads * head_dim * mean causal context per layer (attention). Each variant runs in
try/except and the run keeps to a time budget. Every attempt builds a fresh model, converts it
(float8) first and only then torch.compiles it, with dynamo's caches reset, so the timed warm-up
includes that variant's own compilation. All blocks share one compiled function (one graph for
every layer; see `compile_blocks`). An fp8 variant whose FP8 grouped GEMM for the experts fails is
rerun compiled with bf16 experts, and a variant whose compiled warm-up fails is rerun eager. Each
result says how many linears run in float8, whether the experts use the FP8 grouped GEMM, and how
many graphs dynamo compiled (0 means it ran eager). `name: value` lines last; JSON to
$OUT/gpu_precision.json when OUT is set. Standalone: needs only torch (+ torchao /
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stages.model.config import MoEConfig  # noqa: E402
from stages.model.moe import Experts, MoEForCausalLM  # noqa: E402
from stages.model.precision import PrecisionConfig, apply_precision  # noqa: E402

PEAK_BF16 = 989e12  # H100/H200 SXM dense bf16 datasheet
VARIANTS = {
    "fp32": PrecisionConfig("fp32"),  # not in the default list: the CPU compile-path check
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


def compile_blocks(model: MoEForCausalLM) -> None:
    """torch.compile every block through one shared compiled function.

    `Block.forward` appends its router stats to a list the caller passes in, so compiling the
    blocks themselves (`layer.compile()`) makes dynamo guard on `len(stats)`: one recompile per
    layer, which fills dynamo's 8-entry recompile limit within the first variant, after which
    every later variant silently runs eager (the 'W...' warning saying so is filtered from the
    log). Here the compiled function gets a fresh list and the caller's is extended afterwards,
    so one graph (per variant) serves every layer; the model's code is unchanged."""

    def block(layer: nn.Module, x, cos, sin, masks):
        stats: list = []
        return type(layer).forward(layer, x, cos, sin, masks, stats), stats

    compiled = torch.compile(block)
    for layer in model.model.layers:
        def forward(x, cos, sin, masks, stats, _layer=layer):
            y, new = compiled(_layer, x, cos, sin, masks)
            stats.extend(new)
            return y

        layer.forward = forward  # instance attribute: nn.Module.__call__ runs it


def conversion_counts(model: nn.Module) -> dict:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    fp8 = [m for m in linears if type(m).__name__ == "Float8Linear"]
    experts = [m for m in model.modules() if isinstance(m, Experts)]
    return {"fp8_linears": len(fp8), "hp_linears": len(linears) - len(fp8),
            "fp8_grouped_experts": sum(type(m) is not Experts for m in experts),
            "experts_align": max((m.align for m in experts), default=1)}


def dynamo_counts() -> dict:
    from torch._dynamo.utils import counters

    return {"graphs": counters["stats"]["unique_graphs"],
            "frames_ok": counters["frames"]["ok"],
            "graph_breaks": sum(counters["graph_break"].values())}


def reset_dynamo() -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()


def run_variant(pc: PrecisionConfig, cfg: MoEConfig, args, device, compiled: bool,
                fp8_experts: bool, deadline: float) -> dict:
    reset_dynamo()  # no cache entries or counts carried over from earlier attempts
    torch.manual_seed(0)
    with device:
        model = MoEForCausalLM(cfg)  # fresh model for every attempt
    context = apply_precision(model, pc, device.type,
                              fp8_auto_filter=args.fp8_filter == "auto")  # convert first ...
    if not fp8_experts:
        for m in model.modules():
            if isinstance(m, Experts):
                m.__class__, m.align = Experts, 1
    counts = conversion_counts(model)
    if compiled:
        compile_blocks(model)  # ... then compile the converted model
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
    compile_counts = dynamo_counts()
    if compiled and compile_counts["graphs"] == 0:
        print("# WARNING: compile requested but dynamo compiled no graph (ran eager)", flush=True)
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
        "compiled": compiled and compile_counts["graphs"] > 0, "compile_requested": compiled,
        **compile_counts, "recompiled_while_timed": dynamo_counts()["graphs"]
        - compile_counts["graphs"], **counts, "fp8_experts": counts["fp8_grouped_experts"] > 0,
        "loss": loss.item(),
        "achieved_tflops": achieved / 1e12,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "_achieved": achieved,
    }


def attempt(name: str, pc: PrecisionConfig, cfg, args, device, deadline: float,
            fp8_experts: bool = True) -> dict:
    """Compiled first (unless --compile off), then eager; within each, fp8 experts first, then
    bf16 experts (an eager run is only a fallback: float8 without compile is slow)."""
    errors = []
    compile_modes = {"auto": [True, False], "on": [True], "off": [False]}[args.compile]
    fp8_capable = pc.mode == "fp8_torchao" and device.type == "cuda" and fp8_experts
    expert_modes = [True, False] if fp8_capable else [False]
    for compiled in compile_modes:
        for fp8_experts in expert_modes:
            if time.perf_counter() > deadline - args.min_variant_s:
                errors.append("skipped: out of time budget")
                return {"error": " | ".join(errors)}
            try:
                result = run_variant(pc, cfg, args, device, compiled, fp8_experts, deadline)
                return {**result, **({"errors_before": errors} if errors else {})}
            except Exception as e:  # report and continue: one shot on the device
                msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                print(f"# {name} compiled={compiled} fp8_experts={fp8_experts} failed: {msg}",
                      flush=True)
                traceback.print_exc(limit=-6)
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
    ap.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "fp32"))
    ap.add_argument("--fp8-filter", choices=["all", "auto"], default="all",
                    help="all: every 16-divisible linear but router/gate/lm_head (torchtitan's "
                    "default); auto: also skip those torchao's auto filter deems too small")
    ap.add_argument("--fp8-experts", choices=["on", "off"], default="on",
                    help="fp8_torchao on CUDA: experts through torchao's FP8 grouped GEMM (falls "
                    "back to bf16 experts if that fails; when it works the variant is rerun as "
                    "<name>_bf16experts to show what the FP8 experts cost) or bf16 grouped GEMM")
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
    import torch._dynamo.config as dynamo_config

    # headroom for the per-variant recompiles (each attempt also starts from torch._dynamo.reset())
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, knob):
            setattr(dynamo_config, knob, 64)

    env = {"torch": torch.__version__, "torchao": package_version("torchao"),
           "transformer_engine": package_version("transformer_engine"),
           "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "fp8_filter": args.fp8_filter}
    print(f"# env: {json.dumps(env)}", flush=True)
    matmul = matmul_rate(device, args.matmul_n)
    print(f"# bf16 matmul {args.matmul_n}^3: {matmul / 1e12:.1f} TFLOP/s", flush=True)
    results = {}
    for name in args.variants.split(","):
        te_missing = importlib.util.find_spec("transformer_engine") is None
        if VARIANTS[name].mode == "fp8_te" and te_missing:
            results[name] = {"error": "not installed (import transformer_engine fails)"}
        else:
            results[name] = attempt(name, VARIANTS[name], cfg, args, device, deadline,
                                    fp8_experts=args.fp8_experts == "on")
        print(f"# {name}: {json.dumps(results[name], default=str)}", flush=True)
        if results[name].get("fp8_experts"):  # the same with bf16 experts: what FP8 experts cost
            extra = f"{name}_bf16experts"
            results[extra] = attempt(extra, VARIANTS[name], cfg, args, device, deadline,
                                     fp8_experts=False)
            print(f"# {extra}: {json.dumps(results[extra], default=str)}", flush=True)

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
        summary[f"{name}_graphs"] = r["graphs"]
        if name.startswith("fp8_torchao"):
            summary[f"{name}_fp8_linears"] = r["fp8_linears"]
            summary[f"{name}_fp8_experts"] = r["fp8_experts"]
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
