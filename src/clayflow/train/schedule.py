"""The optimiser, its learning-rate schedule (linear warm-up, then cosine decay to zero or a
constant rate), the moving average of the weights, and the seed of each step's random draws."""

from __future__ import annotations

import math

import torch
from torch.optim.swa_utils import AveragedModel

STEP_SEED_STRIDE = 1_000_003  # a prime: (seed, step) -> distinct seeds for realistic sizes


def step_seed(seed: int, step: int) -> int:
    """The seed of the random draws of optimisation step ``step + 1`` of a run seeded ``seed``
    (the same on resume, so a resumed run draws what an uninterrupted one would)."""
    return (seed + STEP_SEED_STRIDE * (step + 1)) % (2**63)


def make_optimizer(
    parameters, name: str = "adam", lr: float = 1e-3, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """Adam (L2 ``weight_decay``) or AdamW (decoupled), with the fused kernel on CPU and CUDA.

    Fused is the same update in one kernel over all parameters; torch's default on the CPU is
    a Python loop of about ten ops per parameter tensor, which for an 8-coupling RealNVP at
    batch 256 was a third of a compiled training step. Other devices, or parameters of other
    dtypes, use the default implementation.
    """
    parameters = list(parameters)
    optimizer_class = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in _FUSED_DTYPES for p in parameters)
    return optimizer_class(parameters, lr=lr, weight_decay=weight_decay, fused=fused or None)


_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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


EMA_WARMUP = 10  # the averaged weights' decay after n updates: min(decay, (1 + n) / (EMA_WARMUP + n))


def make_weight_average(module: torch.nn.Module, decay: float) -> AveragedModel:
    r"""An exponential moving average of ``module``'s weights (and buffers), whose decay grows
    with the number n of updates so far, as TensorFlow's ``ExponentialMovingAverage`` with
    ``num_updates``:

    .. math:: \bar w \leftarrow \beta_n \bar w + (1 - \beta_n) w, \quad
              \beta_n = \min(\text{decay}, (1 + n) / (10 + n)).

    With a constant decay the first weights, far from any good ones, would keep a share
    decay^t after t steps (0.22 after 1,500 steps at 0.999); with the ramp their share after
    N updates is 10! (N + 1)! / (N + 10)!, below 1/N. The cap ``decay`` binds once
    n >= (10 decay - 1) / (1 - decay): from update 890 at 0.99, 8,990 at 0.999. Its state dict
    (weights and n) goes into checkpoints.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        n = float(updates)  # the loop reads each step's loss on the host anyway
        weight = 1.0 - min(decay, (1.0 + n) / (EMA_WARMUP + n))
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(averaged, current, weight)
        else:  # integer buffers (counters, flags) take the newest value
            for average, value in zip(averaged, current, strict=True):
                average.copy_(value)

    return AveragedModel(module, multi_avg_fn=update, use_buffers=True)
