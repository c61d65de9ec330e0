"""Datasets by name or path, split deterministically into train/validation/test.

``load_dataset("moons")`` (a 2D toy), ``load_dataset("wine")`` (scikit-learn's bundled
tables) or ``load_dataset("path/to/file.csv")`` (the user's own ``.csv``/``.npy``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from clayflow.data.tabular import SKLEARN_TABLES, TABLE_SUFFIXES, load_sklearn_table, read_table
from clayflow.data.toys import TOYS
from clayflow.errors import ClayflowError

TOY_SIZES = {"train": 50_000, "val": 5_000, "test": 10_000}
SPLIT_FRACTIONS = (0.8, 0.1)  # train, validation; the rest is test
MIN_ROWS = 10
DATA_SEED = 0  # splits and toy samples never depend on the training seed


@dataclass
class Dataset:
    """Train/validation/test tensors ``(N, D)`` float32 of one data source."""

    name: str
    train: Tensor
    val: Tensor
    test: Tensor
    columns: list[str] | None = None

    @property
    def features(self) -> int:
        return self.train.shape[1]


def dataset_names() -> list[str]:
    """Every built-in dataset name."""
    return [*TOYS, *SKLEARN_TABLES]


def load_dataset(spec: str) -> Dataset:
    """The dataset named ``spec``, or the table in the file ``spec``."""
    if spec in TOYS:
        return _toy_dataset(spec)
    if spec in SKLEARN_TABLES:
        values, columns = load_sklearn_table(spec)
        return _split_table(spec, values, columns)
    if looks_like_path(spec):
        values, columns = read_table(spec)
        return _split_table(spec, values, columns)
    raise ClayflowError(
        f"unknown dataset {spec!r}; choose one of: {', '.join(dataset_names())}, "
        f"or give a path to a {'/'.join(TABLE_SUFFIXES)} file"
    )


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` names a file rather than a built-in dataset."""
    return Path(spec).suffix.lower() in TABLE_SUFFIXES or "/" in spec or Path(spec).exists()


def standardization(train: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column mean and std of the training split; refuses constant columns."""
    mean = train.double().mean(0)
    std = train.double().std(0)
    constant = (std <= 1e-12 * mean.abs().clamp_min(1.0)).nonzero().flatten().tolist()
    if constant:
        cols = ", ".join(str(c + 1) for c in constant)
        raise ClayflowError(
            f"column(s) {cols} are constant in the training data (zero variance), so they have "
            "no density; drop them or use --no-standardize"
        )
    return mean.float(), std.float()


def _toy_dataset(name: str) -> Dataset:
    rng = np.random.default_rng(DATA_SEED)
    splits = {split: _to_tensor(TOYS[name](size, rng)) for split, size in TOY_SIZES.items()}
    return Dataset(name, **splits)


def _split_table(name: str, values: np.ndarray, columns: list[str] | None) -> Dataset:
    n = len(values)
    if n < MIN_ROWS:
        raise ClayflowError(
            f"{name} has {n} row(s); training needs at least {MIN_ROWS} to split into train/validation/test"
        )
    order = np.random.default_rng(DATA_SEED).permutation(n)
    n_train = round(SPLIT_FRACTIONS[0] * n)
    n_val = max(1, round(SPLIT_FRACTIONS[1] * n))
    parts = np.split(values[order], [n_train, n_train + n_val])
    train, val, test = (_to_tensor(p) for p in parts)
    return Dataset(name, train, val, test, columns)


def _to_tensor(values: np.ndarray) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(values), dtype=torch.float32)
