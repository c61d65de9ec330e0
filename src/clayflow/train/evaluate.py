"""Likelihood of many examples in bounded memory, with repeatable dequantization noise."""

from __future__ import annotations

import math
from typing import Any

import torch

from clayflow.core import Flow
from clayflow.data import example
from clayflow.train.sampler import Examples, chunks

EVAL_BATCH = 8192
EVAL_ELEMENTS = 2**18  # elements per evaluation chunk: bounds memory on large images
EVAL_SEED = 1234  # dequantization noise of evaluations: every evaluation uses the same


def eval_batch_size(example_shape: tuple[int, ...]) -> int:
    """Examples per evaluation chunk: up to ``EVAL_BATCH``, fewer for large examples."""
    return max(1, min(EVAL_BATCH, EVAL_ELEMENTS // max(1, math.prod(example_shape))))


@torch.no_grad()
def log_prob_in_chunks(flow: Flow, x: Examples, loader_options: dict[str, Any] | None = None) -> torch.Tensor:
    """``flow.log_prob`` of every example of ``x`` (a tensor of any dtype and device, or a
    dataset read with ``loader_options``) as float64 on the CPU, in chunks. Dequantization
    noise comes from a fixed seed, so repeated evaluations of one model agree and the caller's
    random stream is left untouched."""
    device = next(flow.parameters()).device
    devices = [device] if device.type == "cuda" else []
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.float64)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(EVAL_SEED)
        shape = tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else tuple(example(x[0]).shape)
        parts = [
            flow.log_prob(chunk.to(device).float()).double().cpu()
            for chunk in chunks(x, eval_batch_size(shape), loader_options)
        ]
    return torch.cat(parts)


def evaluate_log_probs(flow: Flow, x: Examples, loader_options: dict[str, Any] | None = None) -> torch.Tensor:
    """``log p(x)`` of every row ``(N,)`` (float64, CPU) in eval mode."""
    was_training = flow.training
    flow.eval()
    log_probs = log_prob_in_chunks(flow, x, loader_options)
    flow.train(was_training)
    return log_probs


def evaluate_nll(flow: Flow, x: Examples, loader_options: dict[str, Any] | None = None) -> float:
    """Mean negative log-likelihood of ``x`` (nats per example) in eval mode."""
    return -evaluate_log_probs(flow, x, loader_options).mean().item()
