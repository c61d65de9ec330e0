"""Maximum-likelihood training with exact resume.

Every piece of state a step depends on (weights, optimiser, schedule, EMA, batch order, RNG,
the step and the running loss sums) is in the checkpoint, so a run killed at any point and
resumed with ``--resume`` produces the same losses as one that was never interrupted.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from clayflow.core import Flow
from clayflow.data import load_dataset
from clayflow.errors import ClayflowError, UsageError, first_line
from clayflow.train.checkpoint import (
    BEST_NAME,
    CHECKPOINT_NAME,
    flow_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
    state_dict_mismatch,
)
from clayflow.train.config import TrainConfig, config_from_dict
from clayflow.train.evaluate import evaluate_log_probs, evaluate_nll
from clayflow.train.objective import flow_matching, maximum_likelihood
from clayflow.train.resume import (
    check_can_start_over,
    check_same_run,
    check_steps,
    data_fingerprint,
    resumed_config,
    saved_discrete_columns,
)
from clayflow.train.run import MetricsLog, TrainResult, write_json
from clayflow.train.rundir import ExistingRun, NewRun, default_run_dir
from clayflow.train.sampler import BatchSampler
from clayflow.train.schedule import make_optimizer, make_scheduler
from clayflow.train.selection import BestModel
from clayflow.train.setup import (
    build_flow,
    data_defaults,
    input_noise_factor,
    resolve_device,
    steps_per_epoch,
)
from clayflow.train.signals import StopRequest

INTERVAL_SUMS = ("loss", "nll", "nfe_forward", "nfe_backward")  # averaged into each metrics row
LOG_STEPS = 250  # steps between log lines, roughly (metrics rows are written at every evaluation)
STEP0_TRAIN_ROWS = 10_000  # training rows whose NLL the step-0 metrics row reports
MAX_SKIPS_IN_A_ROW = 20  # --nonfinite skip: a model that stays non-finite this long has diverged


class TrainingStopped(ClayflowError):
    """Training ended early (divergence, a failed write, Ctrl-C); the last checkpoint is intact."""

    exit_code = 1


class TrainingInterrupted(TrainingStopped):
    """Stopped by a signal (Ctrl-C, SIGTERM, SIGHUP) after saving a checkpoint of the current
    step; the exit code is 128 + the signal's number, as for a process the signal killed."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def train(
    config: TrainConfig | None,
    run_dir: Path | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``config`` into ``run_dir`` (new, or continued from its checkpoint with ``resume``).

    A new run's directory is created only after the data and the model are ready, and must not
    exist yet or be empty; ``force`` replaces an existing clayflow run once the new one has
    written its first checkpoint (see ``clayflow.train.rundir``). ``run_dir=None`` is
    ``runs/<model>-<data>-<time>`` (with a suffix if taken): ``TrainResult.run_dir`` says which.
    The run is locked while training. With ``resume`` the run keeps its own options:
    ``config`` may be None, or repeat them and change only the resumable ones; the checkpoint
    must be of this model, these options and this data (see ``clayflow.train.resume``).

    ``progress=None`` shows a progress bar when stderr is a terminal and log lines otherwise.
    Raises ``TrainingStopped`` on divergence, a failed write or a stop signal, after keeping a
    valid checkpoint.
    """
    stop = StopRequest()
    with stop.catching():
        return _train(config, run_dir, resume, force, progress, stop)


def _train(config, run_dir, resume, force, progress, stop) -> TrainResult:
    if resume:
        if run_dir is None:
            raise UsageError("resuming needs the run directory")
        # The run's own options; those in ``config`` must equal them or be resumable.
        config = resumed_config(Path(run_dir), config.to_dict() if config is not None else {})
    else:
        config = config_from_dict(config.to_dict(), source="TrainConfig")
    run = ExistingRun(Path(run_dir)) if resume else None  # locked before anything is read
    try:
        device = resolve_device(config.device)
        data = load_dataset(config.data)
        config = data_defaults(config, data, new_run=not resume)
        checkpoint = None
        if run is not None and (run.path / CHECKPOINT_NAME).exists():
            checkpoint = read_checkpoint(run.path, map_location="cpu")
        flow, spec = build_flow(config, data, verbose=True, discrete=saved_discrete_columns(checkpoint))
        fingerprint = data_fingerprint(data)
        if run is not None:
            if checkpoint is not None:
                check_same_run(checkpoint, spec, config, fingerprint, run.path)
                check_steps(checkpoint, config)
            else:  # killed before its first checkpoint: start again from step 0 in place
                check_can_start_over(run.path)
        if stop.signum is not None:
            raise TrainingInterrupted(f"interrupted by {stop.name} before training started; nothing was written",
                                      stop.exit_code)  # fmt: skip
        if run is not None:
            run.remove_stale_temporaries()
        else:
            unique = run_dir is None
            run = NewRun(default_run_dir(config.model, config.data) if unique else Path(run_dir),
                         force=force, unique=unique)  # fmt: skip
        try:  # with the marker, so that a run directory always holds both
            write_json(run.path / "config.json", config.to_dict())
        except OSError as exc:
            raise ClayflowError(f"cannot write {run.path / 'config.json'}: {exc.strerror or exc}") from None
        trainer = _Trainer(config, run, data, flow, spec, device, checkpoint, progress, fingerprint, stop)
        return trainer.run()
    except BaseException:
        if run is not None:
            run.abandon()
        raise
    finally:
        if run is not None:
            run.release()


class _Trainer:
    def __init__(self, config, run, data, flow, spec, device, checkpoint, progress, fingerprint, stop):
        self.config, self.directory, self.data, self.spec, self.device = config, run, data, spec, device
        self.fingerprint = fingerprint
        self.flow = flow.to(device).train()
        self.optimizer = make_optimizer(
            self.flow.parameters(), config.optimizer, config.lr, config.weight_decay
        )
        self.scheduler = make_scheduler(self.optimizer, config.warmup, config.steps, config.schedule)
        self.ema = (
            AveragedModel(self.flow, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
            if config.ema > 0
            else None
        )
        self.sampler = BatchSampler(len(data.train), config.batch_size, config.seed)
        self.train_x = data.train.to(device)
        self.noise_factor = input_noise_factor(config.input_noise, data, spec.discrete, device)
        self.step, self.train_seconds = 0, 0.0
        self.sums, self.count = dict.fromkeys(INTERVAL_SUMS, 0.0), 0  # since the last metrics row
        if config.objective == "fm":
            self.objective = partial(flow_matching, optimal_transport=config.ot)
        else:
            self.objective = partial(maximum_likelihood, kinetic=config.kinetic, jacobian=config.jacobian)
        if config.compile:
            self.objective = torch.compile(self.objective)
        self.last_saved_step = None
        self.skipped, self.skipped_in_a_row = 0, 0  # --nonfinite skip: since the last row, and in a row
        self.best = BestModel()
        if checkpoint is not None:
            self._restore(checkpoint)
        self.metrics = MetricsLog(run.path / "metrics.csv", resume_step=self.step if checkpoint else None)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.stop = stop  # the signal that asked training to stop, checked between steps

    @property
    def run_dir(self) -> Path:
        """Where the run's files are now (a run replacing another moves at its first checkpoint)."""
        return self.directory.path

    # -- state ------------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        return {
            "model_spec": self.spec.to_dict(),
            "data_columns": self.data.columns,
            "data_fingerprint": self.fingerprint,
            "config": self.config.to_dict(),
            "step": self.step,
            "model": self.flow.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "interval_sums": self.sums,
            "interval_count": self.count,
            "skipped": (self.skipped, self.skipped_in_a_row),
            "train_seconds": self.train_seconds,
            **self.best.state_dict(),
        }

    def _save(self) -> None:
        with self._writing("checkpoint"):
            save_checkpoint(self.run_dir / CHECKPOINT_NAME, self._payload())
            self.directory.checkpoint_written(self.step)  # a replacement takes the old run's place
            self.metrics.path = self.run_dir / "metrics.csv"
        self.last_saved_step = self.step

    def _kept(self) -> str:
        if self.directory.pending:
            return f"the run in {self.directory.final} was not replaced"
        if self.directory.removed_on_failure:
            return "no checkpoint had been written, so the run was removed"
        if self.last_saved_step is None:
            return "no checkpoint had been written yet"
        return f"kept the last good checkpoint (step {self.last_saved_step})"

    def _then(self) -> str:
        """What to do after a failure: run the command again, or resume."""
        if self.directory.removed_on_failure:
            return "then run the command again"
        return f"then continue with: clayflow train --resume {self.run_dir}"

    @contextmanager
    def _writing(self, what: str):
        """A failed write (disk full, permissions) stops training with one line; the files
        already written stay valid (all are replaced atomically, except metrics rows)."""
        try:
            yield
        except OSError as exc:
            raise TrainingStopped(
                f"cannot write the {what} at step {self.step} ({exc.strerror or exc}); {self._kept()}. "
                f"Fix the disk (space, permissions), {self._then()}"
            ) from None

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        try:
            self.flow.load_state_dict(checkpoint["model"])
            if self.ema is not None:
                self.ema.load_state_dict(checkpoint["ema"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            self.sampler.load_state_dict(checkpoint["sampler"])
            torch.set_rng_state(checkpoint["torch_rng"])
            self.step = checkpoint["step"]
            if "interval_sums" in checkpoint:
                self.sums, self.count = checkpoint["interval_sums"], checkpoint["interval_count"]
            else:  # written before the objectives had several parts: loss_sum was the NLL
                loss_sum, self.count = checkpoint["loss_sum"], checkpoint["loss_count"]
                self.sums = {**dict.fromkeys(INTERVAL_SUMS, 0.0), "loss": loss_sum, "nll": loss_sum}
            self.skipped, self.skipped_in_a_row = checkpoint.get("skipped", (0, 0))
            self.train_seconds = checkpoint["train_seconds"]
            self.best.load_state_dict(checkpoint)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            reason = state_dict_mismatch(exc) if isinstance(exc, RuntimeError) else first_line(exc)
            raise ClayflowError(f"checkpoint in {self.run_dir} cannot resume this run: {reason}") from None
        self.last_saved_step = self.step
        if self.config.select_best and self.best.step == self.step:
            self._save_best(self.best.val_nll)  # it may have been lost with the killed process

    # -- loop ---------------------------------------------------------------------------
    def run(self) -> TrainResult:
        config = self.config
        bar = tqdm(
            total=config.steps, initial=self.step, disable=not self.progress, dynamic_ncols=True, leave=True
        )
        interval_start, interval_steps = time.perf_counter(), 0
        if self.last_saved_step is None:
            # The untrained flow (the fitted start) is the first candidate for the best model,
            # and a checkpoint of step 0: every run that has trained at all has a last.pt, so
            # a run without one provably never trained (see resume.check_can_start_over).
            self._log(None, None, bar)
            if self.last_saved_step != self.step:
                self._save()
        while self.step < config.steps and not self._out_of_patience():
            if self.stop.signum is not None:
                bar.close()
                self._stop_for_signal()
            taken = self._train_step()
            if taken is not None:
                loss, grad_norm = taken
                interval_steps += 1
                bar.update(1)
                if self.step % 10 == 0:
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                if self.step % config.eval_every == 0 or self.step == config.steps:
                    seconds = time.perf_counter() - interval_start
                    self.train_seconds += seconds
                    self._log(grad_norm, interval_steps / max(seconds, 1e-9), bar)
                    interval_start, interval_steps = time.perf_counter(), 0
                due = self.step % config.checkpoint_every == 0 or self.step == config.steps
                if due and self.last_saved_step != self.step:
                    self._save()
        bar.close()
        if self.last_saved_step != self.step:
            self._save()
        if self._stopped_early():
            print(
                f"stopped early at step {self.step}: no better model in the last "
                f"{config.patience} evaluations (best at step {self.best.step})",
                file=sys.stderr,
            )
        return self._finish()

    def _print_every(self) -> int:
        """Steps between log lines (without a progress bar): the evaluations nearest to every
        ``LOG_STEPS`` steps, so that a table validated every step does not print 4000 lines."""
        every = self.config.eval_every
        return every * max(1, round(LOG_STEPS / every))

    def _plan(self) -> str:
        """Validation and early stopping, said at step 0."""
        every = self.config.eval_every
        epoch = steps_per_epoch(len(self.data.train), self.config.batch_size)
        when = "once per epoch" if every == epoch else f"every {every} steps"
        stopping = (
            f"early stopping after {self.config.patience} evaluations without a better model"
            if self.config.patience
            else "no early stopping"
        )
        return f"validation {when}, {every} step{'s' if every > 1 else ''}; {stopping}"

    def _stop_for_signal(self) -> None:
        """Stop for the signal received: save the step reached and say how to resume, or, for a
        replacement that has not taken the old run's place yet, leave the old run as it was."""
        if self.directory.pending:
            raise TrainingInterrupted(
                f"interrupted by {self.stop.name} at step {self.step}, before the new run's first "
                f"checkpoint: the run in {self.directory.final} was not replaced",
                self.stop.exit_code,
            )
        if self.last_saved_step != self.step:
            self._save()
        raise TrainingInterrupted(
            f"interrupted by {self.stop.name} at step {self.step}; checkpoint saved. "
            f"Continue with: clayflow train --resume {self.run_dir}",
            self.stop.exit_code,
        )

    def _out_of_patience(self) -> bool:
        """Early stopping: ``patience`` evaluations since the best one. Derived from the
        checkpointed best step, so a resumed run stops where an uninterrupted one did."""
        patience, every = self.config.patience, self.config.eval_every
        return (
            bool(patience) and self.best.step is not None and self.step - self.best.step >= patience * every
        )

    def _stopped_early(self) -> bool:
        return self.step < self.config.steps and self._out_of_patience()

    def _train_step(self) -> tuple[float, float] | None:
        """One optimisation step: ``(loss, grad_norm)``, or None when a non-finite loss or
        gradient was skipped (``--nonfinite skip``; the batch is consumed, the step is not)."""
        batch = self.train_x[self.sampler.next().to(self.train_x.device)].float()
        if self.noise_factor is not None:
            batch = batch + torch.randn_like(batch) @ self.noise_factor.T
        step_loss = self.objective(self.flow, batch)
        self.optimizer.zero_grad(set_to_none=True)
        step_loss.loss.backward()
        max_norm = self.config.clip if self.config.clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.flow.parameters(), max_norm)
        # One host sync per step (on a GPU, each .item() would wait for the device).
        loss_value, grad_norm = torch.stack([step_loss.loss.detach().double(), grad_norm.double()]).tolist()
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            what = "loss" if not math.isfinite(loss_value) else "gradient norm"
            if self.config.nonfinite == "skip" and self.skipped_in_a_row < MAX_SKIPS_IN_A_ROW:
                self.optimizer.zero_grad(set_to_none=True)
                self.skipped, self.skipped_in_a_row = self.skipped + 1, self.skipped_in_a_row + 1
                return None
            tried = f" in {self.skipped_in_a_row + 1} steps in a row" if self.skipped_in_a_row else ""
            raise TrainingStopped(
                f"{what} became non-finite{tried} at step {self.step + 1}; {self._kept()}. "
                "Try a lower --lr or a smaller --clip"
            )
        self.skipped_in_a_row = 0
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.flow)
        self.step += 1
        nfe_forward, nfe_backward = step_loss.nfe()
        values = {
            "loss": loss_value,
            "nll": step_loss.nll_value(loss_value),
            "nfe_forward": nfe_forward,
            "nfe_backward": nfe_backward,
        }
        for key, value in values.items():
            self.sums[key] += value
        self.count += 1
        return loss_value, grad_norm

    def _eval_flow(self) -> Flow:
        return self.ema.module if self.ema is not None else self.flow

    def _log(self, grad_norm: float | None, steps_per_s: float | None, bar: tqdm) -> None:
        """Evaluate on the validation rows and write a metrics row: the mean training loss
        since the last row, or at step 0 the NLL of (up to ``STEP0_TRAIN_ROWS``) training rows."""
        if self.step == 0:  # the training rows first: data-dependent layers (ActNorm) initialise on them
            train_nll = evaluate_nll(self._eval_flow(), self.data.train[:STEP0_TRAIN_ROWS])
            train_loss = train_nll if self.config.objective == "mle" else ""
        val_log_probs = evaluate_log_probs(self._eval_flow(), self.data.val)
        val_nll = -val_log_probs.mean().item()
        if self.step > 0:
            train_loss = self.sums["loss"] / max(self.count, 1)
            train_nll = self.sums["nll"] / max(self.count, 1) if self.config.objective == "mle" else ""
        row = {
            "step": self.step,
            "train_loss": train_loss,
            "train_nll": train_nll,
            "val_nll": val_nll,
            "val_bpd": val_nll / (self.data.dims * math.log(2)),
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": "" if grad_norm is None else grad_norm,
            "steps_per_s": "" if steps_per_s is None else steps_per_s,
            "nfe_forward": self.sums["nfe_forward"] / max(self.count, 1),
            "nfe_backward": self.sums["nfe_backward"] / max(self.count, 1),
            "elapsed_s": self.train_seconds,
            "skipped_steps": self.skipped,
        }
        with self._writing("metrics"):
            self.metrics.append(row)
        self.skipped = 0
        self.sums, self.count = dict.fromkeys(INTERVAL_SUMS, 0.0), 0  # before a checkpoint records them
        if self.config.select_best and self.best.consider(self.step, val_log_probs):
            # last.pt first, then best.pt: a kill in between leaves a checkpoint whose best step
            # is its own step, and resuming it rewrites best.pt (see ``_restore``).
            self._save()
            self._save_best(val_nll)
        nfe = f"  nfe {row['nfe_forward']:.0f}+{row['nfe_backward']:.0f}" if row["nfe_forward"] else ""
        if self.step == 0:
            line = f"step 0/{self.config.steps}  val nll {val_nll:.4f}  (the untrained flow; {self._plan()})"
        else:
            bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_nll:.3f}", nfe=nfe.strip(), refresh=True)
            line = (
                f"step {self.step}/{self.config.steps}  train loss {train_loss:.4f}  "
                f"val nll {val_nll:.4f}{nfe}  ({steps_per_s:.0f} steps/s)"
            )
        if self.step == 0 and self.progress:
            bar.write(line, file=sys.stderr)
        elif not self.progress and (self.step % self._print_every() == 0 or self.step == self.config.steps):
            print(line, file=sys.stderr)

    def _save_best(self, val_nll: float) -> None:
        payload = {
            "model_spec": self.spec.to_dict(),
            "data_columns": self.data.columns,
            "step": self.step,
            "val_nll": val_nll,
            "model": self._eval_flow().state_dict(),
        }
        with self._writing("best checkpoint"):
            save_checkpoint(self.run_dir / BEST_NAME, payload)

    def _finish(self) -> TrainResult:
        if self.best.step is not None:
            flow = flow_from_checkpoint(read_checkpoint(self.run_dir / BEST_NAME)).to(self.device)
            selected_step, val_nll = self.best.step, self.best.val_nll
        else:
            flow, selected_step = self._eval_flow(), self.step
            val_nll = evaluate_nll(flow, self.data.val)
        test_nll = evaluate_nll(flow, self.data.test)
        result = TrainResult(
            run_dir=self.run_dir,
            steps=self.step,
            test_nll=test_nll,
            test_bpd=test_nll / (self.data.dims * math.log(2)),
            val_nll=val_nll,
            train_seconds=self.train_seconds,
            selected_step=selected_step,
            patience=self.config.patience,
            stopped_early=self._stopped_early(),
        )
        with self._writing("results"):
            write_json(self.run_dir / "results.json", result.to_dict())
        return result
