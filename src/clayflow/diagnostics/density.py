"""Densities on grids: 2D heat-maps, and the integral of a low-dimensional model's density,
which must be 1."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from clayflow.core import Flow


@torch.no_grad()
def grid_log_prob(
    flow: Flow, bounds: tuple[float, float, float, float], resolution: int = 300, batch_size: int = 65536
) -> tuple[Tensor, Tensor, Tensor]:
    """log p on a ``resolution x resolution`` grid of cell centres over ``(x0, x1, y0, y1)``.

    Returns ``(xs (R,), ys (R,), log_prob (R, R))`` with ``log_prob[i, j]`` at ``(xs[j], ys[i])``.
    """
    x0, x1, y0, y1 = bounds
    param = next(flow.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    xs = x0 + (torch.arange(resolution, dtype=torch.float64) + 0.5) * (x1 - x0) / resolution
    ys = y0 + (torch.arange(resolution, dtype=torch.float64) + 0.5) * (y1 - y0) / resolution
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([xx.flatten(), yy.flatten()], dim=1).float()
    was_training = flow.training
    flow.eval()
    log_prob = torch.cat([flow.log_prob(chunk.to(device)).cpu() for chunk in points.split(batch_size)])
    flow.train(was_training)
    return xs, ys, log_prob.view(resolution, resolution)


def integrated_mass(flow: Flow, bounds: tuple[float, float, float, float], resolution: int = 400) -> float:
    r"""Midpoint-rule integral of a 2D p(x) over the box ``(x0, x1, y0, y1)``.

    For a correct 2D flow and a box holding its mass this is 1 up to discretisation error.
    """
    x0, x1, y0, y1 = bounds
    return box_mass(flow, (x0, y0), (x1, y1), resolution)


@torch.no_grad()
def box_mass(
    flow: Flow,
    low: Sequence[float],
    high: Sequence[float],
    resolution: int,
    batch_size: int = 65536,
    context: Tensor | None = None,
) -> float:
    r"""Midpoint-rule integral of p(x) (of a conditional flow: p(x | c) for one ``context``
    row ``(1, K)``) over the box ``[low, high]`` of any dimension D (keep ``resolution ** D``
    cells affordable): sum_cells p(centre) * cell volume, in eval mode."""
    param = next(flow.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    axes = [lo + (torch.arange(resolution, dtype=torch.float64) + 0.5) * (hi - lo) / resolution
            for lo, hi in zip(map(float, low), map(float, high))]  # fmt: skip
    points = torch.cartesian_prod(*axes).reshape(-1, len(axes))
    cell = math.prod((float(hi) - float(lo)) / resolution for lo, hi in zip(low, high))
    was_training = flow.training
    flow.eval()
    total = sum(
        flow.log_prob(chunk.to(device=device, dtype=flow.dtype), context).double().exp().sum().item()
        for chunk in points.split(batch_size)
    )
    flow.train(was_training)
    return total * cell
