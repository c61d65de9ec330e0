r"""``fit_target``: train a flow by reverse KL towards an unnormalised target, from Python.

>>> import torch
>>> from clayflow import models
>>> from clayflow.variational import fit_target, load_target
>>> torch.manual_seed(0) and None
>>> result = fit_target(models.realnvp(2, layers=2, hidden=16), load_target("banana"), steps=20,
...                     eval_every=10, eval_samples=512)
>>> [row["step"] for row in result.history]
[0, 10, 20]
>>> sorted(result.history[-1])
['beta', 'elbo', 'ess', 'log_z', 'log_z_se', 'loss', 'pareto_k', 'seconds', 'step']
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from clayflow.core import Flow
from clayflow.errors import ClayflowError
from clayflow.train.schedule import make_optimizer, make_scheduler
from clayflow.variational.objective import anneal, draw_weights, reverse_kl
from clayflow.variational.targets import Target
from clayflow.variational.weights import ImportanceWeights

MAX_SKIPS_IN_A_ROW = 10


@dataclass
class VariationalResult:
    """The trained ``flow``; ``history``: one row per evaluation (step, mean loss since the last
    row, β, and the ``ImportanceWeights.summary`` of ``eval_samples`` fresh draws); ``weights``:
    the final evaluation's; ``seconds``: training time without the evaluations."""

    flow: Flow
    history: list[dict[str, float]] = field(default_factory=list)
    weights: ImportanceWeights | None = None
    seconds: float = 0.0


def fit_target(
    flow: Flow,
    target: Target,
    *,
    steps: int = 5000,
    batch_size: int = 512,
    lr: float = 1e-3,
    schedule: str = "cosine",
    warmup: int = 0,
    anneal_steps: int = 0,
    clip: float = 10.0,
    eval_every: int = 500,
    eval_samples: int = 8192,
    target_samples: Tensor | None = None,
    forward_weight: float = 0.0,
    max_seconds: float | None = None,
    callback: Callable[[dict[str, float]], None] | None = None,
) -> VariationalResult:
    """Minimise the reverse KL of ``flow`` to ``target`` (``objective.reverse_kl``) with Adam
    for ``steps`` steps of ``batch_size`` draws; β anneals from 0.01 to 1 over the first
    ``anneal_steps``. Every ``eval_every`` steps (and at 0 and the end) ``eval_samples`` fresh
    draws give ESS, log Ẑ, its standard error, the ELBO and Pareto k̂; ``callback`` gets each
    row. ``max_seconds``: stop (and evaluate) once training has taken that long, evaluations
    not counted, for comparisons at equal wall-clock. A step whose loss or gradient is not finite is skipped (10 in a row stop training
    with a ``ClayflowError``). Seeds come from torch's global generator (``torch.manual_seed``).
    """
    if target.dims != _dims(flow):
        raise ClayflowError(f"the flow has {_dims(flow)} dimensions and target {target.name} {target.dims}")
    flow.train()
    optimizer = make_optimizer(flow.parameters(), "adam", lr)
    scheduler = make_scheduler(optimizer, warmup, steps, schedule)
    result = VariationalResult(flow)
    losses, skipped_in_a_row, started = [], 0, time.perf_counter()

    def evaluate(step: int, beta: float) -> None:
        result.seconds += time.perf_counter() - started
        result.weights = draw_weights(flow, target, eval_samples)
        row = {"step": step, "loss": sum(losses) / len(losses) if losses else math.nan, "beta": beta,
               **result.weights.summary(), "seconds": result.seconds}  # fmt: skip
        result.history.append(row)
        losses.clear()
        if callback is not None:
            callback(row)

    evaluate(0, anneal(0, anneal_steps))
    started = time.perf_counter()
    step = 0
    while step < steps:
        beta = anneal(step, anneal_steps)
        loss = reverse_kl(flow, target, batch_size, beta, target_samples, forward_weight).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), clip if clip > 0 else math.inf)
        if not (torch.isfinite(loss) and torch.isfinite(norm)):
            skipped_in_a_row += 1
            if skipped_in_a_row >= MAX_SKIPS_IN_A_ROW:
                raise ClayflowError(f"the reverse KL was not finite in {MAX_SKIPS_IN_A_ROW} steps in a row at step "
                                    f"{step + 1}: the target gives -inf or nan where the flow puts samples; "
                                    "try a lower lr, annealing, or a target finite everywhere")  # fmt: skip
            continue
        skipped_in_a_row = 0
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        step += 1
        out_of_time = max_seconds is not None and result.seconds + time.perf_counter() - started >= max_seconds
        if step % eval_every == 0 or step == steps or out_of_time:
            evaluate(step, beta)
            started = time.perf_counter()
        if out_of_time:
            break
    return result


def _dims(flow: Flow) -> int:
    shape = flow.event_shape or flow.latent_shape
    if shape is None or len(shape) != 1:
        raise ClayflowError("fit a flow of vectors (B, D) to a target")
    return shape[0]
