"""Every transform: shapes, round trips, log-det against autograd in float64, and more."""

import inspect

import pytest
import torch
from torch.autograd.functional import jacobian

import clayflow.transforms as T
from clayflow.core import Transform
from zoo import APPROXIMATE, STOCHASTIC, ZOO, inputs, make, mlp, resmlp

NAMES = sorted(ZOO)


def brute_force_logabsdet(fn, x):
    """log|det J| of ``fn`` at each sample of ``x``, from the full autograd Jacobian."""
    out = []
    for sample in x:
        jac = jacobian(lambda v: fn(v.unsqueeze(0))[0].squeeze(0), sample)
        jac = jac.reshape(sample.numel(), sample.numel())
        out.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_dtype(name):
    transform, shape = make(name, torch.float32)
    z, logabsdet = transform(inputs(name, shape, dtype=torch.float32))
    assert z.shape == (3, *transform.output_shape(shape)) and z.dtype == torch.float32
    assert logabsdet.shape == (3,) and logabsdet.dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_round_trips(name):
    transform, shape = make(name)
    x = inputs(name, shape)
    z, _ = transform(x)
    assert z.shape != x.shape or not torch.allclose(z, x), "randomised transform should not be the identity"
    torch.testing.assert_close(transform.inverse(z)[0], x, atol=1e-10, rtol=0)
    latent = torch.randn_like(z)
    torch.testing.assert_close(transform(transform.inverse(latent)[0])[0], latent, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_logabsdet_matches_autograd_jacobian(name):
    transform, shape = make(name)
    x = inputs(name, shape)
    z, logabsdet = transform(x)
    torch.testing.assert_close(logabsdet, brute_force_logabsdet(transform, x), atol=1e-8, rtol=0)
    _, inverse_logabsdet = transform.inverse(z)
    torch.testing.assert_close(inverse_logabsdet, -logabsdet, atol=1e-8, rtol=0)
    torch.testing.assert_close(
        inverse_logabsdet, brute_force_logabsdet(transform.inverse, z), atol=1e-8, rtol=0
    )


@pytest.mark.parametrize("name", NAMES)
def test_each_sample_independent_of_batch(name):
    transform, shape = make(name)
    x = inputs(name, shape, batch=5)
    z, logabsdet = transform(x)
    z1, logabsdet1 = transform(x[2:3])
    torch.testing.assert_close(z1, z[2:3])
    torch.testing.assert_close(logabsdet1, logabsdet[2:3])


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    transform, shape = make(name)
    transform.train()
    z, logabsdet = transform(inputs(name, shape, batch=4).requires_grad_())
    (z.square().sum() + logabsdet.sum()).backward()
    for pname, p in transform.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    transform, shape = make(name)
    fresh, _ = ZOO[name]()
    fresh = fresh.double().eval()
    fresh.load_state_dict(transform.state_dict())
    x = inputs(name, shape)
    torch.testing.assert_close(fresh(x)[1], transform(x)[1])
    torch.testing.assert_close(fresh(x)[0], transform(x)[0])


def test_every_exported_transform_is_in_the_zoo():
    exported = {
        obj
        for _, obj in inspect.getmembers(T, inspect.isclass)
        if issubclass(obj, Transform) and obj is not Transform
    }
    covered = set()
    for factory in [*ZOO.values(), *STOCHASTIC.values(), *APPROXIMATE.values()]:
        transform, _ = factory()
        covered |= {type(m) for m in transform.modules() if isinstance(m, Transform)}
    assert exported <= covered, f"add to tests/zoo.py: {sorted(c.__name__ for c in exported - covered)}"


def test_new_couplings_are_the_identity():
    for coupling in (T.AffineCoupling(T.half_mask(4), mlp), T.AdditiveCoupling(T.half_mask(4), resmlp)):
        x = torch.randn(6, 4)
        z, logabsdet = coupling(x)
        assert torch.equal(z, x) and torch.equal(logabsdet, torch.zeros(6))


def test_scale_bounds_hold_for_huge_network_outputs():
    raw = torch.tensor([[-1e6, -3.0, 0.0, 3.0, 1e6]])
    coupling = T.AffineCoupling(T.half_mask(10), mlp)
    assert coupling.log_scale(raw).abs().max() <= 1.0  # tanh bound with factor 1 at init
    clamped = T.AffineCoupling(T.half_mask(10), mlp, scale_bound="soft_clamp", clamp=2.0)
    assert clamped.log_scale(raw).abs().max() <= 2.0


def test_batch_norm_training_mode_uses_batch_statistics():
    bn = T.BatchNorm(3).double().train()
    x = torch.randn(256, 3, dtype=torch.float64) * 3 + 5
    z, logabsdet = bn(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(
        z.var(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0
    )
    expected = -0.5 * torch.log(x.var(0, unbiased=False) + bn.eps).sum()
    torch.testing.assert_close(logabsdet, expected.expand(256))
    torch.testing.assert_close(bn.running_mean, 0.1 * x.mean(0))


def test_bad_masks_and_inputs_raise_clear_errors():
    from clayflow.errors import ClayflowError

    with pytest.raises(ClayflowError, match="at least one True"):
        T.AffineCoupling(torch.ones(4, dtype=torch.bool), mlp)
    with pytest.raises(ClayflowError, match="built for 4 features"):
        T.AffineCoupling(T.half_mask(4), mlp)(torch.randn(2, 5))
    with pytest.raises(ClayflowError, match="not a permutation"):
        T.Permutation(torch.tensor([0, 0, 1]))
