r"""Normalisation as invertible layers: batch norm (RealNVP, Sec. 3.7) and ActNorm (Glow)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clayflow.core import batch
from clayflow.core.transform import Transform, per_feature, positions_per_feature
from clayflow.transforms.elementwise import affine_per_feature


class BatchNorm(Transform):
    r"""z = (x - mu) / sqrt(var + eps) * exp(log_gamma) + beta, per feature (dim 1).

    In training mode ``mu, var`` are the batch statistics over every dim but 1 (and the
    running averages are updated); in eval mode they are the running averages, so each
    sample's output is independent of the batch. Either way the log-det treats them as
    constants, as the RealNVP paper does:

        log|det dz/dx| = P * sum_c [log_gamma_c - 1/2 log(var_c + eps)],

    with P = 1 for vectors and H * W for images. ``inverse`` always uses the running
    averages (it is the sampling direction, run in eval mode).

    Shape:
        x: ``(B, C)`` or ``(B, C, H, W)`` -> z like x, logabsdet ``(B,)``.
    Reference: Dinh et al., Density estimation using Real NVP, 2017.
    """

    running_mean: Tensor  # buffers
    running_var: Tensor

    def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.log_gamma = nn.Parameter(torch.zeros(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def _statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training:
            return self.running_mean, self.running_var
        mean, var = batch.mean_var(x, [0, *range(2, x.dim())], shift=self.running_mean)  # the global batch's
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach(), self.momentum)
        return mean, var

    def _logabsdet(self, x: Tensor, var: Tensor) -> Tensor:
        per_sample = (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum()
        return (per_sample * positions_per_feature(x)).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, var = self._statistics(x)
        scale = torch.exp(self.log_gamma) * torch.rsqrt(var + self.eps)
        z = (x - per_feature(mean, x)) * per_feature(scale, x) + per_feature(self.beta, x)
        return z, self._logabsdet(x, var)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, var = self.running_mean, self.running_var
        scale = torch.exp(-self.log_gamma) * torch.sqrt(var + self.eps)
        x = (z - per_feature(self.beta, z)) * per_feature(scale, z) + per_feature(mean, z)
        return x, -self._logabsdet(z, var)


class ActNorm(Transform):
    r"""Activation normalisation (Glow): z = (x - loc) * exp(log_scale), per feature (dim 1).

    Data-dependent initialisation: the first ``forward`` of an uninitialised layer sets
    ``loc`` and ``log_scale`` so that this batch comes out with zero mean and unit variance
    per feature. The ``initialized`` flag is a buffer, so it is saved in checkpoints and a
    loaded model never re-initialises. ``inverse`` never initialises.

        log|det dz/dx| = P * sum_c log_scale_c,   P = 1 for vectors, H * W for images.

    Shape:
        x: ``(B, C)`` or ``(B, C, H, W)`` -> z like x, logabsdet ``(B,)``.
    Reference: Kingma & Dhariwal, Glow, 2018, Sec. 3.1.
    """

    initialized: Tensor  # a buffer

    def __init__(self, features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.loc = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``loc`` and ``log_scale`` from the statistics of ``x`` over every dim but 1."""
        dims = [0, *range(2, x.dim())]
        self.loc.copy_(x.mean(dim=dims))
        if x.numel() // x.shape[1] > 1:  # a spread exists only with more than one value per feature
            self.log_scale.copy_(-torch.log(x.std(dim=dims, unbiased=False) + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self.initialized:
            self.initialize(x)
        return affine_per_feature(x, self.loc, self.log_scale, inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return affine_per_feature(z, self.loc, self.log_scale, inverse=True)
