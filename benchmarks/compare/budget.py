"""Workloads 3 and 4, at a fixed wall-clock budget: Glow on scikit-learn digits against
normflows' Glow, and a CNF on 2D toys against zuko's CNF.

Both sides of a pair run the same loop (Adam at a constant learning rate, the same batches in
the same order) until ``budget`` seconds of training have passed, checked after every step,
then are scored on the same test set. Only training counts towards the budget. Glow keeps the
weights of its best validation NLL (checked 20 times over the budget); the toys draw fresh
data and are scored as trained.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
from contenders import Contender, _version, clayflow_contender, zuko_contender
from quality import CurvePoint, test_nll, toy_data
from torch import Tensor

from clayflow import models
from clayflow.data import load_dataset
from clayflow.train.schedule import make_weight_average

GLOW_SCALES, GLOW_STEPS, GLOW_HIDDEN = 2, 8, 128


@dataclass
class BudgetRow:
    workload: str  # "glow digits seed S" or "cnf TOY seed S"
    contender: str
    steps: int
    seconds: float
    test_nll: float  # nats per example
    test_bpd: float  # bits/dim (images), NaN for tables
    train_rate: float  # examples/s while training
    sample_rate: float  # samples/s, eval mode, no graph


def train_for(
    contender: Contender,
    batches: Callable[[], Tensor],
    budget: float,
    lr: float,
    validation: Tensor | None = None,
    checks: int = 20,
    curve: Tensor | None = None,
    weight_average: float = 0.0,
) -> tuple[int, float, list[tuple[int, float, float]]]:
    """Train until ``budget`` seconds of training have passed; returns (steps, seconds, the
    learning curve).

    With ``validation``, the NLL on it is computed ``checks`` times, evenly over the budget
    (not counted in it), and the weights with the lowest one are kept at the end, as
    ``clayflow train`` does: small image sets are overfitted long before the budget ends.
    With ``curve`` (a test set), its NLL is taken at the same ``checks`` times, the clock
    stopped, as ``(steps, seconds, NLL)`` rows; the last is the model as trained.
    With ``weight_average`` (a decay), a moving average of the weights is kept as ``clayflow
    train --ema`` keeps it (its updates count as training time), and it is what is evaluated
    and kept: the contender's module ends with its weights (the best on ``validation``, else
    the last).
    """
    optimizer = contender.optimizer(contender.module.parameters(), lr=lr)
    steps, trained, best, points = 0, 0.0, (math.inf, None), []
    next_check = budget / checks
    average = make_weight_average(contender.module, weight_average) if weight_average else None
    while trained < budget:
        contender.module.train()
        start = time.perf_counter()
        loss = -contender.log_prob(batches()).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update_parameters(contender.module)
        steps += 1
        trained += time.perf_counter() - start
        if trained >= next_check or trained >= budget:
            while next_check <= trained:  # one check even when a step outlasts the interval
                next_check += budget / checks
            if average is not None:  # the average's weights, evaluated through the contender's own calls
                training_weights = _snapshot(contender.module)
                contender.module.load_state_dict(average.module.state_dict())
            if curve is not None:
                points.append((steps, trained, test_nll(contender, curve)))
            if validation is not None and (nll := test_nll(contender, validation)) < best[0]:
                best = (nll, _snapshot(contender.module))
            if average is not None:
                contender.module.load_state_dict(training_weights)
    if best[1] is not None:
        contender.module.load_state_dict(best[1])
    elif average is not None:
        contender.module.load_state_dict(average.module.state_dict())
    return steps, trained, points


def _snapshot(module: torch.nn.Module) -> dict[str, Tensor]:
    """A copy of ``module``'s state (parameters and buffers) that later steps do not change."""
    return {k: v.clone() for k, v in module.state_dict().items()}


def _random_batches(data: Tensor, batch: int, seed: int) -> Callable[[], Tensor]:
    """Batches drawn with replacement by a seeded generator: the same sequence for everyone."""
    generator = torch.Generator().manual_seed(seed)
    return lambda: data[torch.randint(len(data), (batch,), generator=generator)].float()


def _consecutive_batches(stream: Tensor, batch: int) -> Callable[[], Tensor]:
    """Consecutive batches of ``stream``, wrapping around at its end."""
    position = 0

    def next_batch() -> Tensor:
        nonlocal position
        start = position % (len(stream) - batch)
        position += batch
        return stream[start : start + batch]

    return next_batch


def sample_rate(contender: Contender, n: int, repeats: int = 3) -> float:
    contender.module.eval()
    with torch.no_grad():
        contender.sample(n)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            contender.sample(n)
    return n * repeats / (time.perf_counter() - start)


# --- Glow on digits ----------------------------------------------------------------------------


def clayflow_glow(shape: tuple[int, int, int], levels: int) -> Contender:
    # Glow's sigmoid scale, as normflows' Glow has (clayflow's default is a learned tanh bound);
    # channels-last weights and batches, as ``clayflow train`` keeps image models
    flow = models.glow_image(shape, levels, scales=GLOW_SCALES, layers=GLOW_STEPS, hidden=GLOW_HIDDEN,
                             scale_bound="sigmoid")  # fmt: skip
    return channels_last_contender(
        flow, "split priors conditioned on the kept half (Glow's); affine coupling scale sigmoid(r + 2); channels-last"
    )


def channels_last_contender(flow: models.Flow, differs: str) -> Contender:
    """A clayflow image model as ``clayflow train`` keeps it: channels-last weights and batches."""
    flow = flow.to(memory_format=torch.channels_last)
    contender = clayflow_contender(flow, differs)
    return dataclasses.replace(contender, log_prob=lambda x: flow.log_prob(x.contiguous(memory_format=torch.channels_last)))


def normflows_glow(shape: tuple[int, int, int], levels: int) -> Contender:
    """normflows' Glow as in its Glow example (``MultiscaleFlow`` of ``GlowBlock``s, a
    ``GlowBase`` per level), unconditional, on data dequantized and scaled as clayflow does:
    y = (k + u) / levels - 1/2, so log p(k) >= log p(y) - D log(levels)."""
    import normflows as nf

    channels, height, width = shape
    top = GLOW_SCALES
    q0, merges, flows = [], [], []
    for i in range(top):
        level = [
            nf.flows.GlowBlock(channels * 2 ** (top + 1 - i), GLOW_HIDDEN, split_mode="channel", scale=True)
            for _ in range(GLOW_STEPS)
        ]
        flows.append([*level, nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (channels * 2 ** (top - i), height // 2 ** (top - i), width // 2 ** (top - i))
        else:
            latent = (channels * 2 ** (top + 1), height // 2**top, width // 2**top)
        q0.append(nf.distributions.GlowBase(latent))
    model = nf.MultiscaleFlow(q0, flows, merges, class_cond=False)
    dims = channels * height * width

    def log_prob(k: Tensor) -> Tensor:
        y = (k + torch.rand_like(k)) / levels - 0.5
        return model.log_prob(y, None) - dims * math.log(levels)

    def sample(n: int) -> Tensor:
        y, _ = model.sample(n)
        return ((y + 0.5) * levels).floor().clamp(0, levels - 1)

    return Contender(
        "normflows",
        _version("normflows"),
        model,
        log_prob,
        sample,
        lambda y: model.inverse_and_log_det(y)[0],
        lambda z: model.forward_and_log_det(z)[0],
        "per-level priors not conditioned on the kept half; no dequantization of its own (added here)",
    )


def glow_digits(
    budget: float,
    batch: int,
    lr: float,
    seed: int = 0,
    log=print,
    weight_average: float = 0.0,
    only: Collection[str] | None = None,
) -> list[BudgetRow]:
    """Both Glows for ``budget`` seconds from ``seed`` (weights, batches), as workload "glow
    digits seed S"; with ``weight_average`` (a decay) also each Glow evaluated and kept as that
    moving average of its weights ("clayflow + average D", "normflows + average D"). ``only``
    (contender names) runs those alone, to complete a run."""
    data = load_dataset("digits")
    shape, levels = tuple(data.train.shape[1:]), data.levels
    rows: list[BudgetRow] = []
    decays = [0.0, weight_average] if weight_average else [0.0]
    for decay in decays:
        for build in (clayflow_glow, normflows_glow):
            torch.manual_seed(seed)
            contender = build(shape, levels)
            if decay:
                contender = dataclasses.replace(contender, name=f"{contender.name} + average {decay:g}")
            if only is None or contender.name in only:
                rows.append(_glow_row(contender, data, budget, batch, lr, seed, decay))
                log(f"glow seed {seed} {contender.name}: {rows[-1].steps} steps in {rows[-1].seconds:.0f} s, "
                    f"test {rows[-1].test_bpd:.4f} bits/dim")  # fmt: skip
    return rows


def _glow_row(contender: Contender, data, budget: float, batch: int, lr: float, seed: int, decay: float) -> BudgetRow:
    """Train one Glow contender on digits (``train_for``) and measure it."""
    batches = _random_batches(data.train, batch, seed)
    steps, seconds, _ = train_for(contender, batches, budget, lr, validation=data.val.float(), weight_average=decay)
    torch.manual_seed(seed + 1)  # the same dequantization noise for every test pass
    nll = test_nll(contender, data.test.float())
    dims = math.prod(data.train.shape[1:])
    return BudgetRow(
        f"glow digits seed {seed}",
        contender.name,
        steps,
        seconds,
        nll,
        nll / (dims * math.log(2)),
        steps * batch / seconds,
        sample_rate(contender, 256),
    )


# --- CNF on toys -------------------------------------------------------------------------------


def clayflow_cnf(activation: str | None = None) -> Contender:
    """clayflow's CNF with its default vector field, or with ``activation`` (named apart when
    it is not the default: ``"softplus"``, the default before 2026-12-02)."""
    activation = activation or models.model_defaults("cnf")["activation"]
    flow = models.cnf(2, hidden=64, depth=2, activation=activation, trace="exact", eval_trace="exact")
    contender = clayflow_contender(
        flow, f"concatsquash MLP 64-64 {activation}; torchdiffeq dopri5, atol = rtol = 1e-5; exact trace"
    )
    if activation == models.model_defaults("cnf")["activation"]:
        return contender
    return dataclasses.replace(contender, name=f"clayflow {activation}")


def zuko_cnf() -> Contender:
    import zuko

    flow = zuko.flows.CNF(2, hidden_features=(64, 64))
    return zuko_contender(
        flow,
        "MLP 64-64 ELU on (x, sin/cos time features); zuko's adaptive solver, atol 1e-6, rtol 1e-5; exact trace",
    )


def cnf_toys(
    toys, budget: float, batch: int, lr: float, test_size: int, seeds: int = 3, log=print, former_default: bool = True
) -> tuple[list[BudgetRow], list[CurvePoint]]:
    """clayflow's and zuko's CNFs for ``budget`` seconds on each toy from seeds 0 .. seeds - 1 (data,
    weights), as workload "cnf TOY seed S"; with ``former_default``, on seed 0 also clayflow's
    softplus field (the default it replaced). Also clayflow's learning curve: its test NLL at
    20 points of the budget (the clock stopped), for its time to zuko's final NLL."""
    rows, curves = [], []
    for seed in range(seeds):
        for toy in toys:
            stream, test = toy_data(toy, seed, 100_000 // batch + 1, batch, test_size)
            builds = [clayflow_cnf, zuko_cnf] + ([lambda: clayflow_cnf("softplus")] if former_default and seed == 0 else [])
            for build in builds:
                torch.manual_seed(seed)
                contender = build()
                on = test if contender.name == "clayflow" else None  # its default CNF, not the former one
                steps, seconds, points = train_for(contender, _consecutive_batches(stream, batch), budget, lr, curve=on)
                curves += [CurvePoint(contender.name, toy, seed, *point) for point in points]
                nll = points[-1][2] if points else test_nll(contender, test)
                rate = sample_rate(contender, 2000, repeats=1)
                rows.append(BudgetRow(f"cnf {toy} seed {seed}", contender.name, steps, seconds, nll, math.nan,
                                      steps * batch / seconds, rate))  # fmt: skip
                log(f"cnf {toy} seed {seed} {contender.name}: {steps} steps in {seconds:.0f} s, test NLL {nll:.4f}")
    return rows, curves
