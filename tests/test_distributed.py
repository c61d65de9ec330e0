"""Training on 2 processes (torchrun, gloo on the CPU) is the same run as on 1: the global
batch is split, DistributedDataParallel averages the gradients, rank 0 alone writes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clayflow.cli.main import main

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
SMALL = ["--hidden", "16", "--layers", "2", "--batch-size", "64", "--no-plots", "--eval-every", "10"]


def on_two(*args) -> subprocess.CompletedProcess:
    """``clayflow train ARGS`` on 2 processes."""
    command = [*TORCHRUN, "-m", "clayflow", "train", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def largest_difference(a, b) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.parametrize("steps", [1, 20])
def test_two_processes_train_the_run_one_process_trains(tmp_path, steps):
    """One step, and 20, of 2 processes x 32 examples equal 1 process x 64, to float rounding."""
    two = on_two(*SMALL, "--steps", steps, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr
    assert main(["train", *SMALL, "--steps", str(steps), "--out", str(tmp_path / "one")]) == 0
    assert largest_difference(weights(tmp_path / "one"), weights(tmp_path / "two")) < 1e-6
    assert two.stdout.count("trained realnvp") == 1  # rank 0 alone prints
    assert two.stderr.count("training realnvp (") == 1 and "2 processes of cpu, 1 thread;" in two.stderr


def test_nproc_launches_torchrun_on_this_machine(tmp_path):
    """``--nproc 2`` runs torchrun; rank 0 alone writes (one TensorBoard events file too)."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "clayflow", "train", "--nproc", "2", *SMALL, "--steps", "3", "--tensorboard", "--out", run]
    launched = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=600, check=False)
    assert launched.returncode == 0, launched.stderr
    assert "2 processes of cpu" in launched.stderr and (run / "results.json").exists()
    assert len(list((run / "tensorboard").glob("events.*"))) == 1


def test_nproc_runs_the_command_it_was_given(monkeypatch, tmp_path):
    """From Python too (``main(argv)``, not ``sys.argv``): torchrun runs ``argv`` without ``--nproc``."""
    import clayflow.cli.main as cli

    launched = []

    def execv(path, command):  # replaces this process in earnest; here it only records
        launched.append(command)
        raise SystemExit(0)

    monkeypatch.setattr(cli.os, "execv", execv)
    with pytest.raises(SystemExit):
        main(["--debug", "train", "--nproc", "2", "--steps", "3", "--out", str(tmp_path / "run")])
    assert launched[0][-7:] == ["clayflow", "--debug", "train", "--steps", "3", "--out", str(tmp_path / "run")]
    assert "--nproc_per_node=2" in launched[0] and not (tmp_path / "run").exists()


def test_a_cnf_with_exact_trace_and_fixed_steps_trains_the_same_on_two(tmp_path):
    cnf = ["--model", "cnf", "--solver", "rk4", "--step-size", "0.25", "--trace", "exact", "--steps", "3"]
    two = on_two(*SMALL[:2], *SMALL[4:], *cnf, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr
    assert main(["train", *SMALL[:2], *SMALL[4:], *cnf, "--out", str(tmp_path / "one")]) == 0
    assert largest_difference(weights(tmp_path / "one"), weights(tmp_path / "two")) < 1e-6


def test_a_two_process_run_resumes_on_two_or_on_one(tmp_path):
    """10 steps on 2 processes, then 10 more on 2 (or on 1), end where 20 steps on 2 do; the
    checkpoint loads in one process."""
    constant = [*SMALL, "--schedule", "constant", "--warmup", "0"]
    assert on_two(*constant, "--steps", 20, "--out", tmp_path / "straight").returncode == 0
    for resumed_on in ("two", "one"):
        run = tmp_path / resumed_on
        first = on_two(*constant, "--steps", 10, "--out", run)
        assert first.returncode == 0, first.stderr
        if resumed_on == "two":
            second = on_two("--resume", run, "--steps", 20, "--no-plots")
            assert second.returncode == 0, second.stderr
        else:
            assert main(["train", "--resume", str(run), "--steps", "20", "--no-plots"]) == 0
        assert largest_difference(weights(tmp_path / "straight"), weights(run)) < 1e-6, resumed_on
    import clayflow

    assert clayflow.load(tmp_path / "two").log_prob(torch.zeros(3, 2)).shape == (3,)


def stopped_on_two(step: int, action: str, *args, rank: str | None = None) -> subprocess.CompletedProcess:
    """``clayflow train ARGS`` on 2 processes, stopped by ``action`` (a signal) right after
    optimisation step ``step``, in every process or in rank ``rank`` only (tests/interrupt.py)."""
    env = {**os.environ, **({"INTERRUPT_RANK": rank} if rank is not None else {})}
    command = [*TORCHRUN, str(Path(__file__).parent / "interrupt.py"), str(step), "step", action, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)


@pytest.mark.parametrize(("action", "rank"), [("SIGTERM", None), ("SIGKILL", "1")])
def test_a_stopped_or_killed_two_process_run_resumes_exactly(tmp_path, action, rank):
    """SIGTERM to the job (both processes) saves the step reached and says how to resume, as
    Ctrl-C does; a process killed outright takes the job down with one line from rank 0 (no
    hang), and the run resumes from its last checkpoint; both end where an uninterrupted run ends."""
    options = [*SMALL, "--steps", "30", "--checkpoint-every", "10"]
    assert on_two(*options, "--out", tmp_path / "straight").returncode == 0
    run = tmp_path / "run"
    stopped = stopped_on_two(15, action, *options, "--out", run, rank=rank)
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("clayflow: error:")]
    assert stopped.returncode != 0 and len(errors) == 1, stopped.stderr
    if action == "SIGTERM":
        assert errors[0] == f"clayflow: error: interrupted by SIGTERM at step 15; checkpoint saved. Continue with: clayflow train --resume {run}"
    else:
        assert errors[0].startswith("clayflow: error: another process of this run failed at step 15 (")
        assert errors[0].endswith(f"kept the last good checkpoint (step 10). See that process's error, then continue with: clayflow train --resume {run}")
    resumed = on_two("--resume", run, "--no-plots")
    assert resumed.returncode == 0, resumed.stderr
    assert largest_difference(weights(tmp_path / "straight"), weights(run)) < 1e-6


def test_what_would_depend_on_the_number_of_processes_is_refused(tmp_path):
    """One line from rank 0 each (torchrun then reports the failed processes, exit 1)."""
    odd = on_two(*SMALL[:4], "--batch-size", "63", "--steps", "2", "--out", tmp_path / "odd")
    line = "clayflow: error: --batch-size 63 is the global batch, split over 2 processes; give a multiple of 2\n"
    assert odd.returncode != 0 and odd.stderr.count(line) == 1
    norm = on_two(*SMALL, "--batch-norm", "--steps", "2", "--out", tmp_path / "norm")
    assert norm.returncode != 0 and norm.stderr.count("clayflow: error: --batch-norm keeps statistics per process") == 1
    assert not (tmp_path / "odd").exists() and not (tmp_path / "norm").exists()
