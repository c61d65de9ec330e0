"""Per-example random draws and batch statistics that do not depend on how a batch is split
over processes.

A distributed training step gives each process a slice of the global batch. Inside
``part(rows, total)``:

* every random draw made per example (dequantization noise, Hutchinson probes, augmentation
  noise, dropout masks, flow-matching times) is made for the whole global batch, from the
  generator state that every process shares in that step, and each process keeps its own
  rows: an example gets the noise it would get on one process, and no two processes use the
  same noise;
* batch statistics (batch-norm flow layers, batch norm in conditioners) are those of the
  global batch: ``mean_var`` all-reduces the sums over the processes, differentiably.

So one step of N processes equals one step of one process up to float rounding. Outside
``part`` (one process, evaluation, sampling) the draws are torch's and the statistics local.

>>> x = torch.zeros(4, 3)
>>> _ = torch.manual_seed(0); whole = randn_like(x)
>>> _ = torch.manual_seed(0)
>>> with part(slice(2, 4), total=4):
...     second_half = randn_like(x[2:])
>>> torch.equal(second_half, whole[2:])
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import cast

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

_part: tuple[slice, int] | None = None  # (this process's rows, rows of the global batch)


@contextmanager
def part(rows: slice, total: int) -> Iterator[None]:
    """Within the block, a batch of ``rows.stop - rows.start`` examples is rows ``rows`` of a
    global batch of ``total`` examples split over the processes of ``torch.distributed``."""
    global _part
    previous, _part = _part, (rows, total)
    try:
        yield
    finally:
        _part = previous


def global_size(size: int) -> int | None:
    """The size of the global batch that a batch of ``size`` examples is a part of (None
    when it is not a part of a larger one)."""
    split = _split(size)
    return None if split is None else split[1]


def _split(size: int) -> tuple[slice, int] | None:
    current = _part
    if current is None or current[1] == size or size != current[0].stop - current[0].start:
        return None
    return current


def _draw(sample: Callable[..., Tensor], shape: tuple[int, ...], like: Tensor) -> Tensor:
    split = _split(shape[0]) if shape else None
    if split is None:
        return sample(shape, dtype=like.dtype, device=like.device)
    return sample((split[1], *shape[1:]), dtype=like.dtype, device=like.device)[split[0]]


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


def mean_var(x: Tensor, dims: Sequence[int], shift: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""Mean and biased variance of ``x`` over ``dims`` (which include the batch dim 0), of
    the global batch when ``x`` is a process's part of one: one differentiable all-reduce of
    the sums of ``y = x - c`` and ``y^2``, c = ``shift`` (the same in every process, such as a
    running mean, so that the difference of squares below does not cancel badly),

        mean = c + sum_all(y) / n,   var = sum_all(y^2) / n - (sum_all(y) / n)^2,
        n = total * prod(other dims).
    """
    dims = list(dims)
    split = _split(x.shape[0])
    if split is None:
        return x.mean(dim=dims), x.var(dim=dims, unbiased=False)
    count = split[1] * math.prod(x.shape[d] for d in dims if d != 0)
    kept_shape = [1 if d in dims else n for d, n in enumerate(x.shape)]
    centre = shift.detach().to(x.dtype) if shift is not None else x.new_zeros(x.shape[1])
    y = x - centre.reshape(kept_shape)
    # Function.apply is untyped in torch: the cast gives it _AllReduceSum.forward's signature.
    sums = (
        cast("Callable[[Tensor], Tensor]", _AllReduceSum.apply)(
            torch.stack([y.sum(dim=dims), y.pow(2).sum(dim=dims)])
        )
        / count
    )
    return centre + sums[0], (sums[1] - sums[0].pow(2)).clamp_min(0)


class _AllReduceSum(torch.autograd.Function):
    """A sum over the processes that gradients flow through: the backward pass sums the
    output gradients over the processes too (each process's output depends on every
    process's input). torch's ``torch.distributed.nn.functional.all_reduce`` does the same
    and is deprecated in favour of a private module."""

    @staticmethod
    def forward(ctx: FunctionCtx, tensor: Tensor) -> Tensor:
        import torch.distributed as dist

        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> Tensor:
        return cast("Callable[[Tensor], Tensor]", _AllReduceSum.apply)(grad)  # Function.apply is untyped

