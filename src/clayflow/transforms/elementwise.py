r"""Per-feature maps: affine z = (x - shift) * exp(log_scale), learned (NICE's scaling layer)
or fixed (standardisation of the user's data, so likelihoods stay in the user's units), and
the Yeo-Johnson power transform, which takes the skew out of each column of a table."""

from __future__ import annotations

import numpy as np
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

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return affine_per_feature(x, None, self.log_scale, inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return affine_per_feature(z, None, self.log_scale, inverse=True)


class Standardize(Transform):
    r"""Fixed z = (x - mean) / std per feature; log|det| = -P * sum log std.

    Placed first in a flow, it lets the network see unit-scale inputs while ``log_prob``
    stays a density in the data's own units. ``mean`` and ``std`` are buffers, saved with
    the model; ``Standardize(D)`` is the identity until they are set or loaded.

    Shape:
        x: ``(B, D)`` or ``(B, C, H, W)`` -> z like x, logabsdet ``(B,)``.
    """

    mean: Tensor  # buffers
    std: Tensor

    def __init__(self, features: int, mean: Tensor | None = None, std: Tensor | None = None):
        super().__init__()
        self.register_buffer("mean", torch.zeros(features) if mean is None else torch.as_tensor(mean))
        self.register_buffer("std", torch.ones(features) if std is None else torch.as_tensor(std))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return affine_per_feature(x, self.mean, -torch.log(self.std), inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return affine_per_feature(z, self.mean, -torch.log(self.std), inverse=True)


class PowerTransform(Transform):
    r"""The Yeo-Johnson power transform of each feature, with a learned power in (0, 2).

    Per feature, with power ``lam = 2 sigmoid(theta)`` (1 is the identity):

        z = ((1 + x)^lam - 1) / lam               for x >= 0,
        z = -((1 - x)^(2 - lam) - 1) / (2 - lam)  for x < 0,
        log|dz/dx| = sign(x) (lam - 1) log(1 + |x|).

    ``lam < 1`` pulls in a long right tail (``lam -> 0`` is log(1 + x)), ``lam > 1`` a long
    left one. Keeping ``lam`` strictly inside (0, 2) makes the map a bijection of R onto R,
    so every latent has a preimage (outside it one side would be bounded). ``fit(x)`` sets
    each power to scipy's maximum-likelihood Yeo-Johnson estimate for that column of ``x``
    (standardised data: the transform is not scale-free), clipped to [0.02, 1.98].

    Shape:
        x: ``(B, D)`` -> z ``(B, D)``, logabsdet ``(B,)``.
    Reference: Yeo & Johnson, A new family of power transformations to improve normality
    or symmetry, Biometrika 2000.
    """

    def __init__(self, features: int):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(features))

    @property
    def power(self) -> Tensor:
        """``lam`` ``(D,)``."""
        return 2 * torch.sigmoid(self.theta)

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Each power by maximum likelihood on its column of ``x`` ``(N, D)`` (``scipy.stats``)."""
        from scipy import stats

        columns = x.double().cpu().numpy().T
        powers = np.clip([stats.yeojohnson_normmax(column) for column in columns], 0.02, 1.98)
        self.theta.copy_(torch.as_tensor(np.log(powers / (2 - powers)), dtype=self.theta.dtype))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lam = self.power
        positive = x >= 0
        magnitude = torch.log1p(torch.where(positive, x, -x))  # log(1 + |x|), with slope 1 at 0
        exponent = torch.where(positive, lam, 2 - lam)
        z = torch.expm1(exponent * magnitude) / exponent
        z = torch.where(positive, z, -z)
        logabsdet = (torch.where(positive, lam - 1, 1 - lam) * magnitude).sum(1)
        return z, logabsdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lam = self.power
        positive = z >= 0
        exponent = torch.where(positive, lam, 2 - lam)
        magnitude = torch.log1p(exponent * torch.where(positive, z, -z)) / exponent  # log(1 + |x|)
        x = torch.expm1(magnitude)
        x = torch.where(positive, x, -x)
        logabsdet = -(torch.where(positive, lam - 1, 1 - lam) * magnitude).sum(1)
        return x, logabsdet
