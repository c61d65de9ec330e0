"""Augmented dimensions: exact when the flow ignores them, and a lower bound on log p(x)
that importance sampling over the extra dimensions closes."""

import math

import pytest
import torch

from clayflow.core import Compose, Flow, StandardNormal
from clayflow.errors import ClayflowError
from clayflow.transforms import Augment, InvertibleConv1x1
from zoo import STOCHASTIC, randomize


@pytest.mark.parametrize("name", ["augment", "augment_image"])
def test_inverse_drops_what_forward_added(name):
    augment, shape = STOCHASTIC[name]()
    x = torch.randn(4, *shape, dtype=torch.float64)
    z, logabsdet = augment(x)
    assert z.shape[1:] == augment.output_shape(shape) and z.shape[1] == shape[0] + augment.extra
    back, inverse_logabsdet = augment.inverse(z)
    assert torch.equal(back, x)
    torch.testing.assert_close(inverse_logabsdet, -logabsdet)  # +log q(a), the a just added


def test_a_flow_that_ignores_the_extra_dimensions_is_exact():
    """log N([x, a]) - log N(a) = log N(x) for every draw of a."""
    flow = Flow(Augment(3), StandardNormal(5)).double()
    x = torch.randn(6, 2, dtype=torch.float64)
    torch.testing.assert_close(flow.log_prob(x), StandardNormal(2).double().log_prob(x))


def test_log_prob_is_a_lower_bound_that_importance_sampling_closes():
    """z = W [x, a] with base N(0, I): x ~ N(0, S_xx) where S = (W^T W)^-1, in closed form."""
    torch.manual_seed(0)
    mix = randomize(InvertibleConv1x1(3, lu=False), seed=5, scale=0.7).double()
    flow = Flow(Compose(Augment(1), mix), StandardNormal(3)).double()
    with torch.no_grad():
        matrix = mix(torch.eye(3, dtype=torch.float64))[0].T  # z = matrix @ [x, a]
    cov = torch.linalg.inv(matrix.T @ matrix)[:2, :2]
    x = torch.randn(1, 2, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov).log_prob(x)
    with torch.no_grad():
        bounds = flow.log_prob(x.expand(20000, 2))
    assert bounds.mean() < exact - 1e-3  # Jensen's gap: the bound is strict when x and a mix
    estimate = torch.logsumexp(bounds, 0) - math.log(len(bounds))  # E_q[p(x, a) / q(a)] = p(x)
    assert abs(estimate - exact) < 0.01, (estimate, exact)


def test_bad_extra_dimensions():
    with pytest.raises(ClayflowError, match="whole number of extra dimensions >= 1"):
        Augment(0)
