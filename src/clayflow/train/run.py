"""The files of a run directory: ``config.json``, ``results.json`` (a ``TrainResult``) and
``metrics.csv`` (the directory itself, its marker and its lock are in ``rundir.py``)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clayflow.errors import ClayflowError
from clayflow.files import atomic_write, read_regular_text


@dataclass
class TrainResult:
    """What a finished run measured (also written to ``RUN/results.json``)."""

    run_dir: Path
    steps: int
    test_nll: float | None  # None: no test data (``clayflow.fit`` without ``test``)
    test_bpd: float | None
    val_nll: float | None  # None: no validation data
    train_seconds: float
    selected_step: int  # the step whose weights were evaluated (best validation, or last)
    patience: int  # early stopping after this many evaluations without a better model (0: off)
    stopped_early: bool
    model: str  # the model builder trained (the data's default when none was named; last, so
    # the fields before it keep their positions from before it existed)

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


# train_loss is the objective (with regularisers; the flow-matching loss for --objective fm),
# train_nll its NLL part (empty for flow matching); nfe_* are ODE function evaluations per step.
METRIC_COLUMNS = (
    "step",
    "train_loss",
    "train_nll",
    "val_nll",
    "val_bpd",
    "lr",
    "grad_norm",
    "steps_per_s",
    "nfe_forward",
    "nfe_backward",
    "elapsed_s",
    "skipped_steps",  # steps skipped for a non-finite loss or gradient (--nonfinite skip)
)


def write_json(path: Path, values: dict[str, Any]) -> None:
    """Atomically write ``values`` as indented JSON."""
    atomic_write(path, lambda f: f.write((json.dumps(values, indent=2) + "\n").encode()))


def read_json(path: Path) -> dict[str, Any]:
    """The object in a run's JSON file, or a ClayflowError naming the file."""
    try:
        return json.loads(read_regular_text(path))
    except (FileNotFoundError, NotADirectoryError):
        raise ClayflowError(f"{path} does not exist; is {path.parent} a clayflow run directory?") from None
    except OSError as exc:
        raise ClayflowError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ClayflowError(f"{path} is not valid JSON: {exc}") from None


class MetricsLog:
    """``metrics.csv``: one row per evaluation, flushed as written (``columns``: those of
    maximum-likelihood training by default).

    On resume, rows past the checkpoint's step (written after it, then lost with the
    killed process's state) are dropped so the file reads as one uninterrupted run.
    """

    columns: tuple[str, ...] = METRIC_COLUMNS

    def __init__(self, path: Path, resume_step: int | None = None, columns: tuple[str, ...] = METRIC_COLUMNS):
        self.path, self.columns = path, columns
        if resume_step is None or not path.exists():
            atomic_write(path, lambda f: f.write((",".join(columns) + "\n").encode()))
        else:
            kept = [row for row in read_metrics(path) if int(row["step"]) <= resume_step]
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)
            atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))

    def append(self, row: dict[str, Any]) -> None:
        """Append one row. The row is formatted first and written in one call, so a failure of
        the file (a full disk: an ``OSError``) leaves at most a part of a line without its
        newline, which ``read_metrics`` leaves out on resume."""
        line = io.StringIO()
        csv.DictWriter(line, self.columns, lineterminator="\n").writerow(row)
        with self.path.open("a", newline="") as file:
            file.write(line.getvalue())


def read_metrics(path: Path) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` as dicts (empty if the file does not exist). A last line
    without its newline is a row cut short by a crash or a full disk, and is left out."""
    if not path.exists():
        return []
    try:
        text = read_regular_text(path)
    except OSError as exc:
        raise ClayflowError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return list(csv.DictReader(io.StringIO(text, newline="")))
