"""``clayflow.fit``: the command line's training loop on a flow and data built in Python."""

import json
import signal

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import clayflow
from clayflow import models
from clayflow.cli.main import main
from clayflow.errors import ClayflowError, UsageError
from clayflow.train import loop
from clayflow.train.loop import TrainingInterrupted
from test_cli import FAST

OPTIONS = {"batch_size": 50, "lr": 3e-3, "checkpoint_every": 10, "eval_every": 5, "progress": False}


def _data(n=400, seed=0):
    """Two correlated columns as float64, as ``torch.from_numpy`` gives them."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    return torch.from_numpy(np.stack([a, a**2 + 0.3 * rng.normal(size=n)], 1))


def _flow(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return models.realnvp(2, layers=2, hidden=8, dropout=dropout)


class Pairs(Dataset):
    """A map-style dataset of ``(example, label)`` pairs, as torchvision's; ``jitter`` adds
    random noise to each example read (a random augmentation, from torch's stream)."""

    def __init__(self, x, jitter=0.0):
        self.x, self.jitter = x, jitter

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + self.jitter * torch.randn(self.x.shape[1], dtype=self.x.dtype), 0


def _stop_at(monkeypatch, step):
    """Deliver a Ctrl-C to the loop right after optimisation step ``step``."""
    original = loop.Trainer._train_step

    def step_then_stop(self):
        taken = original(self)
        if self.step == step:
            self.stop.signum = signal.SIGINT
        return taken

    monkeypatch.setattr(loop.Trainer, "_train_step", step_then_stop)


def test_fit_trains_selects_the_best_weights_and_returns_the_history():
    x = _data(3000)
    flow = _flow()
    before = clayflow.train.evaluate_nll(flow, x[2500:])
    result = clayflow.fit(flow, x[:2000], val=x[2000:2500], test=x[2500:], steps=60, **OPTIONS)
    assert result.run_dir is None and result.steps == 60
    assert [row["step"] for row in result.history] == list(range(0, 61, 5))
    selected = next(row for row in result.history if row["step"] == result.selected_step)
    assert result.selected_step > 0 and result.val_nll == pytest.approx(selected["val_nll"])
    assert result.val_nll == min(row["val_nll"] for row in result.history)
    # the flow holds the selected weights: its test NLL is the result's, and better than before
    assert clayflow.train.evaluate_nll(flow, x[2500:]) == pytest.approx(result.test_nll)
    assert result.test_nll < before - 0.1 and not flow.training


@pytest.mark.parametrize("source", ["tensor", "dataset", "workers", "augmented", "loader"])
def test_fit_resumes_a_stopped_run_exactly(tmp_path, monkeypatch, source):
    """Stopped at step 23 (a checkpoint is saved there) and resumed, a fit of a flow with
    dropout (torch's random stream) ends with the same weights and metrics as one never
    stopped: from a tensor, a dataset, one read by two worker processes (which read ahead of
    the step), one with a random augmentation, or a DataLoader."""
    x = _data()
    train = {
        "tensor": x[:300],
        "dataset": Pairs(x[:300]),
        "workers": Pairs(x[:300]),
        "augmented": Pairs(x[:300], jitter=0.05),
        "loader": DataLoader(Pairs(x[:300]), batch_size=50, shuffle=True),
    }[source]
    workers = {"num_workers": 2} if source == "workers" else {}
    reference = _flow(dropout=0.2)
    expected = clayflow.fit(reference, train, val=x[300:], steps=40, out=tmp_path / "reference", **OPTIONS, **workers)

    _stop_at(monkeypatch, 23)
    stopped = _flow(dropout=0.2)
    with pytest.raises(TrainingInterrupted, match=r"at step 23; checkpoint saved. Continue with: clayflow.fit\("):
        clayflow.fit(stopped, train, val=x[300:], steps=40, out=tmp_path / "run", **OPTIONS, **workers)
    monkeypatch.undo()
    resumed = _flow(seed=1, dropout=0.2)  # the same architecture; its weights come from the checkpoint
    result = clayflow.fit(resumed, train, val=x[300:], steps=40, out=tmp_path / "run", resume=True, **OPTIONS, **workers)
    assert _untimed(result.history) == _untimed(expected.history)
    assert result.selected_step == expected.selected_step
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_a_fit_run_resumes_only_as_what_it_was(tmp_path, capsys):
    """Another architecture (even with weights of the same shapes), or the other way in (the
    command line for a fit run, fit for a command-line run), is refused in one line."""
    x = _data()
    run = tmp_path / "run"
    clayflow.fit(_flow(), x, val=x[:50], steps=10, out=run, **OPTIONS)
    tanh = models.realnvp(2, layers=2, hidden=8, activation="tanh")
    with pytest.raises(UsageError, match="changes --model 'Flow:"):
        clayflow.fit(tanh, x, val=x[:50], steps=20, out=run, resume=True, **OPTIONS)
    capsys.readouterr()
    code = main(["train", "--resume", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and err == (
        f"clayflow: error: {run} was trained from Python with clayflow.fit; continue it with "
        f"clayflow.fit(flow, ..., out='{run}', resume=True)\n"
    )
    cli_run = tmp_path / "cli"
    assert main(["train", *FAST, "--out", str(cli_run)]) == 0
    with pytest.raises(UsageError, match=f"trained by clayflow train; continue it with: clayflow train --resume {cli_run}"):
        clayflow.fit(_flow(), x, val=x[:50], steps=40, out=cli_run, resume=True, **OPTIONS)


def test_threads_are_restored_when_training_fails(monkeypatch):
    def fail(self):
        raise RuntimeError("a bug in the model")

    monkeypatch.setattr(loop.Trainer, "_train_step", fail)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(RuntimeError, match="a bug"):
            clayflow.fit(_flow(), _data(), steps=5, threads=2, **OPTIONS)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _untimed(history):
    return [{k: v for k, v in row.items() if k not in ("steps_per_s", "elapsed_s")} for row in history]


def test_a_float64_flow_trains_and_evaluates_in_float64():
    """``flow.double()`` computes in float64 end to end: its batches and evaluation chunks are
    float64 too (they were float32, and the first step failed on a dtype mismatch)."""
    data = _data()
    flow = _flow().double()
    result = clayflow.fit(flow, data[:300], data[300:350], data[350:], steps=20, **OPTIONS)
    assert flow.dtype == torch.float64 and all(p.dtype == torch.float64 for p in flow.parameters())
    assert np.isfinite(result.test_nll)
    with torch.no_grad():
        assert result.test_nll == pytest.approx(-flow.eval().log_prob(data[350:]).mean().item(), abs=1e-9)


def test_fit_without_validation_keeps_the_last_weights():
    x = _data()
    flow = _flow()
    result = clayflow.fit(flow, x, steps=20, **OPTIONS)
    assert result.selected_step == 20 and result.test_nll is None and result.val_nll is None
    assert all(row["val_nll"] is None for row in result.history) and result.history[-1]["train_loss"] is not None
    with pytest.raises(UsageError, match="needs val data"):
        clayflow.fit(flow, x, steps=20, select_best=True, **OPTIONS)


def test_fit_defaults_as_clayflow_train_on_a_small_table_and_writes_strict_json(tmp_path, capsys):
    """Without ``batch_size``, a table under 5,000 rows trains in batches of 64, as ``clayflow
    train`` does (it was 512, so every step took all 300 rows); without ``test`` the test NLL
    is None, written as JSON's null (it was NaN, which strict JSON readers refuse)."""
    x = _data()
    result = clayflow.fit(_flow(), x[:300], x[300:], steps=4, progress=False, out=tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["batch_size"] == 64
    assert "4 steps of batch 64;" in capsys.readouterr().err
    text = (tmp_path / "run" / "results.json").read_text()
    results = json.loads(text, parse_constant=lambda name: pytest.fail(f"results.json holds {name}"))
    assert result.test_nll is None and results["test_nll"] is None and results["test_bpd"] is None
    clayflow.fit(_flow(), x[:300], x[300:], steps=1, batch_size=1000, progress=False)
    assert "of batch 300 (every training row; batch size 1,000)" in capsys.readouterr().err


def test_fit_refuses_what_it_cannot_use(tmp_path):
    x = _data()
    flow = _flow()
    bad = x.clone()
    bad[7, 1] = float("nan")
    with pytest.raises(ClayflowError, match=r"^val example 7 \(of 1 such\) holds NaN or inf values"):
        clayflow.fit(flow, x, bad, steps=5, **OPTIONS)  # named before training, not a NaN loss at step 1
    with pytest.raises(UsageError, match="no option lr_decay"):
        clayflow.fit(flow, x, lr_decay=0.5)
    with pytest.raises(UsageError, match="give out="):
        clayflow.fit(flow, x, resume=True)
    with pytest.raises(UsageError, match="batch of examples"):
        clayflow.fit(flow, x[:, 0])
    with pytest.raises(UsageError, match="tensor or a map-style"):
        clayflow.fit(flow, x.numpy())
    with pytest.raises(ValueError, match=r"\(B, 2\)"):  # the flow's own shape check
        clayflow.fit(flow, torch.randn(100, 3), progress=False)
    clayflow.fit(flow, x, val=x[:50], steps=10, out=tmp_path / "run", **OPTIONS)
    with pytest.raises(ClayflowError, match="trained from Python with clayflow.fit"):
        clayflow.load(tmp_path / "run")
    with pytest.raises(ClayflowError, match="not empty"):  # an existing run is not replaced without force
        clayflow.fit(flow, x, val=x[:50], steps=10, out=tmp_path / "run", **OPTIONS)
