"""``verify`` and ``explain`` on conditional flows p(x | c): a flow held at fixed contexts
(``at_context``) is the flow of x at those contexts; healthy conditional models of every
family pass ``verify`` at their data's contexts, and a broken layer is named."""

import pytest
import torch

from clayflow import models
from clayflow.core.conditioning import at_context
from clayflow.diagnostics import explain, verify
from clayflow.diagnostics.faults import break_layer
from clayflow.errors import UsageError
from clayflow.transforms import AffineAutoregressive, AffineCoupling
from test_verify import data, failed
from zoo import randomize

CLASSES = 3


def vectors(features, seed=0):
    x = data((features,), n=96, seed=seed)
    return x, torch.randn(96, 2, generator=torch.Generator().manual_seed(seed + 1))


def images():
    x = data((1, 4, 4), n=96, levels=17)
    labels = torch.arange(96) % CLASSES
    return x, torch.nn.functional.one_hot(labels, CLASSES).float()


FAMILIES = {
    "realnvp": lambda: (models.realnvp(3, layers=3, hidden=16, context_features=2), *vectors(3)),
    "nice": lambda: (models.nice(3, layers=3, hidden=16, depth=1, context_features=2), *vectors(3)),
    "glow": lambda: (models.glow_vector(3, layers=2, hidden=16, context_features=2), *vectors(3)),
    "maf with an encoder": lambda: (models.maf(3, layers=2, hidden=16, context_features=2, context_embedding=4), *vectors(3)),
    "iaf": lambda: (models.iaf(3, layers=2, hidden=16, context_features=2), *vectors(3)),
    "nsf": lambda: (models.nsf(3, layers=2, hidden=16, bins=4, context_features=2), *vectors(3)),
    "nsf autoregressive": lambda: (models.nsf(3, layers=2, hidden=16, bins=4, autoregressive=True, context_features=2), *vectors(3)),
    "cnf": lambda: (models.cnf(2, hidden=16, depth=2, solver="rk4", step_size=0.25, context_features=2), *vectors(2)),
    "realnvp images": lambda: (models.realnvp_image((1, 4, 4), 17, scales=2, hidden=8, depth=1, context_features=CLASSES), *images()),
    "glow images": lambda: (models.glow_image((1, 4, 4), 17, scales=2, layers=2, hidden=8, context_features=CLASSES), *images()),
}


def conditional(family):
    flow, x, c = FAMILIES[family]()
    return initialised(flow, (x, c)), x, c


def initialised(flow, rows, scale=0.05):
    """As ``test_verify.initialised``, with the ActNorm layers initialised at the contexts."""
    x, c = rows
    randomize(flow, scale=scale)
    for name, buffer in flow.named_buffers():
        if name.endswith("initialized"):
            buffer.fill_(False)
    with torch.no_grad():
        flow.log_prob(x, c)
    return flow.eval()


def test_a_flow_at_fixed_contexts_is_the_flow_of_x_at_them():
    flow, x, c = conditional("maf with an encoder")
    fixed = at_context(flow, c)
    assert fixed.context_features == 0 and fixed.context_encoder is None
    torch.testing.assert_close(fixed.log_prob(x), flow.log_prob(x, c), rtol=0, atol=1e-6)
    torch.testing.assert_close(at_context(flow, c[:1]).log_prob(x), flow.log_prob(x, c[:1]), rtol=0, atol=1e-6)
    torch.testing.assert_close(fixed.log_prob(x[:10]), flow.log_prob(x[:10], c[:10]), rtol=0, atol=1e-6)
    torch.manual_seed(3)
    samples = fixed.sample(len(c))
    torch.manual_seed(3)
    torch.testing.assert_close(samples, flow.sample(context=c), rtol=0, atol=1e-6)  # one sample per context row
    twin = fixed.double()  # the contexts travel with copies and dtype changes
    torch.testing.assert_close(twin.log_prob(x.double()), flow.double().log_prob(x.double(), c.double()), rtol=0, atol=1e-6)
    layers = [m for m in fixed.modules() if isinstance(m, AffineAutoregressive)]
    assert layers and all(type(m).__name__ == "AffineAutoregressive" for m in layers)
    assert all(type(m) is AffineAutoregressive for m in flow.modules() if isinstance(m, AffineAutoregressive))
    with pytest.raises(ValueError, match="conditional flow"):
        at_context(models.maf(3, layers=1, hidden=8), c)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_healthy_conditional_model_of_every_family_passes_at_its_data_contexts(family):
    flow, x, c = conditional(family)
    report = verify(flow, x, context=c, rows=64)
    assert report.passed, report.table()
    names = {check.name for check in report.checks}
    assert {"round trip, far points (float32)", "log|det| of the model vs its Jacobian",
            "energy distance, samples vs data"} <= names  # fmt: skip
    if family == "cnf":
        mass = next(check for check in report.checks if check.name.startswith("density integrates to 1"))
        assert "at the first example's context" in mass.detail
    explanation = explain(flow, x, context=c)
    torch.manual_seed(0)
    torch.testing.assert_close(explanation.log_prob, flow.log_prob(x, c).double(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("family, kind, position", [("maf with an encoder", AffineAutoregressive, 1),
                                                    ("glow images", AffineCoupling, 2)])  # fmt: skip
def test_a_broken_layer_of_a_conditional_flow_is_named(family, kind, position):
    flow, x, c = conditional(family)
    name, broken = [(n, m) for n, m in flow.named_modules() if isinstance(m, kind)][position]
    break_layer(broken, forward=lambda z, ld: (z, ld + 0.1))
    fails = failed(verify(flow, x, context=c, rows=64))
    assert "log|det| of the model vs its Jacobian" in fails
    assert [n for n in fails if n.startswith("log|det| of transform")] == [f"log|det| of {name} ({kind.__name__})"], fails


def test_contexts_are_required_exactly_when_the_flow_is_conditional():
    flow, x, c = conditional("realnvp")
    with pytest.raises(UsageError, match="at the data's contexts"):
        verify(flow, x)
    with pytest.raises(UsageError, match="one context row per example"):
        verify(flow, x, context=c[:10], rows=64)
    with pytest.raises(UsageError, match="not conditional"):
        verify(models.realnvp(3, layers=2, hidden=8), x, context=c)
    with pytest.raises(UsageError, match="at the rows' contexts"):
        explain(flow, x)


def test_a_conditional_cnf_at_one_context_draws_its_trajectories(tmp_path):
    """The trajectory picture calls a CNF's forward_with_stats, which the held context reaches too."""
    from clayflow.plotting.explain import plot_cnf_trajectories

    flow, _, c = conditional("cnf")
    assert plot_cnf_trajectories(at_context(flow, c[:1]), tmp_path / "trajectories.png").exists()
