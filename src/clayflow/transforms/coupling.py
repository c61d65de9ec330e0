r"""Coupling layers (NICE, RealNVP): split the features by a mask, transform one part
conditioned on the other, so the Jacobian is triangular and the inverse is exact.

The split uses index slicing along dim 1 (features, or channels for images), never mask
multiplication, and one conditioner pass yields all parameters of the transformed part.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clayflow.core.transform import Transform, identity_logabsdet, per_feature, sum_except_batch
from clayflow.errors import ClayflowError

NetFactory = Callable[[int, int], nn.Module]


class ScaleBound(str, Enum):
    r"""How an affine coupling bounds its log-scale ``s`` from the raw network output ``r``.

    * ``TANH``: ``s = a * tanh(r)`` with a learned per-feature ``a`` (initialised to 1), as in
      RealNVP's reference implementation.
    * ``SOFT_CLAMP``: ``s = c * tanh(r / c)`` with a fixed ``c`` (``clamp``), as in Glow ports
      and FrEIA; close to the identity for small ``r``.
    * ``SIGMOID``: ``s = log sigmoid(r + 2)`` as in Glow's code: scales in (0, 1), and a new
      coupling scales by sigmoid(2) = 0.88 instead of being the identity.
    """

    TANH = "tanh"
    SOFT_CLAMP = "soft_clamp"
    SIGMOID = "sigmoid"


def zero_init_last_layer(net: nn.Module) -> None:
    """Zero the weight and bias of the last-registered Linear/Conv layer of ``net``.

    Makes a fresh coupling the identity map, so a new flow starts as its base distribution.
    """
    layers = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    if not layers:
        raise ClayflowError("the coupling network has no Linear/Conv layer to zero-initialise")
    nn.init.zeros_(layers[-1].weight)
    if layers[-1].bias is not None:
        nn.init.zeros_(layers[-1].bias)


def _block_order(mask: Tensor) -> bool | None:
    """For a 1-D ``mask`` made of two contiguous blocks: True if the kept (True) block comes
    first, False if it comes last; None for any other layout (e.g. alternating)."""
    kept = int(mask.sum())
    if mask[:kept].all():
        return True
    if mask[-kept:].all():
        return False
    return None


def _with_context(inputs: Tensor, context: Tensor | None) -> Tensor:
    """A conditioner's ``inputs`` with the ``context`` ``(B, K)`` appended along dim 1: as K
    more features of vectors, or as K more channels, constant over the image, of images."""
    if context is None:
        return inputs
    if inputs.dim() > 2:
        context = context.reshape(*context.shape, *[1] * (inputs.dim() - 2)).expand(-1, -1, *inputs.shape[2:])
    return torch.cat([inputs, context.to(inputs.dtype)], dim=1)


class _Coupling(Transform):
    """Shared split/merge and conditioner logic; subclasses define the elementwise map.

    Two ways to split, chosen by the mask's shape:

    * a 1-D mask over dim 1 (features, or channels of an image): kept and transformed parts
      are sliced out with ``index_select``, and the net sees only the kept part;
    * a mask of the whole event shape ``(C, H, W)`` (e.g. a checkerboard): the net sees
      ``x * mask`` at full size and its outputs are zeroed on the kept entries, so the map
      is the identity there and the log-det counts only the transformed entries.

    A context ``(B, K)`` (``context_features`` K) is appended to the net's input either way:
    as K more features, or for images as K more channels, constant over the image.
    """

    params_per_feature = 1
    mask: Tensor  # buffers (kept, transformed and merge_order: 1-D masks only)
    kept: Tensor
    transformed: Tensor
    merge_order: Tensor

    def __init__(self, mask: Tensor, make_net: NetFactory, context_features: int = 0):
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.dim() not in (1, 3) or mask.all() or not mask.any():
            raise ClayflowError(
                "a coupling mask must be 1-D (features/channels) or (C, H, W), with at least one "
                f"True (kept) and one False (transformed) entry; got shape {tuple(mask.shape)}"
            )
        self.register_buffer("mask", mask)
        self.elementwise = mask.dim() == 3
        if self.elementwise:
            channels = mask.shape[0]
            self.net = make_net(channels + context_features, self.params_per_feature * channels)
            self.transformed_features = channels
        else:
            kept = mask.nonzero().squeeze(1)
            transformed = (~mask).nonzero().squeeze(1)
            # Contiguous halves (e.g. a "half" mask) are split by slicing views and merged by
            # one cat: no gathers. Otherwise: index_select, and a gather to restore the order.
            self.kept_first = _block_order(mask)
            self.features, self.kept_count = len(mask), len(kept)
            self.register_buffer("kept", kept)
            self.register_buffer("transformed", transformed)
            self.register_buffer("merge_order", torch.argsort(torch.cat([kept, transformed])))
            self.net = make_net(len(kept) + context_features, self.params_per_feature * len(transformed))
            self.transformed_features = len(transformed)
        zero_init_last_layer(self.net)

    def _check(self, x: Tensor) -> None:
        if self.elementwise:
            if tuple(x.shape[1:]) != tuple(self.mask.shape):
                raise ClayflowError(
                    f"this coupling was built for images of shape {tuple(self.mask.shape)}, "
                    f"got input of shape {tuple(x.shape)}"
                )
        elif x.dim() < 2 or x.shape[1] != self.features:
            raise ClayflowError(
                f"this coupling was built for {self.mask.numel()} features, got input with "
                f"shape {tuple(x.shape)}"
            )

    def _couple(self, x: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        self._check(x)
        if self.elementwise:
            inputs = _with_context(x * self.mask, context)
            return self._map(x, self.net(inputs), inverse, free=(~self.mask).to(x.dtype))
        x_kept, x_rest = self._split(x)
        inputs = _with_context(x_kept, context)
        out_rest, logabsdet = self._map(x_rest, self.net(inputs), inverse)
        return self._merge(x_kept, out_rest), logabsdet

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(kept, transformed)`` parts of ``x`` along dim 1."""
        if self.kept_first is None:
            return x.index_select(1, self.kept), x.index_select(1, self.transformed)
        kept = self.kept_count
        if self.kept_first:
            return x[:, :kept], x[:, kept:]
        return x[:, -kept:], x[:, :-kept]

    def _merge(self, kept: Tensor, transformed: Tensor) -> Tensor:
        """Inverse of ``_split``."""
        if self.kept_first is None:
            return torch.cat([kept, transformed], dim=1).index_select(1, self.merge_order)
        return torch.cat([kept, transformed] if self.kept_first else [transformed, kept], dim=1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(z, context, inverse=True)

    def _map(
        self, v: Tensor, params: Tensor, inverse: bool, free: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The elementwise map of ``v`` given the net's ``params``; with ``free`` (1 where
        transformed, 0 where kept) the map is made the identity on the kept entries."""
        raise NotImplementedError


def affine(v: Tensor, shift: Tensor, log_scale: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    """``z = v exp(s) + t`` and ``log|det| = sum s`` (forward), or ``x = (v - t) exp(-s)`` and
    ``-sum s`` (inverse), with t = ``shift``, s = ``log_scale`` shaped like ``v`` ``(B, ...)``."""
    if inverse:
        return (v - shift) * torch.exp(-log_scale), -sum_except_batch(log_scale)
    return v * torch.exp(log_scale) + shift, sum_except_batch(log_scale)


class BoundedScale:
    """The log-scale ``s`` of an affine map, bounded from the raw network output as
    ``ScaleBound`` says (a mixin of nn.Modules: ``scale_factor`` is a parameter for TANH)."""

    def init_scale(self, features: int, scale_bound: ScaleBound, clamp: float) -> None:
        """Set the bound (after ``nn.Module.__init__``); ``features``: entries scaled."""
        self.scale_bound = ScaleBound(scale_bound)
        self.clamp = float(clamp)
        if self.scale_bound is ScaleBound.TANH:
            self.scale_factor = nn.Parameter(torch.ones(features))

    def log_scale(self, raw: Tensor) -> Tensor:
        """The bounded log-scale ``s`` from the raw network output ``(B, F)`` or ``(B, F, H, W)``."""
        if self.scale_bound is ScaleBound.TANH:
            factor = self.scale_factor if raw.dim() == 2 else per_feature(self.scale_factor, raw)
            return factor * torch.tanh(raw)
        if self.scale_bound is ScaleBound.SIGMOID:
            return F.logsigmoid(raw + 2.0)
        return self.clamp * torch.tanh(raw / self.clamp)


class AffineCoupling(_Coupling, BoundedScale):
    r"""Affine coupling (RealNVP): z_a = x_a, z_b = x_b * exp(s(x_a)) + t(x_a).

    log|det dz/dx| = sum_i s_i(x_a), with ``s`` bounded as ``ScaleBound`` says.

    Args:
        mask: bool ``(D,)`` or ``(C,)`` (channel-wise), or ``(C, H, W)`` (e.g. checkerboard);
            True entries pass through and condition the rest.
        make_net: factory ``(in_features, out_features) -> nn.Module``; it maps
            ``(B, D_a [+ K]) -> (B, 2 D_b)`` (shift, then raw scale), or for a ``(C, H, W)``
            mask ``(B, C, H, W) -> (B, 2C, H, W)``. Its last layer is zero-initialised here,
            so a new coupling is the identity.
        context_features: size ``K`` of an optional context appended to the net's input.
        scale_bound: ``ScaleBound.TANH`` (learned ``a``), ``SOFT_CLAMP`` or ``SIGMOID`` (Glow).
        clamp: ``c`` of the soft clamp.
    Shape:
        x: ``(B, D)`` or ``(B, C, H, W)`` -> z like x, logabsdet ``(B,)``.
    Reference: Dinh et al., Density estimation using Real NVP, 2017.
    """

    params_per_feature = 2

    def __init__(
        self,
        mask: Tensor,
        make_net: NetFactory,
        context_features: int = 0,
        scale_bound: ScaleBound = ScaleBound.TANH,
        clamp: float = 2.0,
    ):
        super().__init__(mask, make_net, context_features)
        self.init_scale(self.transformed_features, scale_bound, clamp)

    def _map(
        self, v: Tensor, params: Tensor, inverse: bool, free: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        shift, raw = params.chunk(2, dim=1)
        s = self.log_scale(raw)
        if free is not None:
            shift, s = shift * free, s * free
        return affine(v, shift, s, inverse)


class AdditiveCoupling(_Coupling):
    r"""Additive coupling (NICE): z_a = x_a, z_b = x_b + t(x_a); volume preserving.

    log|det dz/dx| = 0. Arguments as ``AffineCoupling``; the net maps ``D_a -> D_b``.
    Shape:
        x: ``(B, D)`` or ``(B, C, H, W)`` -> z like x, logabsdet ``(B,)`` of zeros.
    Reference: Dinh et al., NICE: Non-linear Independent Components Estimation, 2015.
    """

    def _map(
        self, v: Tensor, params: Tensor, inverse: bool, free: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        shift = params if free is None else params * free
        return (v - shift if inverse else v + shift), identity_logabsdet(v)
