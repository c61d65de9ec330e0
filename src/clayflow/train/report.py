"""What a training run tells its user while it goes: the start line, progress (a bar on a
terminal, or log lines on a time basis with rate and ETA when piped), and a line when the run
looks wrong (overfitting, a model that has not moved from its start, nothing left to train)."""

from __future__ import annotations

import math
import sys
import time

import torch
from torch import Tensor, nn
from tqdm import tqdm

from clayflow.data import Dataset
from clayflow.models import VECTOR, data_kind
from clayflow.train.selection import MARGIN

LOG_STEPS = 250  # steps between evaluation lines in a log, roughly
LOG_SECONDS = 30.0  # ... and at most this long without a line
# Threads: a vector model doing fewer multiply-adds per step (parameters x batch) than this
# trains on one thread. More gain little on a quiet machine and cost several-fold beside busy
# processes (benchmarks/threads.py, default moons model on 2 cores: 2 threads 15% faster
# quiet, 6.4 times slower beside three busy processes).
ONE_THREAD_WORK = 5e8
# A run "has not moved" when its validation NLL has stayed within this fraction of the start's
# at every evaluation of its first NOT_MOVED_STEPS steps or more.
NOT_MOVED_FRACTION = 1e-5
NOT_MOVED_STEPS = 500
# Overfitting: validation NLL this fraction above its best, and beyond its noise (MARGIN
# standard errors of the paired per-example difference), at every evaluation since at least
# OVERFIT_EVALUATIONS evaluations and OVERFIT_SPAN of the steps taken (a sustained rise, not
# the step-to-step wobble of a run validated every step), while the training loss is below
# its value at the best step.
OVERFIT_FRACTION = 0.01
OVERFIT_EVALUATIONS = 3
OVERFIT_SPAN = 0.1


def parameter_count(flow: nn.Module) -> int:
    """The number of scalar parameters of ``flow`` (trainable or not)."""
    return sum(p.numel() for p in flow.parameters())


def auto_threads(flow: nn.Module, data: Dataset, batch_size: int) -> int | None:
    """The default ``--threads``: 1 for vector models doing under ``ONE_THREAD_WORK``
    multiply-adds per step; None (torch's default, one per core) otherwise."""
    if data_kind(data.event_shape) == VECTOR and parameter_count(flow) * batch_size < ONE_THREAD_WORK:
        return 1
    return None


def start_line(model: str, flow: nn.Module, data: Dataset, device: torch.device, threads: int,
               steps: int, batch_size: int, reached: int, run_dir, processes: int = 1) -> str:  # fmt: skip
    """One line: what trains on what, where, for how long, into which directory."""
    rows = "/".join(f"{len(split):,}" for split in (data.train, data.val, data.test))
    if data_kind(data.event_shape) == VECTOR:
        what = f"{rows} rows (train/val/test) of {data.event_shape[0]} columns"
        if data.context_features:
            named = f" ({', '.join(data.context_columns)})" if data.context_columns else ""
            what += f" given {data.context_features} context column{'s' if data.context_features > 1 else ''}{named}"
    else:
        what = f"{rows} images (train/val/test) of {'x'.join(map(str, data.event_shape))}"
        what += f", {data.levels} levels" if data.levels else ""
        what += f", each given its class ({len(data.classes)}: {', '.join(data.classes[:10])}{', ...' if len(data.classes) > 10 else ''})" if data.classes else ""
    plan = f"steps {reached}-{steps}" if reached else f"{steps} steps"
    return (
        f"training {model} ({parameter_count(flow):,} parameters) on {data.name}: {what}; "
        f"{f'{processes} processes of ' if processes > 1 else ''}{device}, {threads} thread{'s' if threads != 1 else ''}"
        f"; {plan} of batch {_batch(batch_size, len(data.train))}; "
        f"run directory {run_dir}"
    )


def _batch(batch_size: int, rows: int) -> str:
    """The batch a step draws: ``batch_size``, or every training row when there are fewer."""
    return str(batch_size) if batch_size <= rows else f"{rows:,} (every training row; batch size {batch_size:,})"


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

    def __init__(self, total: int, initial: int, bar: bool, eval_every: int, silent: bool = False):
        self.total, self.initial, self.silent = total, initial, silent  # silent: a process other than rank 0
        self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, leave=True) if bar and not silent else None
        self.print_every = eval_every * max(1, round(LOG_STEPS / eval_every))
        self.started = self.last_line = time.perf_counter()

    def restart_clock(self) -> None:
        self.started = time.perf_counter()

    def eta(self, step: int) -> str:
        """Rate and time left, from the wall time since this process started training."""
        done = step - self.initial
        if done <= 0:
            return ""
        per_second = done / max(time.perf_counter() - self.started, 1e-9)
        left = (self.total - step) / per_second
        return f"{rate(per_second)}, {duration(left)} left" if step < self.total else rate(per_second)

    def stepped(self, step: int, loss: float, evaluating: bool = False) -> None:
        """After each optimisation step; ``evaluating``: an evaluation follows, whose line
        (with the validation NLL) comes instead of this step's."""
        if self.bar is not None:
            self.bar.update(1)
            if step % 10 == 0:
                self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        elif not evaluating and time.perf_counter() - self.last_line >= LOG_SECONDS:
            self.write(f"step {step}/{self.total}  batch loss {loss:.4f}  ({self.eta(step)})")

    def evaluated(self, step: int, line: str, postfix: dict[str, str]) -> None:
        """After an evaluation: ``line`` for the log, ``postfix`` for the bar."""
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=True)
            return
        due = step % self.print_every == 0 or step == self.total
        if due or time.perf_counter() - self.last_line >= LOG_SECONDS:
            self.write(f"{line}  ({self.eta(step)})" if step > self.initial else line)

    def write(self, line: str) -> None:
        if self.silent:
            return
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

    def __init__(self) -> None:
        self.said: set[str] = set()
        self.train_loss_at: dict[int, float] = {}  # step -> mean training loss before it
        self.best_rows: Tensor | None = None  # validation log-likelihoods at the best step
        self.start_nll: float | None = None  # None in a resumed run: another process saw step 0
        self.moved = 0.0  # the largest |val NLL - start's| so far
        self.worse_since: int | None = None  # first step of the current run of overfitting evaluations

    def evaluated(self, step: int, train_loss: float | None, val_log_probs: Tensor, best_step: int | None,
                  eval_every: int, patience: int) -> str | None:  # fmt: skip
        """A warning line for this evaluation, or None. ``val_log_probs``: ``(n,)`` per
        validation example; ``best_step``: the step of the weights kept so far."""
        if train_loss is not None:
            self.train_loss_at[step] = train_loss
        if len(val_log_probs) == 0:
            return None
        val_nll = -val_log_probs.mean().item()
        if best_step == step:
            self.best_rows = val_log_probs
        if step == 0:
            self.start_nll = val_nll
            return None
        start = self.start_nll
        if start is not None:
            self.moved = max(self.moved, abs(val_nll - start))
            if step >= NOT_MOVED_STEPS and self.moved < NOT_MOVED_FRACTION * max(1.0, abs(start)):
                return self._once(
                    "not moved",
                    f"validation NLL has stayed at the untrained flow's ({start:.4f}) for {step} steps: training "
                    "has not changed the model (is --lr too small? a CNF: check --t1 and the solver)",
                )
        if not self._worse_than_best(step, train_loss, val_log_probs, best_step):
            self.worse_since = None
            return None
        self.worse_since = step if self.worse_since is None else self.worse_since
        sustained = max(OVERFIT_EVALUATIONS * eval_every, OVERFIT_SPAN * step)
        if step - self.worse_since + eval_every < sustained:
            return None
        best_nll, at_best = -self.best_rows.mean().item(), self.train_loss_at[best_step]
        stop = "" if patience else "; --patience N stops after N evaluations without a better one"
        return self._once(
            "overfitting",
            f"validation NLL {val_nll:.4f} has stayed above its best {best_nll:.4f} (step {best_step}) beyond its "
            f"noise since step {self.worse_since} while the training loss fell ({at_best:.4f} -> {train_loss:.4f}): "
            f"the model is overfitting. The best weights are kept{stop}",
        )

    def _worse_than_best(self, step, train_loss, val_log_probs, best_step) -> bool:
        """Validation worse than at the best step by more than ``OVERFIT_FRACTION`` and by more
        than ``MARGIN`` standard errors of the paired per-example difference, while the
        training loss is lower than then."""
        if best_step is None or best_step == step or self.best_rows is None or train_loss is None:
            return False
        if best_step not in self.train_loss_at or train_loss >= self.train_loss_at[best_step]:
            return False
        loss = (self.best_rows - val_log_probs).double()  # per example, > 0: worse now
        best_nll = -self.best_rows.mean().item()
        if len(loss) < 2 or loss.mean() <= OVERFIT_FRACTION * max(1.0, abs(best_nll)):
            return False
        return bool(loss.mean() > MARGIN * loss.std() / math.sqrt(len(loss)))

    def _once(self, key: str, line: str) -> str | None:
        if key in self.said:
            return None
        self.said.add(key)
        return f"warning: {line}"
