"""Workload 2, quality: test NLL on 2D toys after a fixed budget of steps.

For each toy and seed, one stream of training batches and one test set are drawn once and
given to every contender, so the libraries see the same data in the same order. Every
contender is trained by the same loop: Adam at a constant learning rate, no clipping, no
schedule. Test NLL is -mean log p over the test set, in nats.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from contenders import Contender

from clayflow.data.toys import TOYS

QUALITY_TOYS = ("moons", "checkerboard", "8gaussians", "swissroll")


@dataclass
class QualityRow:
    contender: str
    toy: str
    seed: int
    test_nll: float
    seconds: float


def toy_data(
    toy: str, seed: int, steps: int, batch: int, test_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(steps * batch, 2)`` training stream and ``(test_size, 2)`` test set, both seeded."""
    rng = np.random.default_rng([seed, 0])
    stream = TOYS[toy](steps * batch, rng)
    test = TOYS[toy](test_size, np.random.default_rng([seed, 1]))
    return torch.as_tensor(stream, dtype=torch.float32), torch.as_tensor(test, dtype=torch.float32)


def fit(contender: Contender, stream: torch.Tensor, batch: int, lr: float) -> float:
    """Train on consecutive batches of ``stream``; returns the seconds spent."""
    optimizer = contender.optimizer(contender.module.parameters(), lr=lr)
    contender.module.train()
    start = time.perf_counter()
    for x in stream.split(batch):
        loss = -contender.log_prob(x).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def test_nll(contender: Contender, test: torch.Tensor, chunk: int = 4096) -> float:
    """-mean log p(test) in nats, accumulated in float64; NaN if the model diverged."""
    contender.module.eval()
    with torch.no_grad():
        total = sum(contender.log_prob(x).double().sum().item() for x in test.split(chunk))
    value = -total / len(test)
    return value if math.isfinite(value) else math.nan


def run(
    builders: dict[str, Callable[[int], Contender]],
    toys: list[str],
    seeds: int,
    steps: int,
    batch: int,
    lr: float,
    test_size: int,
    log: Callable[[str], None] = print,
) -> list[QualityRow]:
    rows = []
    for toy in toys:
        for seed in range(seeds):
            stream, test = toy_data(toy, seed, steps, batch, test_size)
            for name, build in builders.items():
                torch.manual_seed(seed)
                contender = build(2)
                seconds = fit(contender, stream, batch, lr)
                rows.append(QualityRow(name, toy, seed, test_nll(contender, test), seconds))
                log(f"quality {toy} seed {seed} {name}: test NLL {rows[-1].test_nll:.4f} ({seconds:.0f} s)")
    return rows
