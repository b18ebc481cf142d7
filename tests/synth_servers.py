"""Test helpers for the synth backends: a tiny trained model (transformers dir + GGUF), a real
OpenAI-compatible server (llama-cpp-python's) and a misbehaving one (stdlib HTTP server)."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import requests

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank"]
THINGS = ["apple", "pear", "plum", "book", "cat", "dog"]
COUNTS = ["one", "two", "three", "four", "five", "six", "seven"]
COLORS = ["red", "green", "blue", "black", "white"]


def sentences() -> list[str]:
    """A tiny language: short sentences a small model learns to complete and end (EOS)."""
    out = [f"{n} has {c} {t}s." for n in NAMES for c in COUNTS for t in THINGS]
    out += [f"the {t} of {n} is {c}." for n in NAMES for t in THINGS for c in COLORS]
    return out


def build_tiny_model(out: Path, steps: int = 250, seed: int = 0) -> Path:
    """A SentencePiece tokenizer and a tiny MoE (`stages.model`) trained a few seconds on
    `sentences()` (each followed by EOS), saved as a transformers directory at `out`."""
    import torch

    from stages import tokenize
    from stages.model import MoEConfig, MoEForCausalLM, save_hf

    text = sentences()
    corpus = out.parent / f"{out.name}-corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"doc_id": [str(i) for i in range(len(text))], "text": text}),
                   corpus / "part-00000.parquet")
    spm_model = tokenize.train_model(tokenize.Params(vocab_size=320), corpus, seed)
    tokenize.save_hf(spm_model, out, seq_len=256)

    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=spm_model)
    eos = tokenize.SPECIALS["eos"][0]
    rng = random.Random(seed)
    stream: list[int] = []
    for _ in range(8):
        rng.shuffle(text)
        for s in text:
            stream += sp.encode(s) + [eos]
    data = torch.tensor(stream)

    torch.manual_seed(seed)
    cfg = MoEConfig(vocab_size=sp.get_piece_size(), d_model=64, n_layers=2, n_heads=4,
                    n_kv_heads=2, n_experts=4, top_k=2, expert_size=64, shared_expert_size=64,
                    sliding_window=256, layer_pattern="F", max_seq_len=256)
    model = MoEForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    seq, batch = 48, 16
    with torch._dynamo.config.patch(disable=True):  # eager: compiling takes longer than training
        for _ in range(steps):
            starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=g).tolist()
            x = torch.stack([data[s:s + seq] for s in starts])
            y = torch.stack([data[s + 1:s + seq + 1] for s in starts])
            loss = model(x, y).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    save_hf(model.eval(), out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 120) -> None:
    """Until `url` answers 200 (or the process died / the deadline passed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not come up")
        time.sleep(0.2)


@contextmanager
def llama_cpp_server(gguf: Path, log: Path, n_ctx: int = 512):
    """llama-cpp-python's OpenAI-compatible server over `gguf` on 127.0.0.1: its base URL."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host",
             "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "1",
             "--model_alias", "tiny"], stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(base + "/v1/models", proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}:\n{log.read_text()[-3000:]}") from None
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class FlakyServer:
    """An OpenAI-compatible stub that misbehaves as each prompt says: `KIND:N:ID` fails the first
    N attempts of that prompt (`always`: every attempt) with KIND, then answers `echo:PROMPT`;
    any other prompt is answered `echo:PROMPT`, every answer after `delay_s`.

    KIND: `ok`, `500`, `429`, `400` (body echoes the Authorization header), `stall` (no answer
    until the server stops), `malformed` (not JSON), `nochoices` (`{"choices": []}`), `barrier`
    (answers once `barrier_parties` requests are in flight at the same time).
    """

    KINDS = ("ok", "500", "429", "400", "stall", "malformed", "nochoices", "barrier")

    def __init__(self, barrier_parties: int = 1, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.attempts: Counter = Counter()  # per prompt
        self.auth: list[str | None] = []
        self.paths: Counter = Counter()
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.barrier = threading.Barrier(barrier_parties)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server.handle(self, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FlakyServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.barrier.abort()
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, h: BaseHTTPRequestHandler, body: dict) -> None:
        chat = h.path.endswith("/chat/completions")
        prompt = body["messages"][0]["content"] if chat else body["prompt"]
        with self.lock:
            self.paths[h.path] += 1
            self.auth.append(h.headers.get("Authorization"))
            self.bodies.append(body)
            self.attempts[prompt] += 1
            attempt = self.attempts[prompt]
        kind, n = prompt.split(":", 2)[:2] if prompt.split(":")[0] in self.KINDS else ("ok", "0")
        time.sleep(self.delay_s)
        failing = n == "always" or attempt <= int(n)
        if kind == "barrier":
            try:
                self.barrier.wait(timeout=30)
            except threading.BrokenBarrierError:
                return self.send(h, 500, b'{"error": "barrier broken"}')
        elif failing and kind in ("500", "429"):
            return self.send(h, int(kind), b'{"error": "try again"}')
        elif failing and kind == "400":
            echo = json.dumps({"error": f"bad request, auth was {h.headers.get('Authorization')}"})
            return self.send(h, 400, echo.encode())
        elif failing and kind == "stall":
            self.stop.wait()
            return None
        elif failing and kind == "malformed":
            return self.send(h, 200, b'{"choices": [{"text": "unterminated')
        elif failing and kind == "nochoices":
            return self.send(h, 200, b'{"choices": []}')
        text = f"echo:{prompt}"
        choice = ({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        reply = {"choices": [{"index": 0, "finish_reason": "length", **choice}],
                 "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 3}}
        return self.send(h, 200, json.dumps(reply).encode())

    @staticmethod
    def send(h: BaseHTTPRequestHandler, code: int, payload: bytes) -> None:
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)
