r"""Training a flow by reverse KL towards an unnormalised target: ``ReverseKLTraining`` (the
state of one such training, which a checkpoint holds whole) and ``fit_target``, its loop for
Python (``clayflow fit`` runs the same steps in a run directory, with resume).

Examples:
    >>> import torch
    >>> from clayflow import models
    >>> from clayflow.variational import fit_target, load_target
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
from typing import Any

import torch
from torch import Tensor

from clayflow.core import Flow
from clayflow.errors import ClayflowError, UsageError
from clayflow.train.schedule import make_optimizer, make_scheduler, step_seed
from clayflow.variational.objective import anneal, draw_weights, reverse_kl
from clayflow.variational.targets import Target
from clayflow.variational.weights import ImportanceWeights

MAX_SKIPS_IN_A_ROW = 10
SKIP_STREAM = 7_919  # seeds of the retries of a skipped step
EVAL_SEED = 12_345  # evaluation draws: the same at a step whether or not the run was resumed


@dataclass
class Settings:
    """How to train: ``steps`` of ``batch_size`` draws with Adam at ``lr`` (``schedule``:
    cosine or constant, after ``warmup``), β annealed from 0.01 to 1 over ``anneal_steps``,
    gradients clipped to norm ``clip`` (0: not), draws seeded from ``seed``."""

    steps: int = 5000
    batch_size: int = 512
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup: int = 0
    anneal_steps: int = 1000
    clip: float = 10.0
    seed: int = 0


MIN_EVAL_SAMPLES = 2  # one draw's ESS is 100% and its log Z has no spread, whatever the fit


def check_eval_samples(samples: int) -> None:
    """Refuse fewer than ``MIN_EVAL_SAMPLES`` draws per evaluation (a ``UsageError`` line)."""
    if samples < MIN_EVAL_SAMPLES:
        raise UsageError(f"eval_samples (--eval-samples) must be >= {MIN_EVAL_SAMPLES} (the ESS and log Z's standard error need "
                         f"several draws), got {samples}")  # fmt: skip


class ReverseKLTraining:
    """One reverse-KL training of ``flow`` to ``target``: the optimiser, its schedule and the
    step reached, all in ``state_dict`` so that a resumed training takes the same steps.

    Each step's draws come from ``step_seed(settings.seed, step)``; a step whose loss or
    gradient norm is not finite is skipped (its draws are consumed, the step is not), and
    ``MAX_SKIPS_IN_A_ROW`` in a row raise a ``ClayflowError``. Layers with a data-dependent
    initialisation (ActNorm) are marked initialised: with no data, they start as the identity.
    """

    def __init__(self, flow: Flow, target: Target, settings: Settings,
                 target_samples: Tensor | None = None, forward_weight: float = 0.0):  # fmt: skip
        if target.dims != flow_dims(flow):
            raise ClayflowError(f"the flow has {flow_dims(flow)} dimensions and target {target.name} {target.dims}")
        for name, buffer in flow.named_buffers():  # no data to initialise ActNorm from: it starts as the identity
            if name.endswith("initialized"):
                buffer.fill_(True)
        self.flow, self.target, self.settings = flow, target, settings
        if target_samples is not None:
            target_samples = target_samples.to(next(flow.parameters()).device)
        self.target_samples, self.forward_weight = target_samples, forward_weight
        self.optimizer = make_optimizer(flow.parameters(), "adam", settings.lr)
        self.scheduler = make_scheduler(self.optimizer, settings.warmup, settings.steps, settings.schedule)
        self.step, self.skipped = 0, 0

    @property
    def beta(self) -> float:
        """The annealing factor of the next step."""
        return anneal(self.step, self.settings.anneal_steps)

    def train_step(self) -> tuple[float, float] | None:
        """One optimisation step: ``(loss, gradient norm)``, or None when it was skipped."""
        self.flow.train()
        # A retried (skipped) step draws from its own stream, not from the next step's seed.
        torch.manual_seed(step_seed(self.settings.seed + SKIP_STREAM * self.skipped, self.step))
        loss = reverse_kl(self.flow, self.target, self.settings.batch_size, self.beta,
                          self.target_samples, self.forward_weight).loss  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.settings.clip if self.settings.clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.flow.parameters(), clip)
        loss_value, norm_value = loss.item(), norm.item()
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            if self.skipped >= MAX_SKIPS_IN_A_ROW:
                raise ClayflowError(
                    f"the reverse KL was not finite in {MAX_SKIPS_IN_A_ROW} steps in a row at step {self.step + 1}: "
                    "the target gives -inf or nan where the flow puts samples; try a lower --lr, a longer "
                    "--anneal, or a target that is finite everywhere"
                )
            return None
        self.skipped = 0
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss_value, norm_value

    def evaluate(self, samples: int) -> ImportanceWeights:
        """Importance weights of ``samples`` fresh draws (seeded by the step; torch's random
        stream is left as it was)."""
        device = next(self.flow.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(step_seed(self.settings.seed + EVAL_SEED, self.step))
            return draw_weights(self.flow, self.target, samples)

    def evaluation_row(self, losses: list[float], samples: int) -> tuple[dict[str, Any], ImportanceWeights]:
        """``evaluate(samples)``, and the row it gives: step, the mean of ``losses`` (the steps'
        losses since the last row; nan if none), β and ``ImportanceWeights.summary``."""
        weights = self.evaluate(samples)
        loss = sum(losses) / len(losses) if losses else math.nan
        return {"step": self.step, "loss": loss, "beta": self.beta, **weights.summary()}, weights

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.flow.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step, "skipped": self.skipped}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.flow.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.skipped = int(state["step"]), int(state.get("skipped", 0))


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
    anneal_steps: int | None = None,
    clip: float = 10.0,
    seed: int = 0,
    eval_every: int = 500,
    eval_samples: int = 8192,
    target_samples: Tensor | None = None,
    forward_weight: float = 0.0,
    max_seconds: float | None = None,
    callback: Callable[[dict[str, float]], None] | None = None,
) -> VariationalResult:
    """Minimise the reverse KL of ``flow`` to ``target`` (``objective.reverse_kl``) with Adam
    for ``steps`` steps of ``batch_size`` draws; β anneals from 0.01 to 1 over the first
    ``anneal_steps`` (default: a fifth of the steps, as ``clayflow fit``). Every ``eval_every`` steps (and at 0 and the end) ``eval_samples`` fresh
    draws give ESS, log Ẑ, its standard error, the ELBO and Pareto k̂; ``callback`` gets each
    row. ``max_seconds``: stop (and evaluate) once training has taken that long, evaluations
    not counted, for comparisons at equal wall-clock. Draws are seeded from ``seed`` (each step
    sets torch's global seed: ``torch.manual_seed`` afterwards for other random work).
    """
    check_eval_samples(eval_samples)
    anneal_steps = steps // 5 if anneal_steps is None else anneal_steps
    settings = Settings(steps, batch_size, lr, schedule, warmup, anneal_steps, clip, seed)
    training = ReverseKLTraining(flow, target, settings, target_samples, forward_weight)
    result = VariationalResult(flow)
    losses: list[float] = []

    def evaluate() -> None:
        row, result.weights = training.evaluation_row(losses, eval_samples)
        row["seconds"] = result.seconds
        result.history.append(row)
        losses.clear()
        if callback is not None:
            callback(row)

    evaluate()
    while training.step < steps:
        started = time.perf_counter()
        taken = training.train_step()
        result.seconds += time.perf_counter() - started
        if taken is None:
            continue
        losses.append(taken[0])
        out_of_time = max_seconds is not None and result.seconds >= max_seconds
        if training.step % eval_every == 0 or training.step == steps or out_of_time:
            evaluate()
        if out_of_time:
            break
    flow.eval()
    return result


def flow_dims(flow: Flow) -> int:
    """D of a flow of vectors ``(B, D)``; a ``ClayflowError`` for images."""
    shape = flow.event_shape or flow.latent_shape
    if shape is None or len(shape) != 1:
        raise ClayflowError("fit a flow of vectors (B, D) to a target")
    return shape[0]
