"""Model builders by name and data kind, and ``ModelSpec``: what a checkpoint needs to rebuild a model.

A name can have one builder for vectors ``(D,)`` and one for images ``(C, H, W)``:
``realnvp`` is the coupling flow of ``vector.realnvp`` on tables and toys and the
multi-scale ``image.realnvp_image`` on images.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from clayflow.core import Compose, Flow
from clayflow.errors import ClayflowError, UsageError
from clayflow.models.autoregressive import iaf, maf, nsf
from clayflow.models.continuous import cnf, cnf_image
from clayflow.models.glow import glow_image, glow_vector
from clayflow.models.image import realnvp_image
from clayflow.models.planar import planar, radial
from clayflow.models.start import StandardizedContext, start_transforms
from clayflow.models.vector import nice, realnvp

VECTOR, IMAGE = "vector", "image"
# Builder defaults that have changed, as they were before: a run that did not record an option
# (``clayflow fit`` runs before 2026-12-02 recorded only the options given) was built with these.
# ``ModelSpec.with_former_defaults`` fills them in, so such a run loads and resumes as it trained.
FORMER_DEFAULTS = {("cnf", "vector"): {"activation": "softplus"}}  # tanh since 2026-12-02
MODELS = {
    "realnvp": {VECTOR: realnvp, IMAGE: realnvp_image},
    "nice": {VECTOR: nice},
    "glow": {VECTOR: glow_vector, IMAGE: glow_image},
    "cnf": {VECTOR: cnf, IMAGE: cnf_image},
    "maf": {VECTOR: maf},
    "iaf": {VECTOR: iaf},
    "nsf": {VECTOR: nsf},
    "planar": {VECTOR: planar},
    "radial": {VECTOR: radial},
}


@dataclass
class ModelSpec:
    """A model by name for data of ``event_shape``, JSON-serialisable.

    Vectors: ``MODELS[name]["vector"](D, **options)``, preceded by the start layers of
    ``clayflow.models.start`` that are switched on (their fitted values live in the state
    dict), and with ``standardize`` a conditional model's context is standardised too
    (``options["context_features"]`` K > 0). Images: ``MODELS[name]["image"]((C, H, W), levels, **options)``.
    """

    name: str
    event_shape: list[int]
    options: dict[str, Any] = field(default_factory=dict)
    standardize: bool = False
    levels: int | None = None  # intensity levels of image data (the builder dequantizes)
    discrete: list[int] = field(default_factory=list)  # vectors: dequantized columns (0-based)
    discrete_steps: list[float] = field(default_factory=list)  # their grid steps (not recorded: all 1)
    power: bool = False  # vectors: a Yeo-Johnson power transform after standardising
    whiten: bool = False  # vectors: a learned whitening after that

    def __post_init__(self):
        if self.discrete and not self.discrete_steps:  # written before grid steps existed: integers
            self.discrete_steps = [1.0] * len(self.discrete)

    @property
    def kind(self) -> str:
        return IMAGE if len(self.event_shape) == 3 else VECTOR

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSpec:
        """A spec as a checkpoint recorded it, by this or an older clayflow."""
        values = dict(values)
        if "features" in values:  # written before images existed: a vector model
            values["event_shape"] = [values.pop("features")]
        return cls(**values).with_former_defaults()

    def with_former_defaults(self) -> ModelSpec:
        """This spec with the options it does not record set to the values the builder had
        before their default changed (``FORMER_DEFAULTS``): what a recorded run was built with."""
        former = FORMER_DEFAULTS.get((self.name, self.kind), {})
        return replace(self, options={**former, **self.options})


def data_kind(event_shape) -> str:
    """``"image"`` for ``(C, H, W)`` events, ``"vector"`` for ``(D,)``."""
    return IMAGE if len(event_shape) == 3 else VECTOR


def model_options(name: str, kind: str = VECTOR) -> set[str]:
    """The keyword options the builder of ``name`` for ``kind`` data accepts."""
    signature = inspect.signature(_builder(name, kind))
    return {p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY}


def model_defaults(name: str, kind: str = VECTOR) -> dict[str, Any]:
    """The builder's default value of each keyword option (recorded in checkpoints, so a
    later change of a default cannot change a saved model)."""
    signature = inspect.signature(_builder(name, kind))
    return {p.name: p.default for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY}


def build(spec: ModelSpec) -> Flow:
    """A fresh (untrained) flow for ``spec``, whose ``event_shape`` is ``spec.event_shape``
    (the data's, which the latent's need not be: multi-scale flattens, augmentation adds)."""
    builder = _builder(spec.name, spec.kind)
    unknown = set(spec.options) - model_options(spec.name, spec.kind)
    if unknown:
        raise ClayflowError(f"model {spec.name!r} on {spec.kind}s has no option(s) {sorted(unknown)}")
    if spec.kind == IMAGE:
        flow = builder(tuple(spec.event_shape), spec.levels, **spec.options)
        return Flow(flow.transform, flow.base, tuple(spec.event_shape), flow.context_features, flow.context_encoder)
    if len(spec.event_shape) != 1:
        raise ClayflowError(f"models need vectors (D,) or images (C, H, W), got shape {spec.event_shape}")
    features = spec.event_shape[0]
    flow = builder(features, **spec.options)
    discrete = dict(zip(spec.discrete, spec.discrete_steps))
    start = start_transforms(features, discrete, spec.standardize, spec.power, spec.whiten)
    transform = Compose(*start, *flow.transform) if start else flow.transform
    encoder = flow.context_encoder
    if spec.standardize and flow.context_features:
        encoder = StandardizedContext(flow.context_features, encoder)
    return Flow(transform, flow.base, (features,), flow.context_features, encoder)


def _builder(name: str, kind: str):
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if kind not in MODELS[name]:
        able = [n for n, builders in MODELS.items() if kind in builders]
        raise UsageError(f"model {name!r} does not support {kind} data; use one of: {', '.join(able)}")
    return MODELS[name][kind]


__all__ = [
    "MODELS",
    "ModelSpec",
    "build",
    "cnf",
    "cnf_image",
    "data_kind",
    "iaf",
    "maf",
    "model_defaults",
    "model_options",
    "nice",
    "nsf",
    "planar",
    "radial",
    "realnvp",
    "realnvp_image",
]
