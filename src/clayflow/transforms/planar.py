r"""The flows of variational inference's first paper (Rezende & Mohamed 2015): planar and
radial maps, defined in the generative direction, latent z -> data x.

Both are cheap to sample from and to score their own samples (``inverse``, the direction
these flows are built for: ``Flow.sample_and_log_prob`` and reverse-KL training use only it).
Their data -> latent direction has no closed form for the planar map; ``forward`` solves it
numerically to the float precision of the input (see ``Planar.forward``), so ``log_prob`` of
any point is exact up to rounding, only slower. The radial map's is closed form.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clayflow.core.transform import Transform

BISECTION_STEPS = {torch.float64: 64, torch.float32: 32, torch.bfloat16: 12, torch.float16: 16}


class Planar(Transform):
    r"""x = z + û tanh(wᵀz + b), a contraction or expansion along one hyperplane's normal w.

    Invertible because û is u projected so that wᵀû = -1 + softplus(wᵀu) > -1 (the paper's
    appendix A): along w the map is α -> α + (wᵀû) tanh(α + b), strictly increasing.
    ``log|det dx/dz| = log(1 + (wᵀû) tanh'(wᵀz + b))``.

    ``forward`` (x -> z): with s = wᵀx, the root α = wᵀz of α + (wᵀû) tanh(α + b) = s lies in
    [s - |wᵀû|, s + |wᵀû|]; bisection halves that bracket to the input dtype's resolution (64
    halvings in float64), then one Newton step carries the gradient (the implicit function
    theorem's, exact at the root). z = x - û tanh(α + b). Second derivatives through
    ``forward`` (a Jacobian penalty on log p of data) lack the root's second-order terms;
    ``inverse``, which sampling and reverse KL use, is exact to every order.

    In float32, wᵀu below about -17 rounds wᵀû to -1 exactly: the map is then flat where
    wᵀz + b = 0 and round trips there lose digits (float64 holds to about -37).

    Args:
        features: D. w ~ U(-1/√D, 1/√D), b = 0 and u = w log(e - 1) / |w|² + U(-0.01, 0.01),
            so that wᵀu ≈ softplus⁻¹(1), wᵀû ≈ 0 and each layer starts near the identity (the
            paper's random u makes wᵀû ≈ -0.31: 32 such layers contract N(0, I) to a point).
    Shape:
        ``(B, D)`` -> ``(B, D)``, logabsdet ``(B,)``.
    """

    def __init__(self, features: int):
        super().__init__()
        bound = 1 / math.sqrt(features)
        w = torch.empty(features).uniform_(-bound, bound)
        identity = w * math.log(math.e - 1) / (w @ w)
        self.w = nn.Parameter(w)
        self.u = nn.Parameter(identity + torch.empty(features).uniform_(-0.01, 0.01))
        self.b = nn.Parameter(torch.zeros(()))

    def _u_hat(self) -> tuple[Tensor, Tensor]:
        """û and wᵀû (> -1)."""
        wu = self.w @ self.u
        w_u_hat = -1 + F.softplus(wu)
        u_hat = self.u + (w_u_hat - wu) * self.w / (self.w @ self.w).clamp_min(1e-12)
        return u_hat, w_u_hat

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u_hat, w_u_hat = self._u_hat()
        pre = z @ self.w + self.b
        activation = torch.tanh(pre)
        logabsdet = torch.log1p(w_u_hat * (1 - activation**2))
        return z + activation[:, None] * u_hat, logabsdet

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u_hat, w_u_hat = self._u_hat()
        s = x @ self.w
        with torch.no_grad():
            spread = w_u_hat.abs().detach()
            low, high = s - spread, s + spread
            for _ in range(BISECTION_STEPS.get(x.dtype, 64)):
                middle = (low + high) / 2
                above = middle + w_u_hat * torch.tanh(middle + self.b) > s
                low, high = torch.where(above, low, middle), torch.where(above, middle, high)
            alpha = (low + high) / 2
        slope = 1 + w_u_hat * (1 - torch.tanh(alpha + self.b) ** 2)
        alpha = alpha - (alpha + w_u_hat * torch.tanh(alpha + self.b) - s) / slope  # Newton: the gradient
        activation = torch.tanh(alpha + self.b)
        logabsdet = -torch.log1p(w_u_hat * (1 - activation**2))
        return x - activation[:, None] * u_hat, logabsdet


class Radial(Transform):
    r"""x = z + β h(r) (z - z₀) with r = |z - z₀| and h(r) = 1 / (α + r): a contraction or
    expansion around the point z₀.

    α = softplus(α̃) > 0 and β = -α + softplus(β̃) > -α keep it invertible (appendix A of the
    paper). ``log|det dx/dz| = (D - 1) log(1 + β h) + log(1 + β h + β h'(r) r)``, where
    1 + β h + β h' r = 1 + β α / (α + r)².

    ``forward`` (x -> z) is closed form: the radius ρ = |x - z₀| gives r as the positive root of
    r² + (α + β - ρ) r - α ρ = 0 (taken in the form without cancellation), and
    z - z₀ = (x - z₀) (α + r) / (α + r + β).

    Args:
        features: D. z₀ ~ U(-1/√D, 1/√D); α̃ ~ U(-1/√D, 1/√D) and β̃ = α̃ + U(-0.01, 0.01), so
            that β ≈ 0 and each layer starts near the identity.
    Shape:
        ``(B, D)`` -> ``(B, D)``, logabsdet ``(B,)``.
    """

    def __init__(self, features: int):
        super().__init__()
        bound = 1 / math.sqrt(features)
        self.features = features
        self.z0 = nn.Parameter(torch.empty(features).uniform_(-bound, bound))
        alpha_raw = torch.empty(()).uniform_(-bound, bound)
        self.alpha_raw = nn.Parameter(alpha_raw)
        self.beta_raw = nn.Parameter(alpha_raw + torch.empty(()).uniform_(-0.01, 0.01))

    def _alpha_beta(self) -> tuple[Tensor, Tensor]:
        alpha = F.softplus(self.alpha_raw)
        return alpha, -alpha + F.softplus(self.beta_raw)

    def _logabsdet(self, r: Tensor) -> Tensor:
        """log|det dx/dz| at radius r (of z) ``(B,)``."""
        alpha, beta = self._alpha_beta()
        h = 1 / (alpha + r)
        return (self.features - 1) * torch.log1p(beta * h) + torch.log1p(beta * alpha * h**2)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        alpha, beta = self._alpha_beta()
        offset = z - self.z0
        r = offset.norm(dim=1)
        return z + (beta / (alpha + r))[:, None] * offset, self._logabsdet(r)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        alpha, beta = self._alpha_beta()
        offset = x - self.z0
        rho = offset.norm(dim=1)
        linear = alpha + beta - rho
        root = torch.sqrt(linear**2 + 4 * alpha * rho)
        r = torch.where(linear > 0, 2 * alpha * rho / (linear + root), (root - linear) / 2)
        z = self.z0 + offset * ((alpha + r) / (alpha + r + beta))[:, None]
        return z, -self._logabsdet(r)
