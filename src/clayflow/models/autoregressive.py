"""Autoregressive and spline flows for vectors ``(B, D)``: MAF, IAF and NSF.

Which direction is fast decides the model:

* ``maf``: the density (``log_prob``) in one pass per layer, sampling in D passes per layer;
  for density estimation (the default choice for tables).
* ``iaf``: sampling, and the density of its own samples (``sample_and_log_prob``), in one
  pass per layer; the density of new data in D passes; for variational inference.
* ``nsf``: rational-quadratic spline couplings (both directions in one pass per layer), or
  with ``autoregressive=True`` spline MADE layers (NSF-AR: MAF's speeds, more expressive).
"""

from __future__ import annotations

from functools import partial

from clayflow.core import Compose, Flow, StandardNormal
from clayflow.errors import ClayflowError, UsageError, parse_choice
from clayflow.models.options import check_coupling_features, check_dropout, check_sizes, context_network
from clayflow.models.vector import Conditioner, _make_net
from clayflow.transforms import (
    AffineAutoregressive,
    Inverse,
    InvertibleConv1x1,
    Permutation,
    ScaleBound,
    SplineAutoregressive,
    SplineCoupling,
)
from clayflow.transforms.masks import alternating_mask
from clayflow.transforms.splines import check_bins


def _check(features: int, layers: int, hidden: int, depth: int, dropout: float, made: bool = True) -> None:
    """The sizes every builder here shares; a MADE needs a unit per degree (``hidden`` >= D)
    and at least one hidden layer."""
    if features < 1:
        raise ClayflowError(f"flows need at least 1 feature (data column), got {features}")
    check_sizes(layers=layers, hidden=hidden, depth=depth)
    check_dropout(dropout)
    if made and (hidden < features or depth < 1):
        raise UsageError(
            f"a MADE needs --hidden of at least the {features} features (one unit per degree) and --depth >= 1; "
            f"got --hidden {hidden} --depth {depth}"
        )


def _mixing(features: int, lu: bool):
    """Between layers: a learned LU-decomposed linear map, or reversing the features."""
    return InvertibleConv1x1(features, lu=True) if lu else Permutation.reverse(features)


def _made_options(hidden: int, depth: int, conditioner: str, activation: str, dropout: float, context: int) -> dict:
    residual = parse_choice(Conditioner, conditioner, "conditioner") is Conditioner.RESIDUAL
    return {"hidden": hidden, "depth": depth, "residual": residual, "activation": activation, "dropout": dropout,
            "context_features": context}  # fmt: skip


def _stack(features: int, layers: int, make_layer, lu: bool) -> Compose:
    steps = []
    for k in range(layers):
        if k > 0 and features > 1:
            steps.append(_mixing(features, lu))
        steps.append(make_layer(k))
    return Compose(*steps)


def maf(
    features: int,
    *,
    layers: int = 5,
    hidden: int = 128,
    depth: int = 2,
    conditioner: str = "mlp",
    scale_bound: str = "tanh",
    lu: bool = False,
    dropout: float = 0.0,
    activation: str = "relu",
    context_features: int = 0,
    context_embedding: int = 0,
) -> Flow:
    """Masked autoregressive flow: ``layers`` affine MADE layers with the features reversed
    (or, with ``lu``, a learned LU linear map) between them; base N(0, I).

    Args:
        features: D.
        layers: autoregressive layers.
        hidden, depth: the MADE's width (at least D) and hidden layers (residual blocks).
        conditioner: ``"mlp"`` (MADE) or ``"resmlp"`` (residual MADE).
        scale_bound: the affine log-scale's bound, as ``realnvp``'s.
        lu: a learned LU linear map between layers instead of reversing.
        dropout, activation: as ``realnvp``'s.
        context_features, context_embedding: a conditional flow p(x | c), as ``realnvp``'s;
            c enters every MADE's first hidden layer.
    Speed: ``log_prob`` one MADE pass per layer; ``sample`` D passes per layer.
    Reference: Papamakarios, Pavlakou & Murray, Masked Autoregressive Flow for Density
    Estimation, 2017.
    """
    return _affine_autoregressive(features, layers, hidden, depth, conditioner, scale_bound, lu, dropout, activation,
                                  context_features, context_embedding, inverted=False)  # fmt: skip


def iaf(
    features: int,
    *,
    layers: int = 5,
    hidden: int = 128,
    depth: int = 2,
    conditioner: str = "mlp",
    scale_bound: str = "tanh",
    lu: bool = False,
    dropout: float = 0.0,
    activation: str = "relu",
    context_features: int = 0,
    context_embedding: int = 0,
) -> Flow:
    """Inverse autoregressive flow: ``maf``'s layers, each inverted, so that sampling (latent ->
    data) is the one-pass direction. Arguments as ``maf``.

    Speed: ``sample`` and ``sample_and_log_prob`` one MADE pass per layer; ``log_prob`` of
    new data D passes per layer.
    Reference: Kingma et al., Improved Variational Inference with Inverse Autoregressive Flow, 2016.
    """
    return _affine_autoregressive(features, layers, hidden, depth, conditioner, scale_bound, lu, dropout, activation,
                                  context_features, context_embedding, inverted=True)  # fmt: skip


def _affine_autoregressive(features, layers, hidden, depth, conditioner, scale_bound, lu, dropout, activation,
                           context_features, context_embedding, inverted: bool) -> Flow:  # fmt: skip
    """MAF, or with ``inverted`` IAF: the layers of ``maf``, each wrapped in ``Inverse``."""
    _check(features, layers, hidden, depth, dropout)
    encoder, width = context_network(context_features, context_embedding)
    made = _made_options(hidden, depth, conditioner, activation, dropout, width)
    bound = parse_choice(ScaleBound, scale_bound, "scale bound")

    def layer(k: int):
        made_layer = AffineAutoregressive(features, scale_bound=bound, **made)
        return Inverse(made_layer) if inverted else made_layer

    return Flow(_stack(features, layers, layer, lu), StandardNormal(features), None, context_features, encoder)


def nsf(
    features: int,
    *,
    layers: int = 5,
    hidden: int = 128,
    depth: int = 2,
    conditioner: str = "mlp",
    bins: int = 8,
    tail_bound: float = 5.0,
    autoregressive: bool = False,
    lu: bool = True,
    dropout: float = 0.0,
    activation: str = "relu",
    context_features: int = 0,
    context_embedding: int = 0,
) -> Flow:
    """Neural spline flow: ``layers`` rational-quadratic spline couplings of alternating halves
    (NSF-C), or spline MADE layers (``autoregressive``: NSF-AR), with a learned LU linear map
    (or, without ``lu``, a reversal) between them; base N(0, I).

    Args:
        features: D (couplings need at least 2).
        bins: K, bins per spline.
        tail_bound: B: splines act on ``[-B, B]``, the identity outside (tables are
            standardised by the start layers first).
        autoregressive: NSF-AR instead of NSF-C.
        other arguments: as ``maf``.
    Speed: NSF-C one pass per layer both ways; NSF-AR as ``maf``.
    Reference: Durkan, Bekasov, Murray & Papamakarios, Neural Spline Flows, 2019.
    """
    _check(features, layers, hidden, depth, dropout, made=autoregressive)
    check_bins(bins, tail_bound)
    encoder, width = context_network(context_features, context_embedding)
    if autoregressive:
        made = _made_options(hidden, depth, conditioner, activation, dropout, width)
        layer = lambda k: SplineAutoregressive(features, bins=bins, bound=tail_bound, **made)
    else:
        check_coupling_features(features)
        make_net = _make_net(conditioner, hidden, depth, dropout, activation)
        layer = partial(_spline_coupling, features, make_net, width, bins, tail_bound)
    return Flow(_stack(features, layers, layer, lu), StandardNormal(features), None, context_features, encoder)


def _spline_coupling(features: int, make_net, context: int, bins: int, bound: float, k: int) -> SplineCoupling:
    return SplineCoupling(alternating_mask(features, k), make_net, context, bins=bins, bound=bound)
