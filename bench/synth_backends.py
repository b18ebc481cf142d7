"""Throughput of the synth model backends: hf batching and http concurrency.

(a) hf: generated tokens/s of `HFBackend` with batch 8 vs one prompt at a time, on the same
prompts (default 32, prompt lengths spread, fixed max_new_tokens, greedy). The model is
`--model DIR`, or by default one built like the demo model (`stages.model.MoEConfig()`: d_model
256, 4 layers, 8 experts, random weights) with a SentencePiece tokenizer of 8192 pieces trained on
the Python standard library's source. Random weights rarely emit EOS: every prompt runs its full
budget in both modes. Both modes run interleaved for `--rounds` rounds on `--threads` torch
threads (default 1: on a shared 2-core machine two threads made single-prompt rounds vary 5x).
Goal: >= 3x.
(b) http: requests/s of `HTTPBackend` (completions) with N in {1, 2, 4, 8} in flight vs 1,
against a local uvicorn/starlette server (its own process) whose handler awaits a fixed latency
under a capacity semaphore, like a remote API. Goal: >= 0.8 x N up to the server's capacity;
N = 8 against capacity 4 shows the cap. `name: value` lines last.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stages.synth.backends import Request, Retry, Sampling  # noqa: E402


def build_demo_model(out: Path) -> Path:
    """Demo-sized random MoE + an 8192-piece tokenizer trained on stdlib source."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from stages import tokenize
    from stages.model import MoEConfig, MoEForCausalLM, save_hf

    corpus = out.parent / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    texts = [f.read_text(errors="replace") for f in files]
    pq.write_table(pa.table({"doc_id": [f.name for f in files], "text": texts}),
                   corpus / "part-00000.parquet")
    spm = tokenize.train_model(tokenize.Params(vocab_size=8192, max_sentences=4000), corpus, 0)
    tokenize.save_hf(spm, out, seq_len=512)
    torch.manual_seed(0)
    save_hf(MoEForCausalLM(MoEConfig(vocab_size=8192)).eval(), out)
    return out


def prompts(n: int, seed: int = 0) -> list[str]:
    """`n` prompts of 2..40 whitespace-separated words from stdlib docstrings and code."""
    text = Path(sysconfig.get_paths()["stdlib"], "argparse.py").read_text().split()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(2, 40)
        start = rng.randrange(len(text) - length)
        out.append(" ".join(text[start:start + length]))
    return out


def bench_hf(model_dir: Path, n_prompts: int, new_tokens: int, rounds: int,
             threads: int) -> dict[str, float]:
    """Both modes interleaved round by round (the machine is shared): best round of each and the
    median of the per-round ratios."""
    from stages.synth.backends.hf import HFBackend

    sampling = Sampling(max_new_tokens=new_tokens, temperature=0.0)
    requests = [Request(key=str(i), prompt=p, seed=i) for i, p in enumerate(prompts(n_prompts))]
    backends = {b: HFBackend(model_dir, sampling, batch_size=b, threads=threads) for b in (8, 1)}
    for backend in backends.values():
        list(backend.generate(requests[:2]))  # warm-up
    rates: dict[int, list[float]] = {8: [], 1: []}
    texts = {}
    for r in range(rounds):
        for batch, backend in backends.items():
            start = time.perf_counter()
            results = list(backend.generate(requests))
            elapsed = time.perf_counter() - start
            tokens = sum(g.completion_tokens for _, g in results)
            rates[batch].append(tokens / elapsed)
            texts[batch] = {req.key: g.text for req, g in results}
            print(f"hf round {r} batch {batch}: {tokens} tokens in {elapsed:.2f} s", flush=True)
    for backend in backends.values():
        backend.close()
    same = sum(texts[8][k] == texts[1][k] for k in texts[1]) / len(texts[1])
    ratios = [a / b for a, b in zip(rates[8], rates[1], strict=True)]
    return {"hf_tokens_per_s_batch8": max(rates[8]), "hf_tokens_per_s_batch1": max(rates[1]),
            "hf_batch8_speedup": max(rates[8]) / max(rates[1]),
            "hf_batch8_speedup_median_round": statistics.median(ratios),
            "hf_batch8_same_text_fraction": same}


def serve(port: int, latency_s: float, capacity: int) -> None:
    """A completions endpoint that holds each request `latency_s` (at most `capacity` at once)."""
    import asyncio

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    sem = asyncio.Semaphore(capacity)

    async def completions(request):
        body = await request.json()
        async with sem:
            await asyncio.sleep(latency_s)
        return JSONResponse({"choices": [{"text": "ok " + body["prompt"][:8],
                                          "finish_reason": "length"}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 2}})

    async def models(request):
        return JSONResponse({"data": []})

    app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                            Route("/v1/models", models)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", backlog=256)


def bench_http(latency_s: float, capacity: int, per_slot: int) -> dict[str, float]:
    from stages.synth.backends.http import HTTPBackend
    from tests.synth_servers import free_port, wait_http

    figures = {}
    for cap, levels in ((capacity, (1, 2, 4, 8)), (capacity // 2, (8,))):
        port = free_port()
        proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port),
                                 "--latency", str(latency_s), "--capacity", str(cap)])
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/v1/models", proc, timeout_s=60)
            for n in levels:
                backend = HTTPBackend(base, "bench", Sampling(max_new_tokens=2),
                                      api="completions", concurrency=n, timeout_s=30,
                                      retry=Retry(attempts=1))
                list(backend.generate([Request(key="w", prompt="warm", seed=0)]))
                reqs = [Request(key=str(i), prompt=f"p{i}", seed=i) for i in range(per_slot * n)]
                start = time.perf_counter()
                results = list(backend.generate(reqs))
                rate = len(reqs) / (time.perf_counter() - start)
                backend.close()
                assert all(not isinstance(g, Exception) for _, g in results)
                figures[f"http_req_per_s_n{n}_cap{cap}"] = rate
                print(f"http N={n} capacity={cap}: {rate:.1f} req/s", flush=True)
        finally:
            proc.terminate()
            proc.wait()
    one = figures[f"http_req_per_s_n1_cap{capacity}"]
    for n in (2, 4, 8):
        figures[f"http_speedup_n{n}"] = figures[f"http_req_per_s_n{n}_cap{capacity}"] / one
        figures[f"http_efficiency_n{n}"] = figures[f"http_speedup_n{n}"] / n
    figures[f"http_speedup_n8_cap{capacity // 2}"] = (
        figures[f"http_req_per_s_n8_cap{capacity // 2}"] / one)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a transformers model dir (default: build one)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3, help="hf rounds (both modes each round)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads, 0 = all cores (on a shared machine 1 is steadier)")
    ap.add_argument("--latency", type=float, default=0.1, help="server latency per request, s")
    ap.add_argument("--capacity", type=int, default=8, help="server requests at once")
    ap.add_argument("--per-slot", type=int, default=12, help="http requests per slot in flight")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: server process
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.latency, args.capacity)
    figures: dict[str, float] = {}
    if not args.skip_http:
        figures |= bench_http(args.latency, args.capacity, args.per_slot)
    if not args.skip_hf:
        with tempfile.TemporaryDirectory() as tmp:
            model = args.model
            if model is None:
                start = time.perf_counter()
                model = build_demo_model(Path(tmp) / "model")
                print(f"built the demo model in {time.perf_counter() - start:.0f} s", flush=True)
            figures |= bench_hf(model, args.prompts, args.new_tokens, args.rounds, args.threads)
    for name, value in figures.items():
        print(f"{name}: {value:.3g}")


if __name__ == "__main__":
    main()
