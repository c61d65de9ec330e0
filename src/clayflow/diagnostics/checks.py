"""The checks of ``verify``, each measuring figures on a model and its float64 twin.

Tolerances (stated in each row): float32 round trips within 1e-4 and float64 ones within
1e-9 of the point's size (``|error| / (1 + |point|)``, max-norm); float64 log-dets within
1e-7 of ``1 + |log-det|``. A CNF's figures are those of an ODE solver, so its tolerances grow
with the solver's: ``100 * max(rtol, atol)`` for adaptive solvers, 1e-2 for fixed steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from clayflow.diagnostics.anatomy import RANDOM_LAYERS, Anatomy, layer_label
from clayflow.diagnostics.density import box_mass
from clayflow.diagnostics.jacobian import brute_logabsdet
from clayflow.diagnostics.report import Check
from clayflow.transforms import CNF, ActNorm, Augment, BatchNorm
from clayflow.transforms.continuous import FIXED_STEP_SOLVERS, Trace

FAR_TEMPERATURE = 3.0  # far points: latents 3 * N(0, I), pulled back to data
GRID_POINTS = {2: 300, 3: 48}  # density integral: grid points per axis, by dimension


def _draw_seed(seed: int, k: int) -> int:
    """The seed of a check's k-th random draw: ``seed + k``, wrapped into torch's seed range
    (0 .. 2**64 - 1), so that every valid ``--seed`` stays valid."""
    return (seed + k) % 2**64


@dataclass
class Tolerances:
    """How close each kind of figure must be (see the module docstring)."""

    round_trip32: float = 1e-4
    round_trip64: float = 1e-9
    logdet64: float = 1e-7

    @classmethod
    def of(cls, anatomy: Anatomy) -> Tolerances:
        """The defaults, or for a flow with CNF blocks tolerances at the scale of their solvers."""
        cnfs = [cnf for _, cnf in anatomy.cnfs()]
        if not cnfs:
            return cls()
        solver = max(1e-2 if c.solver in FIXED_STEP_SOLVERS else 100 * max(c.rtol, c.atol) for c in cnfs)
        return cls(max(1e-4, solver), solver, solver)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def relative_error(estimate: Tensor, truth: Tensor) -> float:
    """max over rows of ``|estimate - truth|_inf / (1 + |truth|_inf)`` (inf if non-finite)."""
    estimate, truth = estimate.reshape(len(truth), -1).double(), truth.reshape(len(truth), -1).double()
    error = (estimate - truth).abs().amax(1) / (1 + truth.abs().amax(1))
    return float(error.max()) if torch.isfinite(error).all() else math.inf


def state(anatomy: Anatomy) -> Check:
    """Every parameter and buffer finite, every ActNorm initialised, batch-norm variances > 0."""
    problems = [f"{name} not finite" for name, t in anatomy.flow.state_dict().items()
                if t.is_floating_point() and not torch.isfinite(t).all()]  # fmt: skip
    for name, layer in anatomy.flow.named_modules():
        if isinstance(layer, ActNorm) and not bool(layer.initialized):
            problems.append(f"{name} (ActNorm) never initialised")
        if isinstance(layer, BatchNorm) and not bool((layer.running_var > 0).all()):
            problems.append(f"{name} (BatchNorm) has a running variance <= 0")
    return Check.within("weights finite, layers initialised", len(problems), 0, "; ".join(problems[:3]))


def round_trips(anatomy: Anatomy, twin: Anatomy, x: Tensor, tol: Tolerances, seed: int) -> list[Check]:
    """``inverse(forward(h)) - h`` on the data (through the body), ``forward(inverse(z)) - z`` on
    model samples and on far latents (through the learned part), in float32 and float64;
    integer data reconstructed exactly through the whole flow."""
    checks = []
    n = len(x)
    for model, dtype, bound in ((anatomy, "float32", tol.round_trip32), (twin, "float64", tol.round_trip64)):
        body, learned, flow = model.body, model.learned, model.flow
        dt = flow.dtype
        with torch.no_grad():
            h = model.body_input(x.to(dt), seed)
            checks.append(Check.within(f"round trip, data ({dtype})", relative_error(body.inverse(body(h)[0])[0], h),
                                       bound, f"{n} rows: inverse(forward(x)) vs x"))  # fmt: skip
            for what, temperature in (("samples", 1.0), ("far points", FAR_TEMPERATURE)):
                torch.manual_seed(_draw_seed(seed, 1))
                z = flow.base.sample(n, temperature).to(dt)
                checks.append(Check.within(
                    f"round trip, {what} ({dtype})", relative_error(learned(learned.inverse(z)[0])[0], z), bound,
                    f"{n} latents {'N(0, I)' if temperature == 1 else f'{temperature:g} N(0, I)'}: forward(inverse(z)) vs z",
                ))  # fmt: skip
    if anatomy.random_prefix:
        with torch.no_grad():
            back = anatomy.flow.inverse(anatomy.flow(x)[0])[0]
        if anatomy.quantized:  # the inverse rounds the dequantized values back to the grid: exact there
            with torch.no_grad(), torch.random.fork_rng():
                torch.manual_seed(seed)
                exact = twin.flow.inverse(twin.flow(x.double())[0])[0]
            grid = anatomy.grid_mask(x)
            # a grid of steps such as 0.1 is exact in float64, not in the data's float32: compare there
            error = float((exact.to(x.dtype) - x)[grid].abs().max()) if grid.any() else 0.0
            checks.append(Check.within("data reconstructed exactly (float64)", error, 0.0,
                                       f"{n} rows through the whole flow, dequantized values, in the data's {_name(x.dtype)}"))  # fmt: skip
            if not grid.all():
                checks.append(Check.within("round trip, whole flow (float32)", relative_error(back * ~grid, x * ~grid),
                                           tol.round_trip32, f"{n} rows, continuous columns"))  # fmt: skip
        else:
            checks.append(Check.within("round trip, whole flow (float32)", relative_error(back, x), tol.round_trip32,
                                       f"{n} rows, augmentation included"))  # fmt: skip
    return checks


def finite(anatomy: Anatomy, x: Tensor, seed: int) -> Check:
    """No NaN or infinity in log p of the data, in samples (before any quantization, which
    would clamp an infinity into the level range) and their log p, or in far points."""
    flow = anatomy.flow
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        values = {"log p(data)": flow.log_prob(x)}
        z = flow.base.sample(len(x))
        samples, logdet = anatomy.body.inverse(z)
        values.update({"samples": samples, "log p(samples)": flow.base.log_prob(z) - logdet})
        values["far points"] = anatomy.body.inverse(flow.base.sample(len(x), FAR_TEMPERATURE))[0]
    counts = {name: int((~torch.isfinite(value.reshape(len(value), -1))).any(1).sum()) for name, value in values.items()}
    where = [f"{name}: {bad} of {len(x)}" for name, bad in counts.items() if bad]
    return Check.within("non-finite values", sum(counts.values()), 0, "; ".join(where) or "data, samples, far points")


def logdet_whole(twin: Anatomy, x: Tensor, tol: Tolerances, seed: int, points: int) -> list[Check]:
    """The body's log|det| against the brute-force Jacobian of the whole body (float64) on
    ``points`` rows; for images, the same as bits/dim of the whole model."""
    body, flow = twin.body, twin.flow
    h = twin.body_input(x[:points].double(), seed)
    dims = h[0].numel()
    with torch.no_grad():
        z, logdet = body(h)
    brute = brute_logabsdet(lambda v: body(v)[0], h)
    error = ((logdet - brute).abs() / (1 + brute.abs())).max().item()
    checks = [Check.within("log|det| of the model vs its Jacobian", error if math.isfinite(error) else math.inf,
                           tol.logdet64, f"float64, full {dims}x{dims} Jacobian at {len(h)} data rows")]  # fmt: skip
    if twin.random_prefix:  # images: the flow's bits/dim against one from the brute-force log-det
        rows = x[:points].double()
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            claimed = flow.bits_per_dim(rows)
            torch.manual_seed(seed)
            _, prefix_logdet = twin.prefix(rows)
        recomputed = -(flow.base.log_prob(z) + prefix_logdet + brute) / (rows[0].numel() * math.log(2))
        error = (claimed - recomputed).abs().max().item()
        checks.append(Check.within("bits/dim vs brute force", error if math.isfinite(error) else math.inf,
                                   tol.logdet64, f"{len(h)} rows: -(log N(z) + log|det J|) / (D ln 2), J by autograd"))  # fmt: skip
    return checks


def layer_calls(anatomy: Anatomy, h: Tensor) -> list[tuple[str, torch.nn.Module, Tensor, Tensor | None, Tensor]]:
    """Each leaf layer's call in ``body(h)``: ``(name, layer, input, context, logabsdet)``."""
    calls, handles = [], []
    for name, layer in anatomy.leaves():
        def hook(module, args, kwargs, output, name=name):
            context = args[1] if len(args) > 1 else kwargs.get("context")
            calls.append((name, module, args[0].detach(), context, output[1].detach()))

        handles.append(layer.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            anatomy.body(h)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def per_layer(twin: Anatomy, x: Tensor, tol: Tolerances, seed: int, points: int) -> list[Check]:
    """Each leaf layer at its own input (float64): its log|det| against the brute-force
    Jacobian, and ``inverse(forward(h)) - h``; a wrong layer is named by its place and class.
    CNF blocks are held to ``tol`` (their solver's scale), every other layer to the exact
    defaults, so that a CNF in a flow does not loosen the checks of its other layers."""
    h = twin.body_input(x[:points].double(), seed)
    exact = Tolerances()
    errors: dict[tuple[str, bool], list[tuple[float, str]]] = {}  # (what, solved) -> [(error, label)]
    for name, layer, inputs, context, logdet in layer_calls(twin, h):
        label, solved = layer_label(name, layer), isinstance(layer, CNF)
        with torch.no_grad():
            out = layer(inputs, context)[0]
            error = relative_error(layer.inverse(out, context)[0], inputs)
            errors.setdefault(("round trip", solved), []).append((error, label))
        if inputs[0].numel() != out[0].numel():
            continue
        brute = brute_logabsdet(lambda v, layer=layer, c=context: layer(v, c)[0], inputs)
        error = ((logdet - brute).abs() / (1 + brute.abs())).max().item()
        errors.setdefault(("log|det|", solved), []).append((error if math.isfinite(error) else math.inf, label))
    checks = []
    for (what, solved), found in sorted(errors.items()):
        bound = (tol if solved else exact).logdet64 if what == "log|det|" else (tol if solved else exact).round_trip64
        worst = max(found)
        layers = f"{len(found)} CNF blocks" if solved else f"{len(found)} layers"
        checks.append(Check.within(f"{what} layer by layer ({layers})", worst[0], bound,
                                   f"float64, {len(h)} rows; worst: {worst[1]}"))  # fmt: skip
        checks += [Check.within(f"{what} of {label}", error, bound, "this layer is wrong")
                   for error, label in found if not error <= bound]  # fmt: skip
    return checks


def directions_agree(twin: Anatomy, n: int, tol: Tolerances, seed: int) -> Check:
    """log p of the model's own samples by the inverse pass (sampling) equals log p by the
    forward pass (scoring), float64."""
    body, base = twin.body, twin.flow.base
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(_draw_seed(seed, 2))
        z = base.sample(n).double()
        h, logdet_inverse = body.inverse(z)
        by_inverse = base.log_prob(z) - logdet_inverse
        z_again, logdet_forward = body(h)
        by_forward = base.log_prob(z_again) + logdet_forward
    error = relative_error(by_inverse.unsqueeze(1), by_forward.unsqueeze(1))
    return Check.within("log p of samples: inverse vs forward pass", error, max(tol.logdet64, tol.round_trip64),
                        f"{n} samples, float64, relative to 1 + |log p|")  # fmt: skip


def total_mass(anatomy: Anatomy, x: Tensor, seed: int) -> Check | None:
    """For 2-D and 3-D models: the density summed over a grid covering the data and samples,
    plus the share of 10,000 samples outside the grid, is 1."""
    flow = anatomy.flow
    dims = flow.event_shape[0] if flow.event_shape is not None and len(flow.event_shape) == 1 else 0
    if dims not in GRID_POINTS or anatomy.random_prefix:
        return None
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(_draw_seed(seed, 3))
        samples = flow.sample(10_000).double()
        cover = torch.cat([samples[:2000], x.double()])
        low, high = cover.amin(0), cover.amax(0)
        low, high = low - 0.25 * (high - low), high + 0.25 * (high - low)
        inside = box_mass(flow, low.tolist(), high.tolist(), GRID_POINTS[dims], batch_size=20_000)
        outside = ((samples < low) | (samples > high)).any(1).double().mean().item()
    error = abs(inside + outside - 1)
    return Check.within(f"density integrates to 1 ({dims}-D grid)", error, 0.02,
                        f"mass {inside:.4f} on a {GRID_POINTS[dims]}^{dims} grid + {outside:.4f} of samples outside")  # fmt: skip


def hutchinson_agrees(twin: Anatomy, x: Tensor, seed: int, probes: int = 32) -> list[Check]:
    """Each CNF block's Hutchinson log-det against its exact log-det at the same inputs: the
    mean error over ``probes`` draws at each of 64 rows, within 4 standard errors."""
    checks = []
    h = twin.body_input(x[:64].double(), seed)
    for name, layer, inputs, context, exact in layer_calls(twin, h):
        if not isinstance(layer, CNF):
            continue
        layer.eval_trace = Trace.HUTCHINSON
        try:
            torch.manual_seed(_draw_seed(seed, 4))
            draws = torch.stack([layer(inputs, context)[1].detach() for _ in range(probes)])
        finally:
            layer.eval_trace = Trace.EXACT
        errors = (draws - exact).flatten()
        figure = (errors.mean().abs() / (errors.std() / math.sqrt(len(errors))).clamp_min(1e-12)).item()
        checks.append(Check.within(f"Hutchinson vs exact trace, {layer_label(name, layer)}", figure, 4.0,
                                   f"|mean error| of {probes} probes x {len(inputs)} rows in standard errors"))  # fmt: skip
    return checks


def solver_tolerance(twin: Anatomy, x: Tensor, seed: int) -> list[Check]:
    """log p with each adaptive CNF block at its trained tolerances against 100 times tighter."""
    cnfs = [cnf for _, cnf in twin.cnfs() if cnf.solver not in FIXED_STEP_SOLVERS]
    if not cnfs:
        return []
    rows = x[:64].double()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        trained = twin.flow.log_prob(rows)
        for cnf in cnfs:
            cnf.rtol, cnf.atol = cnf.rtol / 100, cnf.atol / 100
        try:
            torch.manual_seed(seed)
            tight = twin.flow.log_prob(rows)
        finally:
            for cnf in cnfs:
                cnf.rtol, cnf.atol = cnf.rtol * 100, cnf.atol * 100
    error = relative_error(trained.unsqueeze(1), tight.unsqueeze(1))
    tolerance = 100 * max(max(c.rtol, c.atol) for c in cnfs)
    return [Check.within("log p at the solver's tolerance vs 100x tighter", error, tolerance,
                         f"{len(rows)} rows, relative to 1 + |log p|")]  # fmt: skip


def augmentation_gap(anatomy: Anatomy, x: Tensor, seed: int, draws: int = 64) -> Check | None:
    """An augmented flow's log p is a lower bound, E_a[log p(x, a) - log q(a)]; the gap to the
    importance-sampling estimate log mean_k p(x, a_k) / q(a_k) (``draws`` draws) is reported."""
    if not any(isinstance(layer, Augment) for layer in anatomy.prefix):
        return None
    rows = x[:64]
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(_draw_seed(seed, 6))
        bounds = torch.stack([anatomy.flow.log_prob(rows).double() for _ in range(draws)])
    gap = (torch.logsumexp(bounds, 0) - math.log(draws) - bounds.mean(0)).mean().item()
    return Check("augmentation bound's gap (nats)", gap, None, None,
                 f"importance sampling with {draws} draws, mean over {len(rows)} rows")  # fmt: skip


def energy_distance(anatomy: Anatomy, x: Tensor, seed: int, permutations: int = 200) -> Check:
    """The energy distance between model samples and the data (a two-sample statistic,
    reported as a figure), with its permutation p-value."""
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(_draw_seed(seed, 5))
        samples = anatomy.flow.sample(len(x)).double().reshape(len(x), -1)
        data = x.double().reshape(len(x), -1)
        pooled = torch.cat([samples, data])
        distances = torch.cdist(pooled, pooled)

        def statistic(order: Tensor) -> float:
            a, b = order[: len(x)], order[len(x) :]
            return (2 * distances[a][:, b].mean() - distances[a][:, a].mean() - distances[b][:, b].mean()).item()

        observed = statistic(torch.arange(len(pooled)))
        generator = torch.Generator().manual_seed(seed)
        null = [statistic(torch.randperm(len(pooled), generator=generator)) for _ in range(permutations)]
    p_value = (1 + sum(v >= observed for v in null)) / (1 + permutations)
    return Check("energy distance, samples vs data", observed, None, None,
                 f"{len(x)} of each; permutation p-value {p_value:.3f} ({permutations} permutations)")  # fmt: skip


def reported(flow, test, results: dict, loader_options=None) -> Check:
    """The run's reported test NLL (``results.json``) recomputed from its checkpoint on the
    whole test split, with the same evaluation noise."""
    from clayflow.train.evaluate import evaluate_log_probs

    claimed = float(results["test_nll"])
    log_probs = evaluate_log_probs(flow, test, loader_options)
    recomputed = -log_probs.mean().item()
    error = abs(recomputed - claimed) / (1 + abs(claimed))
    # Dequantization noise drawn on another device (or by an older clayflow) moves the mean by
    # its standard error: 4 of those, relative, for flows that draw noise; else float rounding.
    noisy = any(isinstance(m, RANDOM_LAYERS) for m in flow.modules())
    spread = 4 * log_probs.std().item() / max(len(log_probs), 1) ** 0.5 / (1 + abs(claimed)) if noisy else 0.0
    return Check.within("test NLL of results.json reproduced", error, max(1e-5, spread),
                        f"{len(test)} test rows: {recomputed:.5f} vs {claimed:.5f} nats reported")  # fmt: skip
