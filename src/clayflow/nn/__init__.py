"""Conditioner networks: the learned functions inside coupling layers."""

from clayflow.nn.mlp import MLP, ResidualMLP

__all__ = ["MLP", "ResidualMLP"]
