"""Linear volume-preserving maps over the feature dimension: fixed permutations."""

from __future__ import annotations

import torch
from torch import Tensor

from clayflow.core.transform import Transform, identity_logabsdet
from clayflow.errors import ClayflowError


class Permutation(Transform):
    r"""z = x[:, perm]: a fixed reordering of dim 1 (features or channels); log|det| = 0.

    Shape:
        x: ``(B, D)`` or ``(B, C, H, W)`` -> z like x, logabsdet ``(B,)`` of zeros.
    """

    def __init__(self, permutation: Tensor):
        super().__init__()
        permutation = torch.as_tensor(permutation, dtype=torch.long)
        if not torch.equal(permutation.sort().values, torch.arange(len(permutation))):
            raise ClayflowError(f"not a permutation of 0..{len(permutation) - 1}: {permutation.tolist()}")
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    @classmethod
    def reverse(cls, features: int) -> Permutation:
        """Reverse the order of the features."""
        return cls(torch.arange(features - 1, -1, -1))

    @classmethod
    def random(cls, features: int, seed: int = 0) -> Permutation:
        """A random permutation drawn from its own seeded generator (reproducible)."""
        return cls(torch.randperm(features, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x, context=None):
        return x.index_select(1, self.permutation), identity_logabsdet(x)

    def inverse(self, z, context=None):
        return z.index_select(1, self.inverse_permutation), identity_logabsdet(z)
