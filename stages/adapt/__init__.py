"""adapt: being built (issue 12)."""

from __future__ import annotations

from stages.train.config import TrainParams


class Params(TrainParams):
    pass


def run(params: Params, ctx) -> dict:
    raise NotImplementedError("adapt is being built")
