"""``explain``: per-layer values that add up to the flow's log p, and ``clayflow explain``'s
table and pictures for 2D toys, CNFs, tables and images."""

import pytest
import torch

from clayflow import models
from clayflow.cli.main import main
from clayflow.core import Compose, Flow
from clayflow.diagnostics import explain
from clayflow.transforms.linear import Whitening
from zoo import randomize


@pytest.mark.parametrize("kind", ["vectors", "whitened", "iaf", "images"])
def test_the_layers_terms_add_up_to_log_p(kind):
    """Every layer a forward pass calls is one term: also a layer holding another transform
    with a log-det of its own (a table's whitening map and its learned linear map) and an
    inverted layer (IAF's autoregressive layers, which run their inverse)."""
    x = torch.randn(16, 3)
    if kind == "vectors":
        flow = randomize(models.realnvp(3, layers=4, hidden=8), scale=0.3).eval()
    elif kind == "whitened":
        inner = models.realnvp(3, layers=2, hidden=8)
        flow = randomize(Flow(Compose(Whitening(3), inner.transform), inner.base), scale=0.3).eval()
    elif kind == "iaf":
        flow = randomize(models.iaf(3, layers=2, hidden=8), scale=0.3).eval()
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
    assert kind != "whitened" or explanation.steps[0].kind == "Whitening"
    assert kind != "iaf" or "Inverse" in [step.kind for step in explanation.steps]


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
    mine = tmp_path / "mine"  # a folder of the user's: its files are replaced only with --force
    mine.mkdir()
    (mine / "contributions.png").write_text("the user's")
    (tmp_path / "precious.txt").write_text("the user's")
    (mine / "layers.gif").symlink_to(tmp_path / "precious.txt")
    assert main(["explain", str(tmp_path / "moons"), "--out", str(mine)]) == 2
    assert "already holds contributions.png, layers.gif; give --force" in capsys.readouterr().err
    assert (mine / "contributions.png").read_text() == "the user's"
    assert main(["explain", str(tmp_path / "moons"), "--out", str(mine), "--force"]) == 0
    assert not (mine / "layers.gif").is_symlink() and (mine / "layers.gif").read_bytes()[:3] == b"GIF"
    assert (tmp_path / "precious.txt").read_text() == "the user's"  # replaced the link, not written through it
    capsys.readouterr()
    assert main(["explain", str(tmp_path / "moons"), "--rows", "1"]) == 2
    assert main(["explain", str(tmp_path / "nothing")]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all(line.startswith("clayflow: error: ") for line in errors)
