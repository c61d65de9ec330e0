"""Workload 5, time to quality: how long clayflow's default command takes to reach the best
peer's test NLL on a 2D toy, against the fastest peer.

For each toy and seed:

* every peer trains as in the quality workload (``quality.fit``: 3000 steps of batch 512,
  Adam 1e-3, one shared stream of batches) with its test NLL taken every ``CURVE_EVERY``
  steps, the clock stopped while it is evaluated;
* the target is the best peer's test NLL after those 3000 steps (the lowest of the peers on
  that seed);
* clayflow trains as ``clayflow train --data TOY --seed SEED`` does, through the command's
  own code (``start_training`` with the command's setup: its 50,000-row training split,
  defaults, thread choice, schedule, early stopping, checkpoints), except that its validation
  split is the shared test set, so the NLL it logs once per epoch is that test NLL; the
  seconds are its own ``elapsed_s``: its training steps and periodic checkpoints, without
  the evaluations, the best-weights saves that follow them, and the fitted start before
  step 0 (the peers have no such work);
* a contender's time to the target is where its curve first reaches it, linear between two
  evaluations; ``nan`` if it never does.

The ratio is clayflow's time over the fastest peer's (the issue's target: <= 0.5 on every toy,
the median of the seeds).
"""

from __future__ import annotations

import math
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from quality import CurvePoint

from clayflow.train.config import TrainConfig
from clayflow.train.run import read_metrics
from clayflow.train.signals import StopRequest
from clayflow.train.start import setup_from_config, start_training

CURVE_EVERY = 100  # peers' steps between evaluations (clayflow's default command: one epoch, 97 steps)
DEFAULT_COMMAND = "clayflow (default command)"


@dataclass
class TimeToQuality:
    """Seconds each contender needed to reach ``target`` on one toy and seed."""

    contender: str
    toy: str
    seed: int
    target: float
    seconds: float
    steps: float


def default_command_curve(toy: str, seed: int, test: torch.Tensor, steps: int | None = None) -> list[CurvePoint]:
    """The learning curve of ``clayflow train --data TOY --seed SEED`` (``--steps`` if given:
    smoke tests), validated on ``test``."""

    def setup(config: TrainConfig, checkpoint: dict | None, new_run: bool):
        config, data, flow, spec = setup_from_config(config, checkpoint, new_run)
        return config, replace(data, val=test), flow, spec

    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        config = TrainConfig(data=toy, seed=seed, **({"steps": steps} if steps else {}))
        start_training(config, run, False, False, False, StopRequest(), setup=setup)
        rows = read_metrics(run / "metrics.csv")
    return [
        CurvePoint(DEFAULT_COMMAND, toy, seed, int(row["step"]), float(row["elapsed_s"]), float(row["val_nll"]))
        for row in rows
        if row["val_nll"] and int(row["step"]) > 0
    ]


def first_reach(curve: list[CurvePoint], target: float) -> tuple[float, float]:
    """``(seconds, steps)`` where ``curve`` first reaches ``target``, linear between points."""
    previous = (0.0, 0.0, math.inf)
    for point in curve:
        if point.test_nll <= target:
            seconds, steps, nll = previous
            share = (nll - target) / (nll - point.test_nll) if math.isfinite(nll) else 1.0  # none before: here
            return seconds + share * (point.seconds - seconds), steps + share * (point.step - steps)
        previous = (point.seconds, point.step, point.test_nll)
    return math.nan, math.nan


def times(curves: list[CurvePoint], peers: tuple[str, ...]) -> list[TimeToQuality]:
    """Each contender's time to the best peer's final NLL, per toy and seed."""
    rows = []
    for toy, seed in sorted({(p.toy, p.seed) for p in curves}):
        by_name: dict[str, list[CurvePoint]] = {}
        for point in curves:
            if (point.toy, point.seed) == (toy, seed):
                by_name.setdefault(point.contender, []).append(point)
        finals = [max(by_name[name], key=lambda p: p.step).test_nll for name in peers if name in by_name]
        target = min(nll for nll in finals if math.isfinite(nll))
        for name, curve in by_name.items():
            seconds, steps = first_reach(sorted(curve, key=lambda p: p.step), target)
            rows.append(TimeToQuality(name, toy, seed, target, seconds, steps))
    return rows


def run_default_command(
    toys: list[str], seeds: int, tests: Callable[[str, int], torch.Tensor], log: Callable[[str], None] = print,
    steps: int | None = None,
) -> list[CurvePoint]:  # fmt: skip
    """clayflow's default command's curves on every toy and seed; ``tests(toy, seed)`` is the
    shared test set; ``steps`` replaces the command's default (smoke tests only)."""
    curves = []
    for toy in toys:
        for seed in range(seeds):
            curve = default_command_curve(toy, seed, tests(toy, seed), steps)
            curves += curve
            log(f"time to quality {toy} seed {seed} clayflow default: test NLL {curve[-1].test_nll:.4f} "
                f"at step {curve[-1].step} ({curve[-1].seconds:.0f} s)")  # fmt: skip
    return curves



def table(rows: list[dict], peers: tuple[str, ...], target_ratio: float = 0.5) -> list[str]:
    """The report's section, from the rows of ``curves.csv``."""
    curves = [CurvePoint(r["contender"], r["toy"], int(r["seed"]), int(r["step"]), float(r["seconds"]),
                         float(r["test_nll"])) for r in rows]  # fmt: skip
    found = times(curves, peers)
    toys = list(dict.fromkeys(row.toy for row in found))
    names = [DEFAULT_COMMAND, *(name for name in peers if any(row.contender == name for row in found))]
    every = min(point.step for point in curves if point.contender in peers)
    lines = [
        "\n## Time to quality: seconds to reach the best peer's final test NLL\n",
        (f"Per seed the target is the lowest peer NLL at the end of the quality workload; a contender's time is "
        f"where its learning curve first reaches it (peers evaluated every {every} steps, clayflow's default "
        "command once per epoch, linear in between; evaluations excluded). Median over seeds [min-max]; "
        "never: not reached. Ratio: clayflow's time over the fastest peer's on the same seed, median over seeds.\n"),
        "| toy | target NLL (median) | " + " | ".join(names) + f" | ratio | met (<= {target_ratio}) |",
        "|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for toy in toys:
        seconds = {(row.contender, row.seed): _never_is_inf(row.seconds) for row in found if row.toy == toy}
        seeds = sorted({seed for _, seed in seconds})
        ratios = [seconds[DEFAULT_COMMAND, seed] / min(seconds[name, seed] for name in peers if (name, seed) in seconds)
                  for seed in seeds]  # fmt: skip
        entries = []
        for name in names:
            values = [seconds[name, seed] for seed in seeds if (name, seed) in seconds]
            entries.append(f"{_shown(statistics.median(values))} [{_shown(min(values))}-{_shown(max(values))}]")
        ratio = statistics.median(ratios)
        target = statistics.median(row.target for row in found if row.toy == toy and row.contender == DEFAULT_COMMAND)
        lines.append(f"| {toy} | {target:.4f} | " + " | ".join(entries)
                     + f" | {ratio:.2f} | {'yes' if ratio <= target_ratio else '**no**'} |")  # fmt: skip
    return lines


def _never_is_inf(seconds: float) -> float:
    return math.inf if math.isnan(seconds) else seconds


def _shown(seconds: float) -> str:
    return "never" if math.isinf(seconds) else f"{seconds:.1f}"
