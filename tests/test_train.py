"""Training: learning, density normalisation, exact resume after SIGKILL, divergence, Ctrl-C."""

import csv
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import clayflow
from clayflow.diagnostics import integrated_mass
from clayflow.train import TrainConfig, TrainingStopped, loop, train

SMALL = {"hidden": 32, "layers": 4, "batch_size": 256, "eval_every": 10, "checkpoint_every": 20}
SMALL_IMAGE = {
    "data": "digits",
    "hidden": 8,
    "depth": 1,
    "batch_size": 16,
    "eval_every": 10,
    "checkpoint_every": 20,
}


def rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def launch(*args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "clayflow.cli.main", "train", "--no-plots", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def train_and_stop(at_step: int, where: str, signum: signal.Signals, *args) -> subprocess.CompletedProcess:
    """``clayflow train`` stopped by ``signum`` from inside the process at ``at_step`` (see
    ``interrupt.py``): the same point however fast or slow the machine is."""
    cmd = [sys.executable, str(INTERRUPT), str(at_step), where, signum.name, "--no-plots", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


INTERRUPT = Path(__file__).parent / "interrupt.py"


def flags(options: dict) -> list[str]:
    """Command-line flags for ``options``; ``True`` is a bare switch."""
    argv = []
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return argv


def same_training(run: Path, reference: Path) -> None:
    """``run`` logged the same losses and ended with the same weights as ``reference``, bit for bit."""
    got, want = rows(run), rows(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert [(r["train_nll"], r["val_nll"]) for r in got] == [(r["train_nll"], r["val_nll"]) for r in want]
    final = torch.load(run / "checkpoints/last.pt", weights_only=True)["model"]
    expected = torch.load(reference / "checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)


@pytest.fixture(scope="module")
def trained_moons(tmp_path_factory):
    run = tmp_path_factory.mktemp("moons") / "run"
    result = train(
        TrainConfig(steps=1200, hidden=64, eval_every=400, checkpoint_every=1200), run, progress=False
    )
    return run, result


def test_training_learns_and_density_integrates_to_one(trained_moons):
    run, result = trained_moons
    metrics = rows(run)
    assert float(metrics[-1]["val_nll"]) < float(metrics[0]["val_nll"]) and result.test_nll < 2.6
    flow = clayflow.load(run)
    mass = integrated_mass(flow, (-8.0, 8.0, -6.0, 6.0), resolution=500)
    assert abs(mass - 1) < 1e-2, mass


# A small table: dropout, tanh conditioners, the fitted start and input noise all draw on the RNG.
SMALL_NOISY_TABLE = {**SMALL, "data": "wine", "batch_size": 32, "input_noise": 0.2}
# Class-conditional: the digit reaches every coupling as constant channels.
SMALL_GLOW = {**{k: v for k, v in SMALL_IMAGE.items() if k != "depth"}, "model": "glow", "layers": 2, "conditional": True}
# Hutchinson probes, augmented dimensions and ActNorm's data-dependent init all draw on the RNG.
SMALL_CNF = {
    **{k: v for k, v in SMALL.items() if k != "layers"},
    "model": "cnf",
    "hidden": 16,
    "depth": 1,
    "blocks": 2,
    "actnorm": True,
    "augment": 1,
    "solver": "rk4",
    "step_size": 0.5,
}

# Spline MADE layers with a learned LU map between them, dropout in the MADE, and a context
# (p(other columns | alcohol, hue)) that the input noise must leave alone.
SMALL_NSF_AR = {**SMALL_NOISY_TABLE, "model": "nsf", "autoregressive": True, "layers": 2, "context": "alcohol,hue"}


@pytest.mark.parametrize(
    "small, seed",
    [(SMALL, 1), (SMALL, 2), (SMALL_NOISY_TABLE, 3), (SMALL_IMAGE, 4), (SMALL_GLOW, 5), (SMALL_CNF, 6),
     (SMALL_NSF_AR, 7)],
)
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, small, seed):
    """SIGKILLed at a random step, or in the middle of a checkpoint write (both drawn from
    ``seed``, which also seeds training), resumed, and bit-exact, including the random parts
    of training (dequantization noise, dropout, input noise, Hutchinson probes, augmented
    dimensions): torch's RNG state is saved with the checkpoint."""
    chance = random.Random(seed)
    options = {**small, "steps": 80, "seed": seed}
    reference = tmp_path / "reference"
    assert launch(*flags(options), "--out", str(reference)).wait() == 0

    killed = tmp_path / "killed"
    if chance.random() < 0.5:
        where, at_step = "step", chance.randint(12, 70)
    else:
        where, at_step = "checkpoint", chance.choice([20, 40, 60])
    stopped = train_and_stop(at_step, where, signal.SIGKILL, *flags(options), "--out", str(killed))
    assert stopped.returncode == -signal.SIGKILL, stopped.stderr
    last = killed / "checkpoints/last.pt"
    resumed_from = torch.load(last, weights_only=True)["step"]  # a run checkpoints step 0 first
    # every 20 steps, and at each new best validation NLL (every 10 steps here)
    assert (at_step - 1) // 20 * 20 <= resumed_from < at_step and resumed_from % 10 == 0, (where, at_step)
    assert bool(list((killed / "checkpoints").glob(".*.tmp"))) == (where == "checkpoint")
    print(f"seed {seed}: killed at step {at_step} ({where}), resumed from {resumed_from}")

    resumed = launch("--resume", str(killed))
    _, err = resumed.communicate()
    assert resumed.returncode == 0, err
    same_training(killed, reference)
    assert not list((killed / "checkpoints").glob(".*.tmp"))  # a write the kill cut short is cleaned up


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_stop_signals_save_a_checkpoint_and_resume_exactly(tmp_path, signum):
    """Ctrl-C, ``kill``/``timeout``/Slurm (SIGTERM) and a closed terminal (SIGHUP) save the
    step reached, say how to resume in one line, exit 128 + signal, and resume bit-exact."""
    options = {**SMALL, "steps": 60, "seed": 7}
    reference = tmp_path / "reference"
    assert launch(*flags(options), "--out", str(reference)).wait() == 0
    run = tmp_path / "run"
    stopped = train_and_stop(25, "step", signum, *flags(options), "--out", str(run))
    lines = stopped.stderr.strip().splitlines()
    assert stopped.returncode == 128 + signum, stopped.stderr
    assert lines[-1] == (
        f"clayflow: error: interrupted by {signum.name} at step 25; checkpoint saved. "
        f"Continue with: clayflow train --resume {run}"
    )
    assert "Traceback" not in stopped.stderr
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["step"] == 25
    resumed = launch("--resume", str(run), *flags(options))  # the same command, with --resume
    _, err = resumed.communicate()
    assert resumed.returncode == 0, err
    same_training(run, reference)


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    original = loop.Trainer._train_step

    def poisoned(self):
        if self.step == 30:
            with torch.no_grad():
                next(self.flow.parameters()).fill_(float("nan"))
        return original(self)

    monkeypatch.setattr(loop.Trainer, "_train_step", poisoned)
    run = tmp_path / "run"
    with pytest.raises(
        TrainingStopped, match="non-finite at step 31; kept the last good checkpoint \\(step 30\\)"
    ):
        train(TrainConfig(steps=60, **SMALL), run, progress=False)
    saved = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert saved["step"] == 30  # the checkpoint of the new best at step 30
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_skip_mode_skips_a_bad_batch_and_stops_on_lasting_divergence(tmp_path, monkeypatch):
    """``--nonfinite skip``: one NaN loss costs a batch, not the run; NaN weights still stop it."""
    original = loop.Trainer._train_step
    poison_at = {30}

    def poisoned(self):
        if self.step in poison_at:
            poison_at.discard(self.step)
            clean = self.batches.examples.clone()
            self.batches.examples[:] = float("nan")  # this batch's loss is NaN; the data is restored after
            try:
                return original(self)
            finally:
                self.batches.examples.copy_(clean)
        return original(self)

    monkeypatch.setattr(loop.Trainer, "_train_step", poisoned)
    run = tmp_path / "run"
    result = train(TrainConfig(steps=50, nonfinite="skip", **SMALL), run, progress=False)
    metrics = rows(run)
    assert result.steps == 50 and [int(r["skipped_steps"]) for r in metrics] == [0, 0, 0, 0, 1, 0]

    def poisoned_weights(self):
        if self.step == 30:
            with torch.no_grad():
                next(self.flow.parameters()).fill_(float("nan"))
        return original(self)

    monkeypatch.setattr(loop.Trainer, "_train_step", poisoned_weights)
    with pytest.raises(
        TrainingStopped, match="non-finite in 21 steps in a row at step 31; kept .* \\(step 30\\)"
    ):
        train(TrainConfig(steps=60, nonfinite="skip", **SMALL), tmp_path / "run2", progress=False)


def test_divergence_at_the_first_step_keeps_the_checkpoint_of_step_0(tmp_path):
    table = tmp_path / "huge.csv"
    table.write_text("".join(f"{i}e20,{(i * 7) % 11}e20\n" for i in range(40)))
    with pytest.raises(TrainingStopped, match="non-finite at step 1; kept the last good checkpoint \\(step 0\\)"):
        train(
            TrainConfig(data=str(table), standardize=False, power_transform=False, whiten=False, steps=5, **SMALL),
            tmp_path / "run",
            progress=False,
        )


def test_best_validation_weights_are_kept_and_loaded(tmp_path):
    """On 300 rows of the moons (far from Gaussian, so training beats the fitted start by far
    more than the validation noise), a big flow without dropout overfits within 1000 steps."""
    from clayflow.data.toys import TOYS

    table = tmp_path / "moons.csv"
    points = TOYS["moons"](300, np.random.default_rng(0))
    table.write_text("".join(f"{x:.6f},{y:.6f}\n" for x, y in points))
    run = tmp_path / "run"
    config = TrainConfig(data=str(table), steps=1000, lr=5e-3, eval_every=50, hidden=128, dropout=0.0, patience=0)
    result = train(config, run, progress=False)
    val = {int(r["step"]): float(r["val_nll"]) for r in rows(run)}
    best_step = min(val, key=val.get)
    assert (
        0 < best_step < 1000
        and result.selected_step == best_step
        and result.val_nll == pytest.approx(val[best_step])
    )
    best = torch.load(run / "checkpoints/best.pt", weights_only=True)
    assert best["step"] == best_step
    last = torch.load(run / "checkpoints/last.pt", weights_only=True)  # score finds the run's data by it
    assert best["data_fingerprint"] == last["data_fingerprint"] and best["data_fingerprint"]["sha256"]
    key = next(iter(best["model"]))
    assert torch.equal(clayflow.load(run).state_dict()[key], best["model"][key])


def test_ema_weights_are_used_for_evaluation_and_loading(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(steps=40, ema=0.9, select_best=False, **SMALL), run, progress=False)
    saved = torch.load(run / "checkpoints/last.pt", weights_only=True)
    flow = clayflow.load(run)
    key = next(k for k in saved["model"] if k.endswith("weight"))
    assert torch.equal(flow.state_dict()[key], saved["ema"]["module." + key])
    assert not torch.equal(saved["model"][key], saved["ema"]["module." + key])


@pytest.mark.parametrize("decay", [0.999, 0.5])  # 0.5: the cap binds from the 9th update on
def test_the_weight_average_follows_its_warm_up_formula_and_forgets_the_first_weights(decay):
    """``make_weight_average``: w̄ <- β_n w̄ + (1 - β_n) w with β_n = min(decay, (1 + n) / (10 + n))
    after n updates (the first update copies); computed by hand in float64; integer buffers
    take the newest value. With decay 0.999 a first weight of 1000 followed by 1,499 zeros
    leaves under 1e-2 (a constant decay would leave 223)."""
    from clayflow.train.schedule import make_weight_average

    module = torch.nn.Linear(1, 1, bias=False).double()
    module.register_buffer("count", torch.zeros((), dtype=torch.long))
    average = make_weight_average(module, decay=decay)
    values = torch.linspace(-1, 1, 50, dtype=torch.float64) ** 3
    expected = None
    for n, value in enumerate(values):
        module.weight.data.fill_(value)
        module.count.fill_(n)
        average.update_parameters(module)
        beta = min(decay, (1 + n) / (10 + n))
        expected = value if n == 0 else beta * expected + (1 - beta) * value
    assert torch.allclose(average.module.weight, expected.reshape(1, 1), rtol=1e-12, atol=1e-15)
    assert average.module.count.item() == len(values) - 1

    average = make_weight_average(module, decay=decay)
    for n in range(1500):
        module.weight.data.fill_(1000.0 if n == 0 else 0.0)
        average.update_parameters(module)
    assert 0 <= average.module.weight.item() < 1e-2


def test_resume_before_first_checkpoint_starts_over(tmp_path):
    """Killed while writing the checkpoint of step 0 (before any training): no last.pt, no
    metrics, so ``--resume`` starts the run over, and it ends as an uninterrupted run."""
    options = {**SMALL, "steps": 20}
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert launch(*flags(options), "--out", str(reference)).wait() == 0
    stopped = train_and_stop(0, "checkpoint", signal.SIGKILL, *flags(options), "--out", str(run))
    assert stopped.returncode == -signal.SIGKILL and not (run / "checkpoints/last.pt").exists()
    resumed = launch("--resume", str(run))
    assert resumed.wait() == 0, resumed.communicate()
    same_training(run, reference)


@pytest.mark.parametrize("kept", ["results.json", "checkpoints/best.pt", "metrics.csv"])
def test_resume_of_a_run_that_lost_its_checkpoint_is_refused(tmp_path, kept):
    """A run whose last.pt is gone but that holds results, a best checkpoint or metrics rows
    has trained: starting it over would replace them, so --resume refuses and changes nothing."""
    from test_cli import snapshot

    run = tmp_path / "run"
    train(TrainConfig(steps=20, **SMALL), run, progress=False)
    (run / "checkpoints/last.pt").unlink()
    for name in {"results.json", "checkpoints/best.pt", "metrics.csv"} - {kept}:
        (run / name).unlink()
    before = snapshot(run)
    with pytest.raises(clayflow.ClayflowError, match="lost its checkpoint .* refusing to start it over"):
        train(TrainConfig(steps=20, **SMALL), run, resume=True, progress=False)
    assert snapshot(run) == before


def test_training_defaults_depend_on_the_kind_of_data():
    assert (TrainConfig().resolved().batch_size, TrainConfig().resolved().lr) == (512, 2e-3)
    image = TrainConfig(data="digits").resolved()
    assert (image.batch_size, image.lr) == (64, 1e-3)
    assert TrainConfig(data="images:x", batch_size=7).resolved().batch_size == 7  # a flag wins


def test_checkpoint_records_every_builder_option(tmp_path):
    """Options left at the builder's default are written out, so a later change of a default
    cannot silently change how a saved model is rebuilt."""
    run = tmp_path / "run"
    train(TrainConfig(data="digits", steps=2, hidden=4, depth=0, eval_every=2), run, progress=False)
    spec = torch.load(run / "checkpoints/last.pt", weights_only=True)["model_spec"]
    assert spec["event_shape"] == [1, 8, 8] and spec["levels"] == 17
    assert spec["options"] == {
        "scales": None,
        "hidden": 4,
        "depth": 0,
        "norm": "batch",
        "scale_bound": "tanh",
        "batch_norm": False,
        "alpha": 0.05,
        "mask": "checkerboard",
        "context_features": 0,
    }


def test_patience_stops_early_and_a_resume_stops_at_the_same_step(tmp_path, monkeypatch, capsys):
    calls = iter(range(100))
    never_better = lambda flow, x, loader_options=None, processes=None: torch.full((len(x),), -1.0 - next(calls), dtype=torch.float64)
    monkeypatch.setattr(loop, "evaluate_log_probs", never_better)
    run = tmp_path / "run"
    config = TrainConfig(**{**SMALL, "steps": 200, "patience": 2})
    result = train(config, run, progress=False)
    assert result.steps == 20 and result.selected_step == 0  # best at step 0, then 2 evaluations
    assert result.stopped_early and "stopped early at step 20" in capsys.readouterr().err
    again = train(config, run, resume=True, progress=False)
    assert again.steps == 20 and [r["step"] for r in rows(run)] == ["0", "10", "20"]


def test_patience_needs_select_best():
    from clayflow.errors import ClayflowError
    from clayflow.train.config import config_from_dict

    with pytest.raises(ClayflowError, match="patience .* needs select_best"):
        config_from_dict({"patience": 3, "select_best": False})


def test_a_metrics_row_cut_short_is_left_out_on_resume(tmp_path):
    from clayflow.train.run import METRIC_COLUMNS, MetricsLog, read_metrics

    path = tmp_path / "metrics.csv"
    path.write_text(",".join(METRIC_COLUMNS) + "\n10,3.5\n20,3.4\n3")  # killed inside the row of step 30
    assert [r["step"] for r in read_metrics(path)] == ["10", "20"]
    MetricsLog(path, resume_step=20)
    assert [r["step"] for r in read_metrics(path)] == ["10", "20"] and path.read_text().endswith("\n")


@pytest.mark.parametrize("model", ["realnvp", "nsf"])  # the two defaults (small tables, and moons)
def test_compiled_training_step_gives_the_eager_numbers(tmp_path, model):
    """``--compile`` runs the same optimisation: the same losses and weights up to rounding."""
    results, weights = [], []
    for compile_step in (False, True):
        run = tmp_path / f"compile-{compile_step}"
        config = TrainConfig(model=model, steps=20, compile=compile_step, **SMALL)
        results.append(train(config, run, progress=False))
        weights.append(torch.load(run / "checkpoints/last.pt", weights_only=True)["model"])
    assert results[1].test_nll == pytest.approx(results[0].test_nll, rel=1e-5)
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_optimizer_takes_the_default_implementations_steps(name):
    """``make_optimizer`` picks torch's fused kernel on the CPU; it must follow the same
    trajectory as the default (per-tensor) implementation."""
    from clayflow.train.schedule import make_optimizer

    flows = [clayflow.models.realnvp(3, layers=2, hidden=8) for _ in range(2)]
    flows[1].load_state_dict(flows[0].state_dict())
    fused = make_optimizer(flows[0].parameters(), name, lr=1e-2, weight_decay=1e-3)
    default_class = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    default = default_class(flows[1].parameters(), lr=1e-2, weight_decay=1e-3)
    assert fused.param_groups[0]["fused"] and not default.param_groups[0]["fused"]
    x = torch.randn(64, 3)
    for _ in range(5):
        for flow, optimizer in zip(flows, (fused, default)):
            optimizer.zero_grad()
            (-flow.log_prob(x).mean()).backward()
            optimizer.step()
    for (key, a), b in zip(flows[0].state_dict().items(), flows[1].state_dict().values()):
        torch.testing.assert_close(a, b, msg=key)
