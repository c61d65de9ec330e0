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
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from clayflow.core import Flow
from clayflow.diagnostics import checks
from clayflow.diagnostics.anatomy import anatomy, float64_copy
from clayflow.diagnostics.report import Check, Report
from clayflow.errors import UsageError

MAX_JACOBIAN_DIMS = 4096  # above: the brute-force log-det checks are skipped (said in the report)


def jacobian_points(dims: int) -> int:
    """Rows whose full Jacobian is computed: 4 up to 256 dimensions, 2 up to 1024, else 1."""
    return 4 if dims <= 256 else 2 if dims <= 1024 else 1


def verify(flow: Flow, data: Tensor, *, rows: int = 256, points: int | None = None, seed: int = 0,
           two_sample: bool = True) -> Report:  # fmt: skip
    """Check ``flow`` on ``data`` ``(N, *event_shape)`` (held-out examples: the first ``rows``
    are used) and on its own samples; ``points``: rows whose full Jacobian is computed
    (default by dimension, ``jacobian_points``). Returns a ``Report``; ``report.passed`` is
    True when every check with a tolerance passed. The flow is left as it was (its mode,
    its weights); torch's random stream is left untouched (draws come from ``seed``)."""
    if flow.context_features:
        raise UsageError("verify checks flows of p(x); conditional flows p(x | c) are not supported yet")
    flow = copy.deepcopy(flow).eval()  # a check may run an uninitialised ActNorm: not the caller's flow
    device = next(flow.parameters()).device
    x = torch.as_tensor(data)[:rows].to(device=device, dtype=flow.dtype)  # image levels too
    report = Report()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        _run_checks(report, flow, x, points, seed, two_sample)
    return report


def _run_checks(report: Report, flow: Flow, x: Tensor, points: int | None, seed: int, two_sample: bool) -> None:
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
    for check in (checks.total_mass(parts, x, seed), checks.augmentation_gap(parts, x, seed)):
        if check is not None:
            report.add(check)
    for check in checks.hutchinson_agrees(twin, x, seed) + checks.solver_tolerance(twin, x, seed):
        report.add(check)
    if two_sample:
        report.add(checks.energy_distance(parts, x, seed))
