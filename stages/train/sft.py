"""Supervised fine-tuning examples: prompt/response pairs in one chat format, loss on responses.

The format is a prompt template with one `{prompt}` slot (params), the response after it, then
EOS. The prompt is encoded on its own and its targets are IGNORE, so the loss (and the held-out
"reasoning loss" every model of the lineage is compared by) covers only the response tokens.
`chat_template` is the same format as a Jinja chat template for `tokenizer_config.json`, so
`apply_chat_template`, and llama.cpp reading the GGUF, prompt a model the way it was trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from stages.tokenize import SPECIALS
from stages.train.batches import IGNORE
from stages.train.task import EvalSet

PAD, EOS = SPECIALS["pad"][0], SPECIALS["eos"][0]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def split_template(template: str) -> tuple[str, str]:
    if template.count("{prompt}") != 1:
        raise ValueError(f"the SFT template needs exactly one {{prompt}} slot: {template!r}")
    before, after = template.split("{prompt}")
    return before, after


def chat_template(template: str) -> str:
    """A Jinja chat template: user turns in the prompt template, assistant turns + EOS."""
    before, after = split_template(template)

    def raw(text: str) -> str:
        return f"{{% raw %}}{text}{{% endraw %}}" if text else ""

    return ("{% for message in messages %}{% if message['role'] == 'user' %}" + raw(before)
            + "{{ message['content'] }}" + raw(after)
            + "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
            "{% endif %}{% endfor %}")


def encode(records: list[dict], sp, template: str, max_len: int, keep_end: bool = False
           ) -> list[tuple[list, list]]:
    """Per record, (token ids, scored mask) with prompt tokens unscored; at most max_len + 1
    tokens (the first max_len are inputs, the last max_len targets): the record's first tokens,
    or with `keep_end` its last (a long prompt loses its start, the response is kept). A record
    left with nothing to score is left out (`len` of the result says)."""
    before, after = split_template(template)
    prompts = sp.encode([f"{before}{r['prompt']}{after}" for r in records])
    responses = sp.encode([r["response"] for r in records])
    out = []
    for p, r in zip(prompts, responses, strict=True):
        ids, scored = p + r + [EOS], [False] * len(p) + [True] * (len(r) + 1)
        cut = slice(-(max_len + 1), None) if keep_end else slice(max_len + 1)
        ids, scored = ids[cut], scored[cut]
        if any(scored[1:]):
            out.append((ids, scored))
    return out


def rows(examples: list[tuple[list, list]], multiple: int = 16
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of examples, one per row, padded to the longest (rounded up to
    `multiple`); padded and prompt targets are IGNORE."""
    width = max(len(ids) - 1 for ids, _ in examples)
    width = -(-width // multiple) * multiple
    x = torch.full((len(examples), width), PAD, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, (ids, scored) in enumerate(examples):
        t = torch.tensor(ids)
        x[i, :len(ids) - 1] = t[:-1]
        y[i, :len(ids) - 1] = torch.where(torch.tensor(scored[1:]), t[1:], IGNORE)
    return x, y


def reasoning_set(path: Path, sp, template: str, max_len: int, keep_end: bool = False
                  ) -> EvalSet:
    """Held-out reasoning items (synth's LIMO eval split): loss on the responses only (see
    `encode` for `keep_end`)."""
    return EvalSet(*rows(encode(read_jsonl(path), sp, template, max_len, keep_end)), None)
