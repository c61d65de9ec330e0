"""Training on 2 processes (torchrun, gloo on the CPU) is the same run as on 1: the global
batch is split, DistributedDataParallel averages the gradients, rank 0 alone writes."""

import csv
import json
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


def same_run(one: Path, two: Path, tolerance: float = 1e-6, nll_tolerance: float = 1e-4) -> None:
    """Runs ``one`` and ``two`` hold the same weights, and the same validation and test NLL
    (evaluated on 1 process, and shared out over 2)."""
    assert largest_difference(weights(one), weights(two)) < tolerance
    val = [[float(row["val_nll"]) for row in csv.DictReader((run / "metrics.csv").open())] for run in (one, two)]
    assert len(val[0]) == len(val[1]) > 1 and max(abs(a - b) for a, b in zip(*val)) < nll_tolerance
    results = [json.loads((run / "results.json").read_text()) for run in (one, two)]
    assert abs(results[0]["test_nll"] - results[1]["test_nll"]) < nll_tolerance


@pytest.mark.parametrize("options", [["--steps", "1"], ["--steps", "20", "--dropout", "0.2", "--input-noise", "0.05"]])
def test_two_processes_train_the_run_one_process_trains(tmp_path, options):
    """One step, and 20 (with dropout and input noise, drawn per example of the global
    batch), of 2 processes x 32 examples equal 1 process x 64, to float rounding."""
    two = on_two(*SMALL, *options, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr
    assert main(["train", *SMALL, *options, "--out", str(tmp_path / "one")]) == 0
    same_run(tmp_path / "one", tmp_path / "two")
    assert two.stdout.count("trained nsf") == 1  # rank 0 alone prints (nsf: the default on moons' 50,000 rows)
    assert two.stderr.count("training nsf (") == 1 and "2 processes of cpu, 1 thread;" in two.stderr


@pytest.mark.parametrize(
    "model", [["glow", "--layers", "2"], ["realnvp", "--depth", "1"], ["realnvp", "--depth", "1", "--precision", "bf16"]]
)
def test_image_models_train_the_same_on_two(tmp_path, model):
    """Glow and RealNVP on 8x8 digits: ActNorm initialises on the same rows in both processes,
    the conditioners' batch norm (RealNVP) uses the global batch's statistics (in float32 also
    under bf16 autocast), and the dequantization noise of an image is the one it gets on one
    process."""
    images = ["--model", *model, "--data", "digits", "--hidden", "8", "--scales", "2",
              "--batch-size", "32", "--steps", "10", "--eval-every", "5", "--no-plots"]  # fmt: skip
    two = on_two(*images, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr
    assert main(["train", *images, "--out", str(tmp_path / "one")]) == 0
    # bf16 convolutions of a batch of 16 and of 32 round differently (measured: weights 7e-4
    # apart, and validation NLLs of about 236 nats 1.2e-4 apart in one CI run)
    bf16 = "bf16" in model
    same_run(tmp_path / "one", tmp_path / "two", tolerance=1e-2 if bf16 else 1e-5, nll_tolerance=1e-2 if bf16 else 1e-4)


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


BATCH_STATISTICS = """
import copy, torch, torch.distributed as dist
from clayflow.core import batch
from clayflow.nn.resnet import BatchNorm2d
from clayflow.transforms import BatchNorm

dist.init_process_group("gloo")
rows = slice(4 * dist.get_rank(), 4 * dist.get_rank() + 4)
torch.manual_seed(0)
for layer, shape in ((BatchNorm(3), (8, 3)), (BatchNorm(2), (8, 2, 3, 3)), (BatchNorm2d(2), (8, 2, 3, 3))):
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    x = torch.randn(shape) * 2 + 1

    def loss(module, part):
        out = module(x[part])
        z, logdet = out if isinstance(out, tuple) else (out, torch.zeros(()))
        return (z.pow(3).sum() + logdet.sum()) / len(x)

    whole, split = copy.deepcopy(layer), copy.deepcopy(layer)
    loss(whole, slice(None)).backward()
    with batch.part(rows, len(x)):
        loss(split, rows).backward()
    for p, q in zip(whole.parameters(), split.parameters()):
        dist.all_reduce(q.grad)  # as DistributedDataParallel does (it averages the mean losses' grads)
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-6), (type(layer).__name__, p.grad, q.grad)
    for a, b in zip(whole.buffers(), split.buffers()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-6, atol=1e-7), (type(layer).__name__, a, b)
print("same", dist.get_rank())
"""


def test_batch_norm_on_two_processes_uses_the_global_batch(tmp_path):
    """Batch-norm flow layers and the conditioners' batch norm, each process with half the
    batch: the gradients (summed, as DDP's average of the processes' mean losses) and the
    running statistics are those of the whole batch on one process. (Compared by gradients:
    Adam turns the float rounding of parameters whose gradient is zero in exact arithmetic,
    such as a shift before a batch norm, into steps of size lr.)"""
    script = tmp_path / "statistics.py"
    script.write_text(BATCH_STATISTICS)
    done = subprocess.run([*TORCHRUN, str(script)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0 and done.stdout.count("same") == 2, done.stderr


def test_a_cnf_with_fixed_steps_trains_the_same_on_two(tmp_path):
    """FFJORD with Hutchinson's estimator: each example's probe is the one it gets on one
    process. (An adaptive solver's steps depend on the whole batch, so only fixed steps match.)"""
    cnf = ["--model", "cnf", "--solver", "rk4", "--step-size", "0.25", "--steps", "3", "--eval-every", "3"]
    two = on_two(*SMALL[:2], *SMALL[4:6], *cnf, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr
    assert main(["train", *SMALL[:2], *SMALL[4:6], *cnf, "--out", str(tmp_path / "one")]) == 0
    assert largest_difference(weights(tmp_path / "one"), weights(tmp_path / "two")) < 1e-6


def test_processes_whose_weights_drift_apart_are_caught(tmp_path):
    """The end-of-run check: rank 1's weights moved by 1e-3 after step 5 fail the run."""
    drifted = stopped_on_two(5, "perturb", *SMALL, "--steps", "10", "--out", tmp_path / "run", rank="1")
    errors = [line for line in drifted.stderr.splitlines() if line.startswith("clayflow: error:")]
    assert drifted.returncode != 0 and len(errors) == 1, drifted.stderr
    assert errors[0].startswith("clayflow: error: the weights of the 2 processes differ at the end of training")


FIT_ON_TWO = """
import os, sys, torch, clayflow
torch.manual_seed(int(os.environ.get("RANK", "0")) if os.environ.get("DIFFERENT_DATA") else 0)
x = torch.randn(512, 3) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.5]])
flow = clayflow.models.realnvp(3, hidden=16, layers=2)
result = clayflow.fit(flow, x[:384], val=x[384:448], test=x[448:], steps=15, batch_size=64, progress=False,
                      out=sys.argv[1] if len(sys.argv) > 1 else None)
torch.save({"model": flow.state_dict(), "test_nll": result.test_nll}, sys.argv[2 if len(sys.argv) > 2 else 1] + ".pt")
clayflow.fit(clayflow.models.realnvp(3, hidden=8, layers=2), x[:384], steps=2, batch_size=64, progress=False)  # again
"""


def test_fit_under_torchrun_trains_what_it_trains_on_one(tmp_path):
    """``clayflow.fit`` in a script that torchrun starts: every process returns the trained
    flow and the test NLL, equal to one process's."""
    script = tmp_path / "fit.py"
    script.write_text(FIT_ON_TWO)
    two = subprocess.run([*TORCHRUN, str(script), str(tmp_path / "run"), str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert two.returncode == 0, two.stderr
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], capture_output=True, text=True,
                         timeout=600, check=False)  # fmt: skip
    assert one.returncode == 0, one.stderr
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert largest_difference(a["model"], b["model"]) < 1e-6 and abs(a["test_nll"] - b["test_nll"]) < 1e-6
    different = subprocess.run([*TORCHRUN, str(script), str(tmp_path / "different")], capture_output=True, text=True,
                               timeout=600, check=False, env={**os.environ, "DIFFERENT_DATA": "1"})  # fmt: skip
    assert different.returncode != 0 and "clayflow.errors.UsageError: the 2 processes were given different data" in different.stderr


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
    """One line from rank 0 (torchrun then reports the failed processes, exit 1)."""
    odd = on_two(*SMALL[:4], "--batch-size", "63", "--steps", "2", "--out", tmp_path / "odd")
    line = "clayflow: error: --batch-size 63 is the global batch, split over 2 processes; give a multiple of 2\n"
    assert odd.returncode != 0 and odd.stderr.count(line) == 1
    assert not (tmp_path / "odd").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("the user's")
    taken = on_two(*SMALL, "--steps", "2", "--out", tmp_path / "taken")  # rank 0 refuses; rank 1 stops with it
    assert taken.returncode != 0 and taken.stderr.count("clayflow: error: ") == 1, taken.stderr
    assert "is not empty" in taken.stderr and os.listdir(tmp_path / "taken") == ["notes.txt"]
    large = on_two("--data", "wine", "--batch-size", "256", "--steps", "2", "--out", tmp_path / "large")
    assert large.returncode != 0 and "clayflow: error: --batch-size 256 is more than the 142 training rows" in large.stderr
