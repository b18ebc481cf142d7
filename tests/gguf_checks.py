"""Checks that a GGUF file computes what its transformers checkpoint computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from stages import llama_cpp


def assert_same_logits(model_dir: Path, gguf: Path, ids: list[int], tol: float = 1e-3) -> None:
    """llama.cpp's logits of `ids` are transformers' within `tol`, with the same argmax."""
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    got = llama_cpp.logits(gguf, ids)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=tol, rtol=tol)
    assert (got.argmax(-1) == ref.argmax(-1)).all()
