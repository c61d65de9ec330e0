"""Convolutional conditioners for image couplings (ResNet, Glow), built as ``make_net(in, out)``."""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor, nn

from clayflow.core import batch
from clayflow.errors import parse_choice


class Norm(str, Enum):
    """Normalisation inside the conditioner: batch norm (RealNVP) or none."""

    BATCH = "batch"
    NONE = "none"


def _norm(kind: Norm, channels: int) -> nn.Module:
    return BatchNorm2d(channels) if kind is Norm.BATCH else nn.Identity()


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics are those of the global batch when the
    batch is one process's part of it (``clayflow.core.batch``), so a conditioner normalises
    alike on one process and on N (torch's ``SyncBatchNorm`` does this on GPUs only).

    Shape: ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def forward(self, x: Tensor) -> Tensor:
        total = batch.global_size(x.shape[0])
        if not self.training or total is None:
            return super().forward(x)
        # In float32 also under bf16 autocast (``--precision``): E[y²] - E[y]² and its sum over
        # processes lose everything to 8 bits, and the running buffers are float32.
        mean, var = batch.mean_var(x.to(self.running_mean.dtype), [0, 2, 3], shift=self.running_mean)
        if self.track_running_stats:
            n = total * x.shape[2] * x.shape[3]
            momentum = self.momentum if self.momentum is not None else 1 / (int(self.num_batches_tracked) + 1)
            with torch.no_grad():
                self.num_batches_tracked += 1
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / max(n - 1, 1), momentum)
        shape = (1, -1, 1, 1)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        out = out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out
        return out.to(x.dtype)


class ConvResidualBlock(nn.Module):
    """h + conv3x3(act(norm(conv3x3(act(norm(h)))))): pre-activation block of constant width."""

    def __init__(self, channels: int, norm: Norm):
        super().__init__()
        self.body = nn.Sequential(
            _norm(norm, channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=norm is Norm.NONE),
            _norm(norm, channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, h: Tensor) -> Tensor:
        return h + self.body(h)


class ConvResNet(nn.Module):
    """conv3x3(hidden) -> residual blocks x ``blocks`` -> norm, ReLU -> conv3x3(out).

    The output conv is registered last, so a coupling zero-initialises it. Padding keeps
    the spatial size.

    Shape:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.
    Reference: He et al., Identity mappings in deep residual networks, 2016 (as in RealNVP).
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden: int = 64, blocks: int = 4, norm: str = "batch"
    ):
        super().__init__()
        kind = parse_choice(Norm, norm, "conditioner normalisation")
        self.input = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.Sequential(*[ConvResidualBlock(hidden, kind) for _ in range(blocks)])
        self.head = nn.Sequential(_norm(kind, hidden), nn.ReLU())
        self.output = nn.Conv2d(hidden, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.head(self.blocks(self.input(x))))


class GlowNet(nn.Sequential):
    """Glow's coupling network: conv3x3(hidden), ReLU, conv1x1(hidden), ReLU, conv3x3(out).

    The last conv is zero-initialised by the coupling that owns the net.

    Shape:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.
    Reference: Kingma & Dhariwal, Glow, 2018, Sec. 3.3.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 128):
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 3, padding=1),
        )
