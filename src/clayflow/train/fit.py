"""``clayflow.fit``: train a flow built in Python on tensors or datasets in memory, with the
command line's loop (progress, validation, best-weights selection, early stopping,
checkpoints and exact resume).

>>> import torch, clayflow
>>> flow = clayflow.models.realnvp(2, layers=2, hidden=8)
>>> x = torch.randn(600, 2)
>>> result = clayflow.fit(flow, x[:500], val=x[500:], steps=20, batch_size=100, progress=False)
>>> result.steps, len(result.history) > 1
(20, True)
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, default_collate

from clayflow.core import Flow
from clayflow.data import Dataset
from clayflow.errors import ClayflowError, UsageError
from clayflow.models import VECTOR, data_kind
from clayflow.train.config import KIND_DEFAULTS, TrainConfig, config_from_dict
from clayflow.train.run import TrainResult, read_metrics
from clayflow.train.sampler import Examples
from clayflow.train.setup import SMALL_TABLE, SMALL_TABLE_ROWS, data_defaults
from clayflow.train.signals import StopRequest
from clayflow.train.start import FIT_DATA, start_training

# The options of the optimisation that ``fit`` takes by name (see ``TrainConfig`` for each).
FIT_OPTIONS = frozenset(
    {
        "optimizer", "weight_decay", "schedule", "warmup", "clip", "ema", "nonfinite", "compile", "precision",
        "patience", "select_best", "checkpoint_every", "eval_every", "seed", "device", "threads", "tensorboard",
    }
)  # fmt: skip


@dataclass
class FitResult(TrainResult):
    """``TrainResult`` (``run_dir`` is None without ``out``) and ``history``: the metrics rows,
    one per evaluation (``step``, ``train_loss``, ``val_nll``, ...; None where empty)."""

    history: list[dict[str, float | None]] = field(default_factory=list)


def fit(
    flow: Flow,
    train: Examples | DataLoader,
    val: Examples | None = None,
    test: Examples | None = None,
    *,
    steps: int = 1000,
    batch_size: int | None = None,
    lr: float | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
    num_workers: int | None = None,
    **options: Any,
) -> FitResult:
    """Train ``flow`` by maximum likelihood on ``train`` and leave the selected weights in it
    (on the training device, in eval mode).

    Data: tensors ``(N, *event_shape)`` (any real dtype; image models take integer levels),
    or map-style ``torch.utils.data.Dataset``s whose items are examples (or ``(example,
    label)`` pairs; labels are ignored) for data that do not fit in memory, read through a
    ``DataLoader`` with ``num_workers`` workers. A ``DataLoader`` given as ``train`` lends its
    dataset, batch size and worker options (``worker_init_fn``, ``multiprocessing_context``,
    ``pin_memory``, ``prefetch_factor``; a custom ``collate_fn`` is refused); clayflow draws
    the batches itself (shuffled epochs from ``seed``, dropping the last partial batch), so
    that a resume is exact. (Random augmentations drawn in worker processes restart their
    streams on resume; with ``num_workers=0`` they come from torch's checkpointed stream.)
    A conditional flow (``context_features`` K) of vectors trains on rows ``(N, D + K)``
    holding x and its context side by side (``Flow.split_rows``): the NLLs are then
    -log p(x | c).

    ``val``: evaluated once per epoch (``eval_every``); the weights with the lowest validation
    NLL are the ones kept (the untrained flow is the first candidate), and the run stops
    early after ``patience`` evaluations without a better one. Without ``val``, the last
    weights are kept and nothing stops early. ``test``: evaluated once at the end. Vector data
    of 5,000 training rows or more are evaluated and kept as a moving average of the weights
    (``ema`` 0.99, as ``clayflow train``'s; ``ema=0`` keeps the weights themselves); images
    keep the weights themselves unless ``ema`` is given.

    ``out``: a run directory for ``metrics.csv``, ``config.json``, ``results.json`` and the
    checkpoints (``last.pt``, ``best.pt``); with ``resume=True`` a stopped or killed fit
    continues from ``last.pt`` exactly (the same flow architecture, data and options; only
    ``steps``, ``eval_every``, ``checkpoint_every``, ``patience``, ``nonfinite``, ``device``,
    ``threads`` and ``compile`` may change). ``force`` replaces an existing run. Without
    ``out`` the checkpoints live in a temporary directory, deleted at the end.

    ``batch_size`` and ``lr`` default as ``clayflow train``'s: 2e-3 for vectors, with batches
    of 64 for tables under 5,000 training rows (its small-table batch, which it gives its
    coupling and autoregressive models) and 512 above; 64 and 1e-3 for images. Other
    options, by ``TrainConfig``'s names: ``optimizer``,
    ``weight_decay``, ``schedule``, ``warmup``, ``clip``, ``ema``, ``nonfinite``, ``compile``,
    ``patience``, ``select_best``, ``checkpoint_every``, ``eval_every``, ``seed``, ``device``,
    ``threads``, ``tensorboard`` (metrics as TensorBoard events in ``out/tensorboard``).
    ``progress``: a progress bar (None: when stderr is a terminal; else log lines).

    In a script that ``torchrun`` starts on several processes, every process calls ``fit``
    with the same flow and the same data (processes given different data are refused);
    ``batch_size`` is the global batch, split over them, rank 0 alone writes ``out``, and
    every process returns the result with the trained weights in its ``flow``.

    Returns a ``FitResult`` (test NLL, None without ``test``; selected step, ``history``); raises ``UsageError`` for
    bad options, ``TrainingStopped`` (a ``ClayflowError``) on divergence or a stop signal.
    """
    if out is None and (resume or options.get("tensorboard")):
        raise UsageError(f"{'resume=True' if resume else 'tensorboard'} needs a run directory; give out=")
    unknown = sorted(set(options) - FIT_OPTIONS)
    if unknown:
        raise UsageError(f"fit() has no option {', '.join(unknown)}; it takes {', '.join(sorted(FIT_OPTIONS))}")
    loader_options = {"num_workers": num_workers or 0}
    if isinstance(train, DataLoader):
        train, loader_options, batch_size = _from_loader(train, num_workers, batch_size)
    # A conditional flow's examples hold x and c (Flow.split_rows): its events, bits/dim and log
    # lines are x's (D columns of rows (x, c); images less their class channel), not x's and c's.
    data = Dataset(FIT_DATA, _examples(train, "train"), _examples(val, "val"), _examples(test, "test"),
                   loader_options=loader_options, context_features=flow.context_features or 0)  # fmt: skip
    if len(data.train) == 0:
        raise UsageError("fit() needs training examples; train is empty")
    kind = data_kind(data.event_shape) if flow.event_shape is None else data_kind(tuple(flow.event_shape))
    # The model as config.json names it: its class and a digest of its layers (a resume
    # with another architecture is refused even where the weights' shapes agree).
    architecture = hashlib.sha256(repr(flow).encode()).hexdigest()[:12]
    values = {**options, "model": f"{type(flow).__name__}:{architecture}", "data": FIT_DATA, "steps": steps}
    if batch_size is None:  # clayflow train's: batches of 64 for tables under SMALL_TABLE_ROWS rows
        small_table = kind == VECTOR and len(data.train) < SMALL_TABLE_ROWS
        batch_size = SMALL_TABLE["batch_size"] if small_table else KIND_DEFAULTS[kind]["batch_size"]
    values["batch_size"] = batch_size
    values["lr"] = KIND_DEFAULTS[kind]["lr"] if lr is None else lr
    if len(data.val) == 0:
        if options.get("select_best") or options.get("patience"):
            raise UsageError("selecting the best weights (select_best, patience) needs val data")
        values.update(select_best=False, patience=0)
    config = config_from_dict(values, source="fit()")

    def setup(config: TrainConfig, checkpoint: dict | None, new_run: bool):
        return data_defaults(config, data, new_run=False), data, flow, None

    command = "clayflow.fit(flow, ..., out='{run_dir}', resume=True)"
    stop = StopRequest()
    with stop.catching(), tempfile.TemporaryDirectory(prefix="clayflow-fit-") as scratch:
        run_dir = Path(out) if out is not None else Path(scratch) / "run"
        result = start_training(config, run_dir, resume, force, progress, stop, setup=setup,
                                resume_command=command if out is not None else "")  # fmt: skip
        history = [_numbers(row) for row in read_metrics(run_dir / "metrics.csv")]
    values = {f.name: getattr(result, f.name) for f in fields(TrainResult)}
    return FitResult(**{**values, "run_dir": Path(out) if out is not None else None}, history=history)


def _from_loader(loader: DataLoader, num_workers: int | None, batch_size: int | None):
    """A ``DataLoader``'s dataset, the options to read it with, and its batch size (unless
    ``batch_size`` is given). Its sampler and shuffling are not used: clayflow draws the
    batches (exact resume); a custom ``collate_fn`` is refused (examples are stacked)."""
    if loader.collate_fn is not default_collate:
        raise UsageError("fit() stacks examples itself; give a DataLoader without collate_fn (or the Dataset)")
    if num_workers is not None and num_workers != loader.num_workers:
        raise UsageError(f"num_workers={num_workers} but the DataLoader has {loader.num_workers}; give one")
    options = {"num_workers": loader.num_workers, "worker_init_fn": loader.worker_init_fn,
               "multiprocessing_context": loader.multiprocessing_context, "pin_memory": loader.pin_memory}  # fmt: skip
    if loader.num_workers:
        options["prefetch_factor"] = loader.prefetch_factor
    return loader.dataset, options, loader.batch_size if batch_size is None else batch_size


def _examples(examples: Examples | None, name: str) -> Examples:
    """A split as a tensor or a dataset; None is an empty tensor."""
    if examples is None:
        return torch.zeros(0)
    if isinstance(examples, Tensor):
        if examples.dim() < 2:
            raise UsageError(f"{name} must be a batch of examples (N, *event_shape), got shape {tuple(examples.shape)}")
        if examples.is_floating_point() and not (finite := examples.isfinite().flatten(1).all(1)).all():
            rows = (~finite).nonzero().flatten()  # as the CLI names a file's: else the first step's loss is NaN
            raise ClayflowError(f"{name} example {int(rows[0])} (of {len(rows)} such) holds NaN or inf values; "
                                "remove or impute them first")  # fmt: skip
        return examples.detach()
    if isinstance(examples, torch.utils.data.Dataset) and hasattr(examples, "__len__"):
        return examples
    raise UsageError(f"{name} must be a tensor or a map-style torch Dataset, got {type(examples).__name__}")


def _numbers(row: dict[str, str]) -> dict[str, float | None]:
    values = {key: (float(value) if value != "" else None) for key, value in row.items()}
    return {**values, "step": int(row["step"])}
