"""Starting or resuming a run: the checks a run directory needs before its first step, then
the training loop (``clayflow.train.loop``). ``train`` is the command line's way in;
``clayflow.fit`` comes in through ``start_training`` with its own data and flow."""

from __future__ import annotations

from pathlib import Path

import torch

from clayflow.errors import ClayflowError, UsageError
from clayflow.train.checkpoint import CHECKPOINT_NAME, check_best_kept, read_checkpoint
from clayflow.train.config import TrainConfig, config_from_dict
from clayflow.train.distributed import check_distributable, processes_from_environment
from clayflow.train.loop import Trainer, TrainingInterrupted
from clayflow.train.resume import (
    check_can_start_over,
    check_changed_options,
    check_same_run,
    data_fingerprint,
    resumed_config,
    saved_discrete_columns,
    saved_model_options,
)
from clayflow.train.run import TrainResult, read_json, write_json
from clayflow.train.rundir import ExistingRun, NewRun, ReadOnlyRun, default_run_dir
from clayflow.train.setup import build_flow, data_defaults, resolve_device
from clayflow.train.signals import StopRequest
from clayflow.train.tracking import check_available

FIT_DATA = "python"  # what config.json names as the data of a clayflow.fit run


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
        return start_training(config, run_dir, resume, force, progress, stop)


def start_training(config, run_dir, resume, force, progress, stop, setup=None, resume_command=None) -> TrainResult:
    """Train in a new or resumed run directory. ``setup(config, checkpoint, new_run)`` returns
    ``(config, data, flow, spec)``: by default the data and model that ``config`` names
    (``clayflow.fit`` passes its own); ``resume_command`` says how to continue a stopped run.

    On several processes (torchrun), rank 0 alone reads and writes the run directory (the
    others may be on machines that do not see its disk) and shares what it read."""
    processes = processes_from_environment()  # torchrun's processes, or this one
    if resume:
        if run_dir is None:
            raise UsageError("resuming needs the run directory")
        def read_config():
            _check_trained_the_same_way(Path(run_dir), from_python=setup is not None)
            # The run's own options; those in ``config`` must equal them or be resumable.
            return resumed_config(Path(run_dir), config.to_dict() if config is not None else {})

        config = processes.on_main(read_config)
    else:
        config = config_from_dict(config.to_dict(), source="TrainConfig")
    run = None
    if resume:  # locked before anything is read (by rank 0, the one process that writes)
        locked = processes.on_main(lambda: ExistingRun(Path(run_dir)), shared=False)
        run = locked if processes.main else ReadOnlyRun(Path(run_dir))
    try:
        device = resolve_device(config.device)
        if processes.distributed and device.type == "cuda":
            device = torch.device("cuda", processes.local_rank)
        if config.tensorboard:
            check_available()
        checkpoint = None
        if run is not None:
            last = run.path / CHECKPOINT_NAME
            checkpoint = processes.on_main(lambda: read_checkpoint(run.path, map_location="cpu") if last.exists() else None)
        config, data, flow, spec = (setup or setup_from_config)(config, checkpoint, new_run=not resume)
        fingerprint = data_fingerprint(data)
        check_distributable(processes, config.batch_size, fingerprint)
        if run is not None:
            if checkpoint is not None:
                check_same_run(checkpoint, spec, config, fingerprint, run.path, data.context_features)
                remedy = "a resumed run could not end with its best weights; put the file back first"
                processes.on_main(lambda: check_best_kept(run.path, checkpoint, remedy))
                check_changed_options(checkpoint, config)
            else:  # killed before its first checkpoint: start again from step 0 in place
                processes.on_main(lambda: check_can_start_over(run.path))
        if stop.signum is not None:
            raise TrainingInterrupted(f"interrupted by {stop.name} before training started; nothing was written",
                                      stop.exit_code)  # fmt: skip
        if run is not None:
            run.remove_stale_temporaries()
        else:  # rank 0 creates the run directory; the other processes learn where it writes
            unique = run_dir is None
            new_dir = default_run_dir(config.model, config.data) if unique else Path(run_dir)
            created = processes.on_main(lambda: NewRun(new_dir, force=force, unique=unique), shared=False)
            path = processes.on_main(lambda: str(created.path))
            run = created if processes.main else ReadOnlyRun(Path(path))
        processes.on_main(lambda: _write_config(run.path, config))
        trainer = Trainer(config, run, data, flow, spec, device, checkpoint, progress, fingerprint, stop,
                          resume_command=resume_command, processes=processes)  # fmt: skip
        return trainer.run()
    except BaseException:
        if run is not None:
            run.abandon()
        raise
    finally:
        if run is not None:
            run.release()


def _check_trained_the_same_way(run_dir: Path, from_python: bool) -> None:
    """A run of ``clayflow.fit`` resumes with ``fit``, one of ``clayflow train`` with it."""
    try:
        saved = read_json(run_dir / "config.json")
    except ClayflowError:
        return  # no or no readable config.json: the resume checks say what is wrong
    if not isinstance(saved, dict) or (saved.get("data") == FIT_DATA) == from_python:
        return
    if from_python:
        raise UsageError(f"{run_dir} was trained by clayflow train; continue it with: clayflow train --resume {run_dir}")
    raise UsageError(
        f"{run_dir} was trained from Python with clayflow.fit; continue it with "
        f"clayflow.fit(flow, ..., out='{run_dir}', resume=True)"
    )


def setup_from_config(config: TrainConfig, checkpoint: dict | None, new_run: bool):
    """The data and the untrained flow that ``config`` names (with ``config.context``, the
    table's rows as (x, context), see ``Dataset.with_context``), with the data's defaults
    filled in; a resumed run keeps the dequantized columns of its checkpoint."""
    data = config.dataset()
    config = data_defaults(config, data, new_run=new_run)
    flow, spec = build_flow(config, data, verbose=True, discrete=saved_discrete_columns(checkpoint),
                            saved_options=saved_model_options(checkpoint))  # fmt: skip
    return config, data, flow, spec


def _write_config(run_dir: Path, config) -> None:
    """``config.json``, written with the run's marker, so that a run directory always holds both."""
    try:
        write_json(run_dir / "config.json", config.to_dict())
    except OSError as exc:
        raise ClayflowError(f"cannot write {run_dir / 'config.json'}: {exc.strerror or exc}") from None

