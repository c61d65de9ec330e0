"""Image-specific transforms: squeeze and checkerboard properties, multi-scale latents,
dequantization, and the bits/dim convention checked against independent computations."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import clayflow.transforms as T
from clayflow.errors import ClayflowError
from clayflow.models.image import default_scales, realnvp_image
from zoo import STOCHASTIC, resnet


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3))
def test_squeeze_round_trip_and_shape(channels, half_h, half_w, batch):
    x = torch.randn(batch, channels, 2 * half_h, 2 * half_w)
    squeeze = T.Squeeze()
    z, logabsdet = squeeze(x)
    assert z.shape == (batch, 4 * channels, half_h, half_w)
    assert squeeze.output_shape(x.shape[1:]) == tuple(z.shape[1:])
    assert torch.equal(squeeze.inverse(z)[0], x) and torch.equal(logabsdet, torch.zeros(batch))
    # Each output pixel holds exactly the 2x2 block it came from.
    block = x[:, :, :2, :2].reshape(batch, channels, 4)
    torch.testing.assert_close(z[:, :, 0, 0].reshape(batch, channels, 4), block)


@pytest.mark.parametrize("shape", [(1, 3, 4), (2, 4, 5)])
def test_squeeze_refuses_odd_sizes(shape):
    with pytest.raises(ClayflowError, match="even height and width"):
        T.Squeeze()(torch.randn(2, *shape))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(2, 6), st.integers(0, 3))
def test_checkerboard_parities_complement_and_alternate(channels, height, width, parity):
    mask = T.checkerboard_mask((channels, height, width), parity)
    other = T.checkerboard_mask((channels, height, width), parity + 1)
    assert torch.equal(mask, ~other)
    assert torch.equal(mask[:, :, 1:], ~mask[:, :, :-1])  # neighbours differ
    assert bool(mask[0, 0, 0]) == (parity % 2 == 0)


def test_checkerboard_coupling_leaves_kept_pixels_unchanged():
    from zoo import make

    coupling, shape = make("affine_coupling_checkerboard")
    x = torch.randn(4, *shape, dtype=torch.float64)
    z, _ = coupling(x)
    kept = coupling.mask.expand_as(x)
    assert torch.equal(z[kept], x[kept]) and not torch.allclose(z[~kept], x[~kept])


@pytest.mark.parametrize("parity", [0, 1])
def test_a_squeezed_checkerboard_coupling_keeps_the_checkerboards_pixels(parity):
    """``--mask squeezed``: after a squeeze, the coupling of ``squeezed_checkerboard_mask``
    keeps exactly the pixels ``checkerboard_mask`` keeps, and transforms the others."""
    shape = (2, 4, 6)
    coupling = T.AffineCoupling(T.squeezed_checkerboard_mask(shape[0], parity), resnet)
    for p in coupling.parameters():
        p.data.normal_(0, 0.3)
    x = torch.randn(3, *shape, dtype=torch.float64)
    coupling.double()
    squeeze = T.Squeeze()
    z = squeeze.inverse(coupling(squeeze(x)[0])[0])[0]
    kept = T.checkerboard_mask(shape, parity).expand_as(x)
    assert torch.equal(z[kept], x[kept]) and not torch.isclose(z[~kept], x[~kept]).any()


@pytest.mark.parametrize("shape, scales, masked_top", [((1, 8, 8), 2, False), ((1, 28, 28), 3, True), ((1, 6, 6), 1, False)])
def test_the_squeezed_layout_squeezes_every_checkerboard_but_an_odd_top(shape, scales, masked_top):
    """``mask="squeezed"``: every checkerboard coupling's mask is a channel mask after a
    squeeze, except at a top of odd size (1x28x28's 7x7), which keeps the masked image."""
    flow = realnvp_image(shape, scales=scales, hidden=4, depth=0, mask="squeezed")
    levels = flow.transform[-1].levels
    for i, level in enumerate(levels):
        couplings = [t for t in level.transforms if isinstance(t, T.AffineCoupling)]
        image_masks = [c for c in couplings if c.mask.dim() == 3]
        top = i == len(levels) - 1
        assert len(image_masks) == (len(couplings) if top and masked_top else 0)
        assert isinstance(level.transforms[0], T.Squeeze) != (top and masked_top)


def test_an_image_spec_without_a_mask_builds_the_papers_layout():
    """Runs written before ``--mask`` existed on images record no ``mask``: they load as they
    were trained, with checkerboard couplings on the masked image."""
    from clayflow.models import ModelSpec, build

    spec = ModelSpec.from_dict({"name": "realnvp", "event_shape": [1, 8, 8], "levels": 17,
                                "options": {"hidden": 4, "depth": 0}})  # fmt: skip
    couplings = [m for m in build(spec).modules() if isinstance(m, T.AffineCoupling)]
    assert sum(c.mask.dim() == 3 for c in couplings) == 7  # 3 at 8x8, 4 at the 4x4 top


def test_multiscale_latent_order_and_views():
    flow = realnvp_image((1, 8, 8), 17, hidden=8, depth=1)
    multiscale = flow.transform[-1]
    assert multiscale.latent_shapes == [(2, 4, 4), (2, 4, 4)]
    z = torch.arange(64.0).unsqueeze(0)
    factored, top = multiscale.split_latent(z)
    assert torch.equal(factored.flatten(), torch.arange(32.0)) and torch.equal(
        top.flatten(), torch.arange(32.0, 64)
    )
    with pytest.raises(ClayflowError, match=r"shape \(B, 64\)"):
        multiscale.split_latent(torch.zeros(1, 63))


@pytest.mark.parametrize(
    "shape, scales", [((1, 8, 8), 2), ((1, 28, 28), 3), ((3, 32, 32), 3), ((1, 6, 6), 1), ((3, 16, 16), 3)]
)
@pytest.mark.parametrize("mask", ["checkerboard", "squeezed"])
def test_default_scales_fit_the_image(shape, scales, mask):
    """Both checkerboard layouts, at tops of even size and of odd (1x28x28's 7x7: masked)."""
    assert default_scales(shape) == scales
    flow = realnvp_image(shape, hidden=4, depth=0, mask=mask)
    x = torch.randint(0, 256, (2, *shape)).float()
    z, _ = flow(x)
    assert z.shape == (2, math.prod(shape))
    assert torch.equal(flow.inverse(z)[0], x)


def test_image_model_refuses_sizes_it_cannot_squeeze():
    with pytest.raises(ClayflowError, match="divisible by 4.*--scales 2"):
        realnvp_image((1, 10, 10), scales=3)


def test_dequantize_adds_fresh_unit_noise_and_quantizes_back():
    dequantize, shape = STOCHASTIC["dequantize"]()
    x = torch.randint(0, 17, (2000, *shape)).double()
    y, logabsdet = dequantize(x)
    assert torch.all((y >= x) & (y < x + 1)) and torch.equal(logabsdet, torch.zeros(2000))
    assert abs((y - x).mean().item() - 0.5) < 0.01  # U[0, 1): mean 1/2
    assert not torch.equal(dequantize(x)[0], y)  # fresh noise on each call
    assert torch.equal(dequantize.inverse(y)[0], x)
    assert torch.equal(
        dequantize.inverse(torch.tensor([[-3.0, 16.99, 40.0]]))[0], torch.tensor([[0.0, 16, 16]])
    )


def closed_form_log_prob(x: np.ndarray, u: np.ndarray, levels: int, alpha: float) -> np.ndarray:
    """log p(x + u) of a model that is the identity after its pre-processing, per example:
    sum_i [log N(logit p_i) + log(1 - 2a) - log k - log p_i - log(1 - p_i)], p = a + (1-2a)(x+u)/k."""
    p = alpha + (1 - 2 * alpha) * (x + u) / levels
    logit = np.log(p) - np.log1p(-p)
    per_element = (
        -0.5 * logit**2
        - 0.5 * np.log(2 * np.pi)
        + np.log(1 - 2 * alpha)
        - np.log(levels)
        - np.log(p)
        - np.log1p(-p)
    )
    return per_element.reshape(len(x), -1).sum(1)


def bits_per_dim_against_closed_form(
    levels=17, alpha=0.05, shape=(1, 8, 8), n=6
) -> tuple[np.ndarray, np.ndarray]:
    """bits/dim of a fresh (identity-core) image RealNVP, and the same from the closed form."""
    flow = realnvp_image(shape, levels, hidden=8, depth=1, alpha=alpha).double().eval()
    x = torch.randint(0, levels, (n, *shape)).double()
    torch.manual_seed(3)
    with torch.no_grad():
        bpd = flow.bits_per_dim(x).numpy()
    torch.manual_seed(3)
    u = torch.rand_like(x).numpy()  # the same dequantization noise
    return bpd, -closed_form_log_prob(x.numpy(), u, levels, alpha) / (math.prod(shape) * np.log(2))


def test_bits_per_dim_of_an_untrained_model_matches_an_independent_formula():
    bpd, expected = bits_per_dim_against_closed_form()
    np.testing.assert_allclose(bpd, expected, rtol=1e-12)


def discrete_mass(levels=3, alpha=0.05, n=300) -> tuple[float, float]:
    """Integral of a fresh model's p over [0, k)^2 (midpoint rule, n^2 points), and its closed
    form (Phi(b) - Phi(-b))^2, b = logit(1 - alpha): the total probability of the k^2 images."""
    flow = realnvp_image((1, 1, 2), levels, scales=1, hidden=4, depth=1, alpha=alpha).double().eval()
    after_dequantization = T.Compose(*list(flow.transform)[1:])
    grid = (torch.arange(n, dtype=torch.float64) + 0.5) * levels / n
    y = torch.cartesian_prod(grid, grid).reshape(-1, 1, 1, 2)
    with torch.no_grad():
        z, logabsdet = after_dequantization(y)
    mass = (flow.base.log_prob(z) + logabsdet).exp().sum().item() * (levels / n) ** 2
    b = math.log((1 - alpha) / alpha)
    return mass, math.erf(b / math.sqrt(2)) ** 2


def test_continuous_density_mass_equals_the_discrete_total():
    """Checks every pre-processing log-det and the units of [0, k) at once."""
    mass, expected = discrete_mass()
    assert abs(mass - expected) < 1e-5, (mass, expected)
