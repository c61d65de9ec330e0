"""Conditioner networks: the learned functions inside coupling layers."""

from clayflow.nn.mlp import MLP, ConditionerActivation, ResidualMLP, conditioner_activation
from clayflow.nn.odenet import ODENet

__all__ = ["MLP", "ConditionerActivation", "ODENet", "ResidualMLP", "conditioner_activation"]
