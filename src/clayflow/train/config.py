"""Training configuration: defaults < ``--config`` file (JSON or TOML) < command-line flags.

The resolved configuration is written to ``RUN/config.json`` and can be passed back.
"""

from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import tomllib

from clayflow.errors import ClayflowError

# Config fields that are options of the model builder (see ``clayflow.models``).
MODEL_FIELDS = ("layers", "hidden", "depth", "conditioner", "mask", "scale_bound", "batch_norm", "base")


@dataclass
class TrainConfig:
    """Everything a training run depends on. Field comments are the CLI's help texts."""

    model: str = "realnvp"  # model builder: realnvp or nice
    data: str = "moons"  # built-in dataset name or path to a .csv/.npy file
    steps: int = 4000  # optimisation steps
    batch_size: int = 512  # examples per step
    lr: float = 2e-3  # peak learning rate
    layers: int = 8  # coupling layers
    hidden: int = 128  # conditioner width
    depth: int = 2  # conditioner hidden layers (residual blocks for resmlp)
    conditioner: str = "mlp"  # mlp or resmlp
    mask: str = "alternating"  # alternating (even/odd) or half
    scale_bound: str = "tanh"  # tanh (RealNVP, learned factor) or soft_clamp
    batch_norm: bool = False  # batch-norm flow layers between couplings
    base: str = "normal"  # base distribution: normal or diagonal (learned)
    standardize: bool = True  # standardise columns inside the flow (likelihood stays in data units)
    optimizer: str = "adam"  # adam or adamw
    weight_decay: float = 0.0  # decoupled with adamw, L2 with adam
    schedule: str = "cosine"  # cosine (after warm-up) or constant
    warmup: int = 200  # linear warm-up steps
    clip: float = 10.0  # gradient-norm clipping threshold (0 disables)
    ema: float = 0.0  # EMA decay of the weights used to evaluate (0 disables, e.g. 0.999)
    select_best: bool = True  # keep and use the weights with the lowest validation NLL
    seed: int = 0  # seed of initialisation and batch order
    eval_every: int = 250  # steps between validation evaluations (and metrics rows)
    checkpoint_every: int = 500  # steps between checkpoints
    device: str = "auto"  # auto, cpu, cuda or cuda:N

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def model_options(self, accepted: set[str]) -> dict[str, Any]:
        """The builder options for this config, among those the model ``accepted``.

        A model option the builder lacks is an error only if it was changed from its
        default (``--batch-norm`` with NICE, say); otherwise it is left out.
        """
        defaults = TrainConfig()
        options = {}
        for name in MODEL_FIELDS:
            value = getattr(self, name)
            if name in accepted:
                options[name] = value
            elif value != getattr(defaults, name):
                raise ClayflowError(f"model {self.model!r} has no option --{name.replace('_', '-')}")
        return options


_POSITIVE = {"steps", "batch_size", "lr", "layers", "hidden", "eval_every", "checkpoint_every"}
_NON_NEGATIVE = {"depth", "weight_decay", "warmup", "clip", "ema", "seed"}
_CHOICES = {"optimizer": ("adam", "adamw"), "schedule": ("cosine", "constant")}


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """A validated ``TrainConfig`` from (partial) ``values``; unknown keys or wrong types raise."""
    hints = typing.get_type_hints(TrainConfig)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ClayflowError(
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


def _check_type(key: str, value: Any, hint: type, source: str) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    if not ok:
        raise ClayflowError(f"{source}: {key} must be {hint.__name__}, got {value!r}")
    return value


def _check_ranges(config: TrainConfig, source: str) -> None:
    for key in _POSITIVE:
        if getattr(config, key) <= 0:
            raise ClayflowError(f"{source}: {key} must be > 0, got {getattr(config, key)}")
    for key in _NON_NEGATIVE:
        if getattr(config, key) < 0:
            raise ClayflowError(f"{source}: {key} must be >= 0, got {getattr(config, key)}")
    if config.ema >= 1:
        raise ClayflowError(f"{source}: ema is a decay in [0, 1), got {config.ema}")
    for key, choices in _CHOICES.items():
        if getattr(config, key) not in choices:
            raise ClayflowError(
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
