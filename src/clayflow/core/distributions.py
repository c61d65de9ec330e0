r"""Base distributions of a flow: the "clay" that the transforms shape into data.

They follow ``torch.distributions`` naming (``log_prob``, ``sample``, ``event_shape``) but are
``nn.Module``s so that learned parameters train and move with the flow.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from clayflow.core.transform import sum_except_batch

_LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    r"""log N(z; 0, I) summed over each sample's elements: ``(B, *)`` -> ``(B,)``."""
    return -0.5 * (sum_except_batch(z**2) + math.prod(z.shape[1:]) * _LOG_2PI)


class StandardNormal(nn.Module):
    r"""N(0, I) over ``event_shape``: log p(z) = -1/2 (|z|^2 + D log 2 pi).

    Shape:
        log_prob: z ``(B, *event_shape)`` -> ``(B,)``; sample(n) -> ``(n, *event_shape)``.
    """

    _anchor: Tensor  # a buffer

    def __init__(self, event_shape: tuple[int, ...] | int):
        super().__init__()
        self.event_shape = torch.Size(_as_shape(event_shape))
        # Tracks the device and dtype the distribution lives on.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        return standard_normal_log_prob(z)

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """``n`` draws of ``temperature * eps``, eps ~ N(0, I)."""
        eps = torch.randn((n, *self.event_shape), device=self._anchor.device, dtype=self._anchor.dtype)
        return temperature * eps


class DiagonalNormal(nn.Module):
    r"""N(mu, diag(sigma^2)) with learned ``loc`` and ``log_scale`` (initialised to N(0, I)).

    log p(z) = sum_i [ -1/2 ((z_i - mu_i) / sigma_i)^2 - log sigma_i - 1/2 log 2 pi ].

    Shape:
        log_prob: z ``(B, *event_shape)`` -> ``(B,)``; sample(n) -> ``(n, *event_shape)``.
    """

    def __init__(self, event_shape: tuple[int, ...] | int):
        super().__init__()
        self.event_shape = torch.Size(_as_shape(event_shape))
        self.loc = nn.Parameter(torch.zeros(self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def log_prob(self, z: Tensor) -> Tensor:
        eps = (z - self.loc) * torch.exp(-self.log_scale)
        return sum_except_batch(-0.5 * eps**2 - self.log_scale) - 0.5 * (self.event_shape.numel() * _LOG_2PI)

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """``n`` draws of ``loc + temperature * sigma * eps``, eps ~ N(0, I)."""
        eps = torch.randn((n, *self.event_shape), device=self.loc.device, dtype=self.loc.dtype)
        return self.loc + temperature * torch.exp(self.log_scale) * eps


def _as_shape(event_shape: tuple[int, ...] | int) -> tuple[int, ...]:
    return (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
