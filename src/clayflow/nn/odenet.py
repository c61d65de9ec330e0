"""Time-dependent vector fields f(t, z) for continuous normalizing flows: MLPs for vectors
``(B, D)`` and 3x3 convolutions for images ``(B, C, H, W)``."""

from __future__ import annotations

import itertools
from enum import Enum

import torch
from torch import Tensor, nn

from clayflow.errors import UsageError, parse_choice


class TimeLayer(str, Enum):
    """How a layer sees the time: FFJORD's ``concatsquash`` gate and bias, or ``concat``."""

    CONCATSQUASH = "concatsquash"
    CONCAT = "concat"


class Activation(str, Enum):
    """Smooth activations (the trace needs f to be differentiable in z)."""

    SOFTPLUS = "softplus"
    TANH = "tanh"


def _spatial(values: Tensor, like: Tensor) -> Tensor:
    """``(N, C)`` -> ``(N, C, 1, 1)`` when ``like`` is an image batch, so it broadcasts."""
    return values.reshape(*values.shape, *[1] * (like.dim() - 2))


def _time_column(t: Tensor, h: Tensor) -> Tensor:
    """The time as ``(1, 1)`` (one time for the batch) or ``(B, 1)`` (a time per sample)."""
    return t.reshape(-1, 1).to(h)


def _map(in_features: int, out_features: int, conv: bool) -> nn.Module:
    if conv:
        return nn.Conv2d(in_features, out_features, 3, padding=1)
    return nn.Linear(in_features, out_features)


class ConcatSquash(nn.Module):
    r"""h' = (W h + b) * sigmoid(a t + c) + d t: FFJORD's time-gated layer, with W a linear
    map (vectors) or a 3x3 convolution (images; the gate and bias are per channel).

    Shape:
        t: scalar or ``(B,)``, h: ``(B, in)`` or ``(B, in, H, W)`` -> ``(B, out[, H, W])``.
    Reference: Grathwohl et al., FFJORD, 2019 (``diffeq_layers.ConcatSquashLinear/Conv2d``).
    """

    def __init__(self, in_features: int, out_features: int, conv: bool = False):
        super().__init__()
        self.map = _map(in_features, out_features, conv)
        self.gate = nn.Linear(1, out_features)
        self.time_bias = nn.Linear(1, out_features, bias=False)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        t = _time_column(t, h)
        return self.map(h) * _spatial(torch.sigmoid(self.gate(t)), h) + _spatial(self.time_bias(t), h)

    def zero_(self) -> None:
        """Make the layer output 0 for every input and time (a CNF starts as the identity)."""
        for p in (self.map.weight, self.map.bias, self.time_bias.weight):
            nn.init.zeros_(p)


class Concat(nn.Module):
    """h' = W [h, t] + b: the time appended as one more input feature (or channel)."""

    def __init__(self, in_features: int, out_features: int, conv: bool = False):
        super().__init__()
        self.map = _map(in_features + 1, out_features, conv)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        t = _spatial(_time_column(t, h), h).expand(h.shape[0], 1, *h.shape[2:])
        return self.map(torch.cat([h, t], dim=1))

    def zero_(self) -> None:
        nn.init.zeros_(self.map.weight)
        nn.init.zeros_(self.map.bias)


class ODENet(nn.Module):
    """A vector field f(t, z): ``depth`` hidden layers of width ``hidden``, each seeing t.

    With ``conv`` the layers are 3x3 convolutions over ``features`` channels (FFJORD's image
    field); otherwise linear maps over ``features`` dimensions.

    ``zero_init`` zeroes the last layer so that a new CNF is the identity map. It is off by
    default, as in FFJORD: at the identity the likelihood gradient vanishes for symmetric
    data (e.g. standardised 8gaussians), and training sits on that saddle for hundreds of steps.

    ``context_features`` K > 0 makes the field conditional, f(t, z; c): the first layer sees
    the context ``(B, K)`` beside z (vectors only).

    Shape:
        t: scalar (one time for the batch, as in an ODE solve) or ``(B,)`` (flow matching),
        z: ``(B, D)``, or ``(B, C, H, W)`` with ``conv`` -> like z; context ``(B, K)``.
    """

    def __init__(
        self,
        features: int,
        hidden: int = 64,
        depth: int = 3,
        layer: str = "concatsquash",
        activation: str = "softplus",
        zero_init: bool = False,
        conv: bool = False,
        context_features: int = 0,
    ):
        super().__init__()
        if conv and context_features:
            raise UsageError("a convolutional vector field takes no context")
        kind = parse_choice(TimeLayer, layer, "time layer")
        act = parse_choice(Activation, activation, "activation")
        make = ConcatSquash if kind is TimeLayer.CONCATSQUASH else Concat
        widths = [features + context_features, *[hidden] * depth, features]
        self.layers = nn.ModuleList(make(a, b, conv) for a, b in itertools.pairwise(widths))
        self.activation = nn.Softplus() if act is Activation.SOFTPLUS else nn.Tanh()
        if zero_init:
            self.layers[-1].zero_()

    def forward(self, t: Tensor, z: Tensor, context: Tensor | None = None) -> Tensor:
        h = z if context is None else torch.cat([z, context.to(z.dtype)], dim=1)
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.layers) - 1:
                h = self.activation(h)
        return h
