"""Datasets by name or path, split deterministically into train/validation/test.

``load_dataset("moons")`` (a 2D toy), ``load_dataset("wine")`` (scikit-learn's bundled
tables), ``load_dataset("path/to/file.csv")`` (the user's own ``.csv``/``.npy``), or images:
``digits``, ``patches``, ``mnist:DIR``, ``cifar10:DIR``, ``images:DIR`` (see ``images.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.linalg import solve_triangular
from torch import Tensor

from clayflow.data.images import ImageSource, is_image_spec, load_image_source
from clayflow.data.tabular import SKLEARN_TABLES, TABLE_SUFFIXES, load_sklearn_table, read_table
from clayflow.data.toys import TOYS
from clayflow.errors import ClayflowError, UsageError

TOY_SIZES = {"train": 50_000, "val": 5_000, "test": 10_000}
SPLIT_FRACTIONS = (0.8, 0.1)  # train, validation; the rest is test
MIN_ROWS = 10
DATA_SEED = 0  # splits and toy samples never depend on the training seed
_FLOAT32_EPS = float(np.finfo(np.float32).eps)
_QR_ROWS = 65_536  # rows per block of the rank check


@dataclass
class Dataset:
    """Train/validation/test tensors of one data source: ``(N, D)`` float32 for vectors, or
    ``(N, C, H, W)`` uint8 intensity levels in ``[0, levels)`` for images. (``clayflow.fit``
    also accepts map-style ``torch.utils.data.Dataset`` splits, whose items are examples.)"""

    name: str
    train: Tensor
    val: Tensor
    test: Tensor
    columns: list[str] | None = None
    levels: int | None = None  # images only
    # Data of a conditional run, p(x | c): tables hold the context c in the last K columns of
    # every row; images of ``classes`` hold the class index in one more channel (constant over
    # the image), which ``Flow.split_rows`` turns into a one-hot c of K = len(classes).
    context_features: int = 0
    classes: list[str] | None = None
    # A conditional table's columns as the file has them: column i here is file column column_order[i].
    column_order: list[int] | None = None
    # Datasets' splits: DataLoader options (num_workers, worker_init_fn, ...) to read them with.
    loader_options: dict[str, Any] = field(default_factory=dict)
    _example_shape: tuple[int, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def event_shape(self) -> tuple[int, ...]:
        if isinstance(self.train, Tensor):
            shape = tuple(self.train.shape[1:])
        else:
            if self._example_shape is None:  # read once, without drawing from torch's random stream
                with torch.random.fork_rng(devices=[]):
                    self._example_shape = tuple(example(self.train[0]).shape)
            shape = self._example_shape
        if self.context_features:  # rows are (x, c): the model's events are the x part
            if len(shape) == 1:
                return (shape[0] - self.context_features,)
            return (shape[0] - 1, *shape[1:])  # less the class channel
        return shape

    @property
    def dims(self) -> int:
        """Elements D per example (the D of bits/dim)."""
        return math.prod(self.event_shape)

    @property
    def features(self) -> int:
        """Columns of the modelled x of a table (a conditional table's rows hold K context
        columns more); channels of images."""
        return self.event_shape[0]

    def layout(self) -> dict[str, Any]:
        """What a checkpoint records of the data's columns: their names in the model's order,
        where each came from in a conditional table's file, and the classes of class-conditional
        images (``clayflow score`` and ``sample`` match new files with these), and a table's
        range of values per column in the training rows (``sample`` says when draws of a discrete
        column leave it, ``sample --context`` and ``score`` when contexts do)."""
        table = isinstance(self.train, Tensor) and self.train.dim() == 2 and len(self.train) > 0
        ranges = torch.stack([self.train.amin(0), self.train.amax(0)], 1).tolist() if table else None
        return {"data_columns": self.columns, "column_order": self.column_order, "classes": self.classes,
                "column_ranges": ranges}  # fmt: skip

    def file_columns(self, text: str, option: str) -> list[int]:
        """The columns ``text`` names (comma-separated names or 1-based numbers as the user's
        file has them), as indices of this dataset's columns (a conditional table's are
        reordered, see ``with_context``); a ``UsageError`` naming ``option``."""
        order, names = self._file_order()
        return [order.index(j) for j in column_list(text, names, len(order), option)]

    def column_names(self, indices: list[int]) -> str:
        """This dataset's columns ``indices`` for a message, numbered as the user's file has them."""
        order, names = self._file_order()
        return column_names([order[i] for i in indices], names)

    def _file_order(self) -> tuple[list[int], list[str] | None]:
        """``column_order`` (the identity for data in the file's order) and the file's column names."""
        order = self.column_order or list(range(self.train.shape[1]))
        if not self.columns:
            return order, None
        names = [""] * len(order)
        for i, j in enumerate(order):
            names[j] = self.columns[i]
        return order, names

    @property
    def context_columns(self) -> list[str] | None:
        """The names of the context columns of a conditional table (None without names)."""
        if not self.context_features or self.columns is None:
            return None
        return self.columns[-self.context_features :]

    def with_context(self, choice: str) -> Dataset:
        """This table for learning p(x | c), with the columns that ``choice`` names
        (comma-separated names or 1-based numbers) as the context c: the columns are put in
        the order (x columns, context columns in ``choice``'s order), ``column_order`` says
        where each came from, and ``context_features`` is set. Refuses images, and a context
        of every column."""
        if not isinstance(self.train, Tensor) or self.levels is not None or self.train.dim() != 2:
            raise UsageError("--context names columns of a table; images and Python datasets have none")
        width = self.train.shape[1]
        context = column_list(choice, self.columns, width, "--context")
        twice = sorted({j for j in context if context.count(j) > 1})
        if twice:
            raise UsageError(f"--context names column(s) {column_names(twice, self.columns)} twice")
        if len(context) == width:
            raise UsageError("--context names every column; leave at least one column to model")
        order = [j for j in range(width) if j not in set(context)] + context
        columns = [self.columns[j] for j in order] if self.columns else None
        return replace(self, train=self.train[:, order], val=self.val[:, order], test=self.test[:, order],
                       columns=columns, context_features=len(context), column_order=order)  # fmt: skip


def example(item: Any) -> Tensor:
    """The example in a dataset's item or a loader's batch: the item itself, or the first
    element of a tuple (``(x, label)``, as torchvision's datasets give; labels are ignored)."""
    return item[0] if isinstance(item, (tuple, list)) else item


def dataset_names() -> list[str]:
    """Every built-in dataset name."""
    return [*TOYS, *SKLEARN_TABLES, "digits", "patches"]


def load_dataset(spec: str, context: str | None = None, *, classes: bool = False) -> Dataset:
    """The dataset named ``spec``, or the table in the file ``spec``; for p(x | c), a table's
    rows as (x, ``context`` columns: names or 1-based numbers, see ``Dataset.with_context``),
    or with ``classes`` images with their class (see ``Dataset.context_features``)."""
    if context is not None:
        if classes:
            raise UsageError("give either --context (columns of a table) or --conditional (classes of images)")
        return load_dataset(spec).with_context(context)
    if is_image_spec(spec):
        return _split_images(load_image_source(spec, labelled=classes))
    if classes:
        raise UsageError(f"--conditional learns images of each class; for a table ({spec}) name the "
                         "conditioning columns with --context")  # fmt: skip
    if spec in TOYS:
        return _toy_dataset(spec)
    if spec in SKLEARN_TABLES:
        values, columns = load_sklearn_table(spec)
        return _split_table(spec, values, columns)
    if looks_like_path(spec):
        values, columns = read_table(spec)
        return _split_table(spec, values, columns)
    raise UsageError(
        f"unknown dataset {spec!r}; choose one of: {', '.join(dataset_names())}, "
        f"mnist:DIR, cifar10:DIR, images:DIR, or a path to a {'/'.join(TABLE_SUFFIXES)} file"
    )


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` names a file rather than a built-in dataset."""
    return Path(spec).suffix.lower() in TABLE_SUFFIXES or "/" in spec or Path(spec).exists()


def standardization(
    train: Tensor, columns: list[str] | None = None, describe: Callable[[list[int]], str] | None = None,
    context: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-column mean and std ``(D,)`` of the training split ``(N, D)`` of a table.

    Refuses data with no density, naming the columns (by ``columns`` when given, or as
    ``describe(indices)`` says, e.g. ``Dataset.column_names``, whose indices count the
    context's K columns after the D): constant columns, and columns that are linear
    combinations of others (see ``check_full_rank``), or, for a conditional run (its
    ``context`` ``(N, K)``), of others and the context: given c, such data have no density.
    Both tests are relative to each column's own scale, so a column that varies by 1e-15
    around 0 is fine: it is standardised inside the flow.
    """
    mean = train.double().mean(0)
    std = train.double().std(0)
    # Constant: no variation beyond float32 rounding of the values (std 0 is constant at any mean).
    constant = (std <= _FLOAT32_EPS * mean.abs()).nonzero().flatten().tolist()
    describe = describe or partial(column_names, columns=columns)
    if constant:
        raise ClayflowError(
            f"column(s) {describe(constant)} are constant in the training data (no "
            "variation at float32 precision), so they have no density; drop them from the file"
        )
    if context is None:
        check_full_rank(train, mean, std, describe=describe)
        return mean.float(), std.float()
    # The context's varying columns after the data's: relations among them alone are allowed.
    c_mean, c_std = context.double().mean(0), context.double().std(0)
    varying = (c_std > _FLOAT32_EPS * c_mean.abs()).nonzero().flatten().tolist()
    d = train.shape[1]
    check_full_rank(torch.cat([train.double(), context.double()[:, varying]], 1),
                    torch.cat([mean, c_mean[varying]]), torch.cat([std, c_std[varying]]),
                    describe=lambda indices: describe([i if i < d else d + varying[i - d] for i in indices]),
                    given=len(varying))  # fmt: skip
    return mean.float(), std.float()


def check_full_rank(
    train: Tensor, mean: Tensor, std: Tensor, columns: list[str] | None = None,
    describe: Callable[[list[int]], str] | None = None, given: int = 0,
) -> None:
    """Refuse a table ``(N, D)`` with a column that is a linear combination of others.
    The last ``given`` columns are a conditional run's context, which needs no density: a
    relation among them alone is allowed, one that involves a data column is not.

    Such data lie on a hyperplane: they have no density, and a flow's NLL falls without bound.
    Column j (in order) counts as a combination of earlier independent columns when the std of
    its residual after the least-squares fit on them, in standardised units, is within 4 times
    the float32 rounding error of the columns involved: the data cannot tell it from an exact
    relation (a column that varies at any scale, or a relation with noise, is accepted).
    A QR factorisation of the standardised data, by blocks of rows (memory O(block * D)),
    gives every fit from its D x D factor R. Not checked with N <= D rows, where any column
    is a combination of the others after centring.
    """
    describe = describe or partial(column_names, columns=columns)
    n, d = train.shape
    if n <= d or d < 2:
        return
    mean, std = mean.double().numpy(), std.double().numpy()
    r = np.zeros((0, d))
    for block in train.split(_QR_ROWS):
        z = (block.double().numpy() - mean) / std
        r = np.linalg.qr(np.vstack([r, z]), mode="r")
    # Std of the rounding error of each standardised column: float32 rounds x to a multiple
    # of ulp(x) <= eps |x|, an error of std <= ulp / sqrt(12) (rms of x is sqrt(mean^2 + std^2)).
    noise = _FLOAT32_EPS * np.sqrt(mean**2 + std**2) / (np.sqrt(12.0) * std)
    independent: list[int] = []
    problems = []
    for j in range(d):
        if independent:
            if len(independent) == j:  # all earlier columns independent: R's own triangle solves it
                coef = solve_triangular(r[:j, :j], r[:j, j])
                residual = abs(r[j, j]) / np.sqrt(n - 1)
            else:  # after a dependent column (the data are refused anyway): a general fit
                coef, *_ = np.linalg.lstsq(r[:, independent], r[:, j], rcond=None)
                residual = np.linalg.norm(r[:, j] - r[:, independent] @ coef) / np.sqrt(n - 1)
            if residual <= 4 * np.sqrt(noise[j] ** 2 + coef**2 @ noise[independent] ** 2):
                used = [i for i, c in zip(independent, coef) if abs(c) > 1e-6]
                if j >= d - given and all(i >= d - given for i in used):
                    continue  # context columns related among themselves
                problems.append(
                    f"column {describe([j])} is a linear combination of "
                    f"column{'s' if len(used) > 1 else ''} {describe(used)}"
                )
                continue
        independent.append(j)
    if problems:
        raise ClayflowError(
            f"{'; '.join(problems)}; such data lie on a hyperplane and have no density, so drop "
            "one column of each such group from the file"
        )


def column_names(indices: list[int], columns: list[str] | None) -> str:
    """Columns by 0-based ``indices`` for a message: ``"1, 3"``, or with names ``"1, 3 (a, c)"`` (1-based)."""
    numbers = ", ".join(str(i + 1) for i in indices)
    return f"{numbers} ({', '.join(str(columns[i]) for i in indices)})" if columns else numbers


def column_list(text: str, columns: list[str] | None, width: int, option: str) -> list[int]:
    """The 0-based columns that ``text`` names, in its order: comma-separated names or 1-based
    numbers (a name first, as a column may be called "3"); a ``UsageError`` naming ``option``."""
    chosen = []
    for item in (part.strip() for part in text.split(",")):
        if columns and item in columns:
            chosen.append(columns.index(item))
        elif item.isdigit() and 1 <= int(item) <= width:
            chosen.append(int(item) - 1)
        else:
            named = f"; columns: {', '.join(columns)}" if columns else ""
            raise UsageError(f"{option}: no column {item!r} (give column names or numbers 1-{width}{named})")
    return chosen


def _toy_dataset(name: str) -> Dataset:
    rng = np.random.default_rng(DATA_SEED)
    splits = {split: _to_tensor(TOYS[name](size, rng)) for split, size in TOY_SIZES.items()}
    return Dataset(name, **splits)


def _split(name: str, values: np.ndarray, fractions: tuple[float, ...] = SPLIT_FRACTIONS) -> list[np.ndarray]:
    """A deterministic shuffle of ``values`` cut at the cumulative ``fractions``."""
    n = len(values)
    if n < MIN_ROWS:
        raise ClayflowError(
            f"{name} has {n} row(s); training needs at least {MIN_ROWS} to split into train/validation/test"
        )
    order = np.random.default_rng(DATA_SEED).permutation(n)
    n_first = round(fractions[0] * n)
    cuts = [n_first] if len(fractions) == 1 else [n_first, n_first + max(1, round(fractions[1] * n))]
    return np.split(values[order], cuts)


def _split_table(name: str, values: np.ndarray, columns: list[str] | None) -> Dataset:
    train, val, test = (_to_tensor(p) for p in _split(name, values))
    return Dataset(name, train, val, test, columns)


def _split_images(source: ImageSource) -> Dataset:
    """80/10/10, or for a published train/test pair, 90/10 of the train part and its test.
    Labelled images carry their class index as one more channel (see ``Dataset``)."""
    if source.classes is not None:
        if len(source.classes) > 256:
            raise ClayflowError(f"{source.name} has {len(source.classes)} classes; --conditional takes at most 256")
        with_class = with_class_channel
        if source.images is not None:
            source = replace(source, images=with_class(source.images, source.labels))
        else:
            source = replace(source, train=with_class(source.train, source.train_labels),
                             test=with_class(source.test, source.test_labels))  # fmt: skip
    if source.images is not None:
        parts = _split(source.name, source.images)
    else:
        parts = [*_split(source.name, source.train, (0.9,)), source.test]
    train, val, test = (torch.from_numpy(np.ascontiguousarray(p)) for p in parts)
    classes = len(source.classes) if source.classes is not None else 0
    return Dataset(source.name, train, val, test, levels=source.levels, context_features=classes, classes=source.classes)


def with_class_channel(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Images ``(N, C, H, W)`` with one more channel holding each one's class index."""
    channel = np.broadcast_to(labels.astype(images.dtype)[:, None, None, None], (len(images), 1, *images.shape[2:]))
    return np.concatenate([images, channel], axis=1)


def _to_tensor(values: np.ndarray) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(values), dtype=torch.float32)
