"""Likelihood of many examples in bounded memory, with repeatable dequantization noise,
shared out over the processes of a distributed run."""

from __future__ import annotations

import math
from typing import Any

import torch

from clayflow.core import Flow
from clayflow.data import example
from clayflow.train.distributed import Processes
from clayflow.train.sampler import Examples, chunks, head

EVAL_BATCH = 8192
EVAL_ELEMENTS = 2**18  # elements per evaluation chunk: bounds memory on large images
EVAL_SEED = 1234  # dequantization noise of evaluations: chunk k's comes from seed EVAL_SEED + k


def eval_batch_size(example_shape: tuple[int, ...]) -> int:
    """Examples per evaluation chunk: up to ``EVAL_BATCH``, fewer for large examples."""
    return max(1, min(EVAL_BATCH, EVAL_ELEMENTS // max(1, math.prod(example_shape))))


def _chunk_size(x: Examples) -> int:
    shape = tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else tuple(example(x[0]).shape)
    return eval_batch_size(shape)


@torch.no_grad()
def log_prob_in_chunks(
    flow: Flow,
    x: Examples,
    loader_options: dict[str, Any] | None = None,
    processes: Processes | None = None,
    draws: int = 1,
) -> torch.Tensor:
    """``flow.log_prob`` of every example of ``x`` (a tensor of any dtype and device, or a
    dataset read with ``loader_options``) ``(N,)`` as float64 on the CPU, in chunks.

    A flow that dequantizes gives a bound through one noise draw u, log p(x + u) <= log P(x);
    with ``draws`` K > 1 each example gets the importance-weighted bound over K draws,
    log (1/K) Σₖ p(x + uₖ), which is tighter (it rises towards log P(x) with K) and far less
    noisy per example (Burda et al. 2016; Ho et al., Flow++, 2019). Without dequantization
    every draw is the same and K is ignored, and so it is for a flow whose log-det is itself a
    random estimate (a CNF evaluated with Hutchinson's trace), for which the mean of K
    exponentiated estimates would be biased upwards, past log P(x) (``effective_draws``).

    The noise of chunk k (dequantization) comes from seed ``EVAL_SEED + k``, so repeated
    evaluations of one model agree, the caller's random stream is left untouched, and the
    result does not depend on who evaluates which chunk: on ``processes`` (a distributed
    run), process r evaluates chunks r, r + N, r + 2N, ... and every process gets all N
    log-probs (each example is evaluated once). A conditional flow's rows hold the context in
    their last columns (``Flow.split_rows``): the result is then log p(x | c)."""
    processes = processes or Processes()
    draws = effective_draws(flow, draws)
    device = next(flow.parameters()).device
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.float64)
    size = _chunk_size(x)
    mine = range(processes.rank, math.ceil(len(x) / size), processes.world)
    log_probs = torch.zeros(len(x), dtype=torch.float64)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for k, chunk in zip(mine, chunks(x, size, loader_options, which=mine)):
            torch.manual_seed(EVAL_SEED + k)
            inputs = flow.split_rows(chunk.to(device, flow.dtype))
            log_p = flow.log_prob(*inputs).double()
            if draws > 1:
                each = torch.stack([log_p, *(flow.log_prob(*inputs).double() for _ in range(draws - 1))])
                log_p = torch.logsumexp(each, 0) - math.log(draws)
            log_probs[k * size : k * size + len(chunk)] = log_p.cpu()
    return processes.sum(log_probs)


def effective_draws(flow: Flow, draws: int) -> int:
    """The dequantization draws ``log_prob_in_chunks`` averages over for ``flow``: ``draws`` if
    the flow adds dequantization noise (images, or discrete columns of a table) and its log-det
    is exact, else 1 (``one_draw_reason`` says why)."""
    return draws if one_draw_reason(flow) is None else 1


def one_draw_reason(flow: Flow) -> str | None:
    """Why ``log_prob_in_chunks`` takes one draw of ``flow`` whatever it is asked for, or None
    where it takes them all."""
    from clayflow.transforms.continuous import CNF, Trace
    from clayflow.transforms.preprocess import Dequantize, DequantizeColumns

    modules = list(flow.modules())
    if not any(isinstance(m, (Dequantize, DequantizeColumns)) for m in modules):
        return "its model adds no dequantization noise to average over"
    if any(isinstance(m, CNF) and m.eval_trace is Trace.HUTCHINSON for m in modules):
        return "its CNF's log-det is a random Hutchinson estimate, and several would bias the bound upwards"
    return None


def initialize_data_dependent(
    flow: Flow, x: Examples, loader_options: dict[str, Any] | None = None, processes: Processes | None = None
) -> None:
    """Initialise ``flow``'s data-dependent layers (ActNorm) on the first evaluation chunk of
    ``x``, as a first evaluation on one process would; every process of a distributed run
    calls it on the same examples, and then takes rank 0's weights, so all start from the
    same weights even where two machines' arithmetic differs in the last bit."""
    if len(x):
        evaluate_log_probs(flow, head(x, _chunk_size(x)), loader_options)
    if processes is not None:
        processes.broadcast_state(flow)


def evaluate_log_probs(
    flow: Flow, x: Examples, loader_options: dict[str, Any] | None = None, processes: Processes | None = None
) -> torch.Tensor:
    """``log p(x)`` of every row ``(N,)`` (float64, CPU) in eval mode (see ``log_prob_in_chunks``)."""
    was_training = flow.training
    flow.eval()
    log_probs = log_prob_in_chunks(flow, x, loader_options, processes)
    flow.train(was_training)
    return log_probs


def evaluate_nll(
    flow: Flow, x: Examples, loader_options: dict[str, Any] | None = None, processes: Processes | None = None
) -> float:
    """Mean negative log-likelihood of ``x`` (nats per example) in eval mode."""
    return -evaluate_log_probs(flow, x, loader_options, processes).mean().item()
