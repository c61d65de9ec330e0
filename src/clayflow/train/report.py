"""What a training run tells its user while it goes: the start line, progress (a bar on a
terminal, or log lines on a time basis with rate and ETA when piped), and a line when the run
looks wrong (overfitting, a model that has not moved from its start, nothing left to train)."""

from __future__ import annotations

import math
import sys
import time

import torch
from torch import nn
from tqdm import tqdm

from clayflow.data import Dataset
from clayflow.models import VECTOR, data_kind

LOG_STEPS = 250  # steps between evaluation lines in a log, roughly
LOG_SECONDS = 30.0  # ... and at most this long without a line
# Threads: a vector model doing fewer multiply-adds per step (parameters x batch) than this
# trains no faster on more threads, and several times slower when other processes share the
# cores (1000 steps: 64 s on torch's default threads, 16 s on one, beside three busy processes).
ONE_THREAD_WORK = 5e8
# A run "has not moved" when its validation NLL differs from the start's by less than this
# fraction after NOT_MOVED_STEPS steps.
NOT_MOVED_FRACTION = 1e-4
NOT_MOVED_STEPS = 500
# Overfitting: validation NLL this fraction above its best, OVERFIT_EVALUATIONS evaluations
# after it, while the training loss is below its value at the best step.
OVERFIT_FRACTION = 0.01
OVERFIT_EVALUATIONS = 3


def parameter_count(flow: nn.Module) -> int:
    return sum(p.numel() for p in flow.parameters())


def auto_threads(flow: nn.Module, data: Dataset, batch_size: int) -> int | None:
    """The default ``--threads``: 1 for vector models doing under ``ONE_THREAD_WORK``
    multiply-adds per step; None (torch's default, one per core) otherwise."""
    if data_kind(data.event_shape) == VECTOR and parameter_count(flow) * batch_size < ONE_THREAD_WORK:
        return 1
    return None


def start_line(model: str, flow: nn.Module, data: Dataset, device: torch.device, threads: int,
               steps: int, batch_size: int, reached: int, run_dir) -> str:  # fmt: skip
    """One line: what trains on what, where, for how long, into which directory."""
    rows = "/".join(f"{len(split):,}" for split in (data.train, data.val, data.test))
    if data_kind(data.event_shape) == VECTOR:
        what = f"{rows} rows (train/val/test) of {data.event_shape[0]} columns"
    else:
        what = f"{rows} images (train/val/test) of {'x'.join(map(str, data.event_shape))}"
        what += f", {data.levels} levels" if data.levels else ""
    plan = f"steps {reached}-{steps}" if reached else f"{steps} steps"
    return (
        f"training {model} ({parameter_count(flow):,} parameters) on {data.name}: {what}; "
        f"{device}, {threads} thread{'s' if threads != 1 else ''}; {plan} of batch {batch_size}; "
        f"run directory {run_dir}"
    )


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def rate(steps_per_s: float) -> str:
    """``880 steps/s``, ``2.4 steps/s``, or ``3.1 s/step`` when slower than a step a second."""
    if steps_per_s >= 10:
        return f"{steps_per_s:.0f} steps/s"
    if steps_per_s >= 1:
        return f"{steps_per_s:.1f} steps/s"
    return f"{1 / max(steps_per_s, 1e-9):.1f} s/step"


class Progress:
    """A progress bar on a terminal; otherwise log lines: the evaluations nearest to every
    ``LOG_STEPS`` steps, and a line at least every ``LOG_SECONDS`` (an evaluation's, or the
    step reached), each with the rate and the time left."""

    def __init__(self, total: int, initial: int, bar: bool, eval_every: int):
        self.total, self.initial = total, initial
        self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, leave=True) if bar else None
        self.print_every = eval_every * max(1, round(LOG_STEPS / eval_every))
        self.started = self.last_line = time.perf_counter()

    def eta(self, step: int) -> str:
        """Rate and time left, from the wall time since this process started training."""
        done = step - self.initial
        if done <= 0:
            return ""
        per_second = done / max(time.perf_counter() - self.started, 1e-9)
        left = (self.total - step) / per_second
        return f"{rate(per_second)}, {duration(left)} left" if step < self.total else rate(per_second)

    def stepped(self, step: int, loss: float) -> None:
        """After each optimisation step."""
        if self.bar is not None:
            self.bar.update(1)
            if step % 10 == 0:
                self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        elif time.perf_counter() - self.last_line >= LOG_SECONDS:
            self.write(f"step {step}/{self.total}  train loss {loss:.4f}  ({self.eta(step)})")

    def evaluated(self, step: int, line: str, postfix: dict[str, str]) -> None:
        """After an evaluation: ``line`` for the log, ``postfix`` for the bar."""
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=True)
            return
        due = step % self.print_every == 0 or step == self.total
        if due or time.perf_counter() - self.last_line >= LOG_SECONDS:
            self.write(f"{line}  ({self.eta(step)})" if step > self.initial else line)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)
        self.last_line = time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Watch:
    """Says once when a run looks wrong, from its evaluations."""

    def __init__(self, dims: int):
        self.dims = dims
        self.said: set[str] = set()
        self.train_loss_at: dict[int, float] = {}  # step -> mean training loss before it
        self.start_nll: float | None = None

    def evaluated(self, step: int, train_loss: float | None, val_nll: float, best_step: int | None,
                  best_nll: float | None, eval_every: int, patience: int) -> str | None:  # fmt: skip
        """A warning line for this evaluation, or None."""
        if train_loss is not None:
            self.train_loss_at[step] = train_loss
        if step == 0 or self.start_nll is None:
            self.start_nll = val_nll if step == 0 else self.start_nll
            return None
        if not math.isfinite(val_nll):
            return None
        if step >= NOT_MOVED_STEPS and abs(val_nll - self.start_nll) < NOT_MOVED_FRACTION * max(1.0, abs(self.start_nll)):
            return self._once(
                "not moved",
                f"validation NLL {val_nll:.4f} has not moved from the untrained flow's ({self.start_nll:.4f}) "
                f"in {step} steps: the model is not learning (try another --lr; a CNF: check --t1, the solver)",
            )
        at_best = self.train_loss_at.get(best_step) if best_step is not None else None
        if (
            best_step is not None
            and step - best_step >= OVERFIT_EVALUATIONS * eval_every
            and val_nll - best_nll > OVERFIT_FRACTION * max(1.0, abs(best_nll))
            and train_loss is not None
            and at_best is not None
            and train_loss < at_best
        ):
            stop = "" if patience else "; --patience N stops after N evaluations without a better one"
            return self._once(
                "overfitting",
                f"validation NLL {val_nll:.4f} is above its best {best_nll:.4f} (step {best_step}) while the "
                f"training loss fell ({at_best:.4f} -> {train_loss:.4f}): the model is overfitting. "
                f"The best weights are kept{stop}",
            )
        return None

    def _once(self, key: str, line: str) -> str | None:
        if key in self.said:
            return None
        self.said.add(key)
        return f"warning: {line}"
