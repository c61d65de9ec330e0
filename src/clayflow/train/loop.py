"""Maximum-likelihood training with exact resume.

Every piece of state a step depends on (weights, optimiser, schedule, EMA, batch order, RNG,
the step and the running loss sums) is in the checkpoint, so a run killed at any point and
resumed with ``--resume`` produces the same losses as one that was never interrupted.
"""

from __future__ import annotations

import copy
import math
import signal
import sys
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch

from clayflow.core import Flow, batch
from clayflow.errors import ClayflowError, first_line
from clayflow.nn.precision import autocast_conditioners, full_precision
from clayflow.train.checkpoint import (
    BEST_NAME,
    CHECKPOINT_NAME,
    read_checkpoint,
    save_checkpoint,
    state_dict_mismatch,
)
from clayflow.train.distributed import Processes, check_identical, is_peer_failure, peer_failure_cause
from clayflow.train.evaluate import evaluate_log_probs, evaluate_nll, initialize_data_dependent
from clayflow.train.objective import StepObjective, flow_matching, maximum_likelihood
from clayflow.train.report import Progress, Watch, auto_threads, start_line
from clayflow.train.run import MetricsLog, TrainResult, write_json
from clayflow.train.sampler import TrainingBatches, head
from clayflow.train.schedule import make_optimizer, make_scheduler, make_weight_average, step_seed
from clayflow.train.selection import BestModel
from clayflow.train.setup import (
    input_noise_factor,
    steps_per_epoch,
)
from clayflow.train.tracking import TensorBoardLog

INTERVAL_SUMS = ("loss", "nll", "nfe_forward", "nfe_backward")  # averaged into each metrics row
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


class Trainer:
    """One run's training: ``flow`` (its ``spec``, or None for ``clayflow.fit``'s own flow) on
    ``data`` with ``config``, in the run directory ``run`` (locked by the caller), continued
    from ``checkpoint`` when given; ``run()`` trains and returns the ``TrainResult``."""

    def __init__(self, config, run, data, flow, spec, device, checkpoint, progress, fingerprint, stop,
                 resume_command=None, processes=None):  # fmt: skip
        self.config, self.directory, self.data, self.spec, self.device = config, run, data, spec, device
        self.processes = processes or Processes()  # several: only rank 0 writes (see ``distributed``)
        self.fingerprint = fingerprint
        # How to continue a stopped run ("": it cannot be, its directory is temporary).
        self.resume_command = "clayflow train --resume {run_dir}" if resume_command is None else resume_command
        self.flow = flow.to(device).train()
        # Images: channels-last weights and batches (the convolutions' fastest layout on the CPU:
        # Glow 1.15-1.33x the contiguous layout's images/s, benchmarks/results/image_throughput,
        # the 2026-12-02 run); the same numbers to float rounding.
        self.memory_format = torch.channels_last if len(data.event_shape) == 3 else torch.contiguous_format
        self.flow.to(memory_format=self.memory_format)
        autocast_conditioners(self.flow, config.precision, vector_fields=config.objective == "fm")
        self.optimizer = make_optimizer(
            self.flow.parameters(), config.optimizer, config.lr, config.weight_decay
        )
        self.scheduler = make_scheduler(self.optimizer, config.warmup, config.steps, config.schedule)
        self.ema = make_weight_average(self.flow, config.ema) if config.ema else None
        self.batches = TrainingBatches(data.train, config.batch_size, config.seed, device, data.loader_options,
                                       part=self.processes.slice(config.batch_size), dtype=self.flow.dtype)  # fmt: skip
        discrete = spec.discrete if spec is not None else []
        self.noise_factor = input_noise_factor(config.input_noise, data, discrete, device)
        self.step, self.train_seconds = 0, 0.0
        self.sums, self.count = dict.fromkeys(INTERVAL_SUMS, 0.0), 0  # since the last metrics row
        if config.objective == "fm":
            self.objective = partial(flow_matching, optimal_transport=config.ot)
        else:
            self.objective = partial(maximum_likelihood, kinetic=config.kinetic, jacobian=config.jacobian)
        if config.compile:
            self.objective = torch.compile(self.objective)
        # The step's loss, through DistributedDataParallel on several processes (it averages the gradients).
        self.step_loss = self.processes.parallel(StepObjective(self.flow, self.objective), device)
        self.last_saved_step = None
        self.skipped, self.skipped_in_a_row = 0, 0  # --nonfinite skip: since the last row, and in a row
        self.best = BestModel()
        if checkpoint is not None:
            self._restore(checkpoint)
        self.metrics = (
            MetricsLog(run.path / "metrics.csv", resume_step=self.step if checkpoint else None)
            if self.processes.main
            else None
        )
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.stop = stop  # the signal that asked training to stop, checked between steps
        self.watch = Watch()
        self.tensorboard = None  # opened in ``run``

    @property
    def run_dir(self) -> Path:
        """Where the run's files are now (a run replacing another moves at its first checkpoint)."""
        return self.directory.path

    # -- state ------------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        return {
            "model_spec": self.spec.to_dict() if self.spec is not None else None,  # None: clayflow.fit
            **self.data.layout(),
            "data_fingerprint": self.fingerprint,
            "config": self.config.to_dict(),
            "step": self.step,
            "model": self.flow.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.batches.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "interval_sums": self.sums,
            "interval_count": self.count,
            "skipped": (self.skipped, self.skipped_in_a_row),
            "train_seconds": self.train_seconds,
            **self.best.state_dict(),
        }

    def _save(self) -> None:
        if not self.processes.main:
            self.last_saved_step = self.step
            return
        with self._writing("checkpoint"):
            save_checkpoint(self.run_dir / CHECKPOINT_NAME, self._payload())
            self.directory.checkpoint_written(self.step)  # a replacement takes the old run's place
            self.metrics.path = self.run_dir / "metrics.csv"
        self.last_saved_step = self.step

    def _kept(self) -> str:
        if not self.resume_command:
            return "no checkpoint is kept without a run directory"
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
        if not self.resume_command:
            return "then run it again"
        return f"then continue with: {self._resume_command()}"

    def _resume_command(self) -> str:
        return self.resume_command.format(run_dir=self.run_dir)

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
            self.batches.load_state_dict(checkpoint["sampler"])
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
        """Train to ``config.steps`` (or an early stop) and evaluate the selected weights, on
        ``config.threads`` CPU threads (torch's setting is restored after)."""
        threads_before = torch.get_num_threads()
        threads = self.config.threads or auto_threads(self.flow, self.data, self.config.batch_size)
        try:
            torch.set_num_threads(threads or threads_before)
            if self.config.tensorboard and self.processes.main:
                with self._writing("TensorBoard events"):
                    self.tensorboard = TensorBoardLog(self.run_dir, purge_step=self.step or None)
            return self._run(torch.get_num_threads())
        except RuntimeError as exc:  # a collective whose peer died (torchrun then ends this process too)
            if not (self.processes.distributed and is_peer_failure(exc)):
                raise
            raise TrainingStopped(
                f"another process of this run failed at step {self.step} ({peer_failure_cause(exc)}); "
                f"{self._kept()}. See that process's error, {self._then()}"
            ) from None
        finally:
            torch.set_num_threads(threads_before)
            full_precision(self.flow)  # the caller's flow back as given: its networks' own classes,
            self.flow.to(memory_format=torch.contiguous_format)  # and contiguous weights
            self.batches.close()
            if self.tensorboard is not None:
                self.tensorboard.close()

    def _run(self, threads: int) -> TrainResult:
        config = self.config
        progress = Progress(config.steps, self.step, self.progress, config.eval_every, silent=not self.processes.main)
        progress.write(start_line(
            config.model, self.flow, self.data, self.device, threads, config.steps, config.batch_size,
            self.step, self.directory.final if self.resume_command else "(temporary)", self.processes.world,
        ))  # fmt: skip
        if self.step == config.steps and self.last_saved_step is not None:
            progress.write(f"the run has already reached step {self.step} of --steps {config.steps}: nothing "
                           f"to train (give a larger --steps to continue it)")  # fmt: skip
        elif self._out_of_patience() and self.last_saved_step is not None:
            progress.write(f"the run stopped early at step {self.step} (no better model in {config.patience} "
                           f"evaluations): nothing to train (give a larger --patience, or 0, to continue it)")  # fmt: skip
        interval_start, interval_steps = time.perf_counter(), 0
        if self.last_saved_step is None:
            # The untrained flow (the fitted start) is the first candidate for the best model,
            # and a checkpoint of step 0: every run that has trained at all has a last.pt, so
            # a run without one provably never trained (see resume.check_can_start_over).
            self._log(None, None, progress)
            if self.last_saved_step != self.step:
                self._save()
            progress.restart_clock()  # the rate and time left are of training steps
        while self.step < config.steps and not self._out_of_patience():
            if self.processes.agree(self.stop.signum is not None):
                self.stop.signum = self.stop.signum or signal.SIGTERM  # another process's signal
                progress.close()
                self._stop_for_signal()
            taken = self._train_step()
            if taken is not None:
                loss, grad_norm = taken
                interval_steps += 1
                evaluating = self.step % config.eval_every == 0 or self.step == config.steps
                progress.stepped(self.step, loss, evaluating)
                if evaluating:
                    seconds = time.perf_counter() - interval_start
                    self.train_seconds += seconds
                    self._log(grad_norm, interval_steps / max(seconds, 1e-9), progress)
                    interval_start, interval_steps = time.perf_counter(), 0
                due = self.step % config.checkpoint_every == 0 or self.step == config.steps
                if due and self.last_saved_step != self.step:
                    self._save()
        progress.close()
        if self.last_saved_step != self.step:
            self._save()
        if self._stopped_early():
            print(
                f"stopped early at step {self.step}: no better model in the last "
                f"{config.patience} evaluations (best at step {self.best.step})",
                file=sys.stderr,
            )
        return self._finish()

    def _plan(self) -> str:
        """Validation and early stopping, said at step 0."""
        every = self.config.eval_every
        epoch = steps_per_epoch(len(self.data.train), self.config.batch_size)
        when = f"once per epoch, {every} step{'s' if every > 1 else ''}" if every == epoch else f"every {every} steps"
        stopping = (
            f"early stopping after {self.config.patience} evaluations without a better model"
            if self.config.patience
            else "no early stopping"
        )
        return f"validation {when}; {stopping}"

    def _stop_for_signal(self) -> None:
        """Stop for the signal received: save the step reached and say how to resume, or, for a
        replacement that has not taken the old run's place yet, leave the old run as it was."""
        if self.directory.pending:
            raise TrainingInterrupted(
                f"interrupted by {self.stop.name} at step {self.step}, before the new run's first "
                f"checkpoint: the run in {self.directory.final} was not replaced",
                self.stop.exit_code,
            )
        if not self.resume_command:
            raise TrainingInterrupted(
                f"interrupted by {self.stop.name} at step {self.step}; nothing is kept without a run directory "
                f"(the flow holds the weights of step {self.step}; give out= to keep checkpoints)",
                self.stop.exit_code,
            )
        if self.last_saved_step != self.step:
            self._save()
        raise TrainingInterrupted(
            f"interrupted by {self.stop.name} at step {self.step}; checkpoint saved. "
            f"Continue with: {self._resume_command()}",
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
        # The step's draws come from a seed of (seed, step), per example of the global batch
        # (``core.batch``): the same on any number of processes, and again on resume.
        torch.manual_seed(step_seed(self.config.seed, self.step))
        examples = self.batches.next().contiguous(memory_format=self.memory_format)
        with batch.part(self.processes.slice(self.config.batch_size), self.config.batch_size):
            if self.noise_factor is not None:
                examples = examples + batch.randn_like(examples) @ self.noise_factor.T
            step_loss = self.step_loss(examples)
        self.optimizer.zero_grad(set_to_none=True)
        step_loss.loss.backward()
        max_norm = self.config.clip if self.config.clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.flow.parameters(), max_norm)
        # One host sync per step (on a GPU, each .item() would wait for the device).
        values = torch.stack([step_loss.loss.detach().double(), grad_norm.double()])
        if self.processes.distributed:  # the global batch's loss (the gradients are averaged already)
            values[0] = self.processes.mean(values[0])
        loss_value, grad_norm = values.tolist()
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

    def _log(self, grad_norm: float | None, steps_per_s: float | None, progress: Progress) -> None:
        """Evaluate on the validation rows and write a metrics row: the mean training loss
        since the last row, or at step 0 the NLL of (up to ``STEP0_TRAIN_ROWS``) training rows."""
        options, processes = self.data.loader_options, self.processes
        if self.step == 0:
            for flow in {id(f): f for f in (self.flow, self._eval_flow())}.values():
                initialize_data_dependent(flow, self.data.train, options, processes)
            train_nll = evaluate_nll(self._eval_flow(), head(self.data.train, STEP0_TRAIN_ROWS), options, processes)
            train_loss = train_nll if self.config.objective == "mle" else ""
        val_log_probs = evaluate_log_probs(self._eval_flow(), self.data.val, options, processes)
        val_nll = -val_log_probs.mean().item() if len(val_log_probs) else math.nan  # nan: no validation data
        if self.step > 0:
            train_loss = self.sums["loss"] / max(self.count, 1)
            train_nll = self.sums["nll"] / max(self.count, 1) if self.config.objective == "mle" else ""
        row = {
            "step": self.step,
            "train_loss": train_loss,
            "train_nll": train_nll,
            "val_nll": val_nll if math.isfinite(val_nll) else "",
            "val_bpd": val_nll / (self.data.dims * math.log(2)) if math.isfinite(val_nll) else "",
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": "" if grad_norm is None else grad_norm,
            "steps_per_s": "" if steps_per_s is None else steps_per_s,
            "nfe_forward": self.sums["nfe_forward"] / max(self.count, 1),
            "nfe_backward": self.sums["nfe_backward"] / max(self.count, 1),
            "elapsed_s": self.train_seconds,
            "skipped_steps": self.skipped,
        }
        with self._writing("metrics"):
            if self.metrics is not None:
                self.metrics.append(row)
            if self.tensorboard is not None:
                self.tensorboard.metrics(row)
        self.skipped = 0
        self.sums, self.count = dict.fromkeys(INTERVAL_SUMS, 0.0), 0  # before a checkpoint records them
        if self.config.select_best and self.best.consider(self.step, val_log_probs):
            # last.pt first, then best.pt: a kill in between leaves a checkpoint whose best step
            # is its own step, and resuming it rewrites best.pt (see ``_restore``).
            self._save()
            self._save_best(val_nll)
        nfe = f"  nfe {row['nfe_forward']:.0f}+{row['nfe_backward']:.0f}" if row["nfe_forward"] else ""
        val = f"  val nll {val_nll:.4f}" if math.isfinite(val_nll) else ""
        if self.step == 0:
            line = f"step 0/{self.config.steps}{val}  (the untrained flow; {self._plan()})"
            progress.write(line)
        else:
            postfix = {"loss": f"{train_loss:.3f}", **({"val": f"{val_nll:.3f}"} if val else {})}
            postfix.update({"nfe": nfe.strip().removeprefix("nfe ")} if nfe else {})
            line = f"step {self.step}/{self.config.steps}  train loss {train_loss:.4f}{val}{nfe}"
            progress.evaluated(self.step, line, postfix)
        warning = self.watch.evaluated(
            self.step, train_loss if self.config.objective == "mle" else None, val_log_probs, self.best.step,
            self.config.eval_every, self.config.patience,
        )  # fmt: skip
        if warning:
            progress.write(warning)

    def _save_best(self, val_nll: float) -> None:
        if not self.processes.main:
            return
        payload = {
            "model_spec": self.spec.to_dict() if self.spec is not None else None,
            **self.data.layout(),
            "data_fingerprint": self.fingerprint,  # score/verify/explain find the run's data by it
            "step": self.step,
            "val_nll": val_nll,
            "model": self._eval_flow().state_dict(),
        }
        with self._writing("best checkpoint"):
            save_checkpoint(self.run_dir / BEST_NAME, payload)

    def _finish(self) -> TrainResult:
        """Evaluate the selected weights on the test data and write ``results.json``. A flow
        without a spec (``clayflow.fit``'s, the caller's own) takes the selected weights. On
        several processes, all of them evaluate (each its share) and rank 0 writes."""
        options, processes = self.data.loader_options, self.processes
        check_identical(processes, self._eval_flow())
        if self.best.step is not None:  # rank 0 reads best.pt (the others may not see its disk)
            selected = processes.on_main(lambda: read_checkpoint(self.run_dir / BEST_NAME)["model"])
            flow = copy.deepcopy(self._eval_flow()) if self.spec is not None else self.flow
            flow.load_state_dict(selected)
            selected_step, val_nll = self.best.step, self.best.val_nll
        else:
            flow, selected_step = self._eval_flow(), self.step
            val_nll = evaluate_nll(flow, self.data.val, options, processes) if len(self.data.val) else None
            if self.spec is None:
                self.flow.load_state_dict(flow.state_dict())
        if self.spec is None:
            flow = self.flow
        flow.eval()
        test_nll = evaluate_nll(flow, self.data.test, options, processes) if len(self.data.test) else None
        result = TrainResult(
            run_dir=self.run_dir,
            steps=self.step,
            test_nll=test_nll,
            test_bpd=None if test_nll is None else test_nll / (self.data.dims * math.log(2)),
            val_nll=val_nll,
            train_seconds=self.train_seconds,
            selected_step=selected_step,
            patience=self.config.patience,
            stopped_early=self._stopped_early(),
            model=self.config.model,
        )
        if processes.main:
            with self._writing("results"):
                write_json(self.run_dir / "results.json", result.to_dict())
        processes.barrier()  # no collective left in flight when a process goes on, or exits
        return result
