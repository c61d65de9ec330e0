"""Time-dependent vector fields f(t, z) for continuous normalizing flows."""

from __future__ import annotations

import itertools
from enum import Enum

import torch
from torch import Tensor, nn

from clayflow.errors import parse_choice


class TimeLayer(str, Enum):
    """How a layer sees the time: FFJORD's ``concatsquash`` gate and bias, or ``concat``."""

    CONCATSQUASH = "concatsquash"
    CONCAT = "concat"


class Activation(str, Enum):
    """Smooth activations (the trace needs f to be differentiable in z)."""

    SOFTPLUS = "softplus"
    TANH = "tanh"


class ConcatSquashLinear(nn.Module):
    r"""h' = (W h + b) * sigmoid(a t + c) + d t: FFJORD's time-gated linear layer.

    Shape:
        t: scalar or ``(B,)``, h: ``(B, in_features)`` -> ``(B, out_features)``.
    Reference: Grathwohl et al., FFJORD, 2019 (``diffeq_layers.ConcatSquashLinear``).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(1, out_features)
        self.time_bias = nn.Linear(1, out_features, bias=False)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        t = t.reshape(-1, 1).to(h)
        return self.linear(h) * torch.sigmoid(self.gate(t)) + self.time_bias(t)

    def zero_(self) -> None:
        """Make the layer output 0 for every input and time (a CNF starts as the identity)."""
        for p in (self.linear.weight, self.linear.bias, self.time_bias.weight):
            nn.init.zeros_(p)


class ConcatLinear(nn.Module):
    """h' = W [h, t] + b: the time appended as one more input."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features + 1, out_features)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        return self.linear(torch.cat([h, t.reshape(-1, 1).to(h).expand(h.shape[0], 1)], dim=1))

    def zero_(self) -> None:
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)


class ODENet(nn.Module):
    """An MLP vector field f(t, z): ``depth`` hidden layers of width ``hidden``, each seeing t.

    ``zero_init`` zeroes the last layer so that a new CNF is the identity map. It is off by
    default, as in FFJORD: at the identity the likelihood gradient vanishes for symmetric
    data (e.g. standardised 8gaussians), and training sits on that saddle for hundreds of steps.

    Shape:
        t: scalar (one time for the batch, as in an ODE solve) or ``(B,)`` (flow matching),
        z: ``(B, D)`` -> ``(B, D)``.
    """

    def __init__(
        self,
        features: int,
        hidden: int = 64,
        depth: int = 3,
        layer: str = "concatsquash",
        activation: str = "softplus",
        zero_init: bool = False,
    ):
        super().__init__()
        kind = parse_choice(TimeLayer, layer, "time layer")
        act = parse_choice(Activation, activation, "activation")
        make = ConcatSquashLinear if kind is TimeLayer.CONCATSQUASH else ConcatLinear
        widths = [features, *[hidden] * depth, features]
        self.layers = nn.ModuleList(make(a, b) for a, b in itertools.pairwise(widths))
        self.activation = nn.Softplus() if act is Activation.SOFTPLUS else nn.Tanh()
        if zero_init:
            self.layers[-1].zero_()

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.layers) - 1:
                h = self.activation(h)
        return h
