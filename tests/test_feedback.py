"""What a run tells its user: the start line, progress on a time basis with rate and ETA, the
warnings when a run looks wrong, threads, grouped help, and TensorBoard events."""

import contextlib
import csv
import io
import itertools
from dataclasses import fields

import pytest
import torch

from clayflow.cli.main import TRAIN_GROUPS, main
from clayflow.train import report
from clayflow.train.config import TrainConfig
from test_cli import FAST, run_cli


@pytest.fixture(scope="module")
def wine_run(tmp_path_factory):
    """A short wine run (178 rows, 13 columns) and what it printed on stderr."""
    run = tmp_path_factory.mktemp("wine") / "run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["train", "--data", "wine", *FAST, "--out", str(run)]) == 0
    return run, err.getvalue()


def test_start_line_and_piped_log_name_what_trains(wine_run):
    run, err = wine_run
    start = next(line for line in err.splitlines() if line.startswith("training "))
    assert start.startswith("training realnvp (")
    assert " parameters) on wine: 142/18/18 rows (train/val/test) of 13 columns; cpu, 1 thread; 30 steps of batch 64; run directory " in start
    assert start.endswith(str(run))
    last = next(line for line in err.splitlines() if line.startswith("step 30/30"))
    assert "steps/s)" in last or "s/step)" in last
    assert "nfe" not in err  # no empty nfe field on a coupling model


def test_table_plots_compare_every_row_of_every_split(wine_run, capsys, monkeypatch):
    import clayflow.plotting

    drawn = {}

    def plot_run(run_dir, flow, rows, columns, levels, **options):
        drawn.update(rows=len(rows), **options)
        return []

    monkeypatch.setattr(clayflow.plotting, "plot_run", plot_run)
    run, _ = wine_run
    assert run_cli(capsys, "plot", run)[0] == 0
    assert drawn["rows"] == 178 and drawn["data_label"] == "rows (all splits)"


def test_plot_draws_the_columns_asked_for_by_name_or_number(wine_run, capsys):
    run, _ = wine_run
    code, out, err = run_cli(capsys, "plot", run, "--columns", "proline,1")
    assert code == 0 and "marginals.png" in out, err
    code, _, err = run_cli(capsys, "plot", run, "--columns", "proline,14")
    assert code == 2 and err.startswith("clayflow: error: --columns: no column '14' (give column names or numbers 1-13")


def test_progress_lines_come_on_a_time_basis_with_rate_and_time_left(monkeypatch, capsys):
    """A slow run (an image model at seconds per step) prints a line at least every
    LOG_SECONDS, between evaluations too, with s/step and the time left. The clock is faked:
    each call of perf_counter advances it 7 seconds."""
    clock = itertools.count(0, 7.0)
    monkeypatch.setattr(report.time, "perf_counter", lambda: float(next(clock)))
    progress = report.Progress(total=100, initial=0, bar=False, eval_every=50)
    for step in range(1, 11):
        progress.stepped(step, loss=3.0)
    err = capsys.readouterr().err.splitlines()
    assert 2 <= len(err) <= 4 and all(line.startswith("step ") and "batch loss" in line for line in err)
    assert "s/step, " in err[0] and "left)" in err[0]
    for _ in range(5):  # 35 seconds pass
        report.time.perf_counter()
    progress.stepped(11, loss=3.0, evaluating=True)  # the evaluation's line comes instead
    progress.evaluated(11, "step 11/100  train loss 3.0000  val nll 2.9000", {})
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("step 11/100  train loss 3.0000  val nll 2.9000  (") and "left)" in err[0]
    assert report.rate(0.25) == "4.0 s/step" and report.rate(880.4) == "880 steps/s" and report.rate(2.44) == "2.4 steps/s"
    assert report.duration(3725) == "1h02m" and report.duration(185) == "3m05s" and report.duration(42) == "42s"


def test_overfitting_beyond_the_noise_and_a_model_that_did_not_move_are_said_once():
    """Overfitting is said when validation has stayed worse than at the best step, beyond the
    noise of the paired per-example difference (18 validation rows: 0.2 nats is luck), for 3
    evaluations, while the training loss fell; a validation NLL that never left the start's
    in 500 steps is said too."""
    rows = torch.linspace(-4, -2, 18, dtype=torch.float64)  # per-example log-likelihoods at the best step
    wobble = 0.6 * torch.tensor([1.0, -1.0] * 9, dtype=torch.float64)
    watch = report.Watch()
    assert watch.evaluated(0, 5.0, rows - 1, 0, 10, 0) is None
    assert watch.evaluated(10, 3.0, rows, 10, 10, 0) is None  # the best
    assert watch.evaluated(20, 2.0, rows - 0.2 + wobble, 10, 10, 0) is None  # 0.2 worse, within the noise
    assert watch.evaluated(30, 2.0, rows - 0.4, 10, 10, 0) is None  # 0.4 worse on every row: once
    assert watch.evaluated(40, 2.0, rows - 0.4, 10, 10, 0) is None  # twice
    line = watch.evaluated(50, 2.0, rows - 0.4, 10, 10, 0)  # three evaluations in a row
    assert line.startswith("warning: validation NLL 3.4000 has stayed above its best 3.0000 (step 10) beyond its noise since step 30")
    assert "--patience" in line
    assert watch.evaluated(60, 1.0, rows - 3, 10, 10, 0) is None  # said once
    dipping = report.Watch()
    dipping.evaluated(10, 3.0, rows, 10, 10, 0)
    for step, worse in ((20, 0.4), (30, 0.4), (40, 0.0), (50, 0.4), (60, 0.4)):
        assert dipping.evaluated(step, 2.0, rows - worse, 10, 10, 0) is None  # a dip starts the count again
    assert dipping.evaluated(70, 2.0, rows - 0.4, 10, 10, 0) is not None
    rising_train = report.Watch()
    rising_train.evaluated(10, 3.0, rows, 10, 10, 0)
    assert all(rising_train.evaluated(s, 3.5, rows - 0.4, 10, 10, 0) is None for s in range(20, 100, 10))
    assert report.Watch().evaluated(600, 1.0, rows, 10, 10, 0) is None  # resumed: no step 0 seen
    still = report.Watch()
    still.evaluated(0, 4.0, rows, 0, 100, 0)
    assert still.evaluated(400, 4.0, rows, 0, 100, 0) is None
    assert "has stayed at the untrained flow's" in still.evaluated(500, 4.0, rows, 0, 100, 0)
    back = report.Watch()  # moved, then came back near the start: not "not moved"
    back.evaluated(0, 4.0, rows, 0, 100, 0)
    back.evaluated(200, 4.0, rows + 0.5, 200, 100, 0)
    assert back.evaluated(500, 4.0, rows, 200, 100, 0) is None


def test_resuming_a_finished_run_says_there_is_nothing_to_train(good_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--resume", good_run, "--no-plots")
    assert code == 0 and "already reached step 30 of --steps 30: nothing to train" in err
    stopped = tmp_path / "stopped"  # stopped early: validation every step, patience of 1
    argv = ["--data", "wine", *FAST, "--steps", "200", "--eval-every", "1", "--patience", "1", "--out", stopped]
    code, _, err = run_cli(capsys, "train", *argv)
    assert code == 0 and "stopped early" in err, err
    code, _, err = run_cli(capsys, "train", "--resume", stopped, "--no-plots")
    assert code == 0 and "the run stopped early at step" in err and "nothing to train (give a larger --patience" in err


def test_threads_default_to_one_for_small_vector_models_and_are_restored(tmp_path, capsys):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, _, err = run_cli(capsys, "train", *FAST, "--threads", "2", "--out", tmp_path / "two")
        assert code == 0 and "cpu, 2 threads;" in err and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    from clayflow import models
    from clayflow.data import load_dataset

    assert report.auto_threads(models.realnvp(2), load_dataset("moons"), 512) == 1
    images = load_dataset("digits")
    assert report.auto_threads(models.realnvp_image((1, 8, 8), 17), images, 64) is None


def test_train_help_is_grouped_and_lists_models_and_data(capsys):
    assert {name for names in TRAIN_GROUPS.values() for name in names} == {f.name for f in fields(TrainConfig)}
    _, out, _ = run_cli(capsys, "train", "--help")
    flat = " ".join(out.split())
    for title in TRAIN_GROUPS:
        assert f"\n{title}:\n" in out
    assert "realnvp, nice, glow, cnf" in flat and "moons swissroll" in flat and "checkerboard" in flat
    assert len(out.splitlines()[0]) < 100  # a usage line, not 30


def test_tensorboard_events_hold_the_metrics_and_the_plots(tmp_path, capsys):
    pytest.importorskip("tensorboard")  # the [test] extra installs it; a bare install has no --tensorboard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    argv = [a for a in FAST if a != "--no-plots"]
    code, _, err = run_cli(capsys, "train", *argv, "--tensorboard", "--out", run)
    assert code == 0, err
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    logged = {e.step: e.value for e in events.Scalars("nll/val")}
    assert logged == pytest.approx({int(r["step"]): float(r["val_nll"]) for r in rows})
    assert {"plots/samples", "plots/density"} <= set(events.Tags()["images"])


def test_tensorboard_without_the_package_is_one_line(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    code, _, err = run_cli(capsys, "train", *FAST, "--tensorboard", "--out", tmp_path / "run")
    assert code == 2 and err == "clayflow: error: --tensorboard needs the tensorboard package: pip install tensorboard\n"
    assert not (tmp_path / "run").exists()
