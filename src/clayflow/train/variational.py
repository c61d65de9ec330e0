r"""``clayflow fit``: a flow fitted by reverse KL to an unnormalised target, in a run directory.

The run directory is a training run's (``clayflow.train.rundir``: claimed and locked, replaced
only with ``--force`` once the new run has a checkpoint, never a user's folder), with
``config.json`` (``"kind": "variational"``), ``metrics.csv`` (ESS, log Z, its standard error,
the ELBO and Pareto k̂ at every evaluation), ``checkpoints/last.pt`` (the whole
``ReverseKLTraining`` state: a killed or interrupted run resumes to the same numbers) and
``results.json``. ``clayflow.load(run)`` gives the fitted flow.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from clayflow.errors import ClayflowError, UsageError
from clayflow.models import ModelSpec, build, model_defaults, model_options
from clayflow.train.checkpoint import CHECKPOINT_NAME, read_checkpoint, save_checkpoint
from clayflow.train.loop import TrainingInterrupted, TrainingStopped
from clayflow.train.report import Progress
from clayflow.train.run import MetricsLog, read_json, write_json
from clayflow.train.rundir import ExistingRun, NewRun, default_run_dir
from clayflow.train.setup import resolve_device
from clayflow.train.signals import StopRequest
from clayflow.variational import ReverseKLTraining, Settings, Target, load_target
from clayflow.variational.fit import check_eval_samples

KIND = "variational"  # config.json's "kind" of a fitted run
METRICS = ("step", "loss", "beta", "ess", "log_z", "log_z_se", "elbo", "pareto_k", "lr", "grad_norm", "elapsed_s")
RESUMABLE = {"steps", "eval_every", "eval_samples", "checkpoint_every", "threads", "device"}  # may change on --resume


@dataclass
class FitConfig:
    """The options of ``clayflow fit`` (``config.json`` holds them, with ``kind``)."""

    target: str = ""  # a built-in target's name, or module:function / file.py:function
    dims: int | None = None  # D, for a function target without a dims attribute
    model: str = "realnvp"  # a vector model (realnvp, nice, glow, maf, iaf, nsf, cnf, planar, radial)
    options: dict[str, Any] = field(default_factory=dict)  # the model builder's options given
    steps: int = 5000
    batch_size: int = 512
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup: int = 0
    anneal: int | None = None  # steps over which beta rises from 0.01 to 1 (None: a fifth of the steps)
    samples: str | None = None  # a .csv/.npy of draws from the target: their NLL is mixed into the loss
    forward_weight: float = 0.5  # that NLL's share of the loss, with samples
    clip: float = 10.0
    seed: int = 0
    eval_every: int = 500
    eval_samples: int = 8192
    checkpoint_every: int = 500
    threads: int | None = None
    device: str = "cpu"

    def settings(self) -> Settings:
        anneal = self.steps // 5 if self.anneal is None else self.anneal  # a new run records it resolved
        return Settings(self.steps, self.batch_size, self.lr, self.schedule, self.warmup, anneal, self.clip, self.seed)

    def check(self) -> None:
        """Bad values as one ``UsageError`` line."""
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        check_eval_samples(self.eval_samples)
        if (self.anneal or 0) < 0 or self.lr <= 0 or self.clip < 0 or self.warmup < 0:
            raise UsageError("--anneal, --warmup and --clip must be >= 0 and --lr > 0")
        if self.anneal is not None and self.anneal >= self.steps:
            raise UsageError(f"--anneal ({self.anneal}) must end before --steps ({self.steps}), so that the last "
                             "steps fit the target itself")  # fmt: skip
        if not 0 <= self.forward_weight <= 1:
            raise UsageError(f"--forward-weight must be in [0, 1], got {self.forward_weight}")
        if self.schedule not in ("cosine", "constant"):
            raise UsageError(f"--schedule must be cosine or constant, got {self.schedule!r}")
        unknown = set(self.options) - model_options(self.model)
        if unknown:
            raise UsageError(f"model {self.model!r} has no option(s) {', '.join(sorted(unknown))}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, **asdict(self)}


def fit(config: FitConfig | dict[str, Any] | None, out: Path | None, *, resume: bool = False, force: bool = False,
        progress: bool | None = None, stop: StopRequest | None = None) -> dict[str, Any]:  # fmt: skip
    """Fit ``config.model`` to ``config.target`` in the run directory ``out`` (new, or resumed
    from its last checkpoint); returns the contents of ``results.json`` (with ``run_dir``).
    With ``resume``, ``config`` is None or a dict of the options given again: the run keeps its
    own, and only the ``RESUMABLE`` ones may change."""
    stop = stop or StopRequest()
    if resume:
        config = resumed_fit_config(out, config or {})
    elif not isinstance(config, FitConfig):
        config = FitConfig(**(config or {}))
    if config.anneal is None:
        config.anneal = config.steps // 5  # recorded, so that a longer --steps on resume keeps it
    config.check()
    target = load_target(config.target, config.dims)
    samples, forward_weight = _target_samples(config, target)
    spec = _model_spec(config, target.dims, out if resume else None)
    torch.manual_seed(config.seed)  # the initial weights too come from the run's seed
    flow = build(spec).to(resolve_device(config.device))
    training = ReverseKLTraining(flow, target, config.settings(), samples, forward_weight)
    checkpoint = None
    if resume:
        run = ExistingRun(out)
    else:
        run = NewRun(out or default_run_dir(config.model, _name(config.target)), force=force, unique=out is None)
    try:
        if resume:
            run.remove_stale_temporaries()  # of a checkpoint write that a kill cut short
            if (out / CHECKPOINT_NAME).exists():
                checkpoint = read_checkpoint(out, map_location=resolve_device(config.device))
                training.load_state_dict(checkpoint)
        write_json(run.path / "config.json", config.to_dict())
        return _Fitting(config, run, target, spec, training, checkpoint, progress, stop).run()
    except BaseException:
        run.abandon()
        raise
    finally:
        run.release()


def _target_samples(config: FitConfig, target: Target) -> tuple[torch.Tensor | None, float]:
    """The draws of ``--samples`` ``(M, D)`` and their weight in the loss, or ``(None, 0)``."""
    if config.samples is None:
        return None, 0.0
    from clayflow.data.tabular import read_table

    values, _ = read_table(config.samples)
    if values.shape[1] != target.dims:
        raise UsageError(f"--samples {config.samples} has {values.shape[1]} columns; target {config.target} has {target.dims} dimensions")
    return torch.as_tensor(values, dtype=torch.get_default_dtype()), config.forward_weight


def _name(target: str) -> str:
    """A target as a part of a run directory's name: ``u1``, ``model-log_posterior``."""
    module, _, function = target.rpartition(":")
    return f"{Path(module).stem.split('.')[-1]}-{function}" if module else target


def _model_spec(config: FitConfig, dims: int, resumed: Path | None) -> ModelSpec:
    """The run's model: as the checkpoint of the ``resumed`` run recorded it (``from_dict`` fills
    the options an older clayflow did not record), else ``config``'s, with every builder
    default recorded, so that a later change of a default cannot change this run's model."""
    if resumed is not None and (resumed / CHECKPOINT_NAME).exists():
        return ModelSpec.from_dict(read_checkpoint(resumed, map_location="cpu")["model_spec"])
    return ModelSpec(config.model, [dims], {**model_defaults(config.model), **config.options})


def resumed_fit_config(out: Path | None, given: dict[str, Any]) -> FitConfig:
    """The run's own config, with the options ``given`` again: equal to the run's, or resumable."""
    if out is None or not (out / "config.json").exists():
        raise UsageError(f"{out} is not a run of clayflow fit (no config.json); give the run directory to --resume")
    saved = read_json(out / "config.json")
    if saved.get("kind") != KIND:
        raise UsageError(f"{out} was trained by clayflow train; continue it with: clayflow train --resume {out}")
    saved.pop("kind")
    names = {f.name for f in fields(FitConfig)}
    config = FitConfig(**{k: v for k, v in saved.items() if k in names})
    for name, value in given.items():
        if name not in names:
            raise UsageError(f"clayflow fit has no option {name!r}")
        if value != getattr(config, name):
            if name not in RESUMABLE:
                raise UsageError(f"--{name.replace('_', '-')} cannot change on --resume (the run has "
                                 f"{getattr(config, name)!r}); only {', '.join(sorted(RESUMABLE))} can")  # fmt: skip
            setattr(config, name, value)
    return config


class _Fitting:
    """The loop of one ``fit``: steps, evaluations, checkpoints, metrics and the stop signal."""

    def __init__(self, config, run, target: Target, spec: ModelSpec, training: ReverseKLTraining,
                 checkpoint, progress, stop) -> None:  # fmt: skip
        self.config, self.run_dir, self.target, self.spec, self.training = config, run, target, spec, training
        self.stop, self.seconds = stop, float((checkpoint or {}).get("train_seconds", 0.0))
        self.history: list[dict[str, float]] = list((checkpoint or {}).get("history", []))
        self.metrics = MetricsLog(run.path / "metrics.csv", training.step if checkpoint else None, METRICS)
        bar = sys.stderr.isatty() if progress is None else progress
        self.progress = Progress(config.steps, training.step, bar, config.eval_every)
        self.losses: list[float] = list((checkpoint or {}).get("losses", []))  # since the last metrics row
        self.grad_norm = float((checkpoint or {}).get("grad_norm", math.nan))
        self.saved_step: int | None = training.step if checkpoint else None

    def run(self) -> dict[str, Any]:
        config, training = self.config, self.training
        threads_before = torch.get_num_threads()
        torch.set_num_threads(config.threads or threads_before)
        try:
            self.progress.write(f"fitting {config.model} ({sum(p.numel() for p in training.flow.parameters()):,} "
                                f"parameters) to {config.target} ({self.target.dims} dimensions) for {config.steps} "
                                f"steps of {config.batch_size} draws; run directory {self.run_dir.final}")  # fmt: skip
            if not self.history:
                self._evaluate()
                self._save()
            while training.step < config.steps:
                if self.stop.signum is not None:
                    self._save()
                    raise TrainingInterrupted(f"interrupted by {self.stop.name} at step {training.step}; resume with: "
                                              f"clayflow fit --resume {self.run_dir.final}", self.stop.exit_code)  # fmt: skip
                started = time.perf_counter()
                taken = training.train_step()
                self.seconds += time.perf_counter() - started
                if taken is None:
                    continue
                self.losses.append(taken[0])
                self.grad_norm = taken[1]
                evaluating = training.step % config.eval_every == 0 or training.step == config.steps
                self.progress.stepped(training.step, taken[0], evaluating)
                if evaluating:
                    self._evaluate()
                if training.step % config.checkpoint_every == 0 or training.step == config.steps:
                    self._save()
            self.progress.close()
            return self._finish()
        except ClayflowError as exc:
            if isinstance(exc, TrainingStopped):
                raise
            raise TrainingStopped(f"{exc}; {self._kept()}") from None
        finally:
            torch.set_num_threads(threads_before)

    def _evaluate(self) -> None:
        training = self.training
        row, _ = training.evaluation_row(self.losses, self.config.eval_samples)
        row.update(loss=row["loss"] if self.losses else "", lr=training.scheduler.get_last_lr()[0],
                   grad_norm="" if math.isnan(self.grad_norm) else self.grad_norm, elapsed_s=self.seconds)  # fmt: skip
        self.losses.clear()
        self.history.append(row)
        self.metrics.append(row)
        line = (f"step {training.step}/{self.config.steps}  ESS {100 * row['ess']:.1f}%  log Z {row['log_z']:.4f} "
                f"± {row['log_z_se']:.4f}  ELBO {row['elbo']:.4f}  k {row['pareto_k']:.2f}")  # fmt: skip
        if training.step == 0:
            self.progress.write(line + "  (the untrained flow)")
        else:
            self.progress.evaluated(training.step, line, {"ESS": f"{100 * row['ess']:.1f}%", "logZ": f"{row['log_z']:.3f}"})

    def _save(self) -> None:
        payload = {"model_spec": self.spec.to_dict(), "target": self.config.target, **self.training.state_dict(),
                   "history": self.history, "train_seconds": self.seconds, "config": self.config.to_dict(),
                   "losses": self.losses, "grad_norm": self.grad_norm}  # fmt: skip
        try:
            save_checkpoint(self.run_dir.path / CHECKPOINT_NAME, payload)
        except OSError as exc:
            raise TrainingStopped(f"cannot write the checkpoint of step {self.training.step}: {exc.strerror or exc}; "
                                  f"{self._kept()}") from None  # fmt: skip
        self.run_dir.checkpoint_written(self.training.step)
        self.saved_step = self.training.step

    def _kept(self) -> str:
        """What a stopped run keeps, and how to go on (a replacement that has not yet taken the
        old run's place, after the first checkpoint past step 0, is removed: the old run stays)."""
        if self.run_dir.pending:
            return f"the run in {self.run_dir.final} was not replaced"
        if self.saved_step is None:
            return "nothing was kept"
        return f"the checkpoint of step {self.saved_step} is kept; resume with: clayflow fit --resume {self.run_dir.final}"

    def _finish(self) -> dict[str, Any]:
        final = self.history[-1]
        results = {"target": self.config.target, "model": self.config.model, "dims": self.target.dims,
                   "steps": self.training.step, "train_seconds": self.seconds,
                   **{k: final[k] for k in ("ess", "log_z", "log_z_se", "elbo", "pareto_k")},
                   "eval_samples": self.config.eval_samples, "log_z_true": self.target.log_z,
                   "log_z_error": None if self.target.log_z is None else final["log_z"] - self.target.log_z}  # fmt: skip
        write_json(self.run_dir.path / "results.json",
                   {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in results.items()})  # fmt: skip
        return {**results, "run_dir": str(self.run_dir.path)}


def is_fitted_run(run: Path) -> bool:
    """Whether ``run`` is a run directory of ``clayflow fit`` (its ``config.json`` read as every
    run file is: a FIFO or a device in its place is refused, not read)."""
    path = Path(run) / "config.json"
    if not path.exists():
        return False
    config = read_json(path)
    return isinstance(config, dict) and config.get("kind") == KIND
