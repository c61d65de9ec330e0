r"""Augmented dimensions: a flow on (x, a), with a drawn from N(0, I), bounds log p(x).

ANODE (Dupont et al. 2019) lets a neural ODE move in extra dimensions that start at zero.
Zeros give no density for x alone (the data lie on a slice of the larger space), so here, as
in augmented normalizing flows (Huang et al. 2020) and VFlow (Chen et al. 2020), the extra
dimensions are drawn from q(a) = N(0, I). ``forward`` returns ``[x, a]`` with the log-det
term ``-log q(a)``, so a flow's ``log_prob`` is

    log p(x, a) - log q(a) <= log p(x)   on average over a (Jensen),

the same kind of bound as dequantization. ``inverse`` drops the extra dimensions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clayflow.core import batch
from clayflow.core.distributions import standard_normal_log_prob
from clayflow.core.transform import Transform
from clayflow.errors import ClayflowError


class Augment(Transform):
    r"""x ``(B, D)`` -> ``[x, a]`` ``(B, D + extra)``; images ``(B, C, H, W)`` get ``extra``
    channels. a ~ N(0, I) is fresh on every call (torch's global RNG).

    log-det: ``-log N(a; 0, I)`` forward, ``+log N(a; 0, I)`` inverse (of the dropped a).

    Shape:
        x: ``(B, C, *)`` -> ``(B, C + extra, *)``, logabsdet ``(B,)``.
    """

    def __init__(self, extra: int):
        super().__init__()
        if int(extra) != extra or extra < 1:
            raise ClayflowError(f"augmentation needs a whole number of extra dimensions >= 1, got {extra}")
        self.extra = int(extra)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        a = batch.randn((x.shape[0], self.extra, *x.shape[2:]), like=x)
        return torch.cat([x, a], dim=1), -standard_normal_log_prob(a)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if z.shape[1] <= self.extra:
            raise ClayflowError(f"cannot drop {self.extra} augmented dimensions from shape {tuple(z.shape)}")
        x, a = z[:, : -self.extra], z[:, -self.extra :]
        return x, standard_normal_log_prob(a)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[0] + self.extra, *shape[1:])

    def extra_repr(self) -> str:
        return f"extra={self.extra}"
