r"""Pre-processing of discrete data (images) as transforms, so their log-dets land in
``log_prob`` and bits/dim with no special case.

RealNVP's chain for pixels with ``k`` levels is ``Dequantize(k)``, ``ScalarAffine(1 / k)``,
``Logit(alpha)``. The flow's density is then one of the dequantized data on ``[0, k)^D``,
whose negative log, divided by ``D ln 2``, is the bits/dim of the RealNVP, Glow and FFJORD
papers: by Jensen, ``E_u[-log p(x + u)] >= -log P(x)`` for the discrete ``x``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from clayflow.core import batch
from clayflow.core.transform import Transform, identity_logabsdet, sum_except_batch
from clayflow.errors import ClayflowError, UsageError

_FLOAT32_EPS = torch.finfo(torch.float32).eps


class LevelsError(ClayflowError, ValueError):
    """Image input that is not integer levels in ``[0, levels)``: a ``ValueError``, and one
    line in the CLI."""


class Dequantize(Transform):
    r"""Uniform dequantization: y = x + u, u ~ U[0, 1)^D, for integers x in {0, ..., k-1}.

    log|det| = 0: the model's density lives on ``[0, k)^D`` in the units of one level, so
    ``-E_u log p(x + u)`` bounds ``-log P(x)`` of the discrete data from above. Fresh noise
    is drawn on every call, in training and evaluation alike (from torch's global RNG, through
    ``clayflow.core.batch``; fix it with ``torch.random.fork_rng`` for a repeatable evaluation). ``inverse`` quantizes:
    ``floor(y)`` clipped to ``[0, k-1]``, so ``inverse(forward(x)) == x`` exactly. Through a
    whole flow, the layers after it add their round-trip error to y: in float32 (about 1e-5
    of a level) a pixel whose noise falls that close to a level's edge can come back one
    level off; in float64 (what ``verify`` checks) the reconstruction is exact.

    ``forward`` refuses (``LevelsError``) values that are not integers in ``[0, k)``: a level
    outside gives NaN or a density outside the model's support, and intensities scaled to
    ``[0, 1]`` would give a plausible but wrong likelihood.

    Shape:
        x: ``(B, *)`` integer-valued floats -> y like x, logabsdet ``(B,)`` of zeros.
    Reference: Theis et al., A note on the evaluation of generative models, 2016.
    """

    def __init__(self, levels: int):
        super().__init__()
        if int(levels) != levels or levels < 2:
            raise ClayflowError(f"dequantization needs an integer number of levels >= 2, got {levels}")
        self.levels = int(levels)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not torch.compiler.is_compiling():
            check_levels(x, self.levels)
        return x + batch.rand_like(x), identity_logabsdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z.floor().clamp(0, self.levels - 1), identity_logabsdet(z)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


def check_levels(x: Tensor, levels: int) -> None:
    """Raise ``LevelsError`` unless every element of ``x`` is an integer in ``[0, levels)``."""
    if x.numel() == 0 or not bool(((x < 0) | (x > levels - 1) | (x != x.floor())).any()):
        return  # one fused check and one host sync on the common path
    low, high = x.min().item(), x.max().item()
    if low < 0 or high > levels - 1:
        raise LevelsError(
            f"this image model takes integer levels 0..{levels - 1}, got values from {low:g} to {high:g}"
        )
    # every value in range, so some value is not an integer (or is NaN)
    hint = f" (intensities scaled to [0, 1]? multiply them by {levels - 1})" if high <= 1 else ""
    raise LevelsError(f"this image model takes integer levels 0..{levels - 1}, got non-integer values{hint}")


class DequantizeColumns(Transform):
    r"""Uniform dequantization of some columns of a table: y_j = x_j + h_j u_j, u_j ~ U[0, 1),
    for the columns j in ``columns``, whose values lie on a grid of step h_j (``steps``,
    default 1: integers); the others pass unchanged.

    log|det| = 0. The flow's density is then one over the continuous columns and the
    dequantized ones, and ``E_u log p(x + h u)`` is a lower bound on the log of the discrete
    probability over prod_j h_j, times the continuous density: the same units as an
    all-continuous table. Noise is drawn on every call, in training and evaluation (as
    ``Dequantize``); ``inverse`` rounds the dequantized columns down to their grid.

    Shape:
        x: ``(B, D)`` -> y ``(B, D)``, logabsdet ``(B,)`` of zeros.
    """

    mask: Tensor  # a buffer

    def __init__(self, features: int, columns: list[int], steps: list[float] | None = None):
        super().__init__()
        steps = [1.0] * len(columns) if steps is None else [float(h) for h in steps]
        if len(steps) != len(columns) or not all(h > 0 for h in steps):
            raise ClayflowError(f"DequantizeColumns needs a positive step per column, got {steps} for {columns}")
        mask = torch.zeros(features, dtype=torch.bool)
        mask[list(columns)] = True
        self.register_buffer("mask", mask)
        # Python floats, 0 on continuous columns: exact decimals that ``.to(dtype)`` cannot round,
        # and no state-dict entry (the model's spec records them; older checkpoints: step 1).
        self.steps = [0.0] * features
        for j, h in zip(columns, steps):
            self.steps[j] = h

    def steps_like(self, x: Tensor) -> Tensor:
        """The step of each column ``(D,)`` (0 on continuous ones) in ``x``'s dtype and device."""
        return torch.tensor(self.steps, dtype=x.dtype, device=x.device)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x + batch.rand_like(x) * self.steps_like(x), identity_logabsdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z64 = z.double()
        step = torch.where(self.mask, self.steps_like(z64), 1.0)
        # floor(z / h), allowing 2 float32 ulps for a grid value stored just below its point (0.9
        # is 0.89999998); k h is then rounded to 9 decimals, so 9 * 0.1 is 0.9, not 0.9000000000000001.
        k = torch.floor(z64 / step + 2 * _FLOAT32_EPS * z64.abs() / step)
        on_grid = torch.round(k * step, decimals=9).to(z.dtype)
        return torch.where(self.mask, on_grid, z), identity_logabsdet(z)

    def extra_repr(self) -> str:
        columns = self.mask.nonzero().flatten().tolist()
        return f"columns={columns}, steps={[self.steps[j] for j in columns]}"


class ScalarAffine(Transform):
    r"""Fixed z = scale * x + shift with scalars; log|det| = D log|scale|.

    ``ScalarAffine(1 / k)`` maps ``[0, k)`` to ``[0, 1)`` before a logit (RealNVP);
    ``ScalarAffine(1 / k, -0.5)`` centres pixels as Glow does.

    Shape:
        x: ``(B, *)`` -> z like x, logabsdet ``(B,)``.
    """

    def __init__(self, scale: float, shift: float = 0.0):
        super().__init__()
        if not (math.isfinite(scale) and scale != 0 and math.isfinite(shift)):
            raise ClayflowError(
                f"ScalarAffine needs a finite non-zero scale and finite shift, got {scale}, {shift}"
            )
        self.scale, self.shift = float(scale), float(shift)

    def _logabsdet(self, x: Tensor) -> Tensor:
        return x.new_full((x.shape[0],), x[0].numel() * math.log(abs(self.scale)))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x * self.scale + self.shift, self._logabsdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return (z - self.shift) / self.scale, -self._logabsdet(z)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, shift={self.shift}"


class Logit(Transform):
    r"""z = logit(p), p = alpha + (1 - 2 alpha) y, for y in [0, 1]: maps pixels to R.

    ``alpha`` keeps p away from 0 and 1 (RealNVP uses 0.05). Per element,
    dz/dy = (1 - 2 alpha) / (p (1 - p)), so

        log|det dz/dy| = sum_i [log(1 - 2 alpha) - log p_i - log(1 - p_i)].

    The inverse is ``y = (sigmoid(z) - alpha) / (1 - 2 alpha)``.

    Shape:
        y: ``(B, *)`` -> z like y, logabsdet ``(B,)``.
    Reference: Dinh et al., Density estimation using Real NVP, 2017, Sec. 4.1.
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise UsageError(f"the logit boundary alpha must be in [0, 0.5), got {alpha}")
        self.alpha = float(alpha)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * x
        log_p, log_1mp = torch.log(p), torch.log1p(-p)
        logabsdet = sum_except_batch(math.log1p(-2 * self.alpha) - log_p - log_1mp)
        return log_p - log_1mp, logabsdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_p, log_1mp = F.logsigmoid(z), F.logsigmoid(-z)
        x = (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)
        return x, sum_except_batch(log_p + log_1mp - math.log1p(-2 * self.alpha))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
