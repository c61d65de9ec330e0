r"""``Flow``: a transform (data -> latent) and a base distribution, used like a distribution."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from clayflow.core.transform import Transform


class Flow(nn.Module):
    r"""A normalizing flow p(x) = p_base(f(x)) |det df/dx|.

    ``transform`` maps data to latent (see ``clayflow.core.transform`` for the convention),
    ``base`` is a distribution over the latent with ``log_prob`` and ``sample(n, temperature)``.

    >>> import torch
    >>> from clayflow import models
    >>> flow = models.realnvp(2, layers=4, hidden=16)
    >>> x = torch.randn(5, 2)
    >>> flow.log_prob(x).shape
    torch.Size([5])
    >>> flow.sample(3).shape
    torch.Size([3, 2])

    Shape:
        x: ``(B, *event_shape)``; log_prob -> ``(B,)``; sample(n) -> ``(n, *event_shape)``.
    """

    def __init__(self, transform: Transform, base: nn.Module):
        super().__init__()
        self.transform = transform
        self.base = base

    @property
    def event_shape(self) -> torch.Size:
        """Shape of one latent sample (equal to the data's for shape-preserving flows)."""
        return self.base.event_shape

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data -> latent: ``(z, log|det dz/dx|)``."""
        return self.transform(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent -> data: ``(x, log|det dx/dz|)``."""
        return self.transform.inverse(z, context)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact log-density of ``x`` in nats, ``(B,)``."""
        z, logabsdet = self.transform(x, context)
        return self.base.log_prob(z) + logabsdet

    def bits_per_dim(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r"""``-log p(x) / (D ln 2)`` per sample, ``(B,)``; D = elements per sample."""
        dims = x[0].numel()
        return -self.log_prob(x, context) / (dims * math.log(2))

    def rsample(self, n: int, temperature: float = 1.0, context: Tensor | None = None) -> Tensor:
        """``n`` samples, differentiable w.r.t. the parameters; base draws are scaled by T."""
        z = self.base.sample(n, temperature)
        x, _ = self.inverse(z, context)
        return x

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, context: Tensor | None = None) -> Tensor:
        """``n`` samples with no graph (as ``torch.distributions.Distribution.sample``).

        ``temperature`` < 1 scales the base draws towards the mode (Glow's reduced
        temperature); 1 is the model itself.
        """
        return self.rsample(n, temperature, context)

    def sample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``n`` samples and their model log-density in one inverse pass: ``(x, log p(x))``."""
        z = self.base.sample(n)
        x, logabsdet = self.inverse(z, context)
        return x, self.base.log_prob(z) - logabsdet

    def compile(self, **options) -> Flow:
        """Compile ``forward``, ``inverse`` and ``log_prob`` with ``torch.compile(**options)``,
        in place; ``sample``, ``rsample`` and ``sample_and_log_prob`` use the compiled inverse.

        Same numbers as eager up to float rounding (fused kernels may sum in another order).
        The first call of each method compiles it (seconds to a minute); a new batch size, or
        switching between train and eval mode, compiles again. Weights, state dicts and
        checkpoints are unaffected. Returns the flow.
        """
        self.forward = torch.compile(self.forward, **options)
        self.inverse = torch.compile(self.inverse, **options)
        self.log_prob = torch.compile(self.log_prob, **options)
        return self
