"""``explain``: per-layer values that add up to the flow's log p, and ``clayflow explain``'s
table and pictures for 2D toys, CNFs, tables and images."""

import pytest
import torch

from clayflow import models
from clayflow.cli.main import main
from clayflow.diagnostics import explain
from zoo import randomize


@pytest.mark.parametrize("kind", ["vectors", "images"])
def test_the_layers_terms_add_up_to_log_p(kind):
    if kind == "vectors":
        flow, x = randomize(models.realnvp(3, layers=4, hidden=8), scale=0.3).eval(), torch.randn(16, 3)
    else:
        flow = randomize(models.glow_image((1, 4, 4), 17, scales=2, layers=2, hidden=8), scale=0.05).eval()
        x = torch.randint(0, 17, (16, 1, 4, 4)).float()
    explanation = explain(flow, x, seed=3)
    torch.manual_seed(3)
    expected = flow.log_prob(x).double()
    total = sum(value for _, value in explanation.contributions())
    assert torch.allclose(explanation.log_prob, expected, atol=1e-4)
    assert abs(total - expected.mean().item()) < 1e-4
    assert all(step.logabsdet.shape == (16,) for step in explanation.steps)
    names = dict(flow.named_modules())
    assert all(step.name in names and type(names[step.name]).__name__ == step.kind for step in explanation.steps)


def test_the_command_draws_what_applies(tmp_path, capsys):
    runs = {
        "moons": ["--steps", "3", "--hidden", "8", "--layers", "2"],
        "cnf": ["--model", "cnf", "--steps", "2", "--hidden", "8", "--solver", "rk4", "--step-size", "0.5"],
        "wine": ["--data", "wine", "--steps", "3", "--hidden", "8", "--layers", "2"],
        "digits": ["--data", "digits", "--steps", "2", "--hidden", "8", "--depth", "1"],
    }
    expected = {
        "moons": {"contributions.png", "layers.png", "layers.gif"},
        "cnf": {"contributions.png", "layers.png", "layers.gif", "trajectories.png"},
        "wine": {"contributions.png", "marginals.png"},
        "digits": {"contributions.png", "scales.png"},
    }
    for name, options in runs.items():
        run = tmp_path / name
        assert main(["train", *options, "--no-plots", "--out", str(run)]) == 0
        capsys.readouterr()
        assert main(["explain", str(run), "--rows", "200"]) == 0
        printed = capsys.readouterr().out
        assert "log p(x) (sum)" in printed and "base log N(z)" in printed
        drawn = {p.name for p in (run / "explain").iterdir()}
        assert drawn == expected[name] and all(p.stat().st_size > 0 for p in (run / "explain").iterdir())
    assert main(["explain", str(tmp_path / "moons"), "--rows", "1"]) == 2
    assert main(["explain", str(tmp_path / "nothing")]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all(line.startswith("clayflow: error: ") for line in errors)
