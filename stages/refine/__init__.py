"""Refine: phase-2 annealing from pretrain's stable-phase checkpoint, then a LIMO-style SFT pass.
(Being built: see issue 12.)"""

from __future__ import annotations

from stages.train.config import TrainParams


class Params(TrainParams):
    pass


def run(params: Params, ctx) -> dict:
    raise NotImplementedError("refine is being built")
