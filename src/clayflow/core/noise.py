"""Per-example random draws that do not depend on how a batch is split over processes.

A distributed training step gives each process a slice of the global batch. Every random draw
of the step that is made per example (dequantization noise, Hutchinson probes, augmentation
noise, dropout masks, flow-matching times) goes through this module: inside ``batch_part``,
each draw is made for the whole global batch, from the generator state that every process
shares in that step, and each process keeps its own rows. So an example gets the noise it
would get on one process, no two processes use the same noise, and one step of N processes
equals one step of one process up to float rounding. Outside ``batch_part`` (one process,
evaluation, sampling) the functions are torch's.

>>> x = torch.zeros(4, 3)
>>> _ = torch.manual_seed(0); whole = randn_like(x)
>>> _ = torch.manual_seed(0)
>>> with batch_part(slice(2, 4), total=4):
...     second_half = randn_like(x[2:])
>>> torch.equal(second_half, whole[2:])
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

_part: tuple[slice, int] | None = None  # (this process's rows, rows of the global batch)


@contextmanager
def batch_part(rows: slice, total: int) -> Iterator[None]:
    """Within the block, per-example draws of a batch of ``rows.stop - rows.start`` examples
    are rows ``rows`` of a draw for ``total`` examples."""
    global _part
    previous, _part = _part, (rows, total)
    try:
        yield
    finally:
        _part = previous


def _draw(sample: Callable[..., Tensor], shape: tuple[int, ...], like: Tensor) -> Tensor:
    part = _part
    if part is None or not shape or shape[0] != part[0].stop - part[0].start:
        return sample(shape, dtype=like.dtype, device=like.device)
    return sample((part[1], *shape[1:]), dtype=like.dtype, device=like.device)[part[0]]


def rand(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """``U[0, 1)`` draws of ``shape`` (dim 0: examples) in ``like``'s dtype and device."""
    return _draw(torch.rand, tuple(shape), like)


def randn(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Standard normal draws of ``shape`` (dim 0: examples) in ``like``'s dtype and device."""
    return _draw(torch.randn, tuple(shape), like)


def rand_like(x: Tensor) -> Tensor:
    """``U[0, 1)`` draws shaped like ``x`` ``(B, *)``."""
    return rand(tuple(x.shape), x)


def randn_like(x: Tensor) -> Tensor:
    """Standard normal draws shaped like ``x`` ``(B, *)``."""
    return randn(tuple(x.shape), x)


def rademacher_like(x: Tensor) -> Tensor:
    """Random signs (+1 or -1, each with probability 1/2) shaped like ``x`` ``(B, *)``."""
    return torch.where(rand_like(x) < 0.5, -1.0, 1.0).to(x.dtype)
