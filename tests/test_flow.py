"""Flow-level likelihoods against independent computations."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal

from clayflow import DiagonalNormal, StandardNormal, models
from clayflow.models import ModelSpec, build
from test_transforms import brute_force_logabsdet
from zoo import randomize


@pytest.mark.parametrize("builder", [models.realnvp, models.nice])
def test_log_prob_is_change_of_variables_with_full_jacobian(builder):
    flow = randomize(builder(3, layers=3, hidden=8)).double().eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    z, _ = flow(x)
    expected = Normal(0.0, 1.0).log_prob(z).sum(1) + brute_force_logabsdet(flow.forward, x)
    torch.testing.assert_close(flow.log_prob(x), expected, atol=1e-8, rtol=0)


def test_realnvp_options_build_and_round_trip():
    for options in (
        {"conditioner": "resmlp"},
        {"mask": "half"},
        {"batch_norm": True},
        {"base": "diagonal"},
        {"scale_bound": "soft_clamp"},
    ):
        flow = randomize(models.realnvp(4, layers=4, hidden=8, **options)).double().eval()
        x = torch.randn(5, 4, dtype=torch.float64)
        torch.testing.assert_close(flow.inverse(flow(x)[0])[0], x, atol=1e-10, rtol=0)


def test_new_flow_is_its_base_distribution():
    flow = models.realnvp(2)
    x = torch.randn(10, 2)
    torch.testing.assert_close(flow.log_prob(x), Normal(0.0, 1.0).log_prob(x).sum(1))


def test_base_distributions_match_torch_distributions():
    z = torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close(StandardNormal(3).double().log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(1))
    diagonal = randomize(DiagonalNormal(3)).double()
    reference = Independent(Normal(diagonal.loc, diagonal.log_scale.exp()), 1)
    torch.testing.assert_close(diagonal.log_prob(z), reference.log_prob(z))


def test_sampling_shapes_temperature_and_consistent_log_prob():
    flow = randomize(models.realnvp(3, layers=2, hidden=8)).eval()
    assert flow.sample(7).shape == (7, 3) and not flow.sample(2).requires_grad
    torch.manual_seed(1)
    cold = flow.sample(2000, temperature=0.0)
    assert cold.std(0).max() < 1e-5  # T=0 collapses every draw to the image of the mode
    x, log_prob = flow.sample_and_log_prob(5)
    torch.testing.assert_close(log_prob, flow.log_prob(x), atol=1e-4, rtol=0)


def test_bits_per_dim():
    flow = randomize(models.realnvp(4, layers=2, hidden=8)).eval()
    x = torch.randn(3, 4)
    torch.testing.assert_close(flow.bits_per_dim(x), -flow.log_prob(x) / (4 * math.log(2)))


def test_standardize_keeps_likelihood_in_data_units():
    """Scaling the data by c and standardising gives log p shifted by exactly -D log c."""
    flow = build(ModelSpec("realnvp", [2], {"layers": 2, "hidden": 8}, standardize=True))
    randomize(flow.transform[1:])
    flow.eval()
    x = torch.randn(5, 2, dtype=torch.float64)
    flow = flow.double()
    base_log_prob = flow.log_prob(x)
    flow.transform[0].std.mul_(10.0)
    torch.testing.assert_close(flow.log_prob(10 * x), base_log_prob - 2 * math.log(10.0))


def test_compiled_flow_gives_the_eager_numbers():
    """``Flow.compile`` (torch.compile) changes speed, not results: log_prob, both directions,
    sampling and the gradients of the NLL agree with a copy that stays eager."""
    import copy

    torch.manual_seed(0)
    eager = randomize(models.realnvp(4, layers=2, hidden=16, mask="half"))
    compiled = copy.deepcopy(eager).compile()
    x = torch.randn(64, 4)
    for method in ("log_prob", "forward", "inverse"):
        torch.testing.assert_close(getattr(compiled, method)(x), getattr(eager, method)(x))
    torch.manual_seed(1)
    expected = eager.sample(32)
    torch.manual_seed(1)
    torch.testing.assert_close(compiled.sample(32), expected)
    for flow in (eager, compiled):
        flow.zero_grad()
        (-flow.log_prob(x).mean()).backward()
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    assert compiled.state_dict().keys() == eager.state_dict().keys()


def test_input_of_another_dtype_is_cast_to_the_flows_own():
    """float64 (what ``torch.from_numpy`` gives) and integers reach the flow in its dtype, as a
    torch user expects; ``flow.double()`` computes in float64 end to end."""
    flow = randomize(models.realnvp(3, layers=2, hidden=8)).eval()
    x = torch.randn(5, 3)
    expected = flow.log_prob(x)
    assert flow.dtype == torch.float32 and torch.equal(flow.log_prob(x.double()), expected)
    assert torch.equal(flow.log_prob(x.round().long()), flow.log_prob(x.round()))
    z, _ = flow(x.double())
    back, _ = flow.inverse(z.double())
    assert z.dtype == back.dtype == torch.float32
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)
    flow = flow.double()
    assert flow.dtype == torch.float64 and flow.log_prob(x).dtype == torch.float64
    torch.testing.assert_close(flow.log_prob(x), expected.double(), atol=1e-4, rtol=1e-5)


def test_numpy_arrays_and_lists_are_taken_as_tensors_and_a_bad_temperature_is_refused():
    flow = randomize(models.realnvp(3, layers=2, hidden=8)).eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    expected = flow.log_prob(x)
    assert torch.equal(flow.log_prob(x.numpy()), expected) and torch.equal(flow.log_prob(x.tolist()), expected)
    assert flow.forward(x.numpy())[0].shape == (5, 3) and flow.log_prob(np.zeros((0, 3))).shape == (0,)
    for temperature in (-1.0, math.nan, math.inf):  # 0 is the image of the base's mode
        with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
            flow.sample(4, temperature=temperature)
    assert flow.sample(4, temperature=0.5).shape == (4, 3)


def test_image_flows_take_integer_levels():
    from clayflow.models.image import realnvp_image

    flow = realnvp_image((1, 4, 4), 17, hidden=4, depth=0).eval()
    levels = torch.randint(0, 17, (3, 1, 4, 4))
    torch.manual_seed(0)  # the same dequantization noise for both
    from_integers = flow.log_prob(levels)
    torch.manual_seed(0)
    assert torch.equal(from_integers, flow.log_prob(levels.float())) and from_integers.isfinite().all()
    assert flow.bits_per_dim(levels.to(torch.uint8)).shape == (3,)


@pytest.mark.parametrize("builder", ["realnvp_image", "glow_image", "cnf_image"])
def test_image_flows_refuse_what_is_not_levels(builder):
    """A level outside [0, levels), a fraction, or intensities scaled to [0, 1] would give NaN or
    a plausible but wrong likelihood: each is refused in one line (a ValueError)."""
    from clayflow.transforms import LevelsError

    flow = build(ModelSpec(builder.removesuffix("_image"), [1, 4, 4], {"hidden": 4}, levels=256)).eval()
    levels = torch.randint(1, 255, (3, 1, 4, 4))
    assert flow.log_prob(levels).isfinite().all()

    def with_first(value):
        x = levels.double()
        x[0, 0, 0, 0] = value
        return x

    cases = {
        "from -1 to": with_first(-1),
        "to 256": with_first(256),
        "non-integer": with_first(3.5),
        r"multiply them by 255": levels.float() / 255,
    }
    for words, x in cases.items():
        for call in (flow.log_prob, flow.forward, flow.bits_per_dim):
            with pytest.raises(LevelsError, match=words) as info:
                call(x)
            assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_sample_shapes_follow_torch_distributions():
    vector = models.realnvp(3, layers=2, hidden=8)
    image = models.realnvp_image((1, 4, 4), 17, hidden=4, depth=0)
    for flow, event in ((vector, (3,)), (image, (1, 4, 4))):
        assert tuple(flow.event_shape) == event
        assert flow.sample(5).shape == flow.sample((5,)).shape == (5, *event)
        assert flow.sample(torch.Size([2, 3])).shape == (2, 3, *event)
        assert flow.sample().shape == event and flow.rsample((0, 2)).shape == (0, 2, *event)
        x, log_prob = flow.eval().sample_and_log_prob((2, 2))
        assert x.shape == (2, 2, *event) and log_prob.shape == (2, 2)
        if flow is vector:  # log_prob takes what sample returns, of any batch shape (images: a dequantized bound)
            torch.testing.assert_close(flow.log_prob(x), log_prob, atol=1e-4, rtol=0)
        assert flow.log_prob(x).shape == (2, 2)
        assert flow.log_prob(flow.sample()).shape == () and flow.bits_per_dim(x).shape == (2, 2)
        assert flow.log_prob(x[:0]).shape == (0, 2)
    assert tuple(image.latent_shape) == (16,)
    assert vector.sample(np.int64(3)).shape == vector.sample((np.int64(3),)).shape == (3, 3)
    with pytest.raises(ValueError, match="int or a sequence of ints"):
        vector.sample((2.5,))
    with pytest.raises(ValueError, match="non-negative"):
        vector.sample(-1)
