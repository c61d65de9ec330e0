"""Flows for vectors ``(B, D)``: RealNVP and NICE with sensible defaults."""

from __future__ import annotations

from enum import Enum
from functools import partial

from clayflow.core import Compose, DiagonalNormal, Flow, StandardNormal
from clayflow.errors import parse_choice
from clayflow.models.options import check_coupling_features, check_dropout, check_sizes, context_network
from clayflow.nn import MLP, ResidualMLP, conditioner_activation
from clayflow.transforms import AdditiveCoupling, AffineCoupling, BatchNorm, MaskKind, ScaleBound, Scaling
from clayflow.transforms.masks import make_mask


class Conditioner(str, Enum):
    """The network inside each coupling: plain MLP or residual MLP (ResNet blocks)."""

    MLP = "mlp"
    RESIDUAL = "resmlp"


class Base(str, Enum):
    """The base distribution: fixed N(0, I) or a diagonal Gaussian with learned mean/scale."""

    NORMAL = "normal"
    DIAGONAL = "diagonal"


def _check_sizes(features: int, layers: int, hidden: int, depth: int, dropout: float) -> None:
    check_coupling_features(features)
    check_sizes(layers=layers, hidden=hidden, depth=depth)
    check_dropout(dropout)


def _make_net(conditioner: str, hidden: int, depth: int, dropout: float, activation: str):
    kind = parse_choice(Conditioner, conditioner, "conditioner")
    net = MLP if kind is Conditioner.MLP else ResidualMLP
    return partial(net, hidden=hidden, depth=depth, dropout=dropout, activation=conditioner_activation(activation))


def _make_base(base: str, features: int):
    kind = parse_choice(Base, base, "base distribution")
    return (StandardNormal if kind is Base.NORMAL else DiagonalNormal)(features)


def realnvp(
    features: int,
    *,
    layers: int = 8,
    hidden: int = 128,
    depth: int = 2,
    conditioner: str = "mlp",
    mask: str = "alternating",
    scale_bound: str = "tanh",
    batch_norm: bool = False,
    base: str = "normal",
    dropout: float = 0.0,
    activation: str = "relu",
    context_features: int = 0,
    context_embedding: int = 0,
) -> Flow:
    """RealNVP for vectors: ``layers`` affine couplings whose masks alternate parity.

    Args:
        features: D, the data dimension.
        layers: number of affine couplings.
        hidden, depth: conditioner width and number of hidden layers (or residual blocks).
        conditioner: ``"mlp"`` or ``"resmlp"``.
        mask: ``"alternating"`` (even/odd features) or ``"half"`` (first/second half).
        scale_bound: ``"tanh"`` (RealNVP, learned factor) or ``"soft_clamp"``.
        batch_norm: insert a ``BatchNorm`` flow layer between couplings.
        base: ``"normal"`` (N(0, I)) or ``"diagonal"`` (learned mean and scale).
        dropout: dropout probability in the conditioners while training (small tables).
        activation: the conditioners' hidden activation, ``"relu"`` or ``"tanh"`` (bounded
            outputs: the flow keeps the start's tails far from the data; small tables).
        context_features: K > 0: a conditional flow p(x | c), c ``(B, K)`` appended to every
            conditioner's input.
        context_embedding: E > 0: c passes through an MLP to E features first.
    Reference: Dinh et al., Density estimation using Real NVP, 2017.
    """
    _check_sizes(features, layers, hidden, depth, dropout)
    make_net = _make_net(conditioner, hidden, depth, dropout, activation)
    mask_kind = parse_choice(MaskKind, mask, "vector mask")
    bound = parse_choice(ScaleBound, scale_bound, "scale bound")
    encoder, width = context_network(context_features, context_embedding)
    steps = []
    for i in range(layers):
        steps.append(AffineCoupling(make_mask(mask_kind, features, i), make_net, width, scale_bound=bound))
        if batch_norm and i < layers - 1:
            steps.append(BatchNorm(features))
    return Flow(Compose(*steps), _make_base(base, features), None, context_features, encoder)


def nice(
    features: int,
    *,
    layers: int = 8,
    hidden: int = 128,
    depth: int = 4,
    conditioner: str = "mlp",
    mask: str = "alternating",
    base: str = "normal",
    dropout: float = 0.0,
    activation: str = "relu",
    context_features: int = 0,
    context_embedding: int = 0,
) -> Flow:
    """NICE: ``layers`` additive couplings with alternating masks, then a diagonal scaling.

    Arguments as ``realnvp``. Volume is changed only by the final ``Scaling`` layer.
    Reference: Dinh et al., NICE: Non-linear Independent Components Estimation, 2015.
    """
    _check_sizes(features, layers, hidden, depth, dropout)
    make_net = _make_net(conditioner, hidden, depth, dropout, activation)
    mask_kind = parse_choice(MaskKind, mask, "vector mask")
    encoder, width = context_network(context_features, context_embedding)
    steps = [AdditiveCoupling(make_mask(mask_kind, features, i), make_net, width) for i in range(layers)]
    return Flow(Compose(*steps, Scaling(features)), _make_base(base, features), None, context_features, encoder)
