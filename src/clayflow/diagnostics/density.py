"""2D densities on a grid: for heat-maps, and to check that a model's density integrates to 1."""

from __future__ import annotations

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
    r"""Midpoint-rule integral of p(x) over the box: sum_cells p(centre) * cell area.

    For a correct 2D flow and a box holding its mass this is 1 up to discretisation error.
    """
    x0, x1, y0, y1 = bounds
    _, _, log_prob = grid_log_prob(flow, bounds, resolution)
    cell = (x1 - x0) * (y1 - y0) / resolution**2
    return float(log_prob.double().exp().sum() * cell)
