"""What a run is made of before its first step: the device, and the untrained flow fitted to
the training data (the start layers of ``clayflow.models.start``)."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from functools import partial
from typing import Any

import torch
from torch import Tensor

from clayflow.core import Flow
from clayflow.data import Dataset, standardization
from clayflow.data.discrete import discrete_columns
from clayflow.errors import UsageError
from clayflow.models import MODELS, VECTOR, ModelSpec, build, data_kind, model_defaults, model_options
from clayflow.models.start import fit_context, fit_start
from clayflow.train.config import MODEL_FIELDS, TrainConfig, flag

_LISTED_COLUMNS = 8  # a message names at most this many columns

# Defaults chosen from the data's size (see ``data_defaults``). Tables with fewer training rows
# than SMALL_TABLE_ROWS overfit within a few hundred steps with the networks that suit 2D toys
# of 50,000 rows: for them, small batches, narrow conditioners, dropout, and tanh conditioners,
# whose bounded outputs keep the fitted start's tails for rows outside the training range.
SMALL_TABLE_ROWS = 5_000
SMALL_TABLE = {"batch_size": 64, "dropout": 0.3, "activation": "tanh"}
SMALL_TABLE_MIN_HIDDEN = 32  # conditioner width: the smallest power of 2 >= 2 D, in [32, 128]
MAX_HIDDEN = 128
# Spline bins by the data's size: splines of 16 bins brought the default NSF within 0.05 nats
# of the true entropy on all eight 2D toys (50,000 rows; 8 bins: 0.11 on rings), but cost 0.1
# to 1.0 nats on the five small tables of benchmarks/tabular (3 seeds each), which keep 8.
LARGE_DATA_BINS = 16
# Early stopping: the patience is at least this many evaluations, and at least PATIENCE_STEPS.
# Images too: the default digits runs (realnvp, glow; 3 seeds each) did best at steps 440-1,210
# of 4,000 and then overfit (realnvp's validation NLL rose from 87 to about 200 nats); with
# early stopping they chose the same step in 946-1,716 steps, with the same test bits/dim
# where both runs had 1 thread (benchmarks/results/image_weight_average/early_stopping.csv).
MIN_PATIENCE = 20
PATIENCE_STEPS = 500
# Vectors of at least SMALL_TABLE_ROWS training rows evaluate and keep a moving average of the
# weights (about the last 100 steps): on the four 2D toys it reached the best peer's final NLL
# in 1.2-3.5x fewer steps than the raw weights (3 seeds each), with the same final NLL
# (benchmarks/results/2026-12-02.md). Small tables keep the raw weights: on the five tables of
# benchmarks/tabular the average moved realnvp's test log-likelihood by -0.54 to +0.08 nats
# (benchmarks/results/tabular_ema/).
LARGE_DATA_EMA = 0.99
# Coupling flows on images (realnvp, glow) evaluate and keep the same average: on digits,
# `clayflow train --data digits` (realnvp) gave 1.9498 test bits/dim with it against 2.0271
# without, and `--model glow` 2.1812 against 2.2343 (means of 3 seeds, lower on every seed by
# 0.043-0.087; benchmarks/results/image_weight_average/). Image CNFs keep the raw weights (not
# measured).
IMAGE_EMA = 0.99
IMAGE_EMA_MODELS = ("realnvp", "glow")
# The model by the data's size, when none is named: vectors of at least SMALL_TABLE_ROWS
# training rows get NSF (spline couplings, LARGE_DATA_BINS bins). On the four 2D toys of the
# comparison harness (3 seeds each) it reached the best peer's final test NLL in 98-466 steps
# where RealNVP (with the weight average) needed 461-2,800, and ended 0.004-0.08 nats lower
# (benchmarks/results/2026-12-03.md); it is as near the true entropy as RealNVP on moons and
# nearer on the seven other toys (benchmarks/results/toy_entropy/). Smaller tables keep
# RealNVP with the SMALL_TABLE options (the tuned small-table defaults of benchmarks/tabular),
# and images keep RealNVP.
LARGE_DATA_MODEL = "nsf"
DEFAULT_MODEL = "realnvp"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


def steps_per_epoch(rows: int, batch_size: int) -> int:
    """Optimisation steps in one pass over ``rows`` training rows (the last partial batch of an
    epoch is dropped, see ``BatchSampler``)."""
    return max(1, rows // min(batch_size, rows))


def data_defaults(config: TrainConfig, data: Dataset, *, new_run: bool = True) -> TrainConfig:
    """``config`` with every option left at ``None`` that depends on the data filled in, by rule
    (the result is what ``config.json`` records; an option given is never changed). The model
    options of the small-table rule apply to new runs only: a resumed run keeps the model it
    was built with (a run of an older clayflow recorded ``None`` for the builder's defaults).

    * the model (``model``, when not named): ``LARGE_DATA_MODEL`` (nsf) for vectors of at
      least ``SMALL_TABLE_ROWS`` training rows, else ``DEFAULT_MODEL`` (realnvp);
    * all data: validation once per epoch (``eval_every`` = training rows // batch size steps);
    * all data: early stopping after ``max(20, 500 / eval_every)`` evaluations without a lower
      validation NLL (``patience``);
    * tables with fewer than ``SMALL_TABLE_ROWS`` training rows, coupling models: batches of 64,
      dropout 0.3 in the conditioners, tanh conditioners, and conditioners of width ``2 D``
      rounded up to a power of 2 in [32, 128];
    * vectors of at least ``SMALL_TABLE_ROWS`` training rows, spline models (nsf, glow with
      spline couplings): ``LARGE_DATA_BINS`` bins (the builders' default, 8, below);
    * vectors of at least ``SMALL_TABLE_ROWS`` training rows: the weights evaluated and kept
      are a moving average of decay ``LARGE_DATA_EMA`` (``ema``), and so are those of
      ``IMAGE_EMA_MODELS`` on images (``IMAGE_EMA``); smaller tables and image CNFs keep the
      weights themselves;
    * then the kind defaults of ``TrainConfig.resolved`` (batch size, learning rate).
    """
    vector = data_kind(data.event_shape) == VECTOR
    rows = len(data.train)
    if config.model is None:
        config = replace(config, model=LARGE_DATA_MODEL if vector and rows >= SMALL_TABLE_ROWS else DEFAULT_MODEL)
        if vector:
            _check_default_model_takes(config, rows)
    values: dict = {}
    if new_run and vector and rows < SMALL_TABLE_ROWS and "dropout" in model_options(config.model, VECTOR):
        values.update(SMALL_TABLE)
        width = 2 ** math.ceil(math.log2(2 * data.features))
        values["hidden"] = min(MAX_HIDDEN, max(SMALL_TABLE_MIN_HIDDEN, width))
    if new_run and vector and rows >= SMALL_TABLE_ROWS and (config.model == "nsf" or config.coupling == "spline"):
        values["bins"] = LARGE_DATA_BINS
    if vector:
        values["ema"] = LARGE_DATA_EMA if rows >= SMALL_TABLE_ROWS else 0.0
    else:
        values["ema"] = IMAGE_EMA if config.model in IMAGE_EMA_MODELS else 0.0
    config = replace(config, **{k: v for k, v in values.items() if getattr(config, k) is None}).resolved()
    if config.eval_every is None:
        config = replace(config, eval_every=steps_per_epoch(rows, config.batch_size))
    if config.patience is None:
        patience = max(MIN_PATIENCE, math.ceil(PATIENCE_STEPS / config.eval_every))
        config = replace(config, patience=patience if config.select_best else 0)
    return config


def _check_default_model_takes(config: TrainConfig, rows: int) -> None:
    """Refuse options the data's default model lacks, saying which model was chosen, why, and
    which vector models take every option given (all of them, the other default first)."""
    given = [name for name in MODEL_FIELDS if getattr(config, name) is not None]
    lacking = [name for name in given if name not in model_options(config.model, VECTOR)]
    if not lacking:
        return
    order = [DEFAULT_MODEL, LARGE_DATA_MODEL, *MODELS]
    takers = [name for name in dict.fromkeys(order)
              if VECTOR in MODELS[name] and set(given) <= model_options(name, VECTOR)]  # fmt: skip
    options = ", ".join(flag(name) for name in given)
    if takers:
        advice = f"name a model that takes {options}: --model {' or --model '.join(takers)}"
    else:
        advice = f"no vector model takes {'all of ' if len(given) > 1 else ''}{options}"
        vector_options = set().union(*(model_options(name, VECTOR) for name, kinds in MODELS.items() if VECTOR in kinds))
        image_only = [flag(name) for name in given if name not in vector_options]
        if image_only:
            advice += f" ({', '.join(image_only)}: for images)"
    what = "not an option" if len(lacking) == 1 else "not options"
    raise UsageError(
        f"{', '.join(flag(name) for name in lacking)}: {what} of {config.model}, the default model for "
        f"{rows:,} training rows (below {SMALL_TABLE_ROWS:,}: {DEFAULT_MODEL}, from {SMALL_TABLE_ROWS:,}: "
        f"{LARGE_DATA_MODEL}); {advice}"
    )


def build_flow(
    config: TrainConfig,
    data: Dataset,
    *,
    verbose: bool = False,
    discrete: dict[int, float] | None = None,
    saved_options: dict[str, Any] | None = None,
) -> tuple[Flow, ModelSpec]:
    """The untrained flow for ``config`` on ``data``; a vector flow's start layers are fitted
    to the training split. ``discrete`` ({column: grid step}) overrides the columns that
    ``config.discrete`` chooses (a resumed run keeps its own), and ``saved_options`` (a
    resumed run's builder options) the builder's defaults. With ``verbose``, says which
    columns are dequantized."""
    kind = data_kind(data.event_shape)
    options = {
        **model_defaults(config.model, kind),
        **(saved_options or {}),
        **config.model_options(model_options(config.model, kind), kind),
    }
    vector = kind == VECTOR
    if data.context_features:
        if "context_features" not in options:
            able = [name for name, builders in MODELS.items()
                    if kind in builders and "context_features" in model_options(name, kind)]  # fmt: skip
            how = "--context" if vector else "--conditional"
            raise UsageError(f"model {config.model!r} cannot be conditional ({how}) on {kind}s; use one of: {', '.join(able)}")
        options["context_features"] = data.context_features
        if config.ot:
            raise UsageError("--ot pairs noise and data across the batch, which mixes contexts; train p(x | c) without it")
    if not vector and config.discrete != "auto":
        raise UsageError("--discrete chooses columns of a table; images are dequantized as a whole")
    if not vector and config.input_noise:
        raise UsageError("--input-noise regularises the training rows of tables; images have no such option")
    if discrete is None:
        discrete = discrete_columns(data, config.discrete) if vector else {}
    spec = ModelSpec(
        config.model, list(data.event_shape), options, config.standardize and vector, data.levels,
        discrete=list(discrete), discrete_steps=list(discrete.values()),
        power=config.power_transform and vector, whiten=config.whiten and vector,
    )  # fmt: skip
    torch.manual_seed(config.seed)
    flow = build(spec)
    if vector:
        x, context = flow.split_rows(data.train)
        fit_start(flow, x, partial(standardization, describe=data.column_names, context=context), seed=config.seed)
        if context is not None:
            fit_context(flow, context)
        if config.objective == "fm":  # flow matching trains the CNF alone; the fitted start stays
            for layer in list(flow.transform)[:-1]:
                layer.requires_grad_(False)
    if verbose and discrete and config.discrete == "auto":
        print(_discrete_message(discrete, data), file=sys.stderr)
    return flow, spec


def input_noise_factor(
    noise: float, data: Dataset, discrete: list[int], device: torch.device | str = "cpu"
) -> Tensor | None:
    r"""A factor ``F``, shape ``(D, D)``, of the Gaussian noise added to each training batch
    (noise regularisation, Rothfuss et al. 2019): ``x + eps @ F.T`` with ``eps ~ N(0, I)`` has
    noise covariance ``noise**2 * Sigma``, where ``Sigma`` is the training covariance of the
    continuous columns (0 on dequantized columns, whose uniform noise already smooths them,
    and on the context columns of a conditional table, which are conditioned on, not modelled);
    shaped like the data, as a KDE's bandwidth matrix, so that thin directions of correlated
    columns are not blurred. Training then fits the data convolved with this noise, which a
    flow cannot collapse onto the training rows. The factor comes from an eigendecomposition, so
    a singular covariance (possible with ``--no-standardize``, which skips the rank check) is
    fine. On ``device``; None when there is no noise."""
    if not noise:
        return None
    width = data.train.shape[1]  # a conditional table's context columns get no noise
    continuous = [j for j in range(data.features) if j not in set(discrete)]
    factor = torch.zeros(width, width, dtype=torch.float64)
    if continuous:
        covariance = torch.cov(data.train.double()[:, continuous].T).reshape(len(continuous), -1)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # covariance = V diag(l) V^T
        root = eigenvectors * eigenvalues.clamp(min=0).sqrt()
        factor[torch.tensor(continuous)[:, None], torch.tensor(continuous)] = noise * root
    return factor.float().to(device)


def _discrete_message(discrete: dict[int, float], data: Dataset) -> str:
    columns = list(discrete)
    which = (
        f"column(s) {data.column_names(columns)}"
        if len(columns) <= _LISTED_COLUMNS
        else f"{len(columns)} of the {data.features} columns"
    )
    steps = sorted(set(discrete.values()), reverse=True)
    if steps == [1.0]:
        grid = "few whole-number values"
    else:
        grid = f"few values on a grid (step {' or '.join(f'{s:g}' for s in steps)})"
    return (
        f"{which} hold {grid}: they are dequantized (uniform noise across one step), so "
        "log-likelihoods are lower bounds on the discrete probabilities per unit of the step, "
        "in the same units as continuous columns (--discrete none turns this off)"
    )
