r"""Volume-preserving reshapes of images: the squeeze (space-to-depth) of RealNVP and Glow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from torch import Tensor

from clayflow.core.transform import Transform, identity_logabsdet
from clayflow.errors import ClayflowError


class Squeeze(Transform):
    r"""Space-to-depth: each 2x2 block of pixels becomes 4 channels; log|det| = 0.

    Channel ``c * 4 + 2 * di + dj`` of the output holds input channel ``c`` at offset
    ``(di, dj)`` of each block, as in the RealNVP and Glow code.

    Shape:
        x: ``(B, C, H, W)`` with even H, W -> z ``(B, 4C, H/2, W/2)``, logabsdet ``(B,)``.
    Reference: Dinh et al., Density estimation using Real NVP, 2017, Sec. 3.6.
    """

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = self._check(x.shape)
        z = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return z.reshape(b, 4 * c, h // 2, w // 2), identity_logabsdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = z.shape
        if c % 4:
            raise ClayflowError(f"unsqueeze needs a multiple of 4 channels, got shape {tuple(z.shape)}")
        x = z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c // 4, 2 * h, 2 * w), identity_logabsdet(z)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = self._check((1, *shape))[1:]
        return (4 * c, h // 2, w // 2)

    @staticmethod
    def _check(shape: Sequence[int]) -> tuple[int, int, int, int]:
        if len(shape) != 4 or shape[2] % 2 or shape[3] % 2:
            raise ClayflowError(
                f"squeeze needs images (B, C, H, W) with even height and width, got shape {tuple(shape)}"
            )
        return cast("tuple[int, int, int, int]", tuple(shape))  # 4 long: checked above
