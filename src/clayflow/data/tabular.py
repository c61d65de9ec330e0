"""Tabular data: the user's own ``.csv``/``.npy`` files and scikit-learn's bundled tables.

Every reader returns a finite float64 array ``(N, D)`` or raises a ``ClayflowError`` that
names the file, and the row and column where it can.
"""

from __future__ import annotations

import csv
import io
import os
from functools import partial
from pathlib import Path

import numpy as np
from sklearn import datasets as skd

from clayflow.errors import ClayflowError, UsageError
from clayflow.files import atomic_write

# Bundled with scikit-learn (no download): name -> loader returning a Bunch with .data.
# Diabetes in its original units (age in years, sex coded 1/2, ...), as a user's file has
# it, not scikit-learn's default rescaling of each column.
SKLEARN_TABLES = {
    "iris": skd.load_iris,
    "wine": skd.load_wine,
    "breast_cancer": skd.load_breast_cancer,
    "diabetes": partial(skd.load_diabetes, scaled=False),
}

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".npy")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def load_sklearn_table(name: str) -> tuple[np.ndarray, list[str]]:
    """A bundled table by name: its feature matrix (float64) and column names."""
    bunch = SKLEARN_TABLES[name]()
    return np.asarray(bunch.data, dtype=np.float64), [str(c) for c in bunch.feature_names]


def read_table(path: str | os.PathLike) -> tuple[np.ndarray, list[str] | None]:
    """Read numeric rows from ``.csv``/``.tsv``/``.txt`` (header optional) or ``.npy``.

    Returns ``(values (N, D) float64, column names or None)``. Refuses missing or empty
    files, non-numeric cells, ragged rows, NaN/inf, and values beyond float32's range.
    """
    path = Path(path)
    if not path.exists():
        raise ClayflowError(f"data file {path} does not exist")
    if not path.is_file():
        raise ClayflowError(f"data path {path} is not a file")
    if path.stat().st_size == 0:
        raise ClayflowError(f"data file {path} is empty")
    if path.suffix.lower() == ".npy":
        values, columns = _read_npy(path), None
    else:
        values, columns = _read_delimited(path)
    _check_values(values, path)
    return values, columns


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ClayflowError(
            f"{path} is not a plain numeric .npy array (object arrays are refused): {exc}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - numpy raises many types for truncated or foreign files
        raise ClayflowError(f"{path} is not a readable .npy file: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise ClayflowError(f"{path} holds {array.dtype} values; clayflow needs numbers")
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ClayflowError(f"{path} has shape {array.shape}; expected (rows, columns)")
    if array.shape[0] == 0:
        raise ClayflowError(f"{path} has no rows")
    return array.astype(np.float64)


def _read_delimited(path: Path) -> tuple[np.ndarray, list[str] | None]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ClayflowError(f"{path} is not a UTF-8 text file; give a .csv or .npy file") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ClayflowError(f"data file {path} is empty")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else _guess_delimiter(lines[0])
    rows = list(csv.reader(lines, delimiter=delimiter, skipinitialspace=True))
    columns = None
    if not any(_is_number(cell) for cell in rows[0]):
        columns, rows = [c.strip() for c in rows[0]], rows[1:]
        if not rows:
            raise ClayflowError(f"{path} has a header but no data rows")
    width = len(columns) if columns else len(rows[0])
    values = np.empty((len(rows), width))
    first_row = 2 if columns else 1
    for i, row in enumerate(rows):
        if delimiter == " ":
            row = [cell for cell in row if cell]
        if len(row) != width:
            raise ClayflowError(f"{path} line {i + first_row} has {len(row)} values, expected {width}")
        for j, cell in enumerate(row):
            try:
                values[i, j] = float(cell)
            except ValueError:
                raise ClayflowError(
                    f"{path} line {i + first_row}, column {j + 1}: {cell!r} is not a number"
                ) from None
    return values, columns


def _guess_delimiter(line: str) -> str:
    for delimiter in (",", "\t", ";"):
        if delimiter in line:
            return delimiter
    return " "


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _check_values(values: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ClayflowError(
            f"{path} row {row + 1}, column {col + 1} is {values[row, col]}; "
            "remove or impute NaN/inf values first"
        )
    big = np.abs(values) > _FLOAT32_MAX
    if big.any():
        row, col = np.argwhere(big)[0]
        raise ClayflowError(
            f"{path} row {row + 1}, column {col + 1} is {values[row, col]:.3g}, beyond float32's "
            "range; rescale the column"
        )


def align_columns(
    values: np.ndarray, columns: list[str] | None, expected: list[str] | None, path: str | os.PathLike
) -> np.ndarray:
    """The columns of ``values`` ``(N, D)`` put in the ``expected`` (training) order by name.

    Matched by position when either side has no names (a file without a header, or a model
    trained on one). With names on both sides, refuses names given twice, missing or not
    trained on, in one line that names them. Returns ``(N, len(expected))`` or ``values``.
    """
    if columns is None or expected is None:
        return values
    columns, expected = [str(c) for c in columns], [str(c) for c in expected]
    if columns == expected:
        return values
    trained = f"the model was trained on {', '.join(expected)}"
    for names, whose in ((columns, f"the header of {path}"), (expected, "the training data")):
        twice = sorted({c for c in names if names.count(c) > 1})
        if twice:
            raise ClayflowError(
                f"{whose} names {_quoted(twice)} more than once, so columns cannot be matched by name; "
                + trained
            )
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in expected]
    if missing or extra:
        problems = [f"no {_columns(missing)} named {_quoted(missing)}"] if missing else []
        if extra:
            problems.append(f"{_columns(extra)} {_quoted(extra)} the model was not trained on")
        raise ClayflowError(f"{path} has {' and has '.join(problems)}; {trained} (matched by name)")
    return values[:, [columns.index(c) for c in expected]]


def _quoted(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _columns(names: list[str]) -> str:
    return "column" if len(names) == 1 else "columns"


def check_output_path(
    path: str | os.PathLike, suffixes: tuple[str, ...] = (".csv", ".npy"), force: bool = True
) -> Path:
    """``path`` if it ends in one of ``suffixes``, its directory exists, and it does not exist
    yet unless ``force`` (the CLI never replaces a file without ``--force``)."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"output file {path} must end in {' or '.join(suffixes)}")
    if os.path.lexists(path) and not force:  # a symbolic link to nothing is the user's too
        raise UsageError(f"output file {path} exists; choose another --out or pass --force to replace it")
    if not path.parent.is_dir():
        raise ClayflowError(f"cannot write {path}: directory {path.parent} does not exist")
    return path


def write_table(
    path: str | os.PathLike, values: np.ndarray, columns: list[str], labels: list[str] | None = None
) -> None:
    """Atomically write rows to ``.csv`` (with a header) or ``.npy``, chosen by the suffix. A
    ``.csv`` starts each row with its label when ``labels`` are given (the first of ``columns``
    names them; quoted as CSV needs, e.g. file names with commas)."""
    path = check_output_path(path)
    suffix = path.suffix.lower()

    def write(file):
        if suffix == ".npy":
            np.save(file, values)
        elif labels is not None:
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows([label, *(f"{v:.8g}" for v in row)] for label, row in zip(labels, values))
            file.write(text.getvalue().encode("utf-8", "surrogateescape"))  # file names as the disk has them
        else:
            header = io.StringIO()  # quoted as CSV needs: a column name may hold a comma
            csv.writer(header, lineterminator="\n").writerow(columns)
            file.write(header.getvalue().encode())
            np.savetxt(file, values, delimiter=",", fmt="%.8g")

    try:
        atomic_write(path, write)
    except OSError as exc:
        raise ClayflowError(f"cannot write {path}: {exc.strerror or exc}") from None
