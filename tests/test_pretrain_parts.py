"""Pretrain building blocks: batches are a pure function of (seed, step), SoftDedup sampling
follows the weights, evaluation windows predict every token once, schedules have their shape, the
progress bar appears only for the main process on a terminal, every process runs as many
evaluation forwards as the others (FSDP gathers weights in each)."""

from __future__ import annotations

import contextlib
import io
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stages.tokenize.pack import PackWriter
from stages.train.batches import IGNORE, Split, eval_windows, global_batch
from stages.train.loop import evaluate, progress_bar
from stages.train.schedule import lr_multiplier
from stages.train.task import EvalSet

SEQ = 8


def _split(tmp_path, docs: list[tuple[int, int, float]]) -> Split:
    """A packed split of documents given as (n_tokens, n_bytes, weight); token ids count up."""
    w = PackWriter(tmp_path / "s", SEQ, np.dtype("<u2"), eos_id=2, pad_id=3)
    next_id = 10
    for i, (n, b, weight) in enumerate(docs):
        w.add(f"d{i}", list(range(next_id, next_id + n - 1)), b, weight)
        next_id += n
    w.close({})
    return Split.open(tmp_path / "s")


def test_batches_are_a_function_of_seed_and_step(tmp_path):
    split = _split(tmp_path, [(SEQ, 10, 1.0)] * 10)
    for sampling in ("uniform", "softdedup"):
        a = [global_batch(split, s, 4, 7, sampling) for s in range(6)]
        b = [global_batch(split, s, 4, 7, sampling) for s in reversed(range(6))][::-1]
        assert all((x == y).all() for x, y in zip(a, b, strict=True))
        assert not (global_batch(split, 0, 4, 8, sampling) == a[0]).all()


def test_uniform_sees_every_sequence_once_per_epoch(tmp_path):
    split = _split(tmp_path, [(SEQ, 10, 1.0)] * 10)  # 10 sequences
    seen = np.concatenate([global_batch(split, s, 4, 0, "uniform") for s in range(5)])  # 2 epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))


def test_softdedup_sampling_follows_the_weights(tmp_path):
    weights = [0.25, 0.25, 1.0, 2.5]
    split = _split(tmp_path, [(SEQ, 10, w) for w in weights])
    draws = np.concatenate([global_batch(split, s, 64, 0, "softdedup") for s in range(500)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, np.array(weights) / sum(weights), atol=0.01)


def test_eval_windows_predict_every_token_but_the_first_once(tmp_path):
    split = _split(tmp_path, [(5, 7, 1.0), (9, 11, 1.0), (6, 13, 1.0)])  # 20 tokens, 3 seqs
    x, y, n_bytes = eval_windows(split, pad_id=3)
    stream = np.asarray(split.tokens).reshape(-1)[:20]
    predicted = y[y != IGNORE].tolist()
    assert predicted == stream[1:].tolist() and n_bytes == 31
    keep = y != IGNORE  # each target is the stream's next token after its input
    pairs = list(zip(x[keep].tolist(), y[keep].tolist(), strict=True))
    assert pairs == list(zip(stream[:-1].tolist(), stream[1:].tolist(), strict=True))


def test_eval_byte_budget_keeps_the_documents_that_fit(tmp_path):
    split = _split(tmp_path, [(5, 7, 1.0), (9, 11, 1.0), (6, 13, 1.0)])
    x, y, n_bytes = eval_windows(split, pad_id=3, max_bytes=20)
    assert n_bytes == 18 and (y != IGNORE).sum() == 5 + 9 - 1
    assert eval_windows(split, pad_id=3, max_bytes=1)[2] == 7  # at least one document
    # a long document is skipped, the shorter one after it still fits
    split = _split(tmp_path / "long", [(5, 7, 1.0), (9, 30, 1.0), (6, 13, 1.0)])
    x, y, n_bytes = eval_windows(split, pad_id=3, max_bytes=20)
    stream = np.asarray(split.tokens).reshape(-1)
    kept = np.concatenate([stream[:5], stream[14:20]])
    assert n_bytes == 20 and y[y != IGNORE].tolist() == kept[1:].tolist()


@pytest.mark.parametrize("kind", ["wsd", "cosine"])
def test_schedules_warm_up_then_decay_to_the_floor(kind):
    f = lr_multiplier(kind, total_steps=100, warmup_steps=10, min_lr_ratio=0.1,
                      decay_fraction=0.2)
    lrs = [f(s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b + 1e-12 for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert lrs[-1] == pytest.approx(0.1)
    if kind == "wsd":
        assert set(lrs[10:80]) == {1.0} and lrs[80] < 1.0
    else:
        assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_progress_bar_only_for_the_main_process_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    main = SimpleNamespace(is_main_process=True)
    bar = progress_bar({"progress": True}, main, total=10, start=3, desc="pretrain")
    bar.update(1)
    bar.close()
    assert "pretrain" in screen.getvalue() and "4/10" in screen.getvalue()
    assert progress_bar({"progress": False}, main, 10, 0) is None
    assert progress_bar({"progress": True}, SimpleNamespace(is_main_process=False), 10, 0) is None
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe (Dagster, CI): log lines instead
    assert progress_bar({"progress": True}, main, 10, 0) is None


def test_every_process_runs_as_many_evaluation_forwards():
    """5 windows over 2 processes, 2 per pass: rank 0 runs rows [0, 2] and [4]; rank 1 runs
    [1, 3] and then a row without targets, which counts nothing."""
    x = torch.arange(5 * SEQ).view(5, SEQ)
    y = x + 1
    seen = []

    class Model(torch.nn.Module):
        def forward(self, xs, ys):
            seen.append((xs[:, 0].tolist(), int((ys != IGNORE).sum())))
            return SimpleNamespace(ce=torch.tensor(2.0))

    def acc(rank):
        return SimpleNamespace(process_index=rank, num_processes=2, device=torch.device("cpu"),
                               reduce=lambda t, op: t)

    passes = {}
    for rank in (0, 1):
        seen.clear()
        windows = EvalSet(x, y, 100)
        assert evaluate(Model(), windows, 2, acc(rank), contextlib.nullcontext)["loss"] == 2.0
        passes[rank] = list(seen)
    assert passes == {0: [([0, 16], 2 * SEQ), ([32], SEQ)], 1: [([8, 24], 2 * SEQ), ([0], 0)]}


def test_tokens_to_reach_interpolates_between_evaluations():
    from stages.train.report import tokens_to_reach

    evals = [{"tokens": 0, "loss": 8.0}, {"tokens": 100, "loss": 6.0}, {"tokens": 200, "loss": 5.0}]
    assert tokens_to_reach(evals, "loss", 7.0) == 50.0
    assert tokens_to_reach(evals, "loss", 5.5) == 150.0
    assert tokens_to_reach(evals, "loss", 8.5) == 0.0  # already there at the first evaluation
    assert tokens_to_reach(evals, "loss", 4.0) is None  # never within the budget
