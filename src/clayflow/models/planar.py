"""The flows of Rezende & Mohamed (2015) for vectors: stacks of planar or radial maps on a
Gaussian base, built for variational inference (``clayflow fit``), where only the latent ->
data direction is used. Scoring data (``log_prob``) inverts each planar map numerically
(see ``transforms.Planar``), so they train from data too, but slower than couplings."""

from __future__ import annotations

from clayflow.core import Compose, Flow
from clayflow.models.options import check_sizes
from clayflow.models.vector import _make_base
from clayflow.transforms import Planar, Radial


def planar(features: int, *, layers: int = 32, base: str = "normal") -> Flow:
    """``layers`` planar maps x = z + û tanh(wᵀz + b) on N(0, I) (or a learned diagonal ``base``).

    >>> planar(2, layers=4).sample(3).shape
    torch.Size([3, 2])
    """
    check_sizes(layers=layers)
    return Flow(Compose(*(Planar(features) for _ in range(layers))), _make_base(base, features))


def radial(features: int, *, layers: int = 32, base: str = "normal") -> Flow:
    """``layers`` radial maps x = z + β (z - z₀) / (α + |z - z₀|) on N(0, I) (or a learned diagonal ``base``)."""
    check_sizes(layers=layers)
    return Flow(Compose(*(Radial(features) for _ in range(layers))), _make_base(base, features))
