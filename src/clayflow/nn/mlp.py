"""Fully connected conditioners for vector couplings, built as ``make_net(in, out)``."""

from __future__ import annotations

from enum import Enum

from torch import Tensor, nn

from clayflow.core import batch
from clayflow.errors import parse_choice


class ConditionerActivation(str, Enum):
    """The hidden activation of coupling conditioners. ``tanh`` keeps every conditioner output
    bounded, so far from the training rows each coupling is a bounded affine map and the flow
    keeps the tails of its fitted start; a ReLU network extrapolates linearly, and a test row
    outside the training range can lose tens of nats (issue 15: wine)."""

    RELU = "relu"
    TANH = "tanh"


def conditioner_activation(name: str) -> type[nn.Module]:
    """The ``torch.nn`` class of a ``ConditionerActivation`` name (a UsageError lists the choices)."""
    kind = parse_choice(ConditionerActivation, name, "activation")
    return nn.Tanh if kind is ConditionerActivation.TANH else nn.ReLU


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask is drawn through ``clayflow.core.batch``: an example gets the
    same mask whether its batch is trained on one process or split over several.

    Shape: ``(B, *) -> (B, *)``; the identity in eval mode.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p >= 1:
            return x * 0
        keep = batch.rand_like(x) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


class MLP(nn.Sequential):
    """in -> [Linear(hidden), activation, Dropout(dropout)] x depth -> Linear(out).

    Dropout (regularisation for small tables) acts in training mode only, so a coupling
    with this conditioner is still an exact bijection in evaluation mode.

    Shape:
        ``(B, in_features) -> (B, out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 128,
        depth: int = 2,
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
    ):
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), activation()]
            if dropout > 0:
                layers.append(Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """h + Linear(dropout(act(Linear(act(h))))): a pre-activation residual block of constant width."""

    def __init__(self, width: int, activation: type[nn.Module] = nn.ReLU, dropout: float = 0.0):
        super().__init__()
        dropped = [Dropout(dropout)] if dropout > 0 else []  # none at 0: older checkpoints keep their keys
        self.body = nn.Sequential(activation(), nn.Linear(width, width), activation(), *dropped, nn.Linear(width, width))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.body(h)


class ResidualMLP(nn.Module):
    """in -> Linear(hidden) -> residual blocks x depth -> act -> Linear(out) (ResNet-style),
    with ``dropout`` inside each block (training mode only).

    Shape:
        ``(B, in_features) -> (B, out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 128,
        depth: int = 2,
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.input = nn.Linear(in_features, hidden)
        self.blocks = nn.Sequential(*[ResidualBlock(hidden, activation, dropout) for _ in range(depth)])
        self.activation = activation()
        self.output = nn.Linear(hidden, out_features)  # registered last: zero-initialised

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.activation(self.blocks(self.input(x))))
