"""Training configuration: defaults < ``--config`` file (JSON or TOML) < command-line flags.

The resolved configuration is written to ``RUN/config.json`` and can be passed back.
"""

from __future__ import annotations

import json
import tomllib
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from clayflow.errors import ClayflowError, UsageError

# Training defaults that depend on the data: images are larger, so smaller batches.
KIND_DEFAULTS = {"vector": {"batch_size": 512, "lr": 2e-3}, "image": {"batch_size": 64, "lr": 1e-3}}

# Config fields that are options of the model builder (see ``clayflow.models``). ``None``
# means the builder's own default, which can differ between vector and image models.
MODEL_FIELDS = (
    "layers",
    "hidden",
    "depth",
    "conditioner",
    "mask",
    "scale_bound",
    "batch_norm",
    "base",
    "scales",
    "norm",
    "alpha",
    "lu",
    "coupling",
    "blocks",
    "activation",
    "augment",
    "actnorm",
    "t1",
    "learn_t1",
    "solver",
    "atol",
    "rtol",
    "step_size",
    "trace",
    "eval_trace",
    "adjoint",
)


@dataclass
class TrainConfig:
    """Everything a training run depends on. Field comments are the CLI's help texts."""

    model: str = "realnvp"  # model builder: realnvp, glow, or nice (vectors only)
    data: str = "moons"  # moons, wine, digits, patches..., mnist:DIR, cifar10:DIR, images:DIR or a file
    steps: int = 4000  # optimisation steps
    batch_size: int | None = None  # examples per step (default 512; images 64)
    lr: float | None = None  # peak learning rate (default 2e-3; images 1e-3)
    layers: int | None = None  # coupling layers; for Glow images, steps per level (default 8)
    hidden: int | None = None  # conditioner width, MLP units or conv channels (default 128; images 64)
    depth: int | None = None  # conditioner hidden layers or residual blocks (default 2; nice 4)
    conditioner: str | None = None  # vector models: mlp or resmlp (default mlp)
    mask: str | None = None  # vector models: alternating (even/odd) or half (default alternating)
    scale_bound: str | None = None  # tanh, soft_clamp or sigmoid (default tanh; Glow images sigmoid)
    batch_norm: bool | None = None  # batch-norm flow layers between couplings or CNF blocks (default off)
    base: str | None = None  # vector models: base normal or diagonal (learned) (default normal)
    scales: int | None = None  # image models: number of scales/levels (default: the most that fit, up to 3)
    norm: str | None = None  # image models: conditioner normalisation, batch or none (default batch)
    alpha: float | None = None  # realnvp and cnf images: logit boundary alpha (default 0.05)
    lu: bool | None = None  # glow: LU-decomposed 1x1 convolutions, else plain (default on)
    coupling: str | None = None  # glow: affine or additive couplings (default affine)
    blocks: int | None = None  # cnf: CNF blocks in sequence (default 1)
    activation: str | None = None  # cnf: vector field activation, softplus or tanh (default softplus)
    augment: int | None = None  # cnf: extra N(0, I) dimensions or channels (ANODE; NLL becomes a bound)
    actnorm: bool | None = None  # cnf: ActNorm between CNF blocks (default off)
    t1: float | None = None  # cnf: integration time T (default 1.0)
    learn_t1: bool | None = None  # cnf: learn T (default off)
    solver: str | None = None  # cnf: dopri5, rk4, euler, adaptive_heun, ... (default dopri5)
    atol: float | None = None  # cnf: absolute tolerance of adaptive solvers (default 1e-5)
    rtol: float | None = None  # cnf: relative tolerance of adaptive solvers (default 1e-5)
    step_size: float | None = None  # cnf: step of fixed-step solvers (default T / 20)
    trace: str | None = None  # cnf: divergence when training, hutchinson or exact (default hutchinson)
    eval_trace: str | None = None  # cnf: divergence when evaluating (default exact; images hutchinson)
    adjoint: bool | None = None  # cnf: adjoint backward pass, memory constant in steps (default off)
    objective: str = "mle"  # mle (maximum likelihood) or fm (flow matching, cnf only)
    kinetic: float = 0.0  # cnf: weight of the kinetic-energy regulariser (RNODE, e.g. 0.01)
    jacobian: float = 0.0  # cnf: weight of the Jacobian Frobenius regulariser (RNODE, e.g. 0.01)
    ot: bool = False  # flow matching: pair noise and data by minibatch optimal transport
    standardize: bool = True  # tables: standardise columns inside the flow (likelihood stays in data units)
    optimizer: str = "adam"  # adam or adamw
    weight_decay: float = 0.0  # decoupled with adamw, L2 with adam
    schedule: str = "cosine"  # cosine (after warm-up) or constant
    warmup: int = 200  # linear warm-up steps
    clip: float = 10.0  # gradient-norm clipping threshold (0 disables)
    ema: float = 0.0  # EMA decay of the weights used to evaluate (0 disables, e.g. 0.999)
    select_best: bool = True  # keep and use the weights with the lowest validation NLL
    patience: int = 0  # stop after this many evaluations without a lower validation NLL (0: never)
    nonfinite: str = "stop"  # on a NaN/inf loss or gradient: stop, or skip the step (stops after 20 in a row)
    seed: int = 0  # seed of initialisation and batch order
    eval_every: int = 250  # steps between validation evaluations (and metrics rows)
    checkpoint_every: int = 500  # steps between checkpoints
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    compile: bool = False  # torch.compile the training step (coupling flows; same numbers, faster)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved(self) -> TrainConfig:
        """A copy with the data-dependent training defaults filled in (see ``KIND_DEFAULTS``)."""
        from clayflow.data.images import is_image_spec

        defaults = KIND_DEFAULTS["image" if is_image_spec(self.data) else "vector"]
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def model_options(self, accepted: set[str], kind: str = "vector") -> dict[str, Any]:
        """The builder options that were set (not ``None``); one the builder lacks (the
        model ``accepted`` for ``kind`` data) is an error, e.g. ``--batch-norm`` with NICE."""
        options = {name: getattr(self, name) for name in MODEL_FIELDS if getattr(self, name) is not None}
        for name in options:
            if name not in accepted:
                raise UsageError(
                    f"model {self.model!r} on {kind} data has no option --{name.replace('_', '-')}"
                )
        return options


_POSITIVE = {"steps", "batch_size", "lr", "layers", "hidden", "scales", "eval_every", "checkpoint_every"}
_NON_NEGATIVE = {
    "depth", "augment", "weight_decay", "warmup", "clip", "ema", "seed", "patience", "kinetic", "jacobian"
}  # fmt: skip
_CHOICES = {
    "optimizer": ("adam", "adamw"),
    "schedule": ("cosine", "constant"),
    "objective": ("mle", "fm"),
    "nonfinite": ("stop", "skip"),
}


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """A validated ``TrainConfig`` from (partial) ``values``; unknown keys or wrong types raise."""
    hints = typing.get_type_hints(TrainConfig)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(
            f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
        )
    checked = {key: _check_type(key, value, hints[key], source) for key, value in values.items()}
    config = TrainConfig(**checked)
    _check_ranges(config, source)
    return config


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The key/value pairs of a ``.json`` or ``.toml`` config file."""
    path = Path(path)
    if not path.is_file():
        raise ClayflowError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        values = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClayflowError(
            f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}"
        ) from None
    if not isinstance(values, dict):
        raise ClayflowError(f"config file {path} must hold an object of key/value pairs")
    return values


def field_type(hint) -> tuple[type, bool]:
    """``(int, True)`` for ``int | None``, ``(int, False)`` for ``int``."""
    args = typing.get_args(hint)
    if args and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _check_type(key: str, value: Any, hint, source: str) -> Any:
    hint, optional = field_type(hint)
    if value is None and optional:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    if not ok:
        raise UsageError(f"{source}: {key} must be {hint.__name__}, got {value!r}")
    return value


def _check_ranges(config: TrainConfig, source: str) -> None:
    for key in _POSITIVE:
        if getattr(config, key) is not None and getattr(config, key) <= 0:
            raise UsageError(f"{source}: {key} must be > 0, got {getattr(config, key)}")
    for key in _NON_NEGATIVE:
        if getattr(config, key) is not None and getattr(config, key) < 0:
            raise UsageError(f"{source}: {key} must be >= 0, got {getattr(config, key)}")
    if config.model != "cnf" and (config.objective == "fm" or config.kinetic or config.jacobian or config.ot):
        raise UsageError(
            f"{source}: --objective fm, --kinetic, --jacobian and --ot train continuous flows; use --model cnf"
        )
    if config.objective == "fm" and (config.blocks or 1) > 1:
        raise UsageError(
            f"{source}: flow matching trains one CNF block at the end of the flow; use --blocks 1"
        )
    if config.compile and config.model == "cnf":
        raise UsageError(f"{source}: --compile speeds up coupling flows; CNF solves are not compiled")
    if config.ot and config.objective != "fm":
        raise UsageError(f"{source}: --ot pairs noise and data for flow matching; add --objective fm")
    if config.patience and not config.select_best:
        raise UsageError(f"{source}: patience (early stopping) needs select_best, which tracks the best step")
    if config.ema >= 1:
        raise UsageError(f"{source}: ema is a decay in [0, 1), got {config.ema}")
    for key, choices in _CHOICES.items():
        if getattr(config, key) not in choices:
            raise UsageError(
                f"{source}: {key} must be one of {', '.join(choices)}, got {getattr(config, key)!r}"
            )


def field_help() -> dict[str, str]:
    """Help text of each field, read from the comments in ``TrainConfig``'s source."""
    import inspect

    helps = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        name, _, rest = line.strip().partition(":")
        if "#" in rest and name.isidentifier():
            helps[name] = rest.split("#", 1)[1].strip()
    return helps
