"""``clayflow fit``: a flow fitted to a target in a run directory: what the run holds, exact
resume after an interruption or a crash, sampling with importance weights, the other verbs
on a fitted run, and one clear line for bad input."""

import json

import numpy as np
import pytest
import torch

import clayflow
from clayflow.cli.main import main
from clayflow.train.signals import StopRequest
from clayflow.train.variational import FitConfig, fit
from clayflow.variational import ReverseKLTraining

SMALL = ["--layers", "4", "--hidden", "32", "--batch-size", "256", "--eval-samples", "2000", "--threads", "1"]


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fit")
    run = folder / "banana"
    assert cli("fit", "--target", "banana", "--steps", 300, "--eval-every", 100, *SMALL, "--out", run) == 0
    return folder, run


def test_a_fitted_run_holds_its_config_metrics_checkpoint_results_and_plots(fitted, capsys):
    _, run = fitted
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "variational" and config["target"] == "banana" and config["options"]["layers"] == 4
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,beta,ess,log_z") and len(rows) == 5  # steps 0, 100, 200, 300
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 300 and results["log_z_true"] == 0.0
    assert 0 < results["ess"] <= 1 and abs(results["log_z_error"]) < 0.1 and results["elbo"] <= results["log_z"]
    assert {p.name for p in (run / "plots").iterdir()} == {"history.png", "density.png"}
    flow = clayflow.load(run)
    assert flow.sample(4).shape == (4, 2)
    assert cli("plot", run) == 0 and "history.png" in capsys.readouterr().out
    assert cli("plot", run, "--columns", "1") == 2 and "a run of clayflow fit draws" in capsys.readouterr().err


def test_sample_writes_importance_weights_or_resamples(fitted, capsys):
    folder, run = fitted
    assert cli("sample", run, "--n", 500, "--weights", "--out", folder / "w.csv") == 0
    values = np.loadtxt(folder / "w.csv", delimiter=",", skiprows=1)
    assert (folder / "w.csv").read_text().startswith("x1,x2,log_weight") and values.shape == (500, 3)
    flow, target = clayflow.load(run).double(), clayflow.variational.load_target("banana")
    x = torch.as_tensor(values[:, :2])
    expected = (target(x) - flow.log_prob(x)).detach().numpy()  # log p~ - log q by the forward pass
    assert np.allclose(values[:, 2], expected, atol=1e-3)
    assert cli("sample", run, "--n", 4000, "--resample", "--out", folder / "r.csv") == 0
    resampled = np.loadtxt(folder / "r.csv", delimiter=",", skiprows=1)
    assert abs(resampled[:, 0].std() - 2) < 0.1  # the banana's x1 ~ N(0, 2^2)
    captured = capsys.readouterr()
    assert "ESS" in captured.out and "warning" not in captured.err
    assert cli("sample", run, "--n", 1, "--weights", "--out", folder / "one.csv") == 0
    assert "ESS" not in capsys.readouterr().out  # one draw's ESS is 100%, whatever the fit


def test_resampling_weights_that_collapsed_warns(tmp_path, capsys):
    """A flow fitted for 2 steps to the funnel: a few draws carry the weights, so the resampled
    rows repeat them; said in one warning, not only as 'ESS 0.0%'."""
    run = tmp_path / "funnel"
    assert cli("fit", "--target", "funnel", "--steps", 2, *SMALL, "--no-plots", "--out", run) == 0
    capsys.readouterr()
    assert cli("sample", run, "--n", 2000, "--resample", "--out", tmp_path / "r.csv") == 0
    err = capsys.readouterr().err
    distinct = len(np.unique(np.loadtxt(tmp_path / "r.csv", delimiter=",", skiprows=1), axis=0))
    assert f"warning: the 2000 resampled rows hold {distinct} distinct draws" in err and distinct < 1000, err


def test_verify_and_explain_use_the_flows_own_draws(fitted, capsys):
    _, run = fitted
    assert cli("verify", run, "--rows", 64) == 0
    assert "all checks passed" in capsys.readouterr().out
    assert cli("explain", run, "--rows", 100) == 0
    assert (run / "explain" / "layers.png").exists()


def interrupt_at(monkeypatch, step: int, stop: StopRequest | None = None, crash: bool = False):
    """Make ``ReverseKLTraining.train_step`` ask to stop (or raise) once it reaches ``step``."""
    original = ReverseKLTraining.train_step

    def train_step(self):
        if self.step == step:
            if crash:
                raise RuntimeError("killed")
            stop.signum = 15
        return original(self)

    monkeypatch.setattr(ReverseKLTraining, "train_step", train_step)


@pytest.mark.parametrize("crash", [False, True])
def test_an_interrupted_or_crashed_run_resumes_to_the_same_numbers(tmp_path, monkeypatch, crash):
    config = FitConfig(target="u1", steps=60, eval_every=20, checkpoint_every=20, eval_samples=1000, batch_size=64,
                       options={"layers": 2, "hidden": 16})  # fmt: skip
    whole = fit(config, tmp_path / "whole", progress=False)
    stop = StopRequest()
    with monkeypatch.context() as patch:
        interrupt_at(patch, 30, stop, crash)
        with pytest.raises((clayflow.ClayflowError, RuntimeError)):
            fit(config, tmp_path / "cut", progress=False, stop=stop)
    kept = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert kept == (20 if crash else 31)  # a crash keeps the last checkpoint; a signal saves after its step
    resumed = fit(None, tmp_path / "cut", resume=True, progress=False)
    assert resumed["log_z"] == whole["log_z"] and resumed["ess"] == whole["ess"]
    whole_rows, cut_rows = ([row.split(",")[:-1] for row in (tmp_path / run / "metrics.csv").read_text().splitlines()]
                            for run in ("whole", "cut"))  # every column but the elapsed time  # fmt: skip
    assert whole_rows == cut_rows


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "--target", "bananas"], "unknown target 'bananas'"),
        (["fit"], "give --target"),
        (["fit", "--target", "u1", "--forward-weight", "0.3"], "give them as --samples FILE"),
        (["fit", "--target", "u1", "--steps", "100", "--anneal", "100"], "must end before --steps"),
        (["fit", "--target", "u1", "--bins", "4"], "has no option(s) bins"),
        (["fit", "--target", "u1", "--eval-samples", "1"], "must be >= 2 (the ESS and log Z's standard error"),
        (["fit", "--target", "u1", "--model", "planet"], "unknown model 'planet'"),
        (["fit", "--resume", "{run}", "--lr", "0.5"], "--lr cannot change on --resume"),
        (["train", "--resume", "{run}"], "continue it with: clayflow fit --resume"),
        (["fit", "--target", "u1", "--out", "{folder}/mine"], "is not empty"),
        (["fit", "--target", "u1", "--out", "{folder}/mine", "--force"], "not a clayflow run"),
        (["sample", "{run}", "--n", "3", "--weights", "--temperature", "0.5", "--out", "{folder}/t.csv"], "take no --temperature"),
        (["score", "{run}", "--data", "{folder}/r.csv", "--fpr", "0.01", "--out", "{folder}/s.csv"], "not trained on data"),
    ],
)
def test_bad_input_is_one_line_and_touches_nothing(fitted, capsys, argv, message):
    folder, run = fitted
    mine = folder / "mine"
    mine.mkdir(exist_ok=True)
    (mine / "notes.txt").write_text("keep")
    before = sorted(p.name for p in folder.rglob("*"))
    code = cli(*(a.format(run=run, folder=folder) for a in argv))
    err = capsys.readouterr().err
    assert code == 2 or (code == 1 and "not trained on data" in err), (code, err)
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in folder.rglob("*")) == before and (mine / "notes.txt").read_text() == "keep"


def test_a_users_own_target_from_a_file(tmp_path, capsys):
    source = tmp_path / "posterior.py"
    source.write_text("def ring(x):\n    return -((x.norm(dim=1) - 2) ** 2) / (2 * 0.3**2)\n")
    run = tmp_path / "ring"
    assert cli("fit", "--target", f"{source}:ring", "--dims", 2, "--steps", 100, "--eval-every", 50, *SMALL,
               "--no-plots", "--out", run) == 0  # fmt: skip
    assert "log Z" in capsys.readouterr().out and json.loads((run / "results.json").read_text())["log_z_true"] is None
    assert cli("plot", run) == 0  # 2-D: its density over the box of the flow's draws, not marginals
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["density.png", "history.png", "weights.png"]


def test_draws_of_the_target_mix_their_nll_into_the_loss(tmp_path, monkeypatch):
    """--samples: the loss is (1 - a) reverse KL + a NLL of a batch of the draws given."""
    from clayflow.variational import objective

    x1 = np.random.default_rng(0).normal(0, 2, 3000)
    draws = np.stack([x1, x1**2 / 4 - 1 + np.random.default_rng(1).normal(0, 1, 3000)], 1)  # the banana
    np.savetxt(tmp_path / "draws.csv", draws, delimiter=",")
    seen = []
    original = objective.reverse_kl
    monkeypatch.setattr("clayflow.variational.fit.reverse_kl",
                        lambda *a, **k: seen.append((a[4].shape, a[5])) or original(*a, **k))  # fmt: skip
    run = tmp_path / "mixed"
    assert cli("fit", "--target", "banana", "--samples", tmp_path / "draws.csv", "--forward-weight", 0.3,
               "--steps", 20, "--eval-every", 20, *SMALL, "--no-plots", "--out", run) == 0  # fmt: skip
    assert seen and all(shape == (3000, 2) and weight == 0.3 for shape, weight in seen)
    assert json.loads((run / "config.json").read_text())["samples"] == str(tmp_path / "draws.csv")
    np.savetxt(tmp_path / "three.csv", np.zeros((5, 3)), delimiter=",")
    assert cli("fit", "--target", "banana", "--samples", tmp_path / "three.csv", "--out", tmp_path / "bad") == 2


def test_a_longer_resume_keeps_the_annealing_and_refuses_other_changes(tmp_path):
    """The anneal steps are recorded resolved (a fifth of the first --steps): resuming with a
    larger --steps continues at beta = 1, and an option given again unchanged is no change."""
    config = {"target": "u1", "steps": 40, "eval_every": 20, "eval_samples": 500, "batch_size": 64,
              "options": {"layers": 2, "hidden": 16}}  # fmt: skip
    fit(config, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["anneal"] == 8
    fit({"steps": 60, "device": "cpu", "model": "realnvp"}, tmp_path / "run", resume=True, progress=False)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    assert [row.split(",")[2] for row in rows] == ["0.01", "1.0", "1.0", "1.0"]  # beta at steps 0, 20, 40, 60
    with pytest.raises(clayflow.UsageError, match="--model cannot change"):
        fit({"model": "maf"}, tmp_path / "run", resume=True, progress=False)


def test_a_run_records_its_models_defaults_and_an_older_cnf_keeps_softplus(tmp_path):
    """A fitted run's checkpoint records every builder default (tanh for a CNF now); one of an
    older clayflow recorded only the options given, and its CNF, built when softplus was the
    default, loads and resumes with softplus."""
    from clayflow.nn.odenet import ODENet

    def activations(flow) -> set[str]:
        return {type(m.activation).__name__ for m in flow.modules() if isinstance(m, ODENet)}

    run = tmp_path / "run"
    config = {"target": "banana", "model": "cnf", "steps": 2, "eval_every": 2, "eval_samples": 64, "batch_size": 32,
              "options": {"hidden": 8, "depth": 1, "solver": "rk4", "activation": "softplus"}}  # fmt: skip
    fit(config, run, progress=False)
    checkpoint = torch.load(run / "checkpoints/last.pt", weights_only=False)
    assert checkpoint["model_spec"]["options"]["t1"] == 1.0  # a default, recorded though not given
    del checkpoint["model_spec"]["options"]["activation"]  # as an older clayflow wrote it
    checkpoint["model_spec"]["options"] = {k: config["options"][k] for k in ("hidden", "depth", "solver")}
    torch.save(checkpoint, run / "checkpoints/last.pt")
    written = json.loads((run / "config.json").read_text())
    del written["options"]["activation"]
    (run / "config.json").write_text(json.dumps(written))
    assert activations(clayflow.load(run)) == {"Softplus"}
    fit({"steps": 4}, run, resume=True, progress=False)
    assert activations(clayflow.load(run)) == {"Softplus"}
    fresh = tmp_path / "fresh"
    fit({**config, "options": {k: v for k, v in config["options"].items() if k != "activation"}}, fresh, progress=False)
    assert activations(clayflow.load(fresh)) == {"Tanh"}


def test_heavy_tailed_weights_are_warned_about_and_the_run_is_kept(tmp_path, capsys):
    """After 5 steps the flow is still near its N(0, I) start, far from the mixture's ring at
    radius 4: a few draws carry all the weight, and the figures from them cannot be trusted."""
    run = tmp_path / "early"
    assert cli("fit", "--target", "gaussian_mixture", "--steps", 5, *SMALL, "--no-plots", "--out", run) == 0
    captured = capsys.readouterr()
    k = json.loads((run / "results.json").read_text())["pareto_k"]
    assert k > 0.7
    assert "clayflow: warning: the importance weights are heavy-tailed" in captured.err and "ESS" in captured.out


def test_too_few_draws_for_pareto_k_say_so_rather_than_call_the_tail_heavy(tmp_path, capsys):
    run = tmp_path / "few"
    small = [a for a in SMALL if a not in ("--eval-samples", "2000")]
    assert cli("fit", "--target", "banana", "--steps", 5, *small, "--eval-samples", 20, "--no-plots", "--out", run) == 0
    err = capsys.readouterr().err
    assert "Pareto k could not be estimated from 20 draws" in err and "heavy-tailed" not in err


def test_a_forced_replacement_that_fails_names_the_old_run_as_kept(tmp_path, capsys):
    """A ``--force`` replacement that diverges after its step-0 checkpoint is removed and the old
    run stays; the error says so (it offered to resume the new fit from a checkpoint that was
    gone, with a command that resumed the old run)."""
    run = tmp_path / "keep"
    assert cli("fit", "--target", "u2", "--steps", 2, *SMALL, "--no-plots", "--out", run) == 0
    config = (run / "config.json").read_text()
    capsys.readouterr()
    assert cli("fit", "--target", "u2", "--steps", 5, "--lr", 1e30, *SMALL, "--no-plots", "--out", run, "--force") == 1
    err = capsys.readouterr().err
    assert f"the run in {run} was not replaced" in err and "resume with" not in err, err
    assert (run / "config.json").read_text() == config


def test_draws_written_with_their_weights_are_scored_once_the_weights_are_left_out(fitted, capsys):
    folder, run = fitted
    draws = folder / "weighted.csv"
    assert cli("sample", run, "--weights", "--n", 20, "--out", draws) == 0
    capsys.readouterr()
    assert cli("score", run, "--data", draws, "--out", folder / "scores.csv") == 1
    err = capsys.readouterr().err
    assert "has 3 columns but the model was trained on 2 (log_weight holds sample --weights'" in err, err
    rows = np.loadtxt(draws, delimiter=",", skiprows=1)
    np.savetxt(folder / "draws.csv", rows[:, :2], delimiter=",", header="x1,x2", comments="")
    assert cli("score", run, "--data", folder / "draws.csv", "--out", folder / "scores.csv") == 0
