r"""The fitted start of every vector flow: the layers before the model's own, set from the
training rows so that an untrained flow is already the best simple model of the table.

In order (data -> latent), each optional:

1. ``DequantizeColumns``: uniform noise across one grid step on the discrete columns;
2. ``Standardize``: fixed per-column mean and std, so the networks see unit-scale inputs;
3. ``PowerTransform``: a learned Yeo-Johnson power per column, fitted by maximum likelihood;
4. ``Whitening``: a learned linear map, fitted to the mean and covariance of the above.

The model's own layers start as the identity (zero-initialised couplings), so with 1-4 the
untrained flow is a full-covariance Gaussian of the power-transformed columns (without 3,
exactly the Gaussian maximum-likelihood fit), and training moves away from it only as far
as validation rewards.

A conditional flow's context is standardised the same way (``StandardizedContext``, fitted
by ``fit_context``) before its encoder and layers see it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clayflow.core import Flow
from clayflow.transforms import DequantizeColumns, PowerTransform, Standardize, Whitening


def start_transforms(
    features: int, discrete: dict[int, float], standardize: bool, power: bool, whiten: bool
) -> list:
    """The start layers (identities until ``fit_start``) of a flow on ``features`` columns;
    ``discrete`` maps each dequantized column (0-based) to its grid step."""
    layers = [DequantizeColumns(features, list(discrete), list(discrete.values()))] if discrete else []
    if standardize:
        layers.append(Standardize(features))
    if power:
        layers.append(PowerTransform(features))
    if whiten:
        layers.append(Whitening(features))
    return layers


@torch.no_grad()
def fit_start(flow: Flow, train: Tensor, standardization, seed: int = 0) -> None:
    """Fit the start layers of ``flow`` to the training rows ``train`` ``(N, D)``.

    Discrete columns are dequantized once with noise from ``seed`` before fitting.
    ``standardization(x) -> (mean, std)`` computes (and checks) the standardisation; it is
    given by the caller, which knows the columns' names for its messages.
    """
    x = train.double()
    for layer in flow.transform:
        if isinstance(layer, DequantizeColumns):
            noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
            x = x + noise * layer.steps_like(x)
        elif isinstance(layer, Standardize):
            mean, std = standardization(x)
            layer.mean, layer.std = mean.to(layer.mean), std.to(layer.std)
            x = (x - layer.mean.double()) / layer.std.double()
        elif isinstance(layer, PowerTransform):
            layer.fit(x)
            x = layer(x.to(layer.theta.dtype))[0].double()
        elif isinstance(layer, Whitening):
            layer.fit(x)
        else:
            return


class StandardizedContext(nn.Module):
    """A conditional flow's context encoder preceded by a fixed per-column standardisation:
    ``encoder((c - mean) / std)`` for contexts ``(B, K)`` (the raw standardised context
    without an encoder), so that networks see unit-scale contexts whatever their units.
    ``mean`` and ``std`` are buffers, 0 and 1 until ``fit_context`` sets them."""

    def __init__(self, context_features: int, encoder: nn.Module | None = None):
        super().__init__()
        self.register_buffer("mean", torch.zeros(context_features))
        self.register_buffer("std", torch.ones(context_features))
        self.encoder = encoder

    def forward(self, context: Tensor) -> Tensor:
        context = (context - self.mean) / self.std
        return self.encoder(context) if self.encoder is not None else context


@torch.no_grad()
def fit_context(flow: Flow, context: Tensor) -> None:
    """Set the standardisation of ``flow``'s context encoder (a ``StandardizedContext``) from
    the training contexts ``(N, K)``. A constant column is left unscaled (std 1): it carries
    no information, and a context needs no density, so nothing is refused."""
    encoder = flow.context_encoder
    if not isinstance(encoder, StandardizedContext):
        return
    context = context.double()
    std = context.std(0) if len(context) > 1 else torch.ones(context.shape[1], dtype=context.dtype)
    encoder.mean.copy_(context.mean(0))
    encoder.std.copy_(torch.where(std > 0, std, torch.ones_like(std)))
