"""Core abstractions: the ``Transform`` protocol, composition, base distributions, ``Flow``."""

from clayflow.core.conditioning import at_context
from clayflow.core.distributions import DiagonalNormal, StandardNormal
from clayflow.core.flow import Flow
from clayflow.core.transform import Compose, Inverse, Transform

__all__ = ["Compose", "DiagonalNormal", "Flow", "Inverse", "StandardNormal", "Transform", "at_context"]
