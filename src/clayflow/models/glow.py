"""Glow (Kingma & Dhariwal 2018) for images and vectors."""

from __future__ import annotations

import math
from enum import Enum
from functools import partial

from clayflow.core import Compose, Flow, StandardNormal
from clayflow.errors import ClayflowError, UsageError, parse_choice
from clayflow.models.options import check_coupling_features, check_dropout, check_sizes, context_network
from clayflow.nn import MLP, conditioner_activation
from clayflow.nn.resnet import GlowNet
from clayflow.transforms import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    Dequantize,
    InvertibleConv1x1,
    LearnedPrior,
    MultiScale,
    ScalarAffine,
    ScaleBound,
    SplineCoupling,
    Squeeze,
    half_mask,
)

MAX_DEFAULT_SCALES = 3


class CouplingKind(str, Enum):
    """Glow's coupling: affine (scale and shift), additive (shift only, volume preserving), or
    a rational-quadratic spline (Durkan et al. 2019: monotone splines with identity tails)."""

    AFFINE = "affine"
    ADDITIVE = "additive"
    SPLINE = "spline"


def coupling_factory(coupling: str, make_net, scale_bound: str, bins: int, tail_bound: float):
    """``couple(mask, context_features)``: the Glow coupling named ``coupling`` with the net
    factory ``make_net`` (and the scale bound of affine couplings, the ``bins`` and
    ``tail_bound`` of splines)."""
    kind = parse_choice(CouplingKind, coupling, "coupling")
    bound = parse_choice(ScaleBound, scale_bound, "scale bound")
    if kind is CouplingKind.ADDITIVE:
        return lambda mask, context: AdditiveCoupling(mask, make_net, context)
    if kind is CouplingKind.SPLINE:
        return lambda mask, context: SplineCoupling(mask, make_net, context, bins=bins, bound=tail_bound)
    return lambda mask, context: AffineCoupling(mask, make_net, context, scale_bound=bound)


def default_glow_scales(shape: tuple[int, int, int]) -> int:
    """The most levels (up to 3) whose squeezes leave at least 2x2 pixels."""
    _, height, width = shape
    scales = 1
    while (
        scales < MAX_DEFAULT_SCALES
        and height % 2 ** (scales + 1) == 0
        and width % 2 ** (scales + 1) == 0
        and min(height, width) // 2 ** (scales + 1) >= 2
    ):
        scales += 1
    return scales


def _step(channels: int, couple, lu: bool, parity: int, context: int = 0):
    """ActNorm, invertible 1x1 conv (or linear), ``couple`` (of ``coupling_factory``) of one half of dim 1."""
    return [ActNorm(channels), InvertibleConv1x1(channels, lu=lu), couple(half_mask(channels, parity), context)]


def glow_image(
    shape: tuple[int, int, int],
    levels: int = 256,
    *,
    scales: int | None = None,
    layers: int = 8,
    hidden: int = 128,
    lu: bool = True,
    coupling: str = "affine",
    scale_bound: str = "tanh",
    bins: int = 8,
    tail_bound: float = 5.0,
    context_features: int = 0,
) -> Flow:
    """Multi-scale Glow for images with ``levels`` intensity levels.

    Pre-processing: ``Dequantize(levels)``, ``ScalarAffine(1 / levels, -0.5)``. Each of the
    ``scales`` levels: squeeze, ``layers`` steps of [ActNorm, invertible 1x1 conv, coupling],
    then (but the last) half the channels leave through a learned split prior; the top
    has a learned prior. The base is N(0, I), so temperature scales every prior's sigma.

    Args:
        shape: ``(C, H, W)``; H and W must be divisible by ``2 ** scales``.
        levels: intensity levels ``k`` of the data.
        scales: number of levels L (default: the most, up to 3, keeping the top >= 2x2).
        layers: steps K per level.
        hidden: width of the coupling networks (Glow: 512).
        lu: LU-decomposed 1x1 convolutions (else plain, with a determinant per call).
        coupling: ``"affine"``, ``"additive"`` or ``"spline"`` (rational-quadratic, with
            ``bins`` bins on ``[-tail_bound, tail_bound]``, the identity outside: the
            ActNorm before each coupling keeps its inputs at unit scale).
        scale_bound: affine scale: ``"tanh"`` (RealNVP's, learned factor: the default),
            ``"sigmoid"`` (Glow's code) or ``"soft_clamp"``. Glow's sigmoid scales only
            contract towards the latent, so their inverse is unbounded: on digits after 1,500
            steps it overflowed to inf for 83-98 of 179 latents 3 N(0, I) (``clayflow
            verify``), and its test NLL was 1.3-3.8 nats worse than tanh's (2 seeds).
        context_features: K > 0: p(x | c) with c ``(B, K)`` (e.g. a one-hot class) given to
            every coupling's network as K constant channels.
    Shape:
        log_prob: ``(B, C, H, W)`` -> ``(B,)``; sample(n) -> ``(n, C, H, W)`` integer levels.
    Reference: Kingma & Dhariwal, Glow: Generative flow with invertible 1x1 convolutions, 2018.
    """
    if len(shape) != 3:
        raise ClayflowError(f"image models need data of shape (C, H, W), got {tuple(shape)}")
    scales = default_glow_scales(shape) if scales is None else scales
    check_sizes(scales=scales, layers=layers, hidden=hidden)
    channels, height, width = (int(s) for s in shape)
    factor = 2**scales
    if height % factor or width % factor:
        raise UsageError(
            f"{scales} Glow levels squeeze {scales} times, so height and width must be divisible by "
            f"{factor}; got {height}x{width}. Use --scales {default_glow_scales(shape)} or crop the images"
        )
    couple = coupling_factory(coupling, partial(GlowNet, hidden=hidden), scale_bound, bins, tail_bound)
    level_transforms, priors = [], []
    for level in range(scales):
        channels, height, width = 4 * channels, height // 2, width // 2
        steps = [Squeeze()]
        for k in range(layers):
            steps += _step(channels, couple, lu, k, context_features)
        if level == scales - 1:
            steps.append(LearnedPrior(channels))
        else:
            kept = channels - channels // 2
            priors.append(LearnedPrior(channels // 2, context_channels=kept))
            channels = kept
        level_transforms.append(Compose(*steps))
    preprocess = [Dequantize(levels), ScalarAffine(1.0 / levels, -0.5)]
    model = Compose(*preprocess, MultiScale(level_transforms, shape, priors))
    return Flow(model, StandardNormal(math.prod(shape)), context_features=context_features)


def glow_vector(
    features: int,
    *,
    layers: int = 8,
    hidden: int = 128,
    depth: int = 2,
    lu: bool = True,
    coupling: str = "affine",
    scale_bound: str = "tanh",
    bins: int = 8,
    tail_bound: float = 5.0,
    dropout: float = 0.0,
    activation: str = "relu",
    context_features: int = 0,
    context_embedding: int = 0,
) -> Flow:
    """Glow for vectors: ``layers`` steps of [ActNorm, invertible linear map (LU or plain),
    coupling of alternating halves with an MLP], then an ActNorm, with base N(0, I).

    Args as ``glow_image``; ``hidden`` and ``depth`` are the MLP's width and hidden layers,
    ``dropout`` its dropout probability while training, ``activation`` its hidden activation
    (``relu`` or ``tanh``, as ``realnvp``), ``context_features`` and ``context_embedding``
    a conditional flow's (as ``realnvp``).
    Reference: Kingma & Dhariwal, Glow, 2018.
    """
    check_coupling_features(features)
    check_sizes(layers=layers, hidden=hidden, depth=depth)
    check_dropout(dropout)
    make_net = partial(MLP, hidden=hidden, depth=depth, dropout=dropout, activation=conditioner_activation(activation))
    couple = coupling_factory(coupling, make_net, scale_bound, bins, tail_bound)
    encoder, width = context_network(context_features, context_embedding)
    steps = []
    for k in range(layers):
        steps += _step(features, couple, lu, k, width)
    return Flow(Compose(*steps, ActNorm(features)), StandardNormal(features), None, context_features, encoder)
