r"""MADE: a masked autoencoder whose outputs for feature i depend only on features before i
(Germain et al., MADE: Masked Autoencoder for Distribution Estimation, 2015), the
conditioner of autoregressive flows (MAF, IAF, NSF-AR).

Degrees: input feature i has degree ``m(i) = i + 1`` (1..D, in the order of the columns; a
flow permutes between layers to vary it); hidden unit j has degree ``1 + j mod (D - 1)``
(so every degree 1..D-1 is used, and none is D: nothing depends on the last feature). A
hidden unit sees the inputs and hidden units of degree <= its own; an output for feature i
sees the hidden units of degree < m(i). So ``d out_i / d x_j = 0`` for j >= i: the Jacobian
of the flow layer is triangular.

A context ``c`` (conditional densities p(x | c)) enters the first hidden layer unmasked,
and the hidden degrees are then ``j mod D``, from 0: units of degree 0 see the context
alone, so that the first feature's parameters depend on it too (with degrees from 1 they
would be constants, and p(x_1 | c) = p(x_1)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clayflow.errors import ClayflowError, UsageError
from clayflow.nn.mlp import Dropout


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 ``mask`` ``(out, in)``."""

    def __init__(self, mask: Tensor, bias: bool = True):
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.bool())  # bool: kept by .to(dtype), 0/1 in the product

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def hidden_degrees(features: int, hidden: int, context: bool = False) -> Tensor:
    """Degrees of ``hidden`` units: ``1 + j mod (D - 1)`` (all 1 when D = 1), or with a
    context ``j mod D`` (degree-0 units see only the context)."""
    if context:
        return torch.arange(hidden) % features
    return torch.arange(hidden) % max(features - 1, 1) + 1


class MADE(nn.Module):
    r"""x ``(B, D)`` [, context ``(B, K)``] -> ``(B, D * P)``: P parameters per feature, laid
    out feature by feature (``out.view(B, D, P)``), those of feature i a function of x_<i
    (and of the context).

    ``depth`` hidden layers of width ``hidden`` (``residual``: an input layer then ``depth``
    pre-activation residual blocks of two masked layers each, whose degrees are kept, so the
    sum stays autoregressive).

    Args:
        features: D.
        params_per_feature: P.
        hidden: width; at least D - 1 (D with a context) so that every degree has a unit.
        depth: hidden layers, or residual blocks.
        context_features: K (0: no context).
        residual: residual blocks instead of plain layers.
        activation: the hidden activation class.
        dropout: dropout probability in training mode.
    """

    def __init__(
        self,
        features: int,
        params_per_feature: int,
        hidden: int = 128,
        depth: int = 2,
        context_features: int = 0,
        residual: bool = False,
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
    ):
        super().__init__()
        needed = features if context_features else max(features - 1, 1)
        if features < 1 or hidden < needed or depth < 1:
            raise UsageError(
                f"MADE needs hidden >= {needed} units (one per degree) and depth >= 1; got D = {features}, "
                f"hidden {hidden}, depth {depth}"
            )
        self.features, self.params_per_feature, self.residual = features, params_per_feature, residual
        inputs = torch.arange(1, features + 1)
        units = hidden_degrees(features, hidden, context=context_features > 0)
        outputs = inputs.repeat_interleave(params_per_feature)
        self.first = MaskedLinear((units[:, None] >= inputs[None, :]).float())
        self.context = nn.Linear(context_features, hidden, bias=False) if context_features else None
        same = (units[:, None] >= units[None, :]).float()
        layers = 2 * depth if residual else depth - 1
        self.hidden_layers = nn.ModuleList(MaskedLinear(same) for _ in range(layers))
        self.last = MaskedLinear((outputs[:, None] > units[None, :]).float())
        self.activation = activation()
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.first(x)
        if self.context is not None:
            if context is None:
                raise ClayflowError("this conditional flow needs a context (context=...)")
            h = h + self.context(context)
        if self.residual:
            for inner, outer in zip(self.hidden_layers[::2], self.hidden_layers[1::2]):
                h = h + outer(self.dropout(self.activation(inner(self.activation(h)))))
            h = self.activation(h)
        else:
            h = self.dropout(self.activation(h))
            for layer in self.hidden_layers:
                h = self.dropout(self.activation(layer(h)))
        return self.last(h)
