"""What the benchmark keeps: one CSV row per fit, one per selection candidate, and provenance.

``fits.csv``: a row per (dataset, estimator, seed, --steps) with the test and validation
log-likelihoods (nats per row, data units), wall time, what the estimator selected and, for
clayflow, ``train_seconds``, ``selected_step``, ``steps``, the run directory, its metrics.csv
and a hash of clayflow's sources at the time. ``selection.csv``: every candidate the
baselines' selection scored (GaussianMixture components and covariance type by validation
log-likelihood, with BIC; KDE bandwidths by cross-validated log-likelihood).
``test_rows/<dataset>-<estimator>-s<seed>.csv``: the log-likelihood of each test row, one per
line in the split's order, for the paired comparison of two estimators on the same rows.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIT_FIELDS = (
    "dataset", "estimator", "seed", "steps_flag", "status", "test_ll", "val_ll", "wall_s",
    "train_s", "selected_step", "steps", "choice", "detail", "check", "rows", "discrete",
    "clayflow_src", "run_dir", "metrics_csv", "finished",
)  # fmt: skip
SELECTION_FIELDS = ("dataset", "estimator", "seed", "candidate", "score", "bic", "note")


@dataclass
class Fit:
    """The outcome of one estimator on one dataset and seed."""

    test_ll: float = math.nan  # mean test log-likelihood per row, nats, data units
    test_rows: list[float] | None = None  # the log-likelihood of each test row (its mean is test_ll)
    val_ll: float = math.nan
    status: str = "ok"  # or "failed"
    choice: str = ""  # what was selected: "full k=3", "h=0.31", "step 1500/4000"
    detail: str = ""
    check: str = ""  # "<name> <gap>" of a units check
    extra: dict = field(default_factory=dict)  # clayflow: train_s, selected_step, steps, run_dir, ...
    candidates: list[dict] = field(
        default_factory=list
    )  # rows of selection.csv (candidate, score, bic, note)


def fit_key(row: dict) -> tuple[str, str, str, str]:
    return (row["dataset"], row["estimator"], str(row["seed"]), str(row["steps_flag"] or ""))


def test_rows_path(folder: Path, row: dict) -> Path:
    """Where the per-row test log-likelihoods of the fit in ``row`` (a fits.csv row) are kept."""
    steps = f"-steps{row['steps_flag']}" if row.get("steps_flag") not in ("", None) else ""
    return folder / "test_rows" / f"{row['dataset']}-{row['estimator']}-s{row['seed']}{steps}.csv"


def write_test_rows(folder: Path, row: dict, values: list[float]) -> None:
    path = test_rows_path(folder, row)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    temp.write_text("".join(f"{v!r}\n" for v in values))
    os.replace(temp, path)


def read_test_rows(folder: Path, row: dict) -> list[float] | None:
    """The per-row test log-likelihoods of a fit, or None where none were kept."""
    path = test_rows_path(folder, row)
    return [float(v) for v in path.read_text().split()] if path.exists() else None


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict], fields: tuple[str, ...]) -> None:
    """Atomically replace ``path`` with ``rows`` (a stopped run never leaves half a file)."""
    temp = path.with_suffix(".tmp")
    with temp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temp, path)


def number(row: dict, name: str) -> float:
    """A float column of a CSV row; empty or missing is NaN."""
    value = row.get(name, "")
    return float(value) if value not in ("", None) else math.nan


def source_hash() -> str:
    """A short hash of clayflow's sources (other people edit src/ while a long run goes on)."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "src" / "clayflow").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:10]


def git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def provenance() -> dict:
    """clayflow's version and sources, and the machine: for the report's header."""
    import numpy
    import sklearn
    import torch

    import clayflow

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line
        ]
        cpu = models[0] if models else cpu
    dirty = git("status", "--porcelain", "--", "src")
    return {
        "clayflow": clayflow.__version__,
        "git_head": git("rev-parse", "--short", "HEAD"),
        "src_uncommitted": bool(dirty) and dirty != "?",
        "src_hash": source_hash(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": numpy.__version__,
    }
