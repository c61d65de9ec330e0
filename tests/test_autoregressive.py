"""MADE's masks make a triangular Jacobian; MAF/IAF/NSF layers start as the identity; the
rational-quadratic spline is monotonic, continuous at its knots and tails, and its inverse
stays exact for extreme parameters (the zoo checks every layer's log-det in float64)."""

import pytest
import torch
from torch.autograd.functional import jacobian

from clayflow import transforms as T
from clayflow.nn import MADE
from clayflow.transforms.splines import rational_quadratic_spline


@pytest.mark.parametrize("residual", [False, True])
def test_made_outputs_depend_only_on_earlier_features(residual):
    torch.manual_seed(0)
    made = MADE(
        5, 3, hidden=7, depth=2, context_features=2, residual=residual, activation=torch.nn.Tanh
    ).double()
    for p in made.parameters():
        torch.nn.init.normal_(p)
    x, c = torch.randn(5, dtype=torch.float64), torch.randn(1, 2, dtype=torch.float64)
    J = jacobian(lambda v: made(v[None], c)[0].view(5, 3), x)  # (feature i, param, input j)
    strictly_before = torch.tril(torch.ones(5, 5), -1).bool()  # out_i may use x_j only for j < i
    assert (J.abs().amax(1)[~strictly_before] == 0).all()
    assert (J.abs().amax(1)[strictly_before] > 0).all()  # and uses all of them (hidden >= D - 1)
    context_jacobian = jacobian(lambda cc: made(x[None], cc)[0], c)
    assert (context_jacobian.abs().sum((1, 2)) > 0).all()  # every output sees the context


@pytest.mark.parametrize(
    "layer",
    [
        lambda: T.AffineAutoregressive(4, hidden=8),
        lambda: T.SplineAutoregressive(4, hidden=8, bins=5),
        lambda: T.SplineCoupling(T.alternating_mask(4), lambda i, o: torch.nn.Linear(i, o)),
    ],
)
def test_new_layers_are_the_identity(layer):
    x = torch.randn(6, 4) * 3
    z, logabsdet = layer()(x)
    torch.testing.assert_close(z, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(logabsdet, torch.zeros(6), atol=1e-5, rtol=0)


def test_the_spline_is_monotonic_continuous_and_has_identity_tails():
    g = torch.Generator().manual_seed(1)
    bins, bound = 6, 2.0
    params = [torch.randn(1, n, generator=g, dtype=torch.float64) * 3 for n in (bins, bins, bins - 1)]
    x = torch.linspace(-4, 4, 20001, dtype=torch.float64)
    y, log_slope = rational_quadratic_spline(x, *(p.expand(len(x), -1) for p in params), bound)
    assert (y.diff() > 0).all() and y.diff().max() < 0.05  # increasing, no jumps
    outside = x.abs() > bound
    assert torch.equal(y[outside], x[outside]) and (log_slope[outside] == 0).all()
    assert (
        abs(float(y[x.abs() <= bound].min()) + bound) < 0.01
        and abs(float(y[x.abs() <= bound].max()) - bound) < 0.01
    )
    slope = y.diff() / x.diff()  # the analytic slope matches finite differences
    torch.testing.assert_close(slope.log(), ((log_slope[1:] + log_slope[:-1]) / 2), atol=2e-2, rtol=0)


def spline_parameters(n, bins, scale, dtype, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, k, generator=g, dtype=dtype) * scale for k in (bins, bins, bins - 1)]


@pytest.mark.parametrize("scale", [1.0, 20.0])  # 20: bins and derivatives at their minimum sizes
def test_the_spline_inverse_is_exact_where_the_arithmetic_allows(scale):
    g = torch.Generator().manual_seed(3)
    v = (torch.rand(4096, generator=g, dtype=torch.float64) * 2 - 1) * 3.2
    params = spline_parameters(4096, 8, scale, torch.float64)
    y, forward_log = rational_quadratic_spline(v, *params, 3.0)
    back, inverse_log = rational_quadratic_spline(y, *params, 3.0, inverse=True)
    assert (back - v).abs().max() < 1e-7 and (inverse_log + forward_log).abs().max() < 1e-7
    # float32: latent -> data -> latent stays close; data -> latent -> data can be limited by a
    # slope of 1e-6 (dx/dy = 1e6 magnifies y's rounding), so it is checked on moderate splines
    params32, v32 = [p.float() for p in params], v.float()
    x, inverse_log = rational_quadratic_spline(v32, *params32, 3.0, inverse=True)
    again, forward_log = rational_quadratic_spline(x, *params32, 3.0)
    assert torch.isfinite(x).all() and (again - v32).abs().max() < (1e-4 if scale == 1 else 5e-3)
    assert (inverse_log + forward_log).abs().max() < (1e-4 if scale == 1 else 1e-2)
    if scale == 1:
        y, _ = rational_quadratic_spline(v32, *params32, 3.0)
        assert (rational_quadratic_spline(y, *params32, 3.0, inverse=True)[0] - v32).abs().max() < 1e-3


def test_autoregressive_sampling_takes_one_pass_per_feature_and_iaf_swaps_the_directions():
    maf = T.AffineAutoregressive(6, hidden=12)
    calls = []
    maf.net.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(3, 6)
    maf(x)
    assert len(calls) == 1
    calls.clear()
    maf.inverse(x)
    assert len(calls) == 6
    calls.clear()
    T.Inverse(maf).inverse(x)  # IAF: sampling (latent -> data) in one pass
    assert len(calls) == 1


@pytest.mark.parametrize("model", [["maf"], ["iaf"], ["nsf"], ["nsf", "--autoregressive", "--no-lu"]])
def test_the_models_train_sample_score_and_verify_from_the_cli(tmp_path, model, capsys):
    from clayflow.cli.main import main

    run = tmp_path / "run"
    small = (
        ["--hidden", "16", "--layers", "2", "--bins", "4", "--no-plots"]
        if model[0] == "nsf"
        else ["--hidden", "16", "--layers", "2", "--no-plots"]
    )
    assert (
        main(["train", "--model", *model, "--data", "wine", "--steps", "30", *small, "--out", str(run)]) == 0
    )
    assert main(["sample", str(run), "--n", "7", "--out", str(tmp_path / "s.csv")]) == 0
    assert main(["score", str(run), "--data", str(tmp_path / "s.csv"), "--out", str(tmp_path / "c.csv")]) == 0
    capsys.readouterr()
    assert main(["verify", str(run)]) == 0, capsys.readouterr().out
    flow = __import__("clayflow").load(run)
    x, log_prob = flow.sample_and_log_prob(5)
    torch.testing.assert_close(flow.log_prob(x), log_prob, atol=1e-3, rtol=1e-4)  # both directions agree


def test_one_bin_is_the_identity_and_bad_sizes_are_usage_errors():
    from clayflow import models
    from clayflow.errors import UsageError

    for flow in (models.nsf(3, layers=1, hidden=8, bins=1), models.nsf(3, layers=1, hidden=8, bins=1, autoregressive=True)):
        x = torch.randn(5, 3)
        z, logabsdet = flow.transform.transforms[0](x)  # one bin with unit end slopes: y = x
        torch.testing.assert_close(z, x)
        torch.testing.assert_close(logabsdet, torch.zeros(5))
    for bad in ({"bins": 0}, {"bins": 101}, {"tail_bound": 0.0}, {"hidden": 2, "autoregressive": True},
                {"depth": 0, "autoregressive": True}):  # fmt: skip
        with pytest.raises(UsageError):
            models.nsf(3, **bad)
    with pytest.raises(UsageError, match="--hidden of at least the 3 features"):
        models.maf(3, hidden=2)
