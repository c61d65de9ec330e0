"""Discrete columns of a table: values recorded on a grid (counts, category codes, ratings,
measurements to 0.1 cm), which a continuous density cannot fit without blowing up on the
repeated values, and which clayflow therefore dequantizes across one grid step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clayflow.data import Dataset
from clayflow.errors import UsageError

# A column whose values lie on a grid with at most this many distinct values is discrete (a
# count, a category code, a rating, a measurement at a coarse resolution); with more it is
# treated as continuous.
MAX_DISCRETE_VALUES = 32
# A grid's step is found among whole multiples of 10**-MAX_DECIMALS: values with more
# decimals are continuous measurements.
MAX_DECIMALS = 3


def grid_step(values: Tensor) -> float | None:
    """The step of the grid through 0 that a column's values ``(N,)`` lie on: their greatest
    common divisor, when each is the float32 nearest to a whole multiple of
    ``10**-MAX_DECIMALS``; None when they are not (or too large for float64 to tell). A
    constant column has no grid of its own: step 1 when it holds a whole number (a pixel that
    is always 0), else None.

    >>> grid_step(torch.tensor([0.2, 1.4, 0.5]))
    0.1
    >>> grid_step(torch.tensor([2.0, -6.0, 10.0])), grid_step(torch.tensor([0.0, 5.0, 2.5]))
    (2.0, 2.5)
    >>> grid_step(torch.tensor([0.1234, 0.5])), grid_step(torch.tensor([5.5, 5.5]))
    (None, None)
    """
    scale = 10**MAX_DECIMALS
    distinct = values.float().unique()
    whole = (distinct.double() * scale).round()
    # Exactly the float32 nearest to a multiple of 10**-MAX_DECIMALS, as a file's "1.3" reads.
    if (whole.abs() > 2**53).any() or not torch.equal((whole / scale).float(), distinct):
        return None
    if len(whole) == 1:
        return 1.0 if whole.item() % scale == 0 else None
    return math.gcd(*whole.abs().long().tolist()) / scale


def discrete_columns(data: Dataset, choice: str = "auto") -> dict[int, float]:
    """The columns (0-based) of a table ``data`` to dequantize, each with its
    grid step, by ``choice``.

    ``"auto"``: every column whose values in all splits lie on a grid (``grid_step``) with at
    most ``MAX_DISCRETE_VALUES`` distinct values. ``"none"``: none. Otherwise a comma-separated
    list of column names or 1-based numbers, each of which must lie on a grid.
    """
    choice = choice.strip()
    if choice == "none":
        return {}
    values = torch.cat([data.train, data.val, data.test])[:, : data.features]  # not a context
    if choice == "auto":
        distinct = [values[:, j].unique() for j in range(values.shape[1])]
        steps = {j: grid_step(d) for j, d in enumerate(distinct) if len(d) <= MAX_DISCRETE_VALUES}
        return {j: step for j, step in steps.items() if step is not None}
    chosen = sorted(set(data.file_columns(choice, "--discrete")))
    context = [j for j in chosen if j >= data.features]
    if context:
        raise UsageError(f"--discrete: column(s) {data.column_names(context)} are context columns "
                         "(--context), which are conditioned on, not modelled, so not dequantized")  # fmt: skip
    steps = {j: grid_step(values[:, j]) for j in chosen}
    off_grid = [j for j, step in steps.items() if step is None]
    if off_grid:
        raise UsageError(
            f"--discrete: column(s) {data.column_names(off_grid)} hold values that are not "
            f"on a grid (whole multiples of a step of at most {MAX_DECIMALS} decimals); only "
            "counts, codes and values recorded at a fixed resolution can be dequantized"
        )
    return steps
