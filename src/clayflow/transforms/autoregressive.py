r"""Autoregressive layers with a MADE conditioner (``clayflow.nn.made``): each feature is
transformed given the features before it, so the Jacobian is triangular.

* ``AffineAutoregressive`` (MAF): ``z_i = x_i exp(s_i(x_<i)) + t_i(x_<i)``;
* ``SplineAutoregressive`` (NSF-AR): ``z_i = RQS(x_i; theta_i(x_<i))``.

Which direction is fast: ``forward`` (data -> latent, so ``log_prob``) takes one MADE pass,
because every ``x_<i`` is known; ``inverse`` (latent -> data, so sampling) takes D passes,
one per feature, since ``x_i`` needs ``x_<i`` first. Wrapped in ``Inverse`` (IAF), the
directions swap: sampling takes one pass, the density of new data D passes (the density of
the flow's own samples comes with them in one pass, ``sample_and_log_prob``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict, Unpack, cast

import torch
from torch import Tensor

from clayflow.core.transform import Transform, sum_except_batch
from clayflow.errors import ClayflowError
from clayflow.nn.made import MADE
from clayflow.nn.mlp import conditioner_activation
from clayflow.transforms.coupling import BoundedScale, ScaleBound, affine, zero_init_last_layer
from clayflow.transforms.splines import apply_spline, spline_params_per_feature

if TYPE_CHECKING:

    class _MADEOptions(TypedDict, total=False):
        """The MADE's keyword arguments that the subclasses pass on to ``_Autoregressive``."""

        hidden: int
        depth: int
        context_features: int
        residual: bool
        activation: str
        dropout: float


class _Autoregressive(Transform):
    """A MADE over the features and an elementwise map given its parameters."""

    params_per_feature = 1

    def __init__(
        self,
        features: int,
        hidden: int = 128,
        depth: int = 2,
        context_features: int = 0,
        residual: bool = False,
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.features = features
        self.net = MADE(features, self.params_per_feature, hidden, depth, context_features, residual,
                        conditioner_activation(activation), dropout)  # fmt: skip
        zero_init_last_layer(self.net)  # a new layer is the identity

    def _params(self, x: Tensor, context: Tensor | None) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ClayflowError(f"this autoregressive layer was built for {self.features} features, got shape {tuple(x.shape)}")
        return cast(Tensor, self.net(x, context)).view(len(x), self.features, self.params_per_feature)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._map(x, self._params(x, context), inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = torch.zeros_like(z)
        for _ in range(self.features):  # pass k fixes feature k (its inputs x_<k are final)
            x, logabsdet = self._map(z, self._params(x, context), inverse=True)
        return x, logabsdet

    def _map(self, v: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """The elementwise map of ``v`` ``(B, D)`` given ``params`` ``(B, D, P)``."""
        raise NotImplementedError


class AffineAutoregressive(_Autoregressive, BoundedScale):
    r"""Masked affine autoregressive layer (MAF): ``z_i = x_i exp(s_i) + t_i``, with
    ``(t_i, s_i)`` from a MADE of ``x_<i`` (and the context), ``s`` bounded as ``ScaleBound``
    says. ``log|det dz/dx| = sum_i s_i``. Density in one pass, sampling in D passes; ``Inverse``
    of it is IAF.

    Args:
        features: D.
        hidden, depth, residual, activation, dropout: the MADE's (see ``clayflow.nn.made.MADE``).
        context_features: K of an optional context ``(B, K)``.
        scale_bound, clamp: as ``AffineCoupling``'s.
    Shape:
        x: ``(B, D)`` -> z ``(B, D)``, logabsdet ``(B,)``.
    Reference: Papamakarios, Pavlakou & Murray, Masked Autoregressive Flow for Density
    Estimation, 2017; Kingma et al., Improved Variational Inference with Inverse
    Autoregressive Flow, 2016.
    """

    params_per_feature = 2

    def __init__(
        self,
        features: int,
        *,
        scale_bound: ScaleBound = ScaleBound.TANH,
        clamp: float = 2.0,
        **made: Unpack[_MADEOptions],
    ):
        super().__init__(features, **made)
        self.init_scale(features, scale_bound, clamp)

    def _map(self, v: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        return affine(v, params[..., 0], self.log_scale(params[..., 1]), inverse)


class SplineAutoregressive(_Autoregressive):
    r"""Rational-quadratic spline autoregressive layer (NSF-AR): ``z_i = RQS(x_i; theta_i)``
    with the spline's widths, heights and derivatives ``theta_i`` from a MADE of ``x_<i``;
    identity outside ``[-bound, bound]`` (see ``clayflow.transforms.splines``).

    Args:
        features: D.
        bins, bound: the splines' number of bins and half-width.
        other arguments: as ``AffineAutoregressive``.
    Shape:
        x: ``(B, D)`` -> z ``(B, D)``, logabsdet ``(B,)``.
    Reference: Durkan, Bekasov, Murray & Papamakarios, Neural Spline Flows, 2019.
    """

    def __init__(self, features: int, *, bins: int = 8, bound: float = 5.0, **made: Unpack[_MADEOptions]):
        self.params_per_feature = spline_params_per_feature(bins, bound)
        super().__init__(features, **made)
        self.bins, self.bound = bins, float(bound)

    def _map(self, v: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        out, log_slope = apply_spline(v, params, self.bins, self.bound, inverse)
        return out, sum_except_batch(log_slope)

