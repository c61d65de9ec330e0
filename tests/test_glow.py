"""Glow pieces: ActNorm's data-dependent init, the 1x1 convolution's parametrisations and
inverse cache, the learned prior under temperature, and a trained Glow reloaded."""

import math

import pytest
import torch

import clayflow
import clayflow.transforms as T
from clayflow.errors import ClayflowError
from clayflow.models.glow import default_glow_scales, glow_image, glow_vector
from clayflow.train import TrainConfig, train


def test_actnorm_initialises_from_the_first_batch_only():
    actnorm = T.ActNorm(3).double()
    x = torch.randn(64, 3, 4, 4, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1]).view(1, 3, 1, 1) + 7
    z, logabsdet = actnorm(x)
    per_channel = z.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(
        per_channel.std(1, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(logabsdet, (actnorm.log_scale.sum() * 16).expand(64))
    loc = actnorm.loc.detach().clone()
    actnorm(x * 3 - 1)  # a later batch does not re-initialise
    assert torch.equal(actnorm.loc, loc)
    fresh = T.ActNorm(3).double()
    fresh.load_state_dict(actnorm.state_dict())
    assert bool(fresh.initialized) and torch.equal(fresh(x)[0], actnorm(x)[0])


def test_actnorm_inverse_never_initialises():
    actnorm = T.ActNorm(2)
    actnorm.inverse(torch.randn(5, 2) * 4)
    assert not bool(actnorm.initialized) and torch.equal(actnorm.loc, torch.zeros(2))


@pytest.mark.parametrize("lu", [False, True])
def test_conv1x1_starts_as_a_rotation(lu):
    conv = T.InvertibleConv1x1(6, lu=lu).double()
    w = conv.weight_matrix()
    torch.testing.assert_close(w @ w.T, torch.eye(6, dtype=torch.float64), atol=1e-6, rtol=0)
    assert abs(conv.log_abs_det_weight().item()) < 1e-5


def test_conv1x1_inverse_is_cached_in_eval_and_follows_weight_changes():
    conv = T.InvertibleConv1x1(4, lu=True).double().eval()
    z = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        conv.inverse(z)
        cached = conv._inverse_cache[1]
        conv.inverse(z)
        assert conv._inverse_cache[1] is cached  # not recomputed
        conv.log_s.add_(0.3)  # as an optimiser step would
        x, _ = conv.inverse(z)
        assert conv._inverse_cache[1] is not cached
        torch.testing.assert_close(conv(x)[0], z, atol=1e-12, rtol=0)


@pytest.mark.parametrize("lu", [False, True])
def test_conv1x1_inverse_follows_a_fused_optimiser_step_and_a_dtype_change(lu):
    """Fused Adam updates the weights in place without bumping their version counters: a
    cache keyed by those gave the inverse of the old weights after training (found by a
    reverse-KL fit, whose log q of samples was 84 nats off its log_prob)."""
    conv = T.InvertibleConv1x1(3, lu=lu).eval()
    z = torch.randn(5, 3)
    with torch.no_grad():
        conv.inverse(z)  # fills the cache
    optimizer = torch.optim.Adam(conv.parameters(), lr=0.1, fused=True)
    conv.train()
    conv(torch.randn(8, 3))[0].pow(2).sum().backward()
    optimizer.step()
    conv.eval()
    with torch.no_grad():
        x, _ = conv.inverse(z)
        torch.testing.assert_close(conv(x)[0], z, atol=1e-5, rtol=0)
        conv.double()  # the cache is a plain attribute, which .double() leaves in float32
        x, _ = conv.inverse(z.double())
        assert x.dtype == torch.float64
        torch.testing.assert_close(conv(x)[0], z.double(), atol=1e-5, rtol=0)


def test_temperature_scales_sigma_of_the_learned_prior_and_keeps_its_mean():
    prior = T.LearnedPrior(1)
    with torch.no_grad():
        prior.loc.fill_(3.0)
        prior.log_scale.fill_(math.log(2.0))
    eps = 0.5 * torch.randn(20000, 1, 2, 2, generator=torch.Generator().manual_seed(0))  # T = 0.5
    z, _ = prior.inverse(eps)
    assert abs(z.mean().item() - 3.0) < 0.02 and abs(z.std().item() - 1.0) < 0.02


@pytest.mark.parametrize(
    "shape, scales", [((1, 8, 8), 2), ((1, 28, 28), 2), ((3, 32, 32), 3), ((1, 4, 4), 1)]
)
def test_glow_default_levels_fit_the_image(shape, scales):
    """The default number of levels suits each image size, and integer images come back
    exactly in float64. (In float32 the flow's round trip is off by ~1e-5 of a level, so a
    pixel whose dequantization noise falls that close to a level's edge comes back one level
    off: 7 of 40 seeds at 3x32x32, one pixel each.)"""
    assert default_glow_scales(shape) == scales
    flow = glow_image(shape, layers=1, hidden=4).double()
    x = torch.randint(0, 256, (2, *shape)).double()
    z, _ = flow(x)
    assert z.shape == (2, math.prod(shape)) and torch.equal(flow.inverse(z)[0], x)


def test_glow_refuses_sizes_it_cannot_squeeze():
    with pytest.raises(ClayflowError, match="divisible by 8; got 12x12.*--scales 2"):
        glow_image((1, 12, 12), scales=3)


def test_trained_glow_reloads_without_reinitialising(tmp_path):
    """ActNorm's init flag is in the checkpoint: the loaded model gives the trained model's
    likelihoods, and sampling at any temperature round-trips."""
    run = tmp_path / "run"
    config = TrainConfig(
        model="glow", data="digits", steps=6, layers=2, hidden=8, eval_every=3, select_best=False
    )
    result = train(config, run, progress=False)
    flow = clayflow.load(run)
    assert all(bool(m.initialized) for m in flow.modules() if isinstance(m, T.ActNorm))
    from clayflow.data import load_dataset
    from clayflow.train import evaluate_nll

    assert evaluate_nll(flow, load_dataset("digits").test) == pytest.approx(result.test_nll, rel=1e-6)
    for temperature in (1.0, 0.7, 0.5):
        x = flow.sample(4, temperature)
        assert x.shape == (4, 1, 8, 8) and x.min() >= 0 and x.max() <= 16


def test_a_run_resumes_with_the_defaults_it_was_built_with(tmp_path, monkeypatch):
    """A run started when Glow's scale bound defaulted to sigmoid (its config.json records
    None for it) resumes as the model it is, after the default changed to tanh."""
    from clayflow import models
    from clayflow.cli.main import main
    from clayflow.models.glow import glow_image

    def glow_of_before(shape, levels=256, *, scales=None, layers=8, hidden=128, lu=True, coupling="affine",
                       scale_bound="sigmoid"):  # fmt: skip
        return glow_image(shape, levels, scales=scales, layers=layers, hidden=hidden, lu=lu, coupling=coupling,
                          scale_bound=scale_bound)  # fmt: skip

    run = tmp_path / "run"
    small = ["--model", "glow", "--data", "digits", "--layers", "1", "--hidden", "4", "--scales", "1", "--no-plots"]
    monkeypatch.setitem(models.MODELS["glow"], "image", glow_of_before)
    assert main(["train", *small, "--steps", "2", "--out", str(run)]) == 0
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--steps", "4"]) == 0
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert saved["step"] == 4 and saved["model_spec"]["options"]["scale_bound"] == "sigmoid"


@pytest.mark.parametrize("kind", ["vector", "image"])
def test_glow_with_spline_couplings_passes_verify(kind, one_thread):
    """Spline couplings in Glow: invertible, every layer's log-det equal to its brute-force
    Jacobian's (``clayflow.verify``), on random weights."""
    from clayflow import verify
    from clayflow.data import load_dataset
    from zoo import randomize

    torch.manual_seed(0)
    if kind == "vector":
        flow, data = glow_vector(3, layers=2, hidden=16, coupling="spline", bins=5), torch.randn(64, 3)
    else:
        flow = glow_image((1, 8, 8), 17, layers=2, hidden=8, coupling="spline", bins=5)
        data = load_dataset("digits").test
    flow.log_prob(data[:32])  # ActNorm's data-dependent initialisation
    flow = randomize(flow, scale=0.05)
    assert any(isinstance(m, T.SplineCoupling) for m in flow.modules())
    report = verify(flow, data, rows=32, points=2, two_sample=False)
    assert report.passed, report.table()
