"""Conditioner networks: the learned functions inside coupling layers."""

from clayflow.nn.mlp import MLP, ResidualMLP
from clayflow.nn.odenet import ODENet

__all__ = ["MLP", "ODENet", "ResidualMLP"]
