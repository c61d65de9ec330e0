"""Workload 1, speed: train steps/s, log_prob and sample throughput, parameters, round trip.

Every contender runs the same calls on the same tensors. Each figure is timed in ``blocks``
blocks; in every block each contender runs for at least ``block_seconds`` (the call count is
calibrated once), and the contenders take turns inside a block, in an order that rotates from
block to block, so that machine noise hits all of them alike. A figure is the median over
blocks, with the min and max.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from contenders import Contender

WORKLOADS = ("train steps/s", "log_prob samples/s", "sample samples/s")


@dataclass
class SpeedRow:
    contender: str
    features: int
    batch: int
    workload: str
    median: float
    low: float
    high: float


def workload_calls(contender: Contender, x: torch.Tensor) -> dict[str, tuple[Callable[[], object], float]]:
    """Each workload as a no-argument call and the unit count one call does."""
    optimizer = contender.optimizer(contender.module.parameters(), lr=1e-3)

    def train_step():
        loss = -contender.log_prob(x).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def log_prob():
        with torch.no_grad():
            contender.log_prob(x)

    def sample():
        with torch.no_grad():
            contender.sample(x.shape[0])

    batch = x.shape[0]
    return {WORKLOADS[0]: (train_step, 1.0), WORKLOADS[1]: (log_prob, batch), WORKLOADS[2]: (sample, batch)}


def _timed(call: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - start) / count


def measure(
    contenders: list[Contender], features: int, batch: int, blocks: int, block_seconds: float
) -> list[SpeedRow]:
    """Throughput of every contender on one (features, batch) cell, per workload."""
    x = torch.randn(batch, features, generator=torch.Generator().manual_seed(0))
    rows = []
    calls = {c.name: workload_calls(c, x) for c in contenders}
    for workload in WORKLOADS:
        counts = {}
        for c in contenders:  # warm up (allocator, first-call caches, compilation) and calibrate
            call, _ = calls[c.name][workload]
            for _ in range(3):
                call()
            counts[c.name] = max(1, round(block_seconds / _timed(call, 3)))
        rates: dict[str, list[float]] = {c.name: [] for c in contenders}
        for block in range(blocks):
            shift = block % len(contenders)
            for c in contenders[shift:] + contenders[:shift]:
                call, units = calls[c.name][workload]
                rates[c.name].append(units / _timed(call, counts[c.name]))
        for c in contenders:
            values = rates[c.name]
            rows.append(
                SpeedRow(
                    c.name, features, batch, workload, statistics.median(values), min(values), max(values)
                )
            )
    return rows


def round_trip_error(contender: Contender, features: int, n: int = 4096) -> float:
    """max |x - to_data(to_latent(x))| on N(0, 4 I) data, for the weights as they are."""
    x = 2 * torch.randn(n, features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (contender.to_data(contender.to_latent(x)) - x).abs().max().item()


def parameters(contender: Contender) -> int:
    return sum(p.numel() for p in contender.module.parameters() if p.requires_grad)
