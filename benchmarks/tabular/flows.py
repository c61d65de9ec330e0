"""clayflow's default command for each vector model, run as a user runs it:

    python -m clayflow train --data DATA --model M --seed S --no-plots --no-progress --out RUN

No tuning flags (``--steps N`` only where the benchmark's own ``--steps``/``--quick`` asks for
a smoke run, which the report then says). The score is ``-results.json["test_nll"]``: the
mean test log-likelihood per row over clayflow's own test rows, in data units (discrete
columns dequantized by clayflow itself, one noise draw per row from a fixed seed).

A run directory with ``results.json`` is never rerun, only read; one with a checkpoint but
no results (a stopped run) is continued with ``clayflow train --resume RUN``; any other
leftover directory is removed and the run started afresh. clayflow's output goes to
``RUN.log`` beside the run, and a hash of clayflow's sources at its start to ``RUN.src``
(both parts' for a resumed run); its metrics.csv is copied to the results folder.
The coupling flows are reloaded with ``clayflow.load`` and their test NLL recomputed here on
the benchmark's test rows, with clayflow's own evaluation, as a check of rows and units.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from .datasets import Rows
from .records import REPO, Fit, source_hash

FLOWS = ("realnvp", "nice", "glow", "maf", "nsf", "cnf")
SIGNAL_EXITS = (129, 130, 143)  # clayflow stopped by SIGHUP, SIGINT or SIGTERM: stop the benchmark


def run_tag(dataset: str, model: str, seed: int, steps: int | None) -> str:
    return f"{dataset}-{model}-s{seed}" + (f"-steps{steps}" if steps else "")


def train_command(spec: str, model: str, seed: int | str, run: Path, steps: int | None) -> list[str]:
    """clayflow's default training command (``--steps`` only for smoke runs)."""
    args = ["train", "--data", spec, "--model", model, "--seed", str(seed)]
    args += ["--no-plots", "--no-progress", "--out", str(run)]
    return args + (["--steps", str(steps)] if steps else [])


def fit_flow(rows: Rows, model: str, seed: int, steps: int | None, work: Path, folder: Path) -> Fit:
    """Train (or continue, or read) one clayflow run and return its test log-likelihood."""
    tag = run_tag(rows.name, model, seed, steps)
    run, sources = work / tag, work / f"{tag}.src"
    how = ""
    if (run / "results.json").exists():
        args, how = None, "read from an earlier run"
    elif (run / "checkpoints" / "last.pt").exists():
        args, how = ["train", "--resume", str(run), "--no-plots", "--no-progress"], "resumed"
    else:
        if run.exists():
            shutil.rmtree(run)  # ours (under --work) and never checkpointed
        args = train_command(rows.spec, model, seed, run, steps)
    if args is not None:
        # The hash of clayflow's sources each part of the run trained with, "a,b" if resumed with other sources.
        seen = sources.read_text().split(",") if how == "resumed" and sources.exists() else []
        sources.write_text(",".join(dict.fromkeys([*seen, source_hash()])))
        failure = _run_clayflow(args, work / f"{tag}.log")
        if failure:
            return Fit(
                status="failed",
                detail=failure,
                extra={"clayflow_src": sources.read_text(), "run_dir": _shown(run)},
            )
    results = json.loads((run / "results.json").read_text())
    metrics = folder / "metrics" / f"{tag}.csv"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "metrics.csv", metrics)
    check, test_rows = "", None
    if model != "cnf":  # a CNF's exact-trace ODE solves over the test rows are too slow to repeat
        test_rows = reloaded_test_rows(run, rows)
        check = f"reload {abs(-sum(test_rows) / len(test_rows) - results['test_nll']):.1e}"
    val_nll = results.get("val_nll")
    return Fit(
        test_ll=-results["test_nll"],
        test_rows=test_rows,
        val_ll=-val_nll if val_nll is not None else math.nan,
        choice=f"step {results['selected_step']}/{results['steps']}",
        detail=how,
        check=check,
        extra={
            **({"wall_s": ""} if args is None else {}),  # not measured: the run was only read
            "train_s": results["train_seconds"],
            "selected_step": results["selected_step"],
            "steps": results["steps"],
            "clayflow_src": sources.read_text() if sources.exists() else "unknown",
            "run_dir": _shown(run),
            "metrics_csv": _shown(metrics),
        },
    )


def _run_clayflow(args: list[str], logfile: Path) -> str:
    """Run ``python -m clayflow ARGS`` with its output in ``logfile``; "" or why it failed."""
    with logfile.open("a") as out:
        out.write(f"$ python -m clayflow {shlex.join(args)}\n")
        out.flush()
        code = subprocess.run(
            [sys.executable, "-m", "clayflow", *args], stdout=out, stderr=subprocess.STDOUT, check=False
        ).returncode
    if code in SIGNAL_EXITS:
        raise KeyboardInterrupt(f"clayflow stopped by a signal (exit {code}); rerun to resume")
    if code == 0:
        return ""
    lines = [line for line in logfile.read_text().splitlines() if line.strip()]
    return f"exit {code}: {lines[-1] if lines else ''}"[:300]


def reloaded_test_rows(run: Path, rows: Rows) -> list[float]:
    """The run's best model, reloaded, scored by clayflow's evaluation on each of the benchmark's
    test rows (float64 ``(N,)`` log-likelihoods, the same noise as clayflow's own test NLL)."""
    import torch

    import clayflow
    from clayflow.train.evaluate import evaluate_log_probs

    return evaluate_log_probs(clayflow.load(run), torch.from_numpy(rows.test)).double().tolist()


def _shown(path: Path) -> str:
    """``path`` relative to the repository where it is inside it (for the CSV)."""
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)
