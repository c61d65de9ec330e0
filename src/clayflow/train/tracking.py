"""Experiment tracking: a run's metrics and pictures as TensorBoard events in
``RUN/tensorboard`` (``--tensorboard``), through ``torch.utils.tensorboard``, so that runs can
be compared side by side with ``tensorboard --logdir runs``. The ``tensorboard`` package is an
optional extra (``pip install tensorboard``), never needed otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clayflow.errors import UsageError

EVENTS_DIR = "tensorboard"
# metrics.csv column -> TensorBoard tag (the part before "/" groups the charts)
SCALARS = {
    "train_loss": "loss/train",
    "train_nll": "nll/train",
    "val_nll": "nll/val",
    "val_bpd": "bits_per_dim/val",
    "lr": "optimisation/lr",
    "grad_norm": "optimisation/grad_norm",
    "steps_per_s": "speed/steps_per_s",
    "nfe_forward": "cnf/nfe_forward",
    "nfe_backward": "cnf/nfe_backward",
    "skipped_steps": "optimisation/skipped_steps",
}


def summary_writer(run_dir: Path, purge_step: int | None = None):
    """A ``SummaryWriter`` on ``run_dir/tensorboard``; events of steps >= ``purge_step`` that an
    earlier process wrote after its last checkpoint are discarded (as ``metrics.csv`` rows are).
    A ``UsageError`` when the ``tensorboard`` package is missing."""
    check_available()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / EVENTS_DIR), purge_step=purge_step)


def check_available() -> None:
    """Refuse ``--tensorboard`` (before training) when the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard") from None


class TensorBoardLog:
    """The metrics rows of a run as scalars (``SCALARS``), and its plots as images."""

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        self.writer = summary_writer(run_dir, purge_step)

    def metrics(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        for column, tag in SCALARS.items():
            value = row.get(column, "")
            if value not in ("", None):
                self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def log_pictures(run_dir: Path, paths: list[Path], step: int) -> None:
    """The PNG plots ``paths`` (samples, density, losses, ...) as images of ``step``."""
    from PIL import Image

    writer = summary_writer(run_dir)
    try:
        for path in paths:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            writer.add_image(f"plots/{path.stem}", pixels, step, dataformats="HWC")
    finally:
        writer.close()
