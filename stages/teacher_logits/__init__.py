"""teacher_logits: being built (issue 12)."""

from __future__ import annotations

from stages.params import StrictModel


class Params(StrictModel):
    pass


def run(params: Params, ctx) -> dict:
    raise NotImplementedError("teacher_logits is being built")
