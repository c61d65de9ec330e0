"""Conditional flows p(x | c): for every vector family, each context gives a normalised
density of its own; sampling draws one example per context row, in one batch; a flow trained
on a conditional toy puts its mass where the context says."""

import math

import pytest
import torch

from clayflow import models
from clayflow.core.flow import EventShapeError
from clayflow.diagnostics.density import box_mass
from clayflow.errors import ClayflowError
from zoo import randomize

FAMILIES = {
    "realnvp": lambda **c: models.realnvp(2, layers=3, hidden=16, **c),
    "nice": lambda **c: models.nice(2, layers=3, hidden=16, depth=1, **c),
    "glow": lambda **c: models.glow_vector(2, layers=2, hidden=16, **c),
    "maf": lambda **c: models.maf(2, layers=2, hidden=16, **c),
    "iaf": lambda **c: models.iaf(2, layers=2, hidden=16, **c),
    "nsf": lambda **c: models.nsf(2, layers=2, hidden=16, bins=4, **c),
    "nsf_ar": lambda **c: models.nsf(2, layers=2, hidden=16, bins=4, autoregressive=True, **c),
}


@pytest.mark.parametrize("name, embedding", [*((name, 0) for name in FAMILIES), ("realnvp", 4), ("maf", 4)])
def test_each_context_gives_a_normalised_density_of_its_own(name, embedding, one_thread):
    flow = randomize(FAMILIES[name](context_features=3, context_embedding=embedding), scale=0.15).double().eval()
    if name == "glow":  # a randomised ActNorm counts as initialised
        for module in flow.modules():
            if hasattr(module, "initialized"):
                module.initialized.fill_(True)
    contexts = torch.tensor([[0.0, 0.0, 0.0], [1.5, -1.0, 0.5]], dtype=torch.float64)
    masses = [box_mass(flow, (-15, -15), (15, 15), 300, context=c[None]) for c in contexts]
    assert all(abs(m - 1) < 2e-2 for m in masses), masses
    x = torch.randn(50, 2, dtype=torch.float64)
    first, second = (flow.log_prob(x, c[None]) for c in contexts)
    assert (first - second).abs().max() > 1e-3  # the context matters


def test_sampling_takes_one_context_row_per_sample_and_checks_shapes():
    flow = models.maf(2, layers=2, hidden=8, context_features=3)
    c = torch.randn(5, 3)
    assert flow.sample(context=c).shape == (5, 2) and flow.sample(5, context=c[:1]).shape == (5, 2)
    x, log_prob = flow.sample_and_log_prob(context=c)
    torch.testing.assert_close(flow.log_prob(x, c), log_prob, atol=1e-4, rtol=1e-4)
    with pytest.raises(ClayflowError, match="conditional"):
        flow.log_prob(x)
    with pytest.raises(EventShapeError, match=r"context has shape \(5, 3\)"):
        flow.log_prob(x, torch.randn(4, 3))
    with pytest.raises(ClayflowError, match="not conditional"):
        models.maf(2, layers=1, hidden=8).log_prob(x, c)


def test_a_conditional_flow_learns_where_the_context_puts_the_mass(one_thread):
    """x ~ N(R(a) (2, 0), 0.2^2 I) with the angle a as the context (c = (cos a, sin a))."""
    torch.manual_seed(0)
    flow = models.nsf(2, layers=3, hidden=32, bins=6, context_features=2)
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for _ in range(300):
        angle = torch.rand(128) * 2 * math.pi
        c = torch.stack([angle.cos(), angle.sin()], 1)
        x = 2 * c + 0.2 * torch.randn(128, 2)
        loss = -flow.log_prob(x, c).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    true_entropy = 2 * (0.5 * math.log(2 * math.pi * math.e * 0.04))  # of N(mean, 0.2^2 I)
    assert loss.item() < true_entropy + 0.35, loss.item()
    c = torch.tensor([[0.0, 1.0]])
    samples = flow.sample(2000, context=c)
    assert (samples.mean(0) - torch.tensor([0.0, 2.0])).abs().max() < 0.1
