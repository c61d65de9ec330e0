"""Linear maps over the feature (or channel) dimension: fixed permutations, Glow's learned
invertible 1x1 convolution (plain or LU-decomposed), and a learned whitening of vectors."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clayflow.core.transform import Transform, identity_logabsdet, positions_per_feature
from clayflow.errors import ClayflowError


class Permutation(Transform):
    r"""z = x[:, perm]: a fixed reordering of dim 1 (features or channels); log|det| = 0.

    Shape:
        x: ``(B, D)`` or ``(B, C, H, W)`` -> z like x, logabsdet ``(B,)`` of zeros.
    """

    permutation: Tensor  # buffers
    inverse_permutation: Tensor

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

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x.index_select(1, self.permutation), identity_logabsdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z.index_select(1, self.inverse_permutation), identity_logabsdet(z)


class InvertibleConv1x1(Transform):
    r"""z = W x at every position: a learned invertible linear map of dim 1 (Glow's 1x1 conv).

    * plain (``lu=False``): W is a parameter, initialised as a random rotation;
      log|det dz/dx| = n log|det W|.
    * LU (``lu=True``): W = P L (U + diag(sign * exp(log_s))) with the permutation P and the
      signs fixed, L unit lower-triangular and U strictly upper-triangular learned;
      log|det dz/dx| = n sum(log_s), no determinant to compute.

    n = 1 for vectors (a learned linear layer) and H * W for images. Outside training and
    autograd (e.g. sampling), W^-1 is cached until the weights change. ``init="identity"``
    starts from W = I (LU only) instead of a random rotation, drawing no random numbers.

    Shape:
        x: ``(B, C)`` or ``(B, C, H, W)`` -> z like x, logabsdet ``(B,)``.
    Reference: Kingma & Dhariwal, Glow, 2018, Sec. 3.2.
    """

    row_order: Tensor  # buffers (LU only)
    negative: Tensor

    def __init__(self, features: int, lu: bool = True, init: str = "rotation"):
        super().__init__()
        self.lu = bool(lu)
        if init not in ("rotation", "identity") or (init == "identity" and not self.lu):
            raise ClayflowError(f"init must be 'rotation', or 'identity' with lu=True; got {init!r}")
        if init == "identity":
            rotation = torch.eye(features)
        else:
            rotation = torch.linalg.qr(torch.randn(features, features))[0]
        if not self.lu:
            self.weight = nn.Parameter(rotation)
        else:
            permutation, lower, upper = torch.linalg.lu(rotation)
            diagonal = upper.diagonal()
            self.register_buffer("row_order", permutation.argmax(dim=1))  # W = (L U)[row_order]
            self.register_buffer("negative", diagonal < 0)
            self.lower = nn.Parameter(torch.tril(lower, -1))
            self.upper = nn.Parameter(torch.triu(upper, 1))
            self.log_s = nn.Parameter(diagonal.abs().log())
        self._inverse_cache: tuple[Tensor, Tensor] | None = None  # (W, W^-1)

    def weight_matrix(self) -> Tensor:
        """W ``(C, C)``."""
        if not self.lu:
            return self.weight
        eye = torch.eye(len(self.log_s), dtype=self.log_s.dtype, device=self.log_s.device)
        lower = torch.tril(self.lower, -1) + eye
        sign = 1 - 2 * self.negative.to(self.log_s.dtype)
        upper = torch.triu(self.upper, 1) + torch.diag(sign * torch.exp(self.log_s))
        return (lower @ upper)[self.row_order]

    def log_abs_det_weight(self) -> Tensor:
        """log|det W| (a scalar)."""
        # torch.linalg.slogdet is untyped (Any) in torch
        return self.log_s.sum() if self.lu else cast(Tensor, torch.linalg.slogdet(self.weight).logabsdet)

    def _inverse_weight(self) -> Tensor:
        weight = self.weight_matrix()
        if self.training or torch.is_grad_enabled():
            return cast(Tensor, torch.linalg.inv(weight))  # torch.linalg.inv is untyped (Any) in torch
        # Keyed by the weight's values: a fused optimiser step updates parameters in place
        # without bumping their version counters, so (data_ptr, _version) would go stale.
        cached = self._inverse_cache  # a plain attribute: .double() and .to() leave it as it was
        if cached is None or cached[0].dtype != weight.dtype or cached[0].device != weight.device \
                or not torch.equal(cached[0], weight):  # fmt: skip
            self._inverse_cache = (weight.clone(), torch.linalg.inv(weight))
        return cast("tuple[Tensor, Tensor]", self._inverse_cache)[1]  # set just above if it was None

    @staticmethod
    def _apply_matrix(x: Tensor, matrix: Tensor) -> Tensor:
        if x.dim() == 2:
            return x @ matrix.T
        return F.conv2d(x, matrix[:, :, None, None])

    def _logabsdet(self, x: Tensor) -> Tensor:
        return (self.log_abs_det_weight() * positions_per_feature(x)).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._apply_matrix(x, self.weight_matrix()), self._logabsdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._apply_matrix(z, self._inverse_weight()), -self._logabsdet(z)

    def extra_repr(self) -> str:
        return f"features={self.log_s.numel() if self.lu else self.weight.shape[0]}, lu={self.lu}"


class Whitening(Transform):
    r"""z = A (W (x - mean) - shift): a fixed whitening W fitted to data, then a learned linear
    map A (LU-decomposed, as ``InvertibleConv1x1``) and shift, both starting as the identity.

    ``fit(x)`` sets ``mean`` to the mean of ``x`` ``(N, D)`` and W to ``C^{-1}`` where
    ``C C^T = cov(x)`` (Cholesky, maximum likelihood with 1/N): then z has zero mean and
    identity covariance on ``x``, and with an N(0, I) base the flow is exactly the
    full-covariance Gaussian fitted to ``x``. Training moves the whole map A W through A, in
    whitened coordinates, where the optimiser's steps are well scaled (learning W itself in the
    data's coordinates is ill-conditioned when columns are strongly correlated), and weight
    decay pulls A towards the identity, i.e. back towards the fitted whitening. Until fitted
    (or loaded) W is the identity.

        log|det dz/dx| = log|det A| + log|det W| = sum log diag(U_A) - sum log diag(C)

    Shape:
        x: ``(B, D)`` -> z ``(B, D)``, logabsdet ``(B,)``.
    """

    mean: Tensor  # buffers
    cholesky: Tensor

    def __init__(self, features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("cholesky", torch.eye(features))  # C (its lower triangle): W = C^-1
        self.shift = nn.Parameter(torch.zeros(features))
        self.linear = InvertibleConv1x1(features, lu=True, init="identity")

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Whiten ``x`` ``(N, D)``: computed in float64; refuses a singular covariance."""
        x = x.double()
        mean = x.mean(0)
        cov = (x - mean).T @ (x - mean) / len(x)
        factor, info = torch.linalg.cholesky_ex(cov)
        if info != 0 or not bool((factor.diagonal() > 0).all()):
            raise ClayflowError("cannot whiten: the covariance of the data is singular")
        self.mean.copy_(mean)
        self.cholesky.copy_(factor)

    def _log_abs_det_whitening(self, x: Tensor) -> Tensor:
        return -self.cholesky.diagonal().abs().log().sum().expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        white = torch.linalg.solve_triangular(self.cholesky, (x - self.mean).T, upper=False).T
        z, logabsdet = self.linear(white - self.shift)
        return z, logabsdet + self._log_abs_det_whitening(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        white, logabsdet = self.linear.inverse(z)
        x = (white + self.shift) @ self.cholesky.tril().T + self.mean
        return x, logabsdet - self._log_abs_det_whitening(z)
