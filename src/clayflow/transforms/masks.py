"""Binary masks for coupling layers over the feature (or channel) dimension.

``True`` marks features that pass through unchanged and condition the others.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor


class MaskKind(str, Enum):
    """How a builder lays out coupling masks: contiguous halves or even/odd features."""

    HALF = "half"
    ALTERNATING = "alternating"


def half_mask(features: int, parity: int = 0) -> Tensor:
    """First ``features // 2`` features pass through (parity 0), or the rest do (parity 1)."""
    mask = torch.arange(features) < features // 2
    return mask if parity % 2 == 0 else ~mask


def alternating_mask(features: int, parity: int = 0) -> Tensor:
    """Even-indexed features pass through (parity 0), or odd-indexed ones (parity 1)."""
    return torch.arange(features) % 2 == parity % 2


def make_mask(kind: MaskKind, features: int, parity: int) -> Tensor:
    """The mask of ``kind`` for ``features`` with the given parity."""
    builder = {MaskKind.HALF: half_mask, MaskKind.ALTERNATING: alternating_mask}[kind]
    return builder(features, parity)


class ImageMask(str, Enum):
    """How an image builder lays out checkerboard couplings: the masked image at full size
    (the RealNVP paper's) or the halves gathered by a squeeze."""

    CHECKERBOARD = "checkerboard"
    SQUEEZED = "squeezed"


def squeezed_checkerboard_mask(channels: int, parity: int = 0) -> Tensor:
    """``(4C,)`` channel mask of an image of ``channels`` C after ``Squeeze`` (channel
    ``4c + 2 di + dj`` holds the pixels ``(2i + di, 2j + dj)`` of channel c): True where
    ``(di + dj) % 2 == parity``, the pixels that ``checkerboard_mask(parity)`` keeps.

    >>> squeezed_checkerboard_mask(1).int().tolist()
    [1, 0, 0, 1]
    """
    di, dj = torch.meshgrid(torch.arange(2), torch.arange(2), indexing="ij")
    return ((di + dj) % 2 == parity % 2).flatten().repeat(channels)


def checkerboard_mask(shape: tuple[int, int, int], parity: int = 0) -> Tensor:
    """``(C, H, W)`` mask: pixel ``(i, j)`` passes through when ``(i + j) % 2 == parity``.

    >>> checkerboard_mask((1, 2, 3)).int().tolist()
    [[[1, 0, 1], [0, 1, 0]]]
    """
    channels, height, width = shape
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return ((rows + cols) % 2 == parity % 2).expand(channels, height, width).clone()
