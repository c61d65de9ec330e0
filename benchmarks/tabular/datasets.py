"""The rows every estimator sees, and the dequantization the baselines share with clayflow.

Rows come from clayflow itself: ``clayflow.data.load_dataset(spec)``'s deterministic
train/validation/test split (tables 80/10/10, the 2D toys 50,000/5,000/10,000), float32
tensors converted to float64 here. Nothing is re-split.

``digits64`` is scikit-learn's 8x8 digits as 64-column vectors: the integer levels 0..16 of
``load_digits()`` written once as a CSV with a header; clayflow trains on that file
(``--data FILE``) and the baselines load the same file with ``load_dataset(FILE)``.

Discrete columns are clayflow's own choice, ``discrete_columns(data, "auto")`` (values on a
grid of step h in every split, at most ``MAX_DISCRETE_VALUES`` distinct values): diabetes'
``sex`` (1/2, h = 1), all 64 digit columns (h = 1), iris' sepal and petal widths (recorded to
0.1 cm). clayflow scores them as E_u log p(x + h u), u ~ U[0, 1) on those columns;
``Noisy`` gives the baselines the same units: one noise draw on the training rows to fit on,
and ``SCORE_DRAWS`` fresh draws of the validation and test rows, averaged, to score.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clayflow.data.toys import TOYS as CLAYFLOW_TOYS

DIGITS = "digits64"
TABLES = ("iris", "wine", "breast_cancer", "diabetes", DIGITS)
TOYS = tuple(CLAYFLOW_TOYS)
DATASETS = (*TABLES, *TOYS)
SCORE_DRAWS = 8  # noise draws per validation/test row where a table has discrete columns


def data_spec(name: str, work: Path) -> str:
    """What ``clayflow train --data`` and ``load_dataset`` take for ``name`` (a built-in name,
    or for ``digits64`` the CSV of integer levels written under ``work``)."""
    if name != DIGITS:
        return name
    path = work / "data" / f"{DIGITS}.csv"
    if not path.exists():
        from sklearn.datasets import load_digits

        levels = load_digits().data.astype(np.int64)  # (1797, 64), integers 0..16
        header = ",".join(f"pixel_{r}_{c}" for r in range(8) for c in range(8))
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".tmp")
        np.savetxt(temp, levels, fmt="%d", delimiter=",", header=header, comments="")
        os.replace(temp, path)
    return str(path)


@dataclass(frozen=True)
class Rows:
    """One dataset as clayflow splits it: float64 ``(N, D)`` arrays and its discrete columns."""

    name: str
    spec: str  # what clayflow's --data is given
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    discrete: tuple[int, ...]  # 0-based, by clayflow.data.discrete.discrete_columns(data, "auto")
    steps: tuple[float, ...]  # their grid steps (1: integers; iris is recorded to 0.1 cm)

    @property
    def shape_text(self) -> str:
        """``"120/15/15 x 4"`` (train/val/test rows x columns)."""
        return f"{len(self.train)}/{len(self.val)}/{len(self.test)} x {self.train.shape[1]}"

    def noisy(self, seed: int) -> Noisy:
        """The rows a baseline fits and scores for ``seed`` (see ``Noisy``)."""
        rng = np.random.default_rng(seed)
        draws = SCORE_DRAWS if self.discrete else 1
        return Noisy(
            train=dequantize(self.train, self.discrete, self.steps, rng),
            val=[dequantize(self.val, self.discrete, self.steps, rng) for _ in range(draws)],
            test=[dequantize(self.test, self.discrete, self.steps, rng) for _ in range(draws)],
        )


@dataclass(frozen=True)
class Noisy:
    """Training rows with one draw of U[0, h) noise on the discrete columns of grid step h, and
    copies of the validation and test rows with fresh draws (one copy when no column is
    discrete). Drawn in that order from ``numpy.random.default_rng(seed)``, so every baseline of a seed sees the
    same noise and every candidate of a selection is scored on the same copies."""

    train: np.ndarray
    val: list[np.ndarray]
    test: list[np.ndarray]


def dequantize(
    x: np.ndarray, discrete: tuple[int, ...], steps: tuple[float, ...], rng: np.random.Generator
) -> np.ndarray:
    """``x`` plus U[0, h) noise on the ``discrete`` columns of steps h (a copy; ``x`` itself if none)."""
    if not discrete:
        return x
    out = x.copy()
    out[:, discrete] += rng.random((len(x), len(discrete))) * np.asarray(steps)
    return out


def row_ll(log_q, copies: list[np.ndarray]) -> np.ndarray:
    """Per row ``(N,)``, E_u log q(x + u), estimated by averaging ``log_q`` over the copies."""
    return np.mean([log_q(x) for x in copies], axis=0)


def mean_ll(log_q, copies: list[np.ndarray]) -> float:
    """Mean over rows of E_u log q(x + u), estimated by averaging ``log_q`` over the copies."""
    return float(row_ll(log_q, copies).mean())


@functools.cache
def load_rows(name: str, work: Path) -> Rows:
    """``name``'s rows from ``clayflow.data.load_dataset``: the rows clayflow trains and tests on."""
    from clayflow.data import load_dataset
    from clayflow.data.discrete import discrete_columns

    spec = data_spec(name, work)
    data = load_dataset(spec)
    train, val, test = (split.double().numpy() for split in (data.train, data.val, data.test))
    discrete = discrete_columns(data, "auto")
    return Rows(name, spec, train, val, test, tuple(discrete), tuple(discrete.values()))


@dataclass(frozen=True)
class Standardiser:
    """z = (x - mean) / std with the training rows' mean and std (ddof 0); a density q_z of z
    is q_z(z(x)) * prod(1 / std) in data units, so ``logdet = -sum(log std)`` is added."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, train: np.ndarray) -> Standardiser:
        return cls(train.mean(0), train.std(0))

    @property
    def logdet(self) -> float:
        return float(-np.log(self.std).sum())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def in_data_units(self, log_q_z):
        """``x -> log q_z(z(x)) + logdet``: a density fitted to standardised rows, in data units."""
        return lambda x: log_q_z(self(x)) + self.logdet
