r"""Per-feature affine maps z = (x - shift) * exp(log_scale): learned (NICE's scaling layer)
or fixed (standardisation of the user's data, so likelihoods stay in the user's units)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clayflow.core.transform import Transform, per_feature, positions_per_feature


def affine_per_feature(
    x: Tensor, shift: Tensor | None, log_scale: Tensor, inverse: bool
) -> tuple[Tensor, Tensor]:
    """z = (x - shift) * exp(log_scale) per feature (no shift if None), or its inverse, with log|det|."""
    logabsdet = (log_scale.sum() * positions_per_feature(x)).expand(x.shape[0])
    if inverse:
        x = x * per_feature(torch.exp(-log_scale), x)
        return (x if shift is None else x + per_feature(shift, x)), -logabsdet
    x = x if shift is None else x - per_feature(shift, x)
    return x * per_feature(torch.exp(log_scale), x), logabsdet


class Scaling(Transform):
    r"""NICE's diagonal scaling: z = x * exp(s), learned s (init 0); log|det| = P * sum s.

    Shape:
        x: ``(B, D)`` or ``(B, C, H, W)`` -> z like x, logabsdet ``(B,)``.
    Reference: Dinh et al., NICE, 2015, Sec. 3.3.
    """

    def __init__(self, features: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(features))

    def forward(self, x, context=None):
        return affine_per_feature(x, None, self.log_scale, inverse=False)

    def inverse(self, z, context=None):
        return affine_per_feature(z, None, self.log_scale, inverse=True)


class Standardize(Transform):
    r"""Fixed z = (x - mean) / std per feature; log|det| = -P * sum log std.

    Placed first in a flow, it lets the network see unit-scale inputs while ``log_prob``
    stays a density in the data's own units. ``mean`` and ``std`` are buffers, saved with
    the model; ``Standardize(D)`` is the identity until they are set or loaded.

    Shape:
        x: ``(B, D)`` or ``(B, C, H, W)`` -> z like x, logabsdet ``(B,)``.
    """

    def __init__(self, features: int, mean: Tensor | None = None, std: Tensor | None = None):
        super().__init__()
        self.register_buffer("mean", torch.zeros(features) if mean is None else torch.as_tensor(mean))
        self.register_buffer("std", torch.ones(features) if std is None else torch.as_tensor(std))

    def forward(self, x, context=None):
        return affine_per_feature(x, self.mean, -torch.log(self.std), inverse=False)

    def inverse(self, z, context=None):
        return affine_per_feature(z, self.mean, -torch.log(self.std), inverse=True)
