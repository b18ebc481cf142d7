"""llama.cpp interop: GGUF conversion with its own converter, its quantizer, its inference.

The converter (`convert_hf_to_gguf.py`, its `conversion/` package and the `gguf-py` beside it)
comes from the llama-cpp-python source distribution that `scripts/setup_llama_cpp.sh` unpacks
into `$SLM_CACHE/llama.cpp-<version>` (`SLM_LLAMA_CPP_CONVERTER` points elsewhere). It runs in a
subprocess (`python -m stages.llama_cpp CONVERTER_DIR MODEL_DIR --outfile ...`) with one change:
its Qwen2-MoE class reads the vocabulary like its Qwen2 class (SentencePiece first; see
`stages.model`) and records the SentencePiece model's `add_dummy_prefix` (the generic path leaves
llama.cpp's default, a space prefix, which our tokenizer does not add). The output is written to a
temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from stages import atomic

LLAMA_CPP_VERSION = "0.3.36"
OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def converter_dir() -> Path:
    """Where the converter was unpacked; a clear error naming the set-up script if it was not."""
    default = Path(os.environ.get("SLM_CACHE", Path.home() / ".cache" / "slm-pipeline"))
    path = Path(os.environ.get("SLM_LLAMA_CPP_CONVERTER",
                               default / f"llama.cpp-{LLAMA_CPP_VERSION}"))
    if not (path / "convert_hf_to_gguf.py").is_file():
        raise FileNotFoundError(
            f"llama.cpp's GGUF converter is not at {path}: run `bash scripts/setup_llama_cpp.sh` "
            "(or set SLM_LLAMA_CPP_CONVERTER to a llama.cpp checkout of the same version)")
    return path


def convert(model_dir: str | Path, out: str | Path, outtype: str = "f32") -> Path:
    """Convert a transformers checkpoint (weights + tokenizer) to one GGUF file at `out`."""
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {OUTTYPES}, got {outtype!r}")
    _write(out, lambda tmp: ["-m", "stages.llama_cpp", str(converter_dir()), str(model_dir),
                             "--outfile", str(tmp), "--outtype", outtype],
           f"GGUF conversion of {model_dir}")
    return Path(out)


QUANTIZE = """import ctypes, sys, llama_cpp as L
p = L.llama_model_quantize_default_params()
p.ftype = getattr(L, 'LLAMA_FTYPE_MOSTLY_' + sys.argv[3])
p.nthread = int(sys.argv[4])
sys.exit(L.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""


def quantize(src: str | Path, out: str | Path, qtype: str, threads: int = 1) -> int:
    """`llama_model_quantize` of the GGUF `src` to llama.cpp file type `qtype` (e.g. Q4_K_M) at
    `out`, in a subprocess (the library prints every tensor). Returns how many tensors fell back
    to another type because their row size does not fit the type's block (K-quants need rows of
    256)."""
    log = _write(out, lambda tmp: ["-c", QUANTIZE, str(src), str(tmp), qtype, str(threads)],
                 f"llama.cpp quantization of {src} to {qtype}")
    return sum("falling back" in line for line in log.splitlines())


def _write(out: str | Path, args, what: str) -> str:
    """Run `python <args(tmp)>`, which writes the file `tmp`; publish it at `out` when the
    process succeeds (a failure leaves nothing). Returns the process's output."""
    out = Path(out)
    atomic.sweep(out)
    tmp = atomic.tmp_path(out)
    proc = subprocess.run([sys.executable, *args(tmp)], capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{log[-4000:]}")
    atomic.fsync(tmp)
    atomic.publish(tmp, out)
    return log


def load(gguf_path: str | Path, **kwargs):
    """`llama_cpp.Llama` on the file, quiet, with llama.cpp's CPU weight-repacking buffers off:
    in this build (0.3.36, compiled for the AVX-512 machine it runs on) decoding any quantized
    GGUF (Q8_0, Q6_K, Q4_K_M, Q4_0, also the converter's own q8_0) with repacked weights crashes
    the process (SIGSEGV); without them it runs. Repacking changes only the speed of the
    quantized matmuls, not their results."""
    import llama_cpp
    from llama_cpp import Llama

    default = llama_cpp.llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama_cpp.llama_model_default_params = params
    try:
        return Llama(model_path=str(gguf_path), verbose=False, **kwargs)
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = default


@contextlib.contextmanager
def captured_log():
    """llama.cpp's log lines while the block runs, in a list (llama-cpp-python's own handler,
    which prints them only when verbose, is restored after)."""
    import ctypes

    import llama_cpp
    from llama_cpp import _logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def kv_cache_bytes(log: list[str]) -> int:
    """The K and V cache sizes llama.cpp logged when it allocated a context (`K (q8_0): 0.53
    MiB, V (q8_0): 0.53 MiB`), in bytes."""
    text = "".join(log)
    sizes = re.findall(r"\b[KV] \([a-z0-9_]+\):\s*([0-9.]+) MiB", text)
    if len(sizes) < 2:
        raise RuntimeError(f"llama.cpp logged no KV cache size:\n{text[-2000:]}")
    return round(sum(float(x) for x in sizes[-2:]) * 2**20)


def generate(gguf_path: str | Path, ids: list[int], n: int, threads: int = 1) -> list[int]:
    """`n` greedy tokens llama.cpp generates after the token ids (no BOS)."""
    llm = load(gguf_path, n_ctx=len(ids) + n + 8, n_threads=threads)
    try:
        out = []
        for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            out.append(int(token))
            if len(out) == n:
                break
        return out
    finally:
        llm.close()


def metadata(gguf_path: str | Path) -> dict[str, str]:
    """The GGUF file's key/value metadata as llama.cpp reads it."""
    llm = load(gguf_path, vocab_only=True)
    try:
        return dict(llm.metadata)
    finally:
        llm.close()


def logits(gguf_path: str | Path, ids: list[int], threads: int = 1) -> np.ndarray:
    """Logits (len(ids), vocab) that llama.cpp computes for the token ids, one batch, no BOS."""
    llm = load(gguf_path, n_ctx=max(len(ids), 8), n_batch=len(ids), logits_all=True,
               n_threads=threads)
    try:
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)], dtype=np.float32)
    finally:
        llm.close()  # explicit: relying on __del__ at interpreter exit prints tracebacks


def tokenize(gguf_path: str | Path, text: str) -> list[int]:
    """llama.cpp's tokenization of `text` (no BOS, special tokens as plain text)."""
    llm = load(gguf_path, vocab_only=True)
    try:
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    finally:
        llm.close()


def _convert_main(argv: list[str]) -> None:
    """Subprocess entry: run llama.cpp's converter from `argv[0]` on the remaining arguments."""
    root = Path(argv[0])
    sys.path[:0] = [str(root / "gguf-py"), str(root)]
    import convert_hf_to_gguf
    from conversion import qwen

    def set_vocab(self) -> None:
        qwen.Qwen2Model.set_vocab(self)
        spm = self.dir_model / "tokenizer.model"
        if spm.is_file():  # the generic SentencePiece path leaves llama.cpp's default (True)
            from sentencepiece import sentencepiece_model_pb2

            proto = sentencepiece_model_pb2.ModelProto()
            proto.ParseFromString(spm.read_bytes())
            self.gguf_writer.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)

    qwen.Qwen2MoeModel.set_vocab = set_vocab
    sys.argv = [str(root / "convert_hf_to_gguf.py"), *argv[1:]]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    _convert_main(sys.argv[1:])
