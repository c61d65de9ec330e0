r"""Multi-scale architecture with factor-out (RealNVP Sec. 3.6, Glow Sec. 3).

After each level but the last, half of the channels leave as latent and only the rest go
on, so deeper levels work on fewer dimensions. The whole model still returns **one**
latent tensor and accepts it back, so ``inverse(forward(x)) == x`` and a sample at any
temperature is one draw from the base.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from clayflow.core.transform import Transform, per_feature, positions_per_feature, sum_except_batch
from clayflow.errors import ClayflowError


class LearnedPrior(Transform):
    r"""Glow's learned prior as a transform: eps = (z - mu) * exp(-log_sigma), so that
    N(eps; 0, I) with this log-det is N(z; mu, sigma^2).

    With ``context_channels`` > 0, ``mu, log_sigma = conv3x3(context)`` (the split prior:
    the factored half conditioned on the kept half); with 0 they are learned per channel
    (the top prior). Zero-initialised: a new prior is N(0, I). Temperature sampling scales
    eps, which scales sigma and keeps mu, as Glow does.

        log|det d eps/dz| = -sum log_sigma.

    Shape:
        z: ``(B, C, H, W)``, context ``(B, C_ctx, H, W)`` -> eps like z, logabsdet ``(B,)``.
    Reference: Kingma & Dhariwal, Glow, 2018 (and its code: split2d, learntop).
    """

    net: nn.Conv2d | None

    def __init__(self, channels: int, context_channels: int = 0):
        super().__init__()
        if context_channels:
            self.net = nn.Conv2d(context_channels, 2 * channels, 3, padding=1)
            nn.init.zeros_(self.net.weight)
            nn.init.zeros_(cast(Tensor, self.net.bias))  # a Conv2d has a bias unless bias=False
        else:
            self.net = None
            self.loc = nn.Parameter(torch.zeros(channels))
            self.log_scale = nn.Parameter(torch.zeros(channels))

    def _params(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.net is None:
            return per_feature(self.loc, z), per_feature(self.log_scale, z)
        if context is None:
            raise ClayflowError("a split prior needs the kept half of the channels as context")
        mu, log_sigma = self.net(context).chunk(2, dim=1)
        return mu, log_sigma

    def _logabsdet(self, z: Tensor, log_sigma: Tensor) -> Tensor:
        if self.net is None:
            return (-self.log_scale.sum() * positions_per_feature(z)).expand(z.shape[0])
        return -sum_except_batch(log_sigma)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, log_sigma = self._params(z, context)
        return (z - mu) * torch.exp(-log_sigma), self._logabsdet(z, log_sigma)

    def inverse(self, eps: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, log_sigma = self._params(eps, context)
        return eps * torch.exp(log_sigma) + mu, -self._logabsdet(eps, log_sigma)


class MultiScale(Transform):
    r"""Levels of transforms on images with half the channels factored out after each.

    ``forward`` runs ``levels[0]``, splits its output ``(B, C, H, W)`` into the first
    ``C - C // 2`` channels (passed on to ``levels[1]``) and the last ``C // 2`` (factored
    out), and so on; the last level's whole output is the top. The latent is

        z = cat(flat(factored_0), ..., flat(factored_{L-2}), flat(top))    (B, D)

    in that order; ``split_latent`` gives the per-level views back with their shapes.
    With ``priors``, each factored part is first passed through ``priors[i]`` with the kept
    part as context (Glow's learned prior, see ``LearnedPrior``).

    Args:
        levels: transforms, each mapping its input image to an image (e.g. couplings,
            then a squeeze); their shapes are inferred with ``output_shape``.
        event_shape: ``(C, H, W)`` of the input.
        priors: one transform (or None) per split, i.e. ``len(levels) - 1``.
    Shape:
        x: ``(B, C, H, W)`` -> z ``(B, C * H * W)``, logabsdet ``(B,)``.
    """

    composite = True

    def __init__(
        self,
        levels: Sequence[Transform],
        event_shape: tuple[int, int, int],
        priors: Sequence[Transform | None] | None = None,
    ):
        super().__init__()
        if not levels:
            raise ClayflowError("a multi-scale transform needs at least one level")
        priors = list(priors) if priors is not None else [None] * (len(levels) - 1)
        if len(priors) != len(levels) - 1:
            raise ClayflowError(
                f"{len(levels)} levels have {len(levels) - 1} splits, got {len(priors)} priors"
            )
        self.levels = nn.ModuleList(levels)
        self.priors = nn.ModuleList([p if p is not None else nn.Identity() for p in priors])
        self.event_shape = tuple(event_shape)
        self.kept_channels: list[int] = []
        self.latent_shapes: list[tuple[int, ...]] = []  # factored parts, then the top
        shape = self.event_shape
        for i, level in enumerate(cast("Sequence[Transform]", self.levels)):
            shape = level.output_shape(shape)
            if i == len(self.levels) - 1:
                break
            channels = shape[0]
            if channels < 2:
                raise ClayflowError(f"level {i} outputs {channels} channel(s); factoring out needs >= 2")
            kept = channels - channels // 2
            self.kept_channels.append(kept)
            self.latent_shapes.append((channels - kept, *shape[1:]))
            shape = (kept, *shape[1:])
        self.latent_shapes.append(tuple(shape))
        self.latent_sizes = [torch.Size(s).numel() for s in self.latent_shapes]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ClayflowError(
                f"this model was built for images of shape {self.event_shape}, got {tuple(x.shape[1:])}"
            )
        logabsdet = x.new_zeros(x.shape[0])
        parts = []
        for i, level in enumerate(self.levels):
            x, ladj = level(x, context)
            logabsdet = logabsdet + ladj
            if i < len(self.kept_channels):
                kept = self.kept_channels[i]
                factored, x = x[:, kept:], x[:, :kept]
                if isinstance(self.priors[i], Transform):
                    factored, ladj = self.priors[i](factored, x)
                    logabsdet = logabsdet + ladj
                parts.append(factored.reshape(x.shape[0], -1))
        parts.append(x.reshape(x.shape[0], -1))
        return torch.cat(parts, dim=1), logabsdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        parts = self.split_latent(z)
        x = parts[-1]
        logabsdet = z.new_zeros(z.shape[0])
        for i in reversed(range(len(self.levels))):
            if i < len(self.kept_channels):
                factored = parts[i]
                if isinstance(self.priors[i], Transform):
                    factored, ladj = cast(Transform, self.priors[i]).inverse(factored, x)
                    logabsdet = logabsdet + ladj
                x = torch.cat([x, factored], dim=1)
            x, ladj = cast(Transform, self.levels[i]).inverse(x, context)
            logabsdet = logabsdet + ladj
        return x, logabsdet

    def split_latent(self, z: Tensor) -> list[Tensor]:
        """Per-level views of a latent ``(B, D)``: factored parts, then the top, as images."""
        if z.dim() != 2 or z.shape[1] != sum(self.latent_sizes):
            raise ClayflowError(
                f"a latent of this model has shape (B, {sum(self.latent_sizes)}), got {tuple(z.shape)}"
            )
        # Tensor.split is unannotated in torch
        chunks = z.split(self.latent_sizes, dim=1)  # type: ignore[no-untyped-call]
        return [c.reshape(z.shape[0], *s) for c, s in zip(chunks, self.latent_shapes)]

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (sum(self.latent_sizes),)
