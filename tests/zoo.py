"""One small, randomised instance of every exported transform, with an input shape.

``ZOO[name]()`` returns ``(transform, event_shape)``. Parameters are randomised (a
zero-initialised coupling is the identity, whose log-det test could not fail).
``inputs(name, shape, batch)`` draws inputs from the transform's domain. ``STOCHASTIC``
holds transforms that are not deterministic bijections (dequantization), which have their
own tests in ``test_preprocess.py``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from clayflow import transforms as T
from clayflow.core import Transform
from clayflow.models.glow import glow_image, glow_vector
from clayflow.models.image import realnvp_image
from clayflow.nn import MLP, ODENet, ResidualMLP
from clayflow.nn.resnet import ConvResNet


def randomize(module: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Random parameters (std ``scale``) and statistics, so every term of every log-det is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        for name, b in module.named_buffers():
            if not b.is_floating_point() or b.dim() == 0:
                continue
            if name.endswith(("var", "std")):
                b.copy_(torch.rand(b.shape, generator=g) * 1.5 + 0.5)
            else:
                b.copy_(torch.randn(b.shape, generator=g))
    return module


def _conv(i: int, o: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(i, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, o, 3, padding=1))


mlp = partial(MLP, hidden=16, depth=2, activation=nn.Tanh)
resmlp = partial(ResidualMLP, hidden=16, depth=1, activation=nn.Tanh)
resnet = partial(ConvResNet, hidden=8, blocks=1)


def _multiscale():
    first = T.Compose(
        T.AffineCoupling(T.checkerboard_mask((1, 4, 4)), _conv),
        T.Squeeze(),
        T.AffineCoupling(T.half_mask(4, 1), resnet),
    )
    last = T.AffineCoupling(T.checkerboard_mask((2, 2, 2), 1), _conv)
    return T.MultiScale([first, last], (1, 4, 4)), (1, 4, 4)


def _realnvp_image(mask: str = "checkerboard", shape: tuple[int, int, int] = (1, 4, 4)):
    """The image RealNVP after its dequantization: inputs are continuous in [0, levels)."""
    flow = realnvp_image(shape, 17, scales=2, hidden=8, depth=1, mask=mask)
    return T.Compose(*list(flow.transform)[1:]), shape


ZOO = {
    "affine_coupling_half": lambda: (T.AffineCoupling(T.half_mask(5), mlp), (5,)),
    "affine_coupling_alternating": lambda: (T.AffineCoupling(T.alternating_mask(4, 1), resmlp), (4,)),
    "affine_coupling_user_mask": lambda: (
        T.AffineCoupling(torch.tensor([1, 0, 0, 1, 0], dtype=torch.bool), mlp),
        (5,),
    ),
    "affine_coupling_soft_clamp": lambda: (
        T.AffineCoupling(T.half_mask(4), mlp, scale_bound=T.ScaleBound.SOFT_CLAMP),
        (4,),
    ),
    "affine_coupling_channels": lambda: (T.AffineCoupling(T.half_mask(2), _conv), (2, 3, 3)),
    "additive_coupling": lambda: (T.AdditiveCoupling(T.alternating_mask(5), mlp), (5,)),
    "batch_norm": lambda: (T.BatchNorm(4), (4,)),
    "batch_norm_image": lambda: (T.BatchNorm(2), (2, 3, 3)),
    "scaling": lambda: (T.Scaling(4), (4,)),
    "standardize": lambda: (T.Standardize(3), (3,)),
    "standardize_image": lambda: (T.Standardize(2), (2, 2, 3)),
    "permutation_random": lambda: (T.Permutation.random(5, seed=3), (5,)),
    "permutation_reverse": lambda: (T.Permutation.reverse(4), (4,)),
    "compose": lambda: (
        T.Compose(T.AffineCoupling(T.half_mask(4), mlp), T.Permutation.reverse(4), T.BatchNorm(4)),
        (4,),
    ),
    "inverse": lambda: (T.Inverse(T.AffineCoupling(T.alternating_mask(4), mlp)), (4,)),
    "affine_coupling_checkerboard": lambda: (
        T.AffineCoupling(T.checkerboard_mask((2, 4, 4)), _conv),
        (2, 4, 4),
    ),
    "affine_coupling_checkerboard_resnet": lambda: (
        T.AffineCoupling(T.checkerboard_mask((1, 4, 4), 1), resnet, scale_bound="soft_clamp"),
        (1, 4, 4),
    ),
    "affine_coupling_channels_resnet": lambda: (T.AffineCoupling(T.half_mask(4, 1), resnet), (4, 2, 2)),
    "squeeze": lambda: (T.Squeeze(), (2, 4, 6)),
    "scalar_affine": lambda: (T.ScalarAffine(0.25, -0.5), (2, 3)),
    "logit": lambda: (T.Logit(0.05), (2, 2, 2)),
    "multiscale": _multiscale,
    "realnvp_image": _realnvp_image,
    "realnvp_image_squeezed": lambda: _realnvp_image("squeezed", (2, 4, 4)),
    "affine_coupling_squeezed_checkerboard": lambda: (
        T.AffineCoupling(T.squeezed_checkerboard_mask(2, 1), resnet),
        (8, 2, 2),
    ),
}


def _initialized(actnorm: T.ActNorm) -> T.ActNorm:
    actnorm.initialized.fill_(True)  # randomised parameters, no data-dependent init
    return actnorm


def _glow_image():
    """Glow after its dequantization (inputs continuous in [0, levels)), with ActNorms marked
    initialised so that the randomised parameters are the ones tested."""
    flow = glow_image((1, 4, 4), 17, scales=2, layers=2, hidden=8)
    for module in flow.modules():
        if isinstance(module, T.ActNorm):
            _initialized(module)
    return T.Compose(*list(flow.transform)[1:]), (1, 4, 4)


def _glow_vector():
    flow = glow_vector(4, layers=2, hidden=8, coupling="additive")
    for module in flow.modules():
        if isinstance(module, T.ActNorm):
            _initialized(module)
    return flow.transform, (4,)


class _AtContext(Transform):
    """A conditional transform at one fixed, randomised context row (a buffer), so that the
    zoo's tests, which pass no context, check its maps and log-dets at that context."""

    def __init__(self, transform: T.Transform, context_features: int):
        super().__init__()
        self.transform = transform
        self.register_buffer("context", torch.zeros(1, context_features))

    def forward(self, x, context=None):
        return self.transform(x, self.context.expand(len(x), -1))

    def inverse(self, z, context=None):
        return self.transform.inverse(z, self.context.expand(len(z), -1))


def _split_with_prior():
    first = T.Compose(T.Squeeze(), T.AffineCoupling(T.half_mask(4), resnet, scale_bound="sigmoid"))
    last = T.Compose(T.InvertibleConv1x1(2, lu=False), T.LearnedPrior(2))
    return T.MultiScale([first, last], (1, 4, 4), [T.LearnedPrior(2, context_channels=2)]), (1, 4, 4)


ZOO.update(
    {
        "actnorm": lambda: (_initialized(T.ActNorm(3)), (3,)),
        "actnorm_image": lambda: (_initialized(T.ActNorm(2)), (2, 3, 3)),
        "conv1x1_plain": lambda: (T.InvertibleConv1x1(3, lu=False), (3, 2, 2)),
        "conv1x1_lu": lambda: (T.InvertibleConv1x1(4, lu=True), (4, 2, 3)),
        "linear_lu": lambda: (T.InvertibleConv1x1(5, lu=True), (5,)),
        "affine_coupling_sigmoid": lambda: (
            T.AffineCoupling(T.half_mask(4), mlp, scale_bound="sigmoid"),
            (4,),
        ),
        "affine_coupling_checkerboard_sigmoid": lambda: (
            T.AffineCoupling(T.checkerboard_mask((1, 4, 4)), _conv, scale_bound="sigmoid"),
            (1, 4, 4),
        ),
        "learned_prior_top": lambda: (T.LearnedPrior(2), (2, 2, 2)),
        "multiscale_learned_prior": _split_with_prior,
        "glow_image": _glow_image,
        "glow_vector": _glow_vector,
        "maf": lambda: (T.AffineAutoregressive(4, hidden=8), (4,)),
        "maf_residual_soft_clamp": lambda: (
            T.AffineAutoregressive(3, hidden=6, depth=1, residual=True, scale_bound="soft_clamp"),
            (3,),
        ),
        "iaf": lambda: (T.Inverse(T.AffineAutoregressive(4, hidden=8, activation="tanh")), (4,)),
        "spline_autoregressive": lambda: (T.SplineAutoregressive(3, hidden=8, bins=4, bound=1.5), (3,)),
        "spline_coupling": lambda: (T.SplineCoupling(T.alternating_mask(5), mlp, bins=5, bound=1.5), (5,)),
        "spline_coupling_image": lambda: (T.SplineCoupling(T.half_mask(4), _conv, bins=3, bound=1.5), (4, 3, 3)),
        "spline_coupling_checkerboard": lambda: (
            T.SplineCoupling(T.checkerboard_mask((2, 4, 4)), _conv, bins=4, bound=1.0),
            (2, 4, 4),
        ),
        "maf_context": lambda: (_AtContext(T.AffineAutoregressive(3, hidden=8, context_features=2), 2), (3,)),
        "affine_coupling_context": lambda: (
            _AtContext(T.AffineCoupling(T.alternating_mask(4), mlp, context_features=3), 3),
            (4,),
        ),
        "spline_coupling_checkerboard_context": lambda: (
            _AtContext(T.SplineCoupling(T.checkerboard_mask((2, 4, 4)), _conv, 2, bins=4, bound=1.0), 2),
            (2, 4, 4),
        ),
        "power_transform": lambda: (T.PowerTransform(4), (4,)),
        "whitening": lambda: (T.Whitening(4), (4,)),
        "planar": lambda: (T.Planar(3), (3,)),
        "planar_stack": lambda: (T.Compose(T.Planar(4), T.Planar(4), T.Planar(4)), (4,)),
        "radial": lambda: (T.Radial(3), (3,)),
        "radial_stack": lambda: (T.Compose(T.Radial(2), T.Radial(2), T.Radial(2)), (2,)),
    }
)

# Inputs of transforms whose domain is not all of R^D.
DOMAINS = {
    "logit": lambda shape, batch, dtype: torch.rand(batch, *shape, dtype=dtype),
    "realnvp_image": lambda shape, batch, dtype: torch.rand(batch, *shape, dtype=dtype) * 17,
    "realnvp_image_squeezed": lambda shape, batch, dtype: torch.rand(batch, *shape, dtype=dtype) * 17,
    "glow_image": lambda shape, batch, dtype: torch.rand(batch, *shape, dtype=dtype) * 17,
}

# A deep model with std-0.5 weights maps random latents far out of the logit's range.
PARAMETER_SCALES = {"realnvp_image": 0.1, "realnvp_image_squeezed": 0.1, "glow_image": 0.1}

STOCHASTIC = {
    "dequantize": lambda: (T.Dequantize(17), (1, 3, 3)),
    "dequantize_columns": lambda: (T.DequantizeColumns(3, [0, 2]), (3,)),
    "dequantize_columns_on_a_grid": lambda: (T.DequantizeColumns(3, [0, 2], [0.1, 2.5]), (3,)),
    "augment": lambda: (T.Augment(2), (3,)),
    "augment_image": lambda: (T.Augment(1), (2, 3, 3)),
}

# Transforms exact only up to an ODE solver's tolerance, tested in ``test_continuous.py``.
APPROXIMATE = {
    "cnf": lambda: (T.CNF(ODENet(2, 16, 2), atol=1e-10, rtol=1e-10), (2,)),
    "cnf_conv": lambda: (T.CNF(ODENet(1, 4, 1, conv=True), atol=1e-10, rtol=1e-10), (1, 2, 2)),
}


def inputs(name: str, shape: tuple[int, ...], batch: int = 3, dtype=torch.float64) -> torch.Tensor:
    """A batch from the domain of ``ZOO[name]`` (standard normal unless ``DOMAINS`` says)."""
    if name in DOMAINS:
        return DOMAINS[name](shape, batch, dtype)
    return torch.randn(batch, *shape, dtype=dtype)


def make(name: str, dtype=torch.float64) -> tuple[T.Transform, tuple[int, ...]]:
    """The zoo entry ``name``, randomised, in eval mode, in ``dtype``."""
    transform, shape = ZOO[name]()
    return randomize(transform, scale=PARAMETER_SCALES.get(name, 0.5)).to(dtype).eval(), shape
