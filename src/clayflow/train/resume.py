"""What ``--resume`` checks so that a continued run is the run it claims to be.

A resumed run continues bit for bit only if it trains the same model, with the same options,
on the same data. The checkpoint records all three (``model_spec``, ``config``, and a
fingerprint of the data: rows per split, shape and a SHA-256 of the values), and a resume
compares them with what the run directory and the command give today: an edited
``config.json``, a changed data file, or an option given with a new value is refused with one
line naming what changed. Options equal to the run's own are accepted, so repeating the
training command with ``--resume`` added works; ``--data`` may name the same data another way
(a relative path from another folder): the fingerprint decides.

Only ``RESUMABLE_OPTIONS`` may change. ``--steps`` is one of them: a new total stretches (or
cuts) the cosine learning-rate schedule from the step the run has reached, so the steps after
it differ from an uninterrupted run's; the same ``--steps`` (or none) continues exactly.
"""

from __future__ import annotations

import hashlib
import math
import stat
import sys
from pathlib import Path
from typing import Any

import torch

from clayflow.data import Dataset
from clayflow.errors import ClayflowError, UsageError
from clayflow.models import ModelSpec, model_options
from clayflow.train.checkpoint import BEST_NAME, CHECKPOINT_NAME
from clayflow.train.config import TrainConfig, config_from_dict, flag
from clayflow.train.run import read_json, read_metrics
from clayflow.train.rundir import is_run_dir
from clayflow.train.schedule import lr_factor

# Options that may change when a run is resumed; the rest define the run.
RESUMABLE_OPTIONS = frozenset(
    {
        "steps", "device", "eval_every", "checkpoint_every", "patience", "nonfinite", "compile", "precision",
        "threads", "tensorboard",
    }
)  # fmt: skip
# May be spelled differently (``./d.csv``, ``../d.csv`` from a sub-folder, a moved file) when
# it names the same data: the checkpoint's data fingerprint decides.
SAME_DATA_OPTIONS = frozenset({"data"})


# Options added since runs were first written, with the value that matches how a run without
# them was trained (issue 15 added the fitted start and the discrete columns of tables).
OPTIONS_BEFORE_THEY_EXISTED = {"power_transform": False, "whiten": False, "discrete": "none", "input_noise": 0.0}


def read_run_options(run_dir: Path) -> dict[str, Any]:
    """The options in the run's ``config.json``, unvalidated (a run of ``clayflow train``,
    ``clayflow fit`` or ``clayflow.fit``); a file that does not hold an object is a runtime
    error (the file is broken, not the command)."""
    path = run_dir / "config.json"
    values = read_json(path)
    if not isinstance(values, dict):
        raise ClayflowError(f"{path} is malformed: it must hold an object of options")
    return values


def read_run_config(run_dir: Path, values: dict[str, Any] | None = None) -> TrainConfig:
    """The run's ``config.json`` (or its options ``values``, as ``read_run_options`` read them)
    as a validated config; a malformed one is a runtime error."""
    path = run_dir / "config.json"
    values = read_run_options(run_dir) if values is None else values
    if values.get("kind") == "variational":
        raise UsageError(f"{run_dir} is a run of clayflow fit (a flow fitted to a target), not of clayflow train; "
                         f"continue it with: clayflow fit --resume {run_dir}")  # fmt: skip
    values = {**OPTIONS_BEFORE_THEY_EXISTED, **values}
    try:
        return config_from_dict(values, source=str(path), here=False, saved=True)  # a resume may change --device
    except UsageError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise ClayflowError(f"{path} is malformed: {reason}") from None


def resumed_config(run_dir: Path, given: dict[str, Any]) -> TrainConfig:
    """The run's own config with the resumable options in ``given`` applied. Other options in
    ``given`` must equal the run's (the training command repeated with ``--resume``); a real
    change is a usage error naming the old and the new value."""
    saved = read_run_config(run_dir)
    saved_values = saved.to_dict()
    given = {name: value for name, value in given.items() if value is not None}  # None: not given
    changed = [
        f"{flag(name)} {saved_values[name]!r} -> {value!r}"
        for name, value in sorted(given.items())
        if name not in RESUMABLE_OPTIONS | SAME_DATA_OPTIONS and not _same(value, saved_values[name])
    ]
    if changed:
        raise UsageError(
            f"a resumed run keeps its options, but this command changes {', '.join(changed)}; "
            f"start a new run for that (only {', '.join(flag(n) for n in sorted(RESUMABLE_OPTIONS))} may change)"
        )
    return config_from_dict({**saved_values, **given}, source="options", saved=True)


def _same(new: Any, old: Any) -> bool:
    if isinstance(new, float) and isinstance(old, float):
        return math.isclose(new, old, rel_tol=1e-12, abs_tol=0.0)
    return new == old


def has_checkpointed(run_dir: Path) -> bool:
    """Whether the run ever wrote a result, or a metrics row or best checkpoint of a step after
    0: evidence that starting it over would destroy something. (Those of step 0 are the
    evaluation of the untrained flow, which starting over repeats exactly.)"""
    if (run_dir / "results.json").exists():
        return True
    if any(_step_of(row) != 0 for row in read_metrics(run_dir / "metrics.csv")):
        return True
    best = run_dir / BEST_NAME
    return best.exists() and _step_of(best) != 0


def _step_of(source: dict[str, str] | Path) -> int | None:
    """The step of a metrics row or a checkpoint file, or None if it cannot be read (or is
    not a regular file: a FIFO would block the read)."""
    try:
        if isinstance(source, Path):
            if not stat.S_ISREG(source.stat().st_mode):
                return None
            return int(torch.load(source, map_location="cpu", weights_only=True)["step"])
        return int(source["step"])
    except Exception:  # noqa: BLE001 - unreadable for any reason: not provably step 0
        return None


def check_can_start_over(run_dir: Path) -> None:
    """A run without ``last.pt`` starts over only if it is provably clayflow's and provably
    never trained: killed before the checkpoint of step 0, which a run writes before its first
    step (after evaluating the untrained flow, whose metrics row and best checkpoint of step 0
    a start-over repeats exactly). A run with results, or a best checkpoint or metrics rows of
    a later step, has lost its ``last.pt`` (a user or a disk deleted it), and starting it over
    would replace them: refused."""
    if not run_dir.is_dir():
        raise ClayflowError(f"{run_dir} does not exist; give --resume a run directory")
    if not is_run_dir(run_dir):
        raise ClayflowError(
            f"{run_dir} has no checkpoint ({CHECKPOINT_NAME}) and is not a clayflow run directory; "
            "nothing to resume"
        )
    if has_checkpointed(run_dir):
        raise ClayflowError(
            f"{run_dir} has lost its checkpoint ({CHECKPOINT_NAME}) but holds results of training; "
            "refusing to start it over. Start a new run, or restore the checkpoint"
        )


def data_fingerprint(data: Dataset) -> dict[str, Any]:
    """Rows per split, the example shape and a SHA-256 over every split's values: what a
    resume compares to notice a data file that changed under a run. Splits that are datasets
    (``clayflow.fit``) are not read through for this: only their sizes are compared."""
    splits = (data.train, data.val, data.test)
    digest = hashlib.sha256()
    for split in splits:
        if isinstance(split, torch.Tensor):
            digest.update(split.cpu().contiguous().view(torch.uint8).numpy().tobytes())  # any dtype's bytes
    return {
        "rows": [len(split) for split in splits],
        "shape": list(data.event_shape),
        "sha256": digest.hexdigest() if all(isinstance(s, torch.Tensor) for s in splits) else None,
    }


def fingerprint_difference(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """How data of fingerprint ``now`` differ from those of ``saved`` (``data_fingerprint``)."""
    if saved["rows"] != now["rows"]:
        return f"{sum(saved['rows'])} rows then, {sum(now['rows'])} now"
    if saved["shape"] != now["shape"]:
        return f"examples of shape {tuple(saved['shape'])} then, {tuple(now['shape'])} now"
    return "same size, other values"


def same_data(saved: dict[str, Any], now: dict[str, Any], context_features: int = 0) -> bool:
    """Whether fingerprints ``saved`` and ``now`` are of the same data. Runs of ``clayflow.fit``
    of a conditional flow checkpointed before 2026-12-04 recorded their examples' shape with the
    context (rows' D + K columns, images' class channel) where the data's is x's: the same data."""
    if saved == now:
        return True
    if not context_features:
        return False
    extra = context_features if len(now["shape"]) == 1 else 1  # K columns, or one class channel
    return saved == {**now, "shape": [now["shape"][0] + extra, *now["shape"][1:]]}


def _saved_spec(checkpoint: dict[str, Any] | None) -> ModelSpec | None:
    try:
        return ModelSpec.from_dict(checkpoint["model_spec"]) if checkpoint is not None else None
    except (KeyError, TypeError):
        return None  # check_same_run says what is wrong with it


def saved_discrete_columns(checkpoint: dict[str, Any] | None) -> dict[int, float] | None:
    """The dequantized columns and grid steps a checkpoint's model was built with: a resumed
    run keeps them, even where today's detection would choose others (runs from before grid
    steps existed dequantized whole numbers only). None without a readable checkpoint."""
    saved = _saved_spec(checkpoint)
    return None if saved is None else dict(zip(saved.discrete, saved.discrete_steps))


def saved_model_options(checkpoint: dict[str, Any] | None) -> dict[str, Any]:
    """The builder options a checkpoint's model was built with (every one, defaults included):
    a resumed run takes those its config leaves unset from here, not from today's defaults,
    so that a later change of a default (Glow's scale bound) cannot stop it resuming."""
    saved = _saved_spec(checkpoint)
    if saved is None:
        return {}
    try:
        known = model_options(saved.name, saved.kind)
    except ClayflowError:
        return {}  # a model of another name: check_same_run says so
    return {k: v for k, v in saved.options.items() if k in known}  # others: check_same_run names them


def check_same_run(checkpoint: dict[str, Any], spec: ModelSpec | None, config: TrainConfig,
                   fingerprint: dict[str, Any], run_dir: Path, context_features: int = 0) -> None:  # fmt: skip
    """The checkpoint must describe the model, options and data that the run directory and the
    command give now. Facts a checkpoint of an older clayflow did not record are not compared.
    A run of ``clayflow.fit`` (``spec`` None: the caller's flow) has no model description: its
    weights must load into the flow given. ``context_features``: the data's K context columns."""
    if (spec is None) != (checkpoint.get("model_spec") is None):
        how = "by clayflow train" if spec is None else "from Python with clayflow.fit"
        raise ClayflowError(f"{run_dir} was trained {how}; resume it the same way")
    if spec is not None:
        _check_same_model(checkpoint, spec, run_dir)
    _check_same_config(checkpoint, config, run_dir)
    _check_same_data(checkpoint, config, fingerprint, run_dir, context_features)


def _check_same_model(checkpoint: dict[str, Any], spec: ModelSpec, run_dir: Path) -> None:
    try:
        saved = ModelSpec.from_dict(checkpoint["model_spec"])
    except TypeError as exc:
        raise ClayflowError(f"checkpoint in {run_dir} has an unreadable model description: {exc}") from None
    differences = [
        name
        for name in ("name", "event_shape", "standardize", "levels", "discrete", "discrete_steps", "power", "whiten")
        if getattr(saved, name) != getattr(spec, name)
    ]
    differences += [k for k, v in saved.options.items() if k not in spec.options or spec.options[k] != v]
    if differences:
        raise ClayflowError(
            f"checkpoint in {run_dir} is of another model than its config.json "
            f"(differs in {', '.join(differences)}); it cannot resume this run"
        )


def _check_same_config(checkpoint: dict[str, Any], config: TrainConfig, run_dir: Path) -> None:
    saved_config = checkpoint.get("config") or {}
    edited = [
        f"{name} {saved_config[name]!r} -> {value!r}"
        for name, value in config.to_dict().items()
        if name in saved_config
        and name not in RESUMABLE_OPTIONS | SAME_DATA_OPTIONS
        and not _same(value, saved_config[name])
    ]
    if edited:
        raise ClayflowError(
            f"{run_dir / 'config.json'} was edited since the checkpoint ({', '.join(edited)}); "
            "restore it, or start a new run with --config"
        )


def _check_same_data(checkpoint: dict[str, Any], config: TrainConfig, fingerprint: dict[str, Any],
                     run_dir: Path, context_features: int = 0) -> None:  # fmt: skip
    saved_config = checkpoint.get("config") or {}
    saved_data, saved_name = checkpoint.get("data_fingerprint"), saved_config.get("data", config.data)
    if saved_data is None and saved_name != config.data:  # a checkpoint of an older clayflow
        raise ClayflowError(
            f"{run_dir} was trained on {saved_name!r}, and its checkpoint cannot tell whether "
            f"{config.data!r} holds the same data; resume with --data {saved_name}"
        )
    if saved_data is not None and not same_data(saved_data, fingerprint, context_features):
        what = fingerprint_difference(saved_data, fingerprint)
        which = f"the data {config.data!r} changed since {run_dir} was checkpointed"
        if saved_name != config.data:
            which = f"{config.data!r} holds other data than {saved_name!r}, which {run_dir} was trained on"
        raise ClayflowError(f"{which} ({what}); resume with the original data, or start a new run")


def check_changed_options(checkpoint: dict[str, Any], config: TrainConfig) -> None:
    """``--steps`` may grow or shrink on resume, down to the step reached; a cosine schedule is
    then stretched from that step, which is said, with the learning rate before and after. A
    change of ``--precision`` is said too."""
    step = checkpoint["step"]
    precision = (checkpoint.get("config") or {}).get("precision", "fp32")
    if precision != config.precision:
        print(f"--precision changed from {precision} to {config.precision} at step {step}: the continued run "
              "differs from an uninterrupted one", file=sys.stderr)  # fmt: skip
    if config.steps < step:
        raise UsageError(f"the run has reached step {step}; --steps {config.steps} would undo that, give at least {step}")
    before = (checkpoint.get("config") or {}).get("steps")
    if before is None or before == config.steps or config.schedule != "cosine" or step < config.warmup:
        return
    old = lr_factor(step, config.warmup, before, config.schedule) * config.lr
    new = lr_factor(step, config.warmup, config.steps, config.schedule) * config.lr
    print(
        f"--steps changed from {before} to {config.steps}: the cosine schedule now ends at step "
        f"{config.steps}, so the learning rate after step {step} is {new:.3g} (it was {old:.3g}); "
        "the continued run differs from an uninterrupted one",
        file=sys.stderr,
    )
