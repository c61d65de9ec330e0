"""Checks of the size options that every model builder shares, and the context network of
conditional models."""

from __future__ import annotations

from torch import nn

from clayflow.errors import UsageError

MIN_SIZES = {"layers": 1, "hidden": 1, "depth": 0, "scales": 1, "blocks": 1, "context_features": 0, "context_embedding": 0}


def check_sizes(**values) -> None:
    """Each size option must be an integer >= its ``MIN_SIZES`` entry, else a UsageError.

    >>> check_sizes(hidden=0)
    Traceback (most recent call last):
    clayflow.errors.UsageError: --hidden must be an integer >= 1, got 0
    """
    for name, value in values.items():
        least = MIN_SIZES[name]
        if int(value) != value or value < least:
            raise UsageError(f"--{name} must be an integer >= {least}, got {value}")


def check_dropout(dropout: float) -> None:
    """A dropout probability must be in [0, 1), else a UsageError."""
    if not 0 <= dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {dropout}")


def check_coupling_features(features: int) -> None:
    """Refuse a coupling flow on fewer than 2 features (one half would be empty), naming the
    models that take a single column."""
    if features < 2:
        raise UsageError(f"coupling flows need at least 2 features (data columns), got {features}; "
                            "for one column use maf, iaf, nsf --autoregressive or cnf")  # fmt: skip


def context_network(context_features: int, context_embedding: int) -> tuple[nn.Module | None, int]:
    """The encoder of a conditional model's context and the width its layers see: none and
    K (``context_embedding`` 0: the raw context), or an MLP ``K -> 2E -> E`` (ReLU) and E.

    >>> context_network(3, 0)
    (None, 3)
    """
    check_sizes(context_features=context_features, context_embedding=context_embedding)
    if not context_features or not context_embedding:
        return None, context_features
    from clayflow.nn.mlp import MLP

    return MLP(context_features, context_embedding, hidden=2 * context_embedding, depth=1), context_embedding
