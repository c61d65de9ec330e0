"""Fitting a flow to a density known up to its normaliser (variational inference):
``targets`` to fit, the reverse-KL ``objective``, importance ``weights`` (ESS, log Z, Pareto k̂)
and ``fit_target``, the training loop for Python."""

from clayflow.variational.fit import ReverseKLTraining, Settings, VariationalResult, fit_target
from clayflow.variational.objective import anneal, draw_weights, reverse_kl
from clayflow.variational.targets import TARGETS, Target, load_target
from clayflow.variational.weights import ImportanceWeights

__all__ = [
    "TARGETS",
    "ImportanceWeights",
    "ReverseKLTraining",
    "Settings",
    "Target",
    "VariationalResult",
    "anneal",
    "draw_weights",
    "fit_target",
    "load_target",
    "reverse_kl",
]
