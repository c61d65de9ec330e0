"""``verify``: check that a trained flow is what it claims, on data and on its own samples.

(``clayflow.verify``; ``clayflow verify RUN`` runs it on a trained run.)

>>> import torch
>>> from clayflow import models
>>> report = verify(models.realnvp(2, layers=2, hidden=8), torch.randn(64, 2), rows=64)
>>> report.passed
True
>>> report.table().splitlines()[0].split()
['check', 'figure', 'tolerance', 'result', 'detail']

What it measures (each a row of the report; see ``checks`` for the tolerances):

* round trips ``inverse(forward(x)) - x`` on the data and ``forward(inverse(z)) - z`` on
  model samples and on far points (latents ``3 N(0, I)``), in float32 and float64; integer
  images (and dequantized table columns) reconstructed exactly;
* the model's log|det| against the brute-force Jacobian of the whole model (float64, full
  Jacobian, a few rows), and every layer's log|det| and round trip at its own input, so a
  wrong layer is named;
  for images, bits/dim recomputed from that brute-force log-det;
* log p of the model's samples by the inverse pass against the forward pass;
* non-finite values anywhere, weights finite, ActNorm initialised, batch-norm sane;
* 2-D and 3-D models: the density integrates to 1 over a grid;
* CNFs: Hutchinson's trace estimate against the exact trace, and log p at the solver's
  tolerances against 100 times tighter ones; augmented flows: the gap of their bound;
* a two-sample figure (energy distance, samples vs data, with a permutation p-value).

A conditional flow p(x | c) is checked at the data's own contexts (``context``, one row per
example; see ``clayflow.core.conditioning.at_context``): every check above then holds for
x -> f(x; c) at each row's c, samples are drawn at the data's contexts (so the two-sample
figure compares like with like), and the density's mass is that of p(x | c) at the first row's c.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from clayflow.core import Flow
from clayflow.core.conditioning import at_context
from clayflow.diagnostics import checks
from clayflow.diagnostics.anatomy import anatomy, float64_copy
from clayflow.diagnostics.report import Check, Report
from clayflow.errors import UsageError

MAX_JACOBIAN_DIMS = 4096  # above: the brute-force log-det checks are skipped (said in the report)


def jacobian_points(dims: int) -> int:
    """Rows whose full Jacobian is computed: 4 up to 256 dimensions, 2 up to 1024, else 1."""
    return 4 if dims <= 256 else 2 if dims <= 1024 else 1


def verify(flow: Flow, data: Tensor, *, context: Tensor | None = None, rows: int = 256,
           points: int | None = None, seed: int = 0, two_sample: bool = True) -> Report:  # fmt: skip
    """Check ``flow`` on ``data`` ``(N, *event_shape)`` (held-out examples: the first ``rows``
    are used) and on its own samples; ``context`` ``(N, K)``: the examples' contexts, for a
    conditional flow (and only then); ``points``: rows whose full Jacobian is computed
    (default by dimension, ``jacobian_points``). Returns a ``Report``; ``report.passed`` is
    True when every check with a tolerance passed. The flow is left as it was (its mode,
    its weights); torch's random stream is left untouched (draws come from ``seed``)."""
    if bool(flow.context_features) != (context is not None):
        raise UsageError("verify a conditional flow p(x | c) at the data's contexts (context=...), "
                         "and an unconditional one without" if flow.context_features else
                         "this flow is not conditional: verify it without a context")  # fmt: skip
    data = torch.as_tensor(data)[:rows]
    single = None
    if context is not None:
        context = torch.as_tensor(context)[: len(data)]
        if len(context) == 1:  # one context for every example, as log_prob takes it
            context = context.expand(len(data), -1)
        if len(context) != len(data):
            raise UsageError(f"verify takes one context row per example: {len(data)} examples, {len(context)} contexts")
        flow, single = at_context(flow, context), at_context(flow, context[:1]).eval()
    flow = copy.deepcopy(flow).eval()  # a check may run an uninitialised ActNorm: not the caller's flow
    device = next(flow.parameters()).device
    x = data.to(device=device, dtype=flow.dtype)  # image levels too
    report = Report()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        _run_checks(report, flow, x, points, seed, two_sample, single or flow)
    return report


def _run_checks(report: Report, flow: Flow, x: Tensor, points: int | None, seed: int, two_sample: bool,
                one_context: Flow) -> None:  # fmt: skip
    """The checks of ``verify``; ``one_context``: ``flow`` at a single context (``flow``
    itself when unconditional), whose density must integrate to 1."""
    parts, twin = anatomy(flow), anatomy(float64_copy(flow))
    tolerances = checks.Tolerances.of(parts)
    report.add(checks.state(parts))
    report.add(checks.finite(parts, x, seed))
    for check in checks.round_trips(parts, twin, x, tolerances, seed):
        report.add(check)
    dims = math.prod(x.shape[1:])
    points = points or jacobian_points(dims)
    if dims <= MAX_JACOBIAN_DIMS:
        for check in checks.logdet_whole(twin, x, tolerances, seed, points):
            report.add(check)
        for check in checks.per_layer(twin, x, tolerances, seed, points):
            report.add(check)
    else:
        report.add(Check("log|det| vs Jacobian: skipped", dims, None, None,
                         f"{dims} dimensions > {MAX_JACOBIAN_DIMS}: the full Jacobian is too large"))  # fmt: skip
    report.add(checks.directions_agree(twin, len(x), tolerances, seed))
    mass = checks.total_mass(anatomy(one_context), x, seed)
    if mass is not None and one_context is not flow:
        mass.detail += ", at the first example's context"
    for check in (mass, checks.augmentation_gap(parts, x, seed)):
        if check is not None:
            report.add(check)
    for check in checks.hutchinson_agrees(twin, x, seed) + checks.solver_tolerance(twin, x, seed):
        report.add(check)
    if two_sample:
        report.add(checks.energy_distance(parts, x, seed))
