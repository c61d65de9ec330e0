r"""Unnormalised densities to fit a flow to: log p̃(x) = log Z + log p(x), evaluated for a batch.

Built in (``TARGETS``; ``load_target(name)``):

* ``u1`` ... ``u4``: the 2-D energies of Rezende & Mohamed (2015, table 1), p̃ = exp(-U).
  U2-U4 do not decay along x₁ (their mass is infinite); as in the paper's pictures (which
  show |x₁| < 4) they are confined by a soft wall, ``-(x₁ / 4)²⁰ / 2`` added to log p̃: below
  0.01 nats wherever |x₁| < 3, 0.5 at 4, 19 at 4.8.
* ``banana``: x₁ ~ N(0, 2²), x₂ | x₁ ~ N(x₁² / 4 - 1, 1) (Haario's twisted Gaussian,
  normalised: log Z = 0).
* ``gaussian_mixture``: 2-D, eight unit-free bumps exp(-|x - μₖ|² / (2 · 0.5²)) on a circle
  of radius 4, with no normalising constants: Z = 8 · 2π · 0.5², known.
* ``funnel``: Neal's funnel in 10 dimensions, v ~ N(0, 3²), xᵢ | v ~ N(0, eᵛ) for i = 1..9
  (normalised: log Z = 0).
* ``logistic_regression``: the posterior of a Bayesian logistic regression on scikit-learn's
  breast_cancer (569 rows; 30 standardised features and an intercept: 31 parameters), prior
  N(0, I); log p̃ = log-likelihood + log prior, Z unknown.

A user's own: ``load_target("module:name")`` imports ``name`` from ``module`` (a file path
``path/to/file.py:name`` too): a ``Target``, or a function of a batch ``(B, D) -> (B,)``
with an attribute ``dims`` (or ``dims`` given here).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from clayflow.errors import ClayflowError, UsageError, first_line

LogDensity = Callable[[Tensor], Tensor]


@dataclass
class Target:
    """An unnormalised density on R^D: ``log_density(x (B, D)) -> (B,)``, its normaliser's log
    ``log_z`` where known, and for 2-D targets the ``box`` ``((low₁, low₂), (high₁, high₂))``
    that plots and grid integrals use."""

    name: str
    dims: int
    log_density: LogDensity
    log_z: float | None = None
    box: tuple[tuple[float, float], tuple[float, float]] | None = None

    def __call__(self, x: Tensor) -> Tensor:
        """log p̃(x) ``(B,)``, checked: a real tensor of the shape a flow can be trained on. A
        user's function that fails or returns something else is one line naming the target."""
        try:
            values = self.log_density(x)
        except Exception as exc:  # a user's code fails in any way: one line, its traceback chained
            raise ClayflowError(f"target {self.name} failed on a batch of shape {tuple(x.shape)}: "
                                f"{type(exc).__name__}: {first_line(exc)}") from exc  # fmt: skip
        if not isinstance(values, Tensor) or values.is_complex():
            what = f"complex values ({values.dtype})" if isinstance(values, Tensor) else f"a {type(values).__name__}"
            raise UsageError(f"target {self.name} returned {what}; it must return a real tensor of log p~, one value "
                             "per row (B,)")  # fmt: skip
        if values.shape != x.shape[:1]:
            raise UsageError(f"target {self.name} returned log p~ of shape {tuple(values.shape)} "
                             f"for a batch of shape {tuple(x.shape)}; it must return one value per row")  # fmt: skip
        return values


def _w1(x: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * x[:, 0] / 4)


def _w2(x: Tensor) -> Tensor:
    return 3 * torch.exp(-0.5 * ((x[:, 0] - 1) / 0.6) ** 2)


def _w3(x: Tensor) -> Tensor:
    return 3 * torch.sigmoid((x[:, 0] - 1) / 0.3)


def _wall(x: Tensor) -> Tensor:
    """The soft wall that gives U2-U4 a finite mass: ``-(x₁ / 4)²⁰ / 2``."""
    return -0.5 * (x[:, 0] / 4) ** 20


def _log_sum_exp(*terms: Tensor) -> Tensor:
    return torch.logsumexp(torch.stack(terms), dim=0)


def u1(x: Tensor) -> Tensor:
    """-U1: a ring of radius 2 cut into two arcs along x₁."""
    ring = -0.5 * ((x.norm(dim=1) - 2) / 0.4) ** 2
    return ring + _log_sum_exp(-0.5 * ((x[:, 0] - 2) / 0.6) ** 2, -0.5 * ((x[:, 0] + 2) / 0.6) ** 2)


def u2(x: Tensor) -> Tensor:
    """-U2: a sine wave."""
    return -0.5 * ((x[:, 1] - _w1(x)) / 0.4) ** 2 + _wall(x)


def u3(x: Tensor) -> Tensor:
    """-U3: a sine wave and a bump-shifted copy of it."""
    a = -0.5 * ((x[:, 1] - _w1(x)) / 0.35) ** 2
    b = -0.5 * ((x[:, 1] - _w1(x) + _w2(x)) / 0.35) ** 2
    return _log_sum_exp(a, b) + _wall(x)


def u4(x: Tensor) -> Tensor:
    """-U4: a sine wave and a step-shifted copy of it."""
    a = -0.5 * ((x[:, 1] - _w1(x)) / 0.4) ** 2
    b = -0.5 * ((x[:, 1] - _w1(x) + _w3(x)) / 0.35) ** 2
    return _log_sum_exp(a, b) + _wall(x)


def banana(x: Tensor) -> Tensor:
    """log N(x₁; 0, 2²) + log N(x₂; x₁²/4 - 1, 1): normalised."""
    normal = -0.5 * math.log(2 * math.pi)
    return (normal - math.log(2) - 0.5 * (x[:, 0] / 2) ** 2) + (normal - 0.5 * (x[:, 1] - x[:, 0] ** 2 / 4 + 1) ** 2)


MIXTURE_RADIUS, MIXTURE_SCALE, MIXTURE_COMPONENTS = 4.0, 0.5, 8
MIXTURE_LOG_Z = math.log(MIXTURE_COMPONENTS * 2 * math.pi * MIXTURE_SCALE**2)


def gaussian_mixture(x: Tensor) -> Tensor:
    """log Σₖ exp(-|x - μₖ|² / (2σ²)): eight bumps on a circle, without normalising constants."""
    angles = torch.arange(MIXTURE_COMPONENTS, dtype=x.dtype, device=x.device) * (2 * math.pi / MIXTURE_COMPONENTS)
    centres = MIXTURE_RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)
    squared = ((x[:, None, :] - centres) ** 2).sum(-1)
    return torch.logsumexp(-squared / (2 * MIXTURE_SCALE**2), dim=1)


FUNNEL_DIMS, FUNNEL_SCALE = 10, 3.0


def funnel(x: Tensor) -> Tensor:
    """Neal's funnel: log N(v; 0, 3²) + Σᵢ log N(xᵢ; 0, eᵛ), v = x[:, 0]: normalised."""
    v, rest = x[:, 0], x[:, 1:]
    log_v = -0.5 * (v / FUNNEL_SCALE) ** 2 - math.log(FUNNEL_SCALE) - 0.5 * math.log(2 * math.pi)
    log_rest = -0.5 * (rest**2).sum(1) * torch.exp(-v) - 0.5 * rest.shape[1] * (v + math.log(2 * math.pi))
    return log_v + log_rest


class LogisticRegression:
    """The posterior of Bayesian logistic regression on breast_cancer: log p(y | X, θ) + log N(θ; 0, I)
    for θ ``(B, 31)`` (intercept first), with the features standardised on all 569 rows."""

    def __init__(self) -> None:
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer()
        features = torch.as_tensor(bunch.data, dtype=torch.float64)
        features = (features - features.mean(0)) / features.std(0)
        self.design = torch.cat([torch.ones(len(features), 1, dtype=torch.float64), features], dim=1)
        self.labels = torch.as_tensor(bunch.target, dtype=torch.float64)
        self.dims = self.design.shape[1]

    def __call__(self, theta: Tensor) -> Tensor:
        design, labels = self.design.to(theta), self.labels.to(theta)
        logits = theta @ design.T  # (B, N)
        likelihood = (labels * logits - torch.nn.functional.softplus(logits)).sum(1)
        prior = -0.5 * (theta**2).sum(1) - 0.5 * theta.shape[1] * math.log(2 * math.pi)
        return likelihood + prior


ENERGY_BOX = ((-5.0, -6.0), (5.0, 4.0))  # holds all but 1e-3 of each energy's mass
TARGETS: dict[str, Callable[[], Target]] = {
    "u1": lambda: Target("u1", 2, u1, box=ENERGY_BOX),
    "u2": lambda: Target("u2", 2, u2, box=ENERGY_BOX),
    "u3": lambda: Target("u3", 2, u3, box=ENERGY_BOX),
    "u4": lambda: Target("u4", 2, u4, box=ENERGY_BOX),
    "banana": lambda: Target("banana", 2, banana, 0.0, ((-8.0, -5.0), (8.0, 16.0))),
    "gaussian_mixture": lambda: Target("gaussian_mixture", 2, gaussian_mixture, MIXTURE_LOG_Z, ((-6.0, -6.0), (6.0, 6.0))),
    "funnel": lambda: Target("funnel", FUNNEL_DIMS, funnel, 0.0),
    "logistic_regression": lambda: Target("logistic_regression", 31, LogisticRegression()),
}


def load_target(spec: str, dims: int | None = None) -> Target:
    """A built-in target by name, or ``module:name`` / ``path/file.py:name`` (a ``Target``, or a
    function ``(B, D) -> (B,)`` whose ``dims`` attribute, or the ``dims`` given, says D)."""
    if dims is not None and dims < 1:
        raise UsageError(f"--dims must be at least 1, got {dims}")
    if spec in TARGETS:
        target = TARGETS[spec]()
        if dims is not None and dims != target.dims:
            raise UsageError(f"target {spec} has {target.dims} dimensions, not {dims}")
        return target
    if ":" not in spec:
        raise UsageError(f"unknown target {spec!r}: give one of {', '.join(TARGETS)}, or module:function")
    module_name, _, attribute = spec.rpartition(":")
    module = _import(module_name)
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise UsageError(f"{module_name} has no {attribute!r}") from None
    if not callable(found) and not isinstance(found, Target):
        raise UsageError(f"{spec} is neither a Target nor a function of a batch")
    declared = getattr(found, "dims", None)
    if dims is not None and declared is not None and dims != declared:
        raise UsageError(f"target {spec} has {declared} dimensions, not {dims}")  # as a built-in target says
    if isinstance(found, Target):
        return found
    dims = dims if dims is not None else declared
    if not isinstance(dims, int) or dims < 1:
        raise UsageError(f"say how many dimensions {spec} takes: give --dims D, or set {attribute}.dims = D")
    return Target(attribute, dims, found)


def _import(name: str):
    """A module by dotted name, or a Python file by path."""
    if name.endswith(".py"):
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"{name}: no such file")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's file: any error is theirs to see in one line
            raise UsageError(f"{name} failed to load: {type(exc).__name__}: {exc}") from None
        return module
    if "" not in sys.path and os.getcwd() not in sys.path:  # as `python -m` would: modules of this folder
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UsageError(f"cannot import {name}: {exc} (a file of this folder: give file.py:function)") from None
