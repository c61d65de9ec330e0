"""``verify``: healthy models of every family pass; deliberately broken ones fail, and the
failing row names the broken layer (its place and class)."""

import json

import pytest
import torch

from clayflow import models
from clayflow.cli.main import main
from clayflow.diagnostics import verify
from clayflow.diagnostics.faults import break_layer
from clayflow.transforms import ActNorm, AffineCoupling, ScalarAffine
from clayflow.transforms import continuous as continuous_module
from zoo import randomize


def data(shape, n=128, levels=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    if levels is not None:
        return torch.randint(0, levels, (n, *shape), generator=g).float()
    return torch.randn(n, *shape, generator=g) @ torch.eye(shape[0]) * 1.5 + 0.3


def initialised(flow, x, scale=0.05):
    """``flow`` with random weights (std ``scale``, so every term of every log-det is
    exercised) and its ActNorm layers initialised on ``x``."""
    randomize(flow, scale=scale)
    for name, buffer in flow.named_buffers():
        if name.endswith("initialized"):
            buffer.fill_(False)
    with torch.no_grad():
        flow.log_prob(x)
    return flow.eval()


FAMILIES = {
    "realnvp": lambda: (models.realnvp(3, layers=4, hidden=16), data((3,))),
    "nice": lambda: (models.nice(3, layers=4, hidden=16), data((3,))),
    "glow vectors": lambda: (models.glow_vector(3, layers=3, hidden=16), data((3,))),
    "realnvp images": lambda: (models.realnvp_image((1, 4, 4), 17, scales=2, hidden=8, depth=1), data((1, 4, 4), levels=17)),
    "glow images": lambda: (models.glow_image((1, 4, 4), 17, scales=2, layers=2, hidden=8), data((1, 4, 4), levels=17)),
    "cnf": lambda: (models.cnf(2, hidden=16, depth=2, solver="rk4", step_size=0.25), data((2,))),
    "augmented cnf": lambda: (models.cnf(2, hidden=16, depth=2, augment=1, solver="rk4", step_size=0.25), data((2,))),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_healthy_model_of_every_family_passes(family):
    flow, x = FAMILIES[family]()
    report = verify(initialised(flow, x), x, rows=64)
    assert report.passed, report.table()
    names = {check.name for check in report.checks}
    assert {"round trip, far points (float32)", "log|det| of the model vs its Jacobian"} <= names
    if "images" in family:
        assert {"data reconstructed exactly (float64)", "bits/dim vs brute force"} <= names
    if family == "cnf":
        assert any(name.startswith("Hutchinson vs exact trace") for name in names)
        assert "density integrates to 1 (2-D grid)" in names


def failed(report) -> dict[str, str]:
    return {check.name: check.detail for check in report.failed}


def test_a_layer_whose_log_det_is_off_by_a_constant_is_named():
    flow, x = FAMILIES["realnvp"]()
    flow = initialised(flow, x)
    name, broken = [(n, m) for n, m in flow.named_modules() if isinstance(m, AffineCoupling)][2]
    break_layer(broken, forward=lambda z, ld: (z, ld + 0.1))
    fails = failed(verify(flow, x, rows=64))
    assert "log|det| of the model vs its Jacobian" in fails
    assert [name for name in fails if name.startswith("log|det| of transform")] == [f"log|det| of {name} (AffineCoupling)"]
    assert name == "transform.transforms.2"


def test_a_cnf_does_not_loosen_the_checks_of_the_layers_beside_it():
    """A log-det off by 1e-5 passes a CNF's solver tolerance (fixed steps: 1e-2) but not the
    exact one every other layer is held to."""
    x = FAMILIES["cnf"]()[1]
    flow = initialised(models.cnf(2, hidden=16, depth=2, blocks=2, actnorm=True, solver="rk4", step_size=0.25), x)
    name, broken = next((n, m) for n, m in flow.named_modules() if isinstance(m, ActNorm))
    break_layer(broken, forward=lambda z, ld: (z, ld + 1e-5))
    fails = failed(verify(flow, x, rows=64))
    assert f"log|det| of {name} (ActNorm)" in fails, fails


def test_a_layer_whose_inverse_is_off_is_named():
    flow, x = FAMILIES["glow images"]()
    flow = initialised(flow, x)
    name, broken = [(n, m) for n, m in flow.named_modules() if isinstance(m, AffineCoupling)][1]
    break_layer(broken, inverse=lambda v, ld: (v * 1.001, ld))
    fails = failed(verify(flow, x, rows=64))
    assert {"round trip, data (float32)", "round trip, samples (float64)", "log p of samples: inverse vs forward pass"} <= set(fails)
    assert [n for n in fails if n.startswith("round trip of ")] == [f"round trip of {name} (AffineCoupling)"], fails


def test_a_cnf_with_the_wrong_sign_of_trace_fails(monkeypatch):
    flow, x = FAMILIES["cnf"]()
    flow = initialised(flow, x, scale=0.5)  # a divergence far from 0
    exact = continuous_module.exact_divergence
    monkeypatch.setattr(continuous_module, "exact_divergence", lambda dz, z, create_graph: -exact(dz, z, create_graph))
    fails = failed(verify(flow, x, rows=64))
    assert "log|det| of transform.transforms.0 (CNF)" in fails
    assert "density integrates to 1 (2-D grid)" in fails


def test_bits_per_dim_missing_the_scaling_term_fails():
    """The image models' ScalarAffine(1 / levels) carries the -D log(levels) term of bits/dim."""
    flow, x = FAMILIES["realnvp images"]()
    flow = initialised(flow, x)
    scaling = next(m for m in flow.modules() if isinstance(m, ScalarAffine))
    break_layer(scaling, forward=lambda v, ld: (v, torch.zeros_like(ld)))
    fails = failed(verify(flow, x, rows=64))
    assert {"bits/dim vs brute force", "log|det| of transform.transforms.1 (ScalarAffine)"} <= set(fails)


def test_non_finite_weights_fail_the_state_check():
    flow, x = FAMILIES["realnvp"]()
    flow = initialised(flow, x)
    with torch.no_grad():
        next(flow.parameters()).view(-1)[0] = float("nan")
    report = verify(flow, x, rows=32, two_sample=False)
    assert not report.passed and "weights finite, layers initialised" in failed(report)


def test_verify_leaves_the_flow_and_torch_stream_as_they_were():
    flow, x = FAMILIES["realnvp"]()
    flow = initialised(flow, x).train()
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    verify(flow, x, rows=32)
    assert torch.equal(torch.rand(3), expected) and flow.training
    assert all(torch.equal(before[k], v) for k, v in flow.state_dict().items())


def test_the_command_gates_a_pipeline(tmp_path, capsys):
    """``clayflow verify RUN``: a table and exit 0 on a healthy run (its reported test NLL
    reproduced), JSON with --json, exit 1 when a check fails, one line for bad input."""
    run = tmp_path / "run"
    assert main(["train", "--steps", "30", "--hidden", "16", "--layers", "2", "--no-plots", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["verify", str(run), "--rows", "64"]) == 0
    table = capsys.readouterr().out
    assert "test NLL of results.json reproduced" in table and table.rstrip().endswith("figures)")
    assert main(["verify", str(run), "--rows", "64", "--data", "moons"]) == 0  # held-out rows given
    assert "all checks passed" in capsys.readouterr().out
    assert main(["verify", str(run), "--rows", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and all(c["passed"] is not False for c in report["checks"])
    for name in ("best.pt", "last.pt"):  # a weight turned to NaN
        path = run / "checkpoints" / name
        if path.exists():
            payload = torch.load(path, weights_only=True)
            key = next(k for k, v in payload["model"].items() if v.is_floating_point() and v.numel() > 1)
            payload["model"][key].view(-1)[0] = float("nan")
            torch.save(payload, path)
    assert main(["verify", str(run), "--rows", "64"]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "missing")]) == 1
    assert main(["verify", str(run), "--rows", "1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(errors) == 2 and all(line.startswith("clayflow: error: ") for line in errors)


def test_a_table_on_a_grid_of_tenths_is_reconstructed_exactly(tmp_path, capsys):
    """iris is measured in steps of 0.1 cm, which float32 holds only approximately: the
    float64 reconstruction is exact in the data's own float32 (it was 1.9e-7 off in float64)."""
    run = tmp_path / "iris"
    assert main(["train", "--data", "iris", "--steps", "30", "--no-plots", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["verify", str(run)]) == 0, capsys.readouterr().out
    assert "data reconstructed exactly (float64)" in capsys.readouterr().out
