"""Conditioner networks: the learned functions inside coupling and autoregressive layers."""

from clayflow.nn.made import MADE
from clayflow.nn.mlp import MLP, ConditionerActivation, ResidualMLP, conditioner_activation
from clayflow.nn.odenet import ODENet

__all__ = ["MADE", "MLP", "ConditionerActivation", "ODENet", "ResidualMLP", "conditioner_activation"]
