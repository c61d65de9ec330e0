r"""Monotonic rational-quadratic splines (Durkan et al., Neural Spline Flows, 2019), and the
coupling layer built on them (NSF-C); the autoregressive form is in ``autoregressive.py``.

A spline of K bins maps ``[-B, B]`` onto itself: knots ``(x_k, y_k)``, k = 0..K, with
``x_0 = y_0 = -B`` and ``x_K = y_K = B``, and derivatives ``d_k > 0`` at the knots. In bin k,
with ``w_k = x_{k+1} - x_k``, ``h_k = y_{k+1} - y_k``, ``s_k = h_k / w_k`` and
``theta = (x - x_k) / w_k`` in [0, 1],

    y = y_k + h_k (s_k theta^2 + d_k theta (1 - theta)) / (s_k + (d_{k+1} + d_k - 2 s_k) theta (1 - theta))

    dy/dx = s_k^2 (d_{k+1} theta^2 + 2 s_k theta (1 - theta) + d_k (1 - theta)^2) / denominator^2.

Outside ``[-B, B]`` the map is the identity (linear tails), so ``d_0 = d_K = 1`` keeps it
continuously differentiable. The inverse solves the quadratic in theta in its stable form,
``theta = 2c / (-b - sqrt(b^2 - 4ac))``, which does not cancel when ``a`` is near 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from clayflow.core.transform import sum_except_batch
from clayflow.errors import ClayflowError, UsageError
from clayflow.transforms.coupling import NetFactory, _Coupling

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3
# softplus(u + DERIVATIVE_SHIFT) = 1 - MIN_DERIVATIVE at u = 0: a zero network output is the identity
DERIVATIVE_SHIFT = math.log(math.expm1(1 - MIN_DERIVATIVE))


MAX_BINS = 100  # with at least MIN_BIN_WIDTH of the interval each, the bins must fit in it


def check_bins(bins: int, bound: float) -> None:
    """Refuse a number of bins outside 1..MAX_BINS or a bound <= 0 (a UsageError naming the flags)."""
    if int(bins) != bins or not 1 <= bins <= MAX_BINS or not bound > 0:
        raise UsageError(f"--bins must be an integer in 1..{MAX_BINS} and --tail-bound > 0; got {bins} and {bound}")


def spline_params_per_feature(bins: int, bound: float) -> int:
    """Raw parameters per transformed entry of a spline of ``bins`` bins on ``[-bound, bound]``
    (checked by ``check_bins``): K widths, K heights and K - 1 interior derivatives."""
    check_bins(bins, bound)
    return 3 * bins - 1


def _knots(raw: Tensor, bound: float, minimum: float) -> Tensor:
    """Knot positions ``(..., K + 1)`` from raw bin sizes ``(..., K)``: a softmax, each bin
    at least ``minimum`` of the interval, spread over ``[-bound, bound]``."""
    bins = raw.shape[-1]
    sizes = minimum + (1 - minimum * bins) * torch.softmax(raw, dim=-1)
    knots = F.pad(torch.cumsum(sizes, dim=-1), (1, 0))
    edge = torch.full_like(knots[..., :1], bound)
    return torch.cat([-edge, 2 * bound * knots[..., 1:-1] - bound, edge], dim=-1)  # ends exactly at -B and B


def rational_quadratic_spline(
    x: Tensor, raw_widths: Tensor, raw_heights: Tensor, raw_derivatives: Tensor, bound: float, inverse: bool = False
) -> tuple[Tensor, Tensor]:
    r"""The spline (or its inverse) of each entry of ``x`` with its own parameters.

    Args:
        x: any shape ``S``.
        raw_widths, raw_heights: ``(*S, K)`` unnormalised bin widths and heights.
        raw_derivatives: ``(*S, K - 1)`` unnormalised derivatives at the interior knots.
        bound: B; outside ``[-B, B]`` the map is the identity.
        inverse: map y -> x instead of x -> y.
    Returns:
        the mapped values (shape ``S``) and ``log|dy/dx|`` (or for the inverse ``log|dx/dy|``)
        of each entry (shape ``S``).
    """
    if raw_widths.shape[-1] < 1 or raw_derivatives.shape[-1] != raw_widths.shape[-1] - 1:
        raise ClayflowError("a rational-quadratic spline needs K widths, K heights and K - 1 derivatives")
    xs = _knots(raw_widths, bound, MIN_BIN_WIDTH)
    ys = _knots(raw_heights, bound, MIN_BIN_HEIGHT)
    interior = MIN_DERIVATIVE + F.softplus(raw_derivatives + DERIVATIVE_SHIFT)
    ones = interior.new_ones((*interior.shape[:-1], 1))
    derivatives = torch.cat([ones, interior, ones], dim=-1)  # (*S, K + 1): slope 1 at +-B, as the tails

    inside = (x >= -bound) & (x <= bound)
    v = x.clamp(-bound, bound)  # outside values never reach the spline's formulas (no NaN gradients)
    knots = ys if inverse else xs
    index = (v[..., None] >= knots[..., 1:-1]).sum(-1, keepdim=True)  # bin k: knots[k] <= v < knots[k + 1]

    def at(t: Tensor, offset: int = 0) -> Tensor:
        return t.gather(-1, index + offset).squeeze(-1)

    x_k, w_k = at(xs), at(xs, 1) - at(xs)
    y_k, h_k = at(ys), at(ys, 1) - at(ys)
    d_k, d_k1 = at(derivatives), at(derivatives, 1)
    s_k = h_k / w_k
    curvature = d_k1 + d_k - 2 * s_k
    if inverse:
        dy = v - y_k
        a = h_k * (s_k - d_k) + dy * curvature
        b = h_k * d_k - dy * curvature
        c = -s_k * dy
        root = (b.pow(2) - 4 * a * c).clamp_min(0).sqrt()
        theta = (2 * c / (-b - root)).clamp(0, 1)
        out = theta * w_k + x_k
    else:
        theta = (v - x_k) / w_k
        between = theta * (1 - theta)
        out = y_k + h_k * (s_k * theta.pow(2) + d_k * between) / (s_k + curvature * between)
    between = theta * (1 - theta)
    denominator = s_k + curvature * between
    slope = s_k.pow(2) * (d_k1 * theta.pow(2) + 2 * s_k * between + d_k * (1 - theta).pow(2)) / denominator.pow(2)
    log_slope = torch.log(slope)
    if inverse:
        log_slope = -log_slope
    return torch.where(inside, out, x), torch.where(inside, log_slope, torch.zeros_like(log_slope))


class SplineCoupling(_Coupling):
    r"""Rational-quadratic spline coupling (NSF-C): z_a = x_a, z_b = RQS(x_b; theta(x_a)), one
    spline of ``bins`` bins on ``[-bound, bound]`` per transformed entry, identity outside.

    log|det dz/dx| = sum_i log RQS'(x_b,i). The net's zero-initialised last layer makes a new
    coupling the identity (equal bins, unit derivatives).

    Args:
        mask: as ``AffineCoupling`` (1-D over features/channels, or ``(C, H, W)``).
        make_net: factory ``(in, out)``; it maps ``(B, D_a [+ K]) -> (B, (3 bins - 1) D_b)``,
            or for images ``(B, C_a, H, W) -> (B, (3 bins - 1) C_b, H, W)``: per transformed
            entry its widths, heights and interior derivatives.
        context_features: size of an optional context appended to the net's input.
        bins: K, the number of bins.
        bound: B, the half-width of the interval the spline covers (data beyond it pass
            through unchanged: standardise data first).
    Shape:
        x: ``(B, D)`` or ``(B, C, H, W)`` -> z like x, logabsdet ``(B,)``.
    Reference: Durkan, Bekasov, Murray & Papamakarios, Neural Spline Flows, 2019.
    """

    def __init__(self, mask: Tensor, make_net: NetFactory, context_features: int = 0, bins: int = 8, bound: float = 5.0):
        self.params_per_feature = spline_params_per_feature(bins, bound)
        super().__init__(mask, make_net, context_features)
        self.bins, self.bound = bins, float(bound)

    def _map(
        self, v: Tensor, params: Tensor, inverse: bool, free: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        # (B, D_b, *, 3K - 1); Tensor.unflatten is unannotated in torch
        raw = params.unflatten(  # type: ignore[no-untyped-call]
            1, (-1, self.params_per_feature)
        ).movedim(2, -1)
        out, log_slope = apply_spline(v, raw, self.bins, self.bound, inverse)
        if free is not None:
            out, log_slope = torch.where(free.bool(), out, v), log_slope * free
        return out, sum_except_batch(log_slope)


def apply_spline(v: Tensor, raw: Tensor, bins: int, bound: float, inverse: bool) -> tuple[Tensor, Tensor]:
    """``rational_quadratic_spline`` of ``v`` with its raw parameters ``raw`` ``(*v.shape, 3K - 1)``
    laid out as K widths, K heights, K - 1 derivatives."""
    # Tensor.split is unannotated in torch
    widths, heights, derivatives = raw.split([bins, bins, bins - 1], dim=-1)  # type: ignore[no-untyped-call]
    return rational_quadratic_spline(v, widths, heights, derivatives, bound, inverse)
