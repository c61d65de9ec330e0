"""Model builders by name, and ``ModelSpec``: what a checkpoint needs to rebuild a model."""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Any

from clayflow.core import Compose, Flow
from clayflow.errors import ClayflowError
from clayflow.models.vector import nice, realnvp
from clayflow.transforms import Standardize

MODELS = {"realnvp": realnvp, "nice": nice}


@dataclass
class ModelSpec:
    """A model by name: ``MODELS[name](features, **options)``, optionally preceded by a
    ``Standardize`` layer whose statistics live in the state dict. JSON-serialisable."""

    name: str
    features: int
    options: dict[str, Any] = field(default_factory=dict)
    standardize: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_options(name: str) -> set[str]:
    """The keyword options the builder ``name`` accepts."""
    signature = inspect.signature(_builder(name))
    return {p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY}


def build(spec: ModelSpec) -> Flow:
    """A fresh (untrained) flow for ``spec``."""
    builder = _builder(spec.name)
    unknown = set(spec.options) - model_options(spec.name)
    if unknown:
        raise ClayflowError(f"model {spec.name!r} has no option(s) {sorted(unknown)}")
    flow = builder(spec.features, **spec.options)
    if spec.standardize:
        flow = Flow(Compose(Standardize(spec.features), *flow.transform), flow.base)
    return flow


def _builder(name: str):
    if name not in MODELS:
        raise ClayflowError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


__all__ = ["MODELS", "ModelSpec", "build", "model_options", "nice", "realnvp"]
