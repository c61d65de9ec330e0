"""Learning-rate schedule: linear warm-up, then cosine decay to zero or a constant rate."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    r"""Multiplier of the base rate at ``step`` (0-based).

    Warm-up: (step + 1) / warmup for step < warmup. Then ``"constant"`` gives 1 and
    ``"cosine"`` gives 1/2 (1 + cos(pi * (step - warmup) / (total - warmup))).
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer, warmup: int, total: int, schedule: str) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following ``lr_factor``; its state dict goes into checkpoints."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total, schedule))
