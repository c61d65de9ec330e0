"""Training configuration: defaults < ``--config`` file (JSON or TOML) < command-line flags.

The resolved configuration is written to ``RUN/config.json`` and can be passed back.
"""

from __future__ import annotations

import json
import math
import re
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
    "dropout",
    "bins",
    "tail_bound",
    "autoregressive",
)


@dataclass
class TrainConfig:
    """Everything a training run depends on. Field comments are the CLI's help texts."""

    model: str | None = None  # model builder: realnvp, nice, glow, cnf, maf, iaf, nsf, planar or radial (default: nsf for vectors of at least 5,000 training rows, else realnvp)
    data: str = "moons"  # a 2D toy (moons, ...), a table (wine, ...), images (digits, patches..., mnist:DIR, cifar10:DIR, images:DIR) or a .csv/.npy file
    steps: int = 4000  # optimisation steps
    batch_size: int | None = None  # examples per step (default 512; images and tables under 5,000 rows 64)
    lr: float | None = None  # peak learning rate (default 2e-3; images 1e-3)
    layers: int | None = None  # coupling, autoregressive, planar or radial layers; for Glow images, steps per level (default 8; maf, iaf, nsf 5; planar, radial 32)
    hidden: int | None = None  # conditioner width, MLP units or conv channels (default 128; cnf and realnvp images 64; tables under 5,000 rows 2D rounded up to a power of 2 in [32, 128])
    depth: int | None = None  # conditioner hidden layers or residual blocks (default 2; nice 4; cnf 3)
    conditioner: str | None = None  # vector models: mlp or resmlp (default mlp)
    mask: str | None = None  # vector models: alternating (even/odd) or half (default alternating); image realnvp: checkerboard (the masked image, the paper's) or squeezed (squeezed first: the network convolves the kept half at half the height and width) (default checkerboard)
    scale_bound: str | None = None  # tanh, soft_clamp or sigmoid (Glow's code) (default tanh)
    batch_norm: bool | None = None  # batch-norm flow layers between couplings or CNF blocks (default off)
    base: str | None = None  # vector models: base normal or diagonal (learned) (default normal)
    dropout: float | None = None  # vector models: dropout in the conditioners while training (default 0; tables under 5,000 rows 0.3)
    scales: int | None = None  # image models: number of scales/levels (default: the most that fit, up to 3)
    norm: str | None = None  # image models: conditioner normalisation, batch or none (default batch)
    alpha: float | None = None  # realnvp and cnf images: logit boundary alpha (default 0.05)
    lu: bool | None = None  # glow: LU-decomposed 1x1 convolutions, else plain (default on); maf, iaf, nsf: a learned LU linear map between layers, else reversing the features (default: nsf on, maf and iaf off)
    coupling: str | None = None  # glow: affine, additive or spline couplings (default affine; spline: rational-quadratic, see --bins)
    bins: int | None = None  # nsf, glow --coupling spline: bins of each rational-quadratic spline (default 8; 16 for data of 5,000 training rows or more)
    tail_bound: float | None = None  # nsf, glow --coupling spline: splines act on [-B, B] of the standardised data, the identity outside (default 5)
    autoregressive: bool | None = None  # nsf: spline MADE layers (NSF-AR) instead of spline couplings (NSF-C) (default off)
    blocks: int | None = None  # cnf: CNF blocks in sequence (default 1)
    activation: str | None = None  # network activation: cnf tanh or softplus (default tanh; images softplus); coupling models relu or tanh (default relu; tables under 5,000 rows tanh)
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
    power_transform: bool = True  # tables: a learned Yeo-Johnson power per column, fitted before training
    whiten: bool = True  # tables: a learned linear map fitted to whiten the training rows (start from a Gaussian)
    discrete: str = "auto"  # tables: columns to dequantize: auto (columns of few values on a grid: integers, or recorded to 0.1, 0.01, ...), none, or names/numbers
    conditional: bool = False  # images: learn p(image | class) (digits, mnist:DIR, cifar10:DIR, images:DIR with one subfolder per class); models realnvp, glow
    context: str | None = None  # tables: learn p(x | c), the density of the other columns given these (names or 1-based numbers, comma-separated; every vector model)
    input_noise: float = 0.0  # tables: Gaussian noise on each training batch, shaped as the training covariance of the continuous columns and scaled by this factor (noise regularisation, e.g. 0.2)
    optimizer: str = "adam"  # adam or adamw
    weight_decay: float = 0.0  # decoupled with adamw, L2 with adam
    schedule: str = "cosine"  # cosine (after warm-up) or constant
    warmup: int = 200  # linear warm-up steps
    clip: float = 10.0  # gradient-norm clipping threshold (0 disables)
    ema: float | None = None  # decay of the moving average of the weights that is evaluated and kept (0 disables; its decay ramps up as min(EMA, (1 + n) / (10 + n)) over the n steps; default: 0.99 for vectors of at least 5,000 training rows and for realnvp and glow on images, else 0)
    select_best: bool = True  # keep and use the best weights on validation (the untrained flow is the first candidate)
    patience: int | None = None  # stop after this many evaluations without a better model (0: never; default: max(20 evaluations, 500 steps))
    nonfinite: str = "stop"  # on a NaN/inf loss or gradient: stop, or skip the step (stops after 20 in a row)
    seed: int = 0  # seed of initialisation and batch order
    eval_every: int | None = None  # steps between validation evaluations and metrics rows (default: one epoch)
    checkpoint_every: int = 500  # steps between checkpoints
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    compile: bool = False  # torch.compile the training step (coupling flows; same numbers, faster)
    precision: str = "fp32"  # the conditioner networks' precision while training: fp32, or bf16 (autocast; the transformations, log-dets and ODE states stay float32, and evaluation runs in float32)
    tensorboard: bool = False  # also write metrics and plots as TensorBoard events in RUN/tensorboard (pip install tensorboard)
    threads: int | None = None  # CPU threads of torch while training (default: 1 for small vector models, which more threads do not speed up and slow down several-fold on a busy machine; else one per core)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def dataset(self):
        """The data this config names, as ``clayflow.data.load_dataset`` gives them (with the
        context columns of ``context`` or the classes of ``conditional``)."""
        from clayflow.data import load_dataset

        return load_dataset(self.data, self.context, classes=self.conditional)

    def resolved(self) -> TrainConfig:
        """A copy with the defaults of the data's kind filled in (see ``KIND_DEFAULTS``); the
        defaults that depend on the data's size are ``clayflow.train.setup.data_defaults``."""
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
                    f"model {self.model!r} on {kind} data has no option {flag(name)}"
                )
        return options


_POSITIVE = {
    "steps", "batch_size", "lr", "layers", "hidden", "scales", "eval_every", "checkpoint_every",
    "t1", "step_size", "threads", "bins", "tail_bound",
}  # fmt: skip
_NON_NEGATIVE = {
    "depth", "augment", "weight_decay", "warmup", "clip", "ema", "seed", "patience", "kinetic", "jacobian",
    "atol", "rtol", "input_noise",
}  # fmt: skip
# torch.manual_seed and torch.Generator.manual_seed take seeds up to 2**64 - 1 (they map
# negative ones onto that range, so only 0 .. 2**64 - 1 are distinct seeds).
MAX_SEED = 2**64 - 1


def check_seed(seed: int, name: str = "--seed") -> None:
    """Refuse (``UsageError``) a seed outside torch's range, 0 .. 2**64 - 1."""
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"{name} must be in [0, 2**64 - 1] (torch's seed range), got {seed}")


# Extra dimensions (vectors) or channels (images) of an augmented CNF. Each one widens every
# ODE state (batch_size more values), every layer of the vector field, and the exact trace by
# one backward pass; ANODE uses a handful, and D extra dimensions already let an ODE represent
# any homeomorphism of R^D (Zhang et al. 2020). Far larger values cannot be allocated at all.
MAX_AUGMENT = 1024
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
_CHOICES = {
    "optimizer": ("adam", "adamw"),
    "schedule": ("cosine", "constant"),
    "objective": ("mle", "fm"),
    "nonfinite": ("stop", "skip"),
    "precision": ("fp32", "bf16"),
}


def config_from_dict(
    values: dict[str, Any], source: str = "config", *, here: bool = True, saved: bool = False
) -> TrainConfig:
    """A validated ``TrainConfig`` from (partial) ``values``; unknown keys, wrong types, values
    out of range and options that cannot apply together raise a ``UsageError`` naming ``source``.

    With ``here=False`` the device need not exist on this machine, only be a valid name. With
    ``saved=True`` (a run's own ``config.json``, perhaps written by an older clayflow, which
    accepted combinations this one refuses) combinations of options are not checked.
    """
    config = TrainConfig(**check_keys_and_types(values, source))
    _check_values(config, source, here)
    if not saved:
        _check_combinations(config, source)
    return config


def check_keys_and_types(values: dict[str, Any], source: str) -> dict[str, Any]:
    """``values`` with ints widened to float where a float is expected, if every key is an
    option and every value has its type; else a ``UsageError``. Ranges are not checked: a
    ``--config`` file may hold values that flags then override."""
    hints = typing.get_type_hints(TrainConfig)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(
            f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
        )
    return {key: _check_type(key, value, hints[key], source) for key, value in values.items()}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The key/value pairs of a ``.json`` or ``.toml`` config file."""
    path = Path(path)
    if not path.exists():
        raise ClayflowError(f"config file {path} does not exist")
    if not path.is_file():
        raise ClayflowError(f"config file {path} is not a regular file")
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


def flag(name: str) -> str:
    """The command-line flag of a config field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


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


def _check_values(config: TrainConfig, source: str, here: bool = True) -> None:
    """Every value finite and in its range, or a ``UsageError``."""
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):  # nan passes every comparison below, inf most of them
        value = getattr(config, f.name)
        if field_type(hints[f.name])[0] is float and value is not None and not math.isfinite(value):
            raise UsageError(f"{source}: {f.name} must be a finite number, got {value}")
    for key in _POSITIVE:
        if getattr(config, key) is not None and getattr(config, key) <= 0:
            raise UsageError(f"{source}: {key} must be > 0, got {getattr(config, key)}")
    for key in _NON_NEGATIVE:
        if getattr(config, key) is not None and getattr(config, key) < 0:
            raise UsageError(f"{source}: {key} must be >= 0, got {getattr(config, key)}")
    if config.ema is not None and config.ema >= 1:
        raise UsageError(f"{source}: ema is a decay in [0, 1), got {config.ema}")
    check_seed(config.seed, f"{source}: seed")
    if config.augment is not None and config.augment > MAX_AUGMENT:
        raise UsageError(
            f"{source}: augment must be at most {MAX_AUGMENT} extra dimensions or channels, got "
            f"{config.augment}; each widens every ODE state and vector-field layer (ANODE uses a few)"
        )
    try:
        check_device(config.device, here)
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from None
    for key, choices in _CHOICES.items():
        if getattr(config, key) not in choices:
            raise UsageError(
                f"{source}: {key} must be one of {', '.join(choices)}, got {getattr(config, key)!r}"
            )


def _check_combinations(config: TrainConfig, source: str) -> None:
    """Options that cannot apply together (or to the chosen model) are a ``UsageError``: refused,
    rather than silently ignored."""
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
    if config.precision != "fp32" and config.model == "cnf" and config.objective != "fm":
        raise UsageError(
            f"{source}: --precision {config.precision} on a CNF needs --objective fm: an adaptive solve would "
            "take ever smaller steps to meet its tolerance on a vector field rounded to 8 bits"
        )
    if config.ot and config.objective != "fm":
        raise UsageError(f"{source}: --ot pairs noise and data for flow matching; add --objective fm")
    if config.patience and not config.select_best:
        raise UsageError(f"{source}: patience (early stopping) needs select_best, which tracks the best step")
    if config.model == "cnf":
        _check_cnf_options(config, source)


def _check_cnf_options(config: TrainConfig, source: str) -> None:
    """Refuse CNF options that the chosen solver or objective would silently ignore."""
    from clayflow.transforms.continuous import ADAPTIVE_SOLVERS, FIXED_STEP_SOLVERS

    solver = config.solver or "dopri5"  # the builders' default
    if solver in ADAPTIVE_SOLVERS and config.step_size is not None:
        raise UsageError(
            f"{source}: --step-size is the step of fixed-step solvers, but {solver} adapts its steps "
            f"to --atol/--rtol; drop --step-size or choose a fixed-step --solver "
            f"({', '.join(FIXED_STEP_SOLVERS)})"
        )
    # implicit_adams is fixed-step but iterates its corrector to within atol/rtol.
    if solver in FIXED_STEP_SOLVERS and solver != "implicit_adams":
        tolerances = " and ".join(f"--{k}" for k in ("atol", "rtol") if getattr(config, k) is not None)
        if tolerances:
            raise UsageError(
                f"{source}: {tolerances} {'set' if ' and ' in tolerances else 'sets'} the error tolerance of "
                f"adaptive solvers, but {solver} takes fixed steps of --step-size; drop {tolerances} or "
                f"choose an adaptive --solver ({', '.join(ADAPTIVE_SOLVERS)})"
            )
    if config.atol == 0 and config.rtol == 0:  # one 0 is fine: purely relative or absolute control
        raise UsageError(f"{source}: --atol and --rtol are both 0, so no step can meet them; set one > 0")
    between = [flag(k) for k in ("actnorm", "batch_norm") if getattr(config, k)]
    if between and (config.blocks or 1) < 2:
        raise UsageError(
            f"{source}: {' and '.join(between)} {'go' if len(between) > 1 else 'goes'} between CNF blocks, "
            f"but there is one; add --blocks 2 or more, or drop {' and '.join(between)}"
        )
    if config.objective == "fm":
        solves = "but flow matching trains without solving the ODE"
        ignored = [
            ("--kinetic", config.kinetic, f"regularises the ODE solves of maximum likelihood, {solves}"),
            ("--jacobian", config.jacobian, f"regularises the ODE solves of maximum likelihood, {solves}"),
            ("--trace", config.trace, (f"is the divergence while training by maximum likelihood, {solves} "
                                      "(evaluation and sampling use --eval-trace)")),
            ("--adjoint", config.adjoint, f"backpropagates through ODE solves, {solves}"),
            ("--learn-t1", config.learn_t1, ("learns T by likelihood, but the flow-matching loss falls as "
                                            "1/T^2, so it would only grow T (set it with --t1)")),
        ]  # fmt: skip
        for option, value, why in ignored:
            if value:
                raise UsageError(f"{source}: {option} {why}; drop {option} or use --objective mle")


def check_device(name: str, here: bool = True) -> str:
    """``name`` if it is a device clayflow runs on (auto, cpu, cuda or cuda:N) and, with
    ``here``, one this machine has (CUDA available, N below its device count), else a
    ``UsageError``.

    >>> check_device("cpu")
    'cpu'
    """
    import torch

    if not _DEVICE.fullmatch(name):
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if here and name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        count, index = torch.cuda.device_count(), int(name.partition(":")[2] or 0)
        if index >= count:
            raise UsageError(
                f"device {name!r} requested but this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    return name


def field_help() -> dict[str, str]:
    """Help text of each field, read from the comments in ``TrainConfig``'s source."""
    import inspect

    helps = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        name, _, rest = line.strip().partition(":")
        if "#" in rest and name.isidentifier():
            helps[name] = rest.split("#", 1)[1].strip()
    return helps
