"""Workload 2, quality: test NLL on 2D toys after a fixed budget of steps.

For each toy and seed, one stream of training batches and one test set are drawn once and
given to every contender, so the libraries see the same data in the same order. Every
contender is trained by the same loop: Adam at a constant learning rate, no clipping, no
schedule. Test NLL is -mean log p over the test set, in nats. With ``curve_every`` N the test
NLL is also taken every N steps, with the clock stopped, for the learning curves that
``time_to_quality`` reads.
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
class CurvePoint:
    """One evaluation of a learning curve: test NLL after ``step`` steps and ``seconds`` of
    training (evaluations excluded)."""

    contender: str
    toy: str
    seed: int
    step: int
    seconds: float
    test_nll: float


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
    stream = TOYS[toy](steps * batch, np.random.default_rng([seed, 0]))
    return torch.as_tensor(stream, dtype=torch.float32), test_set(toy, seed, test_size)


def test_set(toy: str, seed: int, test_size: int) -> torch.Tensor:
    """The ``(test_size, 2)`` test set of ``toy`` on ``seed``, the same for every workload."""
    return torch.as_tensor(TOYS[toy](test_size, np.random.default_rng([seed, 1])), dtype=torch.float32)


def fit(
    contender: Contender, stream: torch.Tensor, batch: int, lr: float,
    test: torch.Tensor | None = None, curve_every: int = 0,
) -> tuple[float, list[tuple[int, float, float]]]:  # fmt: skip
    """Train on consecutive batches of ``stream``; returns the training seconds and, with
    ``curve_every`` N > 0, the ``(step, seconds, test NLL)`` of every N-th step and the last
    (the clock stopped while evaluating)."""
    optimizer = contender.optimizer(contender.module.parameters(), lr=lr)
    contender.module.train()
    seconds, curve = 0.0, []
    start = time.perf_counter()
    batches = stream.split(batch)
    for step, x in enumerate(batches, 1):
        loss = -contender.log_prob(x).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if curve_every and test is not None and (step % curve_every == 0 or step == len(batches)):
            seconds += time.perf_counter() - start
            curve.append((step, seconds, test_nll(contender, test)))
            contender.module.train()
            start = time.perf_counter()
    return seconds + time.perf_counter() - start, curve


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
    curve_every: int = 0,
) -> tuple[list[QualityRow], list[CurvePoint]]:
    """Each contender of ``builders`` on each toy and seed; the final rows and the learning
    curves (empty without ``curve_every``)."""
    rows, curves = [], []
    for toy in toys:
        for seed in range(seeds):
            stream, test = toy_data(toy, seed, steps, batch, test_size)
            for name, build in builders.items():
                torch.manual_seed(seed)
                contender = build(2)
                seconds, curve = fit(contender, stream, batch, lr, test, curve_every)
                rows.append(QualityRow(name, toy, seed, test_nll(contender, test), seconds))
                curves += [CurvePoint(name, toy, seed, *point) for point in curve]
                log(f"quality {toy} seed {seed} {name}: test NLL {rows[-1].test_nll:.4f} ({seconds:.0f} s)")
    return rows, curves
