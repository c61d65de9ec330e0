"""Continuous normalizing flows against closed forms: a linear field's exact density,
Hutchinson's unbiasedness, adjoint = direct gradients, round trips and real NFE counts."""

import math

import pytest
import torch
from torch import nn

import clayflow
from clayflow.core import Flow, StandardNormal
from clayflow.errors import ClayflowError
from clayflow.nn import ODENet
from clayflow.transforms import CNF
from test_transforms import brute_force_logabsdet
from zoo import APPROXIMATE, randomize


class LinearField(nn.Module):
    """f(t, z) = A z, whose flow is z(T) = expm(A T) x with log|det| = T tr(A)."""

    def __init__(self, matrix):
        super().__init__()
        self.matrix = nn.Parameter(matrix)
        self.calls = 0

    def forward(self, t, z):
        self.calls += 1
        return z @ self.matrix.T


A = torch.tensor([[0.3, -0.8], [0.5, -0.2]], dtype=torch.float64)


def _cnf(dynamics=None, **options):
    options = {"atol": 1e-10, "rtol": 1e-10, **options}
    return CNF(dynamics if dynamics is not None else LinearField(A.clone()), **options).double()


def test_linear_field_density_matches_the_closed_form():
    t1 = 0.7
    flow = Flow(_cnf(t1=t1), StandardNormal(2)).double()
    x = torch.randn(16, 2, dtype=torch.float64)
    z = x @ torch.linalg.matrix_exp(A * t1).T
    expected = -0.5 * (z**2).sum(1) - math.log(2 * math.pi) + t1 * torch.trace(A)
    torch.testing.assert_close(flow.log_prob(x).detach(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(flow(x)[0].detach(), z, atol=1e-7, rtol=0)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(noise):
    """Mean of Hutchinson log-dets over many solves = the exact log-det (4 standard errors)."""
    torch.manual_seed(0)
    net = randomize(ODENet(3, 16, 2), seed=1).double()
    exact = _cnf(net, atol=1e-8, rtol=1e-8)
    x = torch.randn(1, 3, dtype=torch.float64).expand(400, 3).contiguous()  # one point, 400 probes
    with torch.no_grad():
        reference = exact(x[:1])[1]
        estimates = _cnf(net, atol=1e-8, rtol=1e-8, trace="hutchinson", noise=noise)(x)[1]
    standard_error = estimates.std() / math.sqrt(len(estimates))
    assert estimates.std() > 0  # really a random estimate
    assert abs(estimates.mean() - reference) < 4 * standard_error, (
        estimates.mean(),
        reference,
        standard_error,
    )


def test_adjoint_and_direct_gradients_agree():
    torch.manual_seed(0)
    x = torch.randn(8, 2, dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        net = randomize(ODENet(2, 8, 1), seed=2).double()
        flow = Flow(
            _cnf(net, atol=1e-9, rtol=1e-9, adjoint=adjoint, learn_t1=True), StandardNormal(2)
        ).double()
        flow.log_prob(x).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in flow.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", APPROXIMATE)
def test_round_trip_and_logabsdet_within_solver_tolerance(name):
    cnf, shape = APPROXIMATE[name]()
    cnf = randomize(cnf, seed=3).double().eval()
    x = torch.randn(4, *shape, dtype=torch.float64)
    z, logabsdet = cnf(x)
    assert not torch.allclose(z, x)
    back, inverse_logabsdet = cnf.inverse(z)
    torch.testing.assert_close(back, x, atol=1e-7, rtol=0)
    torch.testing.assert_close(inverse_logabsdet, -logabsdet, atol=1e-7, rtol=0)
    torch.testing.assert_close(logabsdet, brute_force_logabsdet(cnf, x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape, conv", [((3,), False), ((2, 4, 3), True)])
@pytest.mark.parametrize("layer", ["concatsquash", "concat"])
def test_a_time_per_sample_is_the_same_field_as_one_time(shape, conv, layer):
    """Flow matching evaluates f at a time per sample; an ODE solve at one time for all."""
    net = randomize(ODENet(shape[0], 8, 2, layer=layer, conv=conv), seed=4).double()
    z = torch.randn(5, *shape, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64)
    per_sample = net(t, z)
    one_by_one = torch.cat([net(t[i], z[i : i + 1]) for i in range(5)])
    assert per_sample.shape == z.shape
    torch.testing.assert_close(per_sample, one_by_one)
    assert not torch.allclose(net(t[0], z), net(t[1], z))  # the field depends on t


def test_a_zero_initialised_cnf_is_the_identity():
    cnf = CNF(ODENet(2, zero_init=True))
    x = torch.randn(5, 2)
    z, logabsdet = cnf(x)  # exact up to rounding: the solver interpolates to T
    torch.testing.assert_close(z, x, atol=1e-6, rtol=0)
    assert torch.equal(logabsdet, torch.zeros(5))


def test_nfe_counts_are_real_counts():
    field = LinearField(A.clone())
    cnf = _cnf(field, solver="rk4", step_size=0.1)
    _, _, stats = cnf.forward_with_stats(torch.randn(3, 2, dtype=torch.float64))
    assert stats.nfe_forward == field.calls == 4 * 10  # rk4: four evaluations per step, T / 0.1 steps
    adaptive = _cnf(LinearField(A.clone()), adjoint=True)
    _, logabsdet, stats = adaptive.forward_with_stats(torch.randn(3, 2, dtype=torch.float64))
    assert stats.nfe_backward == 0
    logabsdet.sum().backward()
    assert stats.nfe_backward > 0  # the adjoint's backward solve


def test_regularisers_of_a_linear_field():
    """Kinetic energy int |A z|^2 dt is positive; the Frobenius estimate's mean is T |A|_F^2."""
    torch.manual_seed(0)
    x = torch.zeros(2000, 2, dtype=torch.float64)  # z stays 0: the Frobenius term alone
    _, _, stats = _cnf(t1=0.5, atol=1e-6, rtol=1e-6).forward_with_stats(x + 1e-12, regularize=True)
    assert torch.all(stats.kinetic >= 0)
    expected = 0.5 * (A**2).sum()
    assert abs(stats.jacobian_frobenius.mean() - expected) < 0.05 * expected


def test_learned_time_and_bad_options():
    cnf = _cnf(learn_t1=True, t1=0.5)
    Flow(cnf, StandardNormal(2)).double().log_prob(torch.randn(4, 2, dtype=torch.float64)).sum().backward()
    assert cnf.log_t1.grad is not None and cnf.log_t1.grad != 0
    with pytest.raises(ClayflowError, match="unknown ODE solver 'rk45'; choose one of: dopri5"):
        CNF(ODENet(2), solver="rk45")
    with pytest.raises(ClayflowError, match="T must be > 0"):
        CNF(ODENet(2), t1=0.0)


def test_minibatch_optimal_transport_pairing_is_optimal():
    from itertools import permutations

    from clayflow.train.objective import _assignment

    torch.manual_seed(0)
    x, eps = torch.randn(6, 2), torch.randn(6, 2)
    cost = lambda order: (x - eps[list(order)]).pow(2).sum().item()
    best = min(cost(p) for p in permutations(range(6)))
    assert cost(_assignment(x, eps).tolist()) == pytest.approx(best)


@pytest.mark.parametrize("objective, lr, steps", [("mle", 2e-2, 200), ("fm", 5e-3, 1200)])
def test_cnf_trains_by_likelihood_and_by_flow_matching(tmp_path, objective, lr, steps):
    """Both objectives lower the test NLL of the identity model; metrics carry real NFEs."""
    import csv

    from clayflow.data import load_dataset
    from clayflow.train import TrainConfig, evaluate_nll, train
    from clayflow.train.setup import build_flow

    fast = {"steps": steps, "batch_size": 256, "lr": lr, "warmup": 0, "schedule": "constant"}
    model = {"hidden": 64, "depth": 2, "solver": "rk4", "step_size": 0.25}
    config = TrainConfig(model="cnf", objective=objective, eval_every=steps // 2, **fast, **model)
    untrained, _ = build_flow(config.resolved(), load_dataset("moons"))
    result = train(config, tmp_path / objective, progress=False)
    assert result.test_nll < evaluate_nll(untrained, load_dataset("moons").test) - 0.2
    with (tmp_path / objective / "metrics.csv").open() as file:
        last = list(csv.DictReader(file))[-1]
    from clayflow.plotting import plot_run

    paths = plot_run(tmp_path / objective, clayflow.load(tmp_path / objective), load_dataset("moons").test)
    assert {p.name for p in paths} == {"loss.png", "samples.png", "density.png", "trajectories.png"}
    if objective == "mle":
        assert float(last["nfe_forward"]) == 4 * 4 and last["train_nll"]  # rk4, 4 steps of 0.25
    else:
        assert float(last["nfe_forward"]) == 0 and last["train_nll"] == ""  # no ODE solve


def test_flow_matching_and_regularisers_need_a_cnf():
    from clayflow.train.config import config_from_dict

    with pytest.raises(ClayflowError, match="use --model cnf"):
        config_from_dict({"model": "realnvp", "objective": "fm"})
    with pytest.raises(ClayflowError, match="add --objective fm"):
        config_from_dict({"model": "cnf", "ot": True})


def test_cnf_builders_put_normalisation_between_blocks():
    from clayflow.models import cnf, cnf_image
    from clayflow.transforms import ActNorm, Augment, BatchNorm

    kinds = [type(t) for t in cnf(2, blocks=3, actnorm=True, augment=1).transform]
    assert kinds == [Augment, CNF, ActNorm, CNF, ActNorm, CNF]
    image = cnf_image((1, 4, 4), 17, blocks=2, batch_norm=True)
    assert [type(t).__name__ for t in image.transform][3:] == ["CNF", "BatchNorm", "CNF"]
    assert image.base.event_shape == (1, 4, 4) and isinstance(image.transform[4], BatchNorm)
    with pytest.raises(ClayflowError, match="choose ActNorm or batch norm"):
        cnf(2, blocks=2, actnorm=True, batch_norm=True)
    with pytest.raises(ClayflowError, match="augment must be >= 0"):
        cnf(2, augment=-1)


def test_image_cnf_trains_samples_scores_and_plots(tmp_path, capsys):
    """``--model cnf`` on digits end to end: conv field, augmented channels, flow matching."""
    import json

    import numpy as np

    from test_cli import run_cli

    run = tmp_path / "run"
    fast = ["--steps", "6", "--batch-size", "8", "--hidden", "4", "--depth", "1", "--eval-every", "3"]
    solver = ["--solver", "rk4", "--step-size", "0.5", "--augment", "1"]
    code, _, err = run_cli(capsys, "train", "--model", "cnf", "--data", "digits", *fast, *solver,
                           "--objective", "fm", "--ot", "--out", run)  # fmt: skip
    assert code == 0, err
    results = json.loads((run / "results.json").read_text())
    assert results["test_bpd"] == pytest.approx(results["test_nll"] / (64 * math.log(2)))
    assert all(
        (run / "plots" / f).exists() for f in ("samples.png", "reconstructions.png", "interpolation.png")
    )
    code, _, err = run_cli(capsys, "sample", run, "--n", "4", "--out", tmp_path / "s.npy")
    samples = np.load(tmp_path / "s.npy")
    assert code == 0 and samples.shape == (4, 1, 8, 8), err
    code, _, err = run_cli(capsys, "score", run, "--data", tmp_path / "s.npy", "--out", tmp_path / "s.csv")
    assert code == 0 and np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1).shape == (4, 3), err
