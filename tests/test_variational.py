"""Variational inference: planar and radial flows, the targets and their normalisers, importance
weights (ESS, log Z, Pareto k̂), and reverse-KL training to a target's known log Z."""

import math
import sys

import numpy as np
import pytest
import torch

from clayflow import models
from clayflow import transforms as T
from clayflow.errors import ClayflowError, UsageError
from clayflow.variational import ImportanceWeights, Target, fit_target, load_target, reverse_kl
from clayflow.variational.targets import TARGETS


def grid_log_mass(target: Target, points: int = 801) -> float:
    """log ∫ p̃ over the target's box (a 2-D trapezoid-free Riemann sum, fine enough here)."""
    (x0, y0), (x1, y1) = target.box
    gx, gy = torch.meshgrid(torch.linspace(x0, x1, points, dtype=torch.float64),
                            torch.linspace(y0, y1, points, dtype=torch.float64), indexing="ij")  # fmt: skip
    log_p = target(torch.stack([gx.flatten(), gy.flatten()], 1))
    cell = (x1 - x0) / (points - 1) * (y1 - y0) / (points - 1)
    return float(torch.logsumexp(log_p, 0) + math.log(cell))


@pytest.mark.parametrize("name", ["banana", "gaussian_mixture"])
def test_the_known_normalisers_are_the_grid_integrals(name):
    target = load_target(name)
    assert abs(grid_log_mass(target) - target.log_z) < 2e-3


@pytest.mark.parametrize("name", ["u1", "u2", "u3", "u4"])
def test_the_energies_have_finite_mass_inside_their_box(name):
    """U2-U4's soft wall confines them: the box holds all but 1e-3 of the mass of a box twice as wide."""
    target = load_target(name)
    inside = grid_log_mass(target)
    wide = grid_log_mass(Target(name, 2, target.log_density, box=((-10.0, -12.0), (10.0, 8.0))), points=1601)
    assert math.isfinite(inside) and wide - inside < 1e-3


def test_the_funnel_and_the_posterior_are_the_densities_they_claim():
    x = torch.randn(50, 10, dtype=torch.float64) * 2
    normal = torch.distributions.Normal
    expected = normal(0, 3.0).log_prob(x[:, 0]) + normal(0, torch.exp(x[:, :1] / 2)).log_prob(x[:, 1:]).sum(1)
    torch.testing.assert_close(load_target("funnel")(x), expected)
    posterior = load_target("logistic_regression")
    theta = torch.randn(4, 31, dtype=torch.float64) * 0.3
    design, labels = posterior.log_density.design, posterior.log_density.labels
    bernoulli = torch.distributions.Bernoulli(logits=theta @ design.T)
    expected = bernoulli.log_prob(labels.expand(4, -1)).sum(1) + normal(0, 1.0).log_prob(theta).sum(1)
    torch.testing.assert_close(posterior(theta), expected)
    assert design.shape == (569, 31) and torch.allclose(design[:, 1:].mean(0), torch.zeros(30, dtype=torch.float64), atol=1e-10)


def test_a_users_target_comes_from_a_module_or_a_file(tmp_path, monkeypatch):
    source = tmp_path / "mytargets.py"
    source.write_text(
        "import torch\n"
        "def ring(x):\n    return -((x.norm(dim=1) - 1) ** 2) / 0.02\n"
        "ring.dims = 2\n"
        "def bad(x):\n    return x\n"
        "bad.dims = 3\n"
        "def nodims(x):\n    return x.sum(1)\n"
        "def boom(x):\n    raise KeyError('boom')\n"
        "def as_list(x):\n    return x.sum(1).tolist()\n"
        "def as_complex(x):\n    return x.sum(1) + 0j\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ring = load_target("mytargets:ring")
    assert ring.dims == 2 and ring(torch.zeros(5, 2)).shape == (5,)
    assert load_target(f"{source}:nodims", dims=4).dims == 4
    with pytest.raises(UsageError, match="one value per row"):
        load_target("mytargets:bad")(torch.zeros(5, 3))
    with pytest.raises(UsageError, match="how many dimensions"):
        load_target("mytargets:nodims")
    with pytest.raises(ClayflowError, match=r"^target boom failed on a batch of shape \(5, 2\): KeyError: 'boom'$"):
        load_target("mytargets:boom", dims=2)(torch.zeros(5, 2))
    for name, what in (("as_list", "a list"), ("as_complex", r"complex values \(torch.complex64\)")):
        with pytest.raises(UsageError, match=f"target {name} returned {what}; it must return a real tensor"):
            load_target(f"mytargets:{name}", dims=2)(torch.zeros(5, 2))
    for dims in (0, -1):  # not the function's own dims silently
        with pytest.raises(UsageError, match=f"--dims must be at least 1, got {dims}"):
            load_target("mytargets:ring", dims=dims)
    assert load_target("mytargets:ring", dims=2).dims == 2
    with pytest.raises(UsageError, match="target mytargets:ring has 2 dimensions, not 3"):  # not the --dims silently
        load_target("mytargets:ring", dims=3)
    with pytest.raises(UsageError, match="unknown target"):
        load_target("bananas")
    with pytest.raises(UsageError, match="has no 'missing'"):
        load_target("mytargets:missing")
    with pytest.raises(UsageError, match="cannot import"):
        load_target("no_such_module_here:f")
    sys.modules.pop("mytargets", None)


def test_importance_weights_estimate_log_z_and_the_tail():
    """q = N(0, 1) against p̃ = 3 N(0, s²): log Z = log 3; the weights' Pareto shape is
    k = 1 - 1/s² (0.75 for s = 2; ArviZ's psislw gives 0.705 ± 0.096 over the same kind of draws)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8000, generator=generator, dtype=torch.float64)
    log_q = torch.distributions.Normal(0, 1.0).log_prob(x)
    close = ImportanceWeights(math.log(3) + torch.distributions.Normal(0, 1.2).log_prob(x), log_q)
    assert abs(close.log_z - math.log(3)) < 3 * close.log_z_se and 0.8 < close.ess < 0.95
    assert close.elbo < close.log_z and close.pareto_k < 0.5
    heavy = ImportanceWeights(math.log(3) + torch.distributions.Normal(0, 2.0).log_prob(x), log_q)
    assert 0.5 < heavy.pareto_k < 1.0 and heavy.ess < 0.3
    draws = close.resample(20000, torch.Generator().manual_seed(1))
    assert abs(x[draws].std().item() - 1.2) < 0.05  # resampling moves q's draws towards p


def test_planar_maps_stay_invertible_at_the_edge_of_their_constraint():
    """wᵀu below -1 is projected to wᵀû just above -1 (here -0.9933): the map flattens along w
    (slope 0.0067 at one point) but stays one-to-one, and the bisection still inverts it."""
    layer = T.Planar(3)
    with torch.no_grad():
        layer.w.copy_(torch.tensor([2.0, 0.0, 0.0]))
        layer.u.copy_(torch.tensor([-2.5, 1.0, 0.0]))
        layer.b.fill_(0.3)
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-3)):
        layer = layer.to(dtype)
        z = torch.randn(2000, 3, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 3
        x, log_det = layer.inverse(z)
        back, forward_log_det = layer(x)
        assert (back - z).abs().max() < tolerance and (log_det + forward_log_det).abs().max() < tolerance
        assert torch.isfinite(log_det).all() and log_det.min() < -4  # the flat region was reached


def test_reverse_kl_mixes_in_the_nll_of_target_samples():
    torch.manual_seed(0)
    flow, target = models.realnvp(2, layers=2, hidden=8), load_target("banana")
    samples = torch.randn(32, 2)
    step = reverse_kl(flow, target, 32, target_samples=samples, forward_weight=1.0)
    torch.testing.assert_close(step.loss, -flow.log_prob(samples).mean())
    more = reverse_kl(flow, target, 32, target_samples=torch.randn(1000, 2), forward_weight=1.0)
    assert more.loss.isfinite()  # a random 32 of the 1000 each step
    assert step.log_q.shape == (32,) and not step.log_q.requires_grad


def test_a_flow_fitted_by_reverse_kl_finds_the_normaliser(one_thread):
    torch.manual_seed(0)
    target = load_target("banana")
    result = fit_target(models.realnvp(2, layers=4, hidden=64), target, steps=1200, eval_every=600,
                        anneal_steps=300, eval_samples=8000)  # fmt: skip
    final = result.history[-1]
    assert final["ess"] > 0.9 and abs(final["log_z"] - target.log_z) < 0.02, final
    assert result.history[0]["ess"] < 0.5  # the untrained flow was far from it
    assert final["elbo"] <= final["log_z"]


def test_fitting_refuses_a_mismatch_and_a_target_that_is_never_finite():
    with pytest.raises(ClayflowError, match="2 dimensions and target funnel 10"):
        fit_target(models.realnvp(2, layers=2, hidden=8), load_target("funnel"), steps=1)
    nowhere = Target("nowhere", 2, lambda x: 0 * x[:, 0] - math.inf)
    with pytest.raises(ClayflowError, match="not finite in 10 steps in a row"):
        fit_target(models.realnvp(2, layers=2, hidden=8), nowhere, steps=5, eval_samples=64)
    with pytest.raises(ClayflowError, match="eval_samples .* must be >= 2"):  # one draw's ESS is 100%, whatever the fit
        fit_target(models.realnvp(2, layers=2, hidden=8), load_target("banana"), steps=5, eval_samples=1)


def test_every_built_in_target_evaluates_a_batch():
    for name in TARGETS:
        target = load_target(name)
        values = target(torch.randn(7, target.dims))
        assert values.shape == (7,) and torch.isfinite(values).all(), name
    assert np.isclose(load_target("gaussian_mixture").log_z, math.log(8 * 2 * math.pi * 0.25))


@pytest.mark.parametrize("name", ["nice", "glow", "iaf", "nsf", "cnf", "planar", "radial"])
def test_every_family_that_samples_can_be_fitted(name, one_thread):
    """A few steps of reverse KL on each family: finite, and the ELBO of the banana improves."""
    torch.manual_seed(0)
    small = {"nice": {"layers": 2, "hidden": 16}, "glow": {"layers": 2, "hidden": 16}, "iaf": {"layers": 2, "hidden": 16},
             "nsf": {"layers": 2, "hidden": 16}, "cnf": {"hidden": 16, "solver": "rk4", "step_size": 0.25},
             "planar": {"layers": 8}, "radial": {"layers": 8}}[name]  # fmt: skip
    flow = models.build(models.ModelSpec(name, [2], small))
    result = fit_target(flow, load_target("banana"), steps=40, eval_every=40, eval_samples=1000, batch_size=128, lr=3e-3)
    first, last = result.history[0], result.history[-1]
    assert math.isfinite(last["elbo"]) and last["elbo"] > first["elbo"], (first, last)


def test_the_planar_inverse_has_the_gradients_of_the_map_it_inverts():
    """The bisection carries no gradient; the Newton step at the root gives the implicit
    function theorem's: gradcheck w.r.t. the data and u, w, b, in float64."""
    layer = T.Planar(3).double()
    with torch.no_grad():
        layer.u.copy_(torch.tensor([0.9, -0.4, 0.3]))
        layer.b.fill_(0.2)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    parameters = [layer.u, layer.w, layer.b]

    def forward(x, u, w, b):
        return torch.func.functional_call(layer, {"u": u, "w": w, "b": b}, (x,))

    assert torch.autograd.gradcheck(forward, (x, *[p.detach().clone().requires_grad_() for p in parameters]))


def test_a_target_without_a_gradient_is_refused():
    detached = Target("numpy", 2, lambda x: torch.as_tensor(-(x.detach().numpy() ** 2).sum(1)))
    with pytest.raises(UsageError, match="without a gradient"):
        reverse_kl(models.realnvp(2, layers=2, hidden=8), detached, 16)
