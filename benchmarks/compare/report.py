"""The markdown report and plots of ``run.py``, rebuilt from the CSVs of a results folder."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import statistics
from pathlib import Path

import time_to_quality
import torch

from clayflow.plotting.plots import save_figure

SPEED_WORKLOADS = ("train steps/s", "log_prob samples/s", "sample samples/s")
CLAYFLOW, COMPILED, REFERENCE, REFERENCE_COMPILED = (
    "clayflow",
    "clayflow + compile",
    "plain PyTorch",
    "plain PyTorch + compile",
)
REFERENCE_FUSED = "plain PyTorch + compile + fused Adam"
PEERS = ("nflows", "normflows", "zuko", "FrEIA")
LEAD_TARGET, REFERENCE_TARGET = 1.5, 1.0


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def typed(row: dict, cls) -> dict:
    """A CSV row with each value converted to the type of ``cls``'s field."""
    kinds = {f.name: f.type for f in dataclasses.fields(cls)}
    return {k: (str if kinds[k] == "str" else int if kinds[k] == "int" else float)(v) for k, v in row.items()}


def machine() -> dict:
    model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if "model name" in line
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def save_config(folder: Path, config: dict) -> None:
    from contenders import BUILDERS

    described = {}
    for name, build in BUILDERS.items():
        c = build(2)
        described[name] = {"version": c.version, "differs": c.differs}
    (folder / "config.json").write_text(
        json.dumps({"config": config, "machine": machine(), "contenders": described}, indent=2)
    )


def _fmt(value: float) -> str:
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _speed_tables(rows: list[dict]) -> tuple[list[str], list[tuple]]:
    cells = sorted({(int(r["features"]), int(r["batch"])) for r in rows})
    names = list(dict.fromkeys(r["contender"] for r in rows))
    value = {(r["contender"], int(r["features"]), int(r["batch"]), r["workload"]): r for r in rows}
    lines, targets = [], []
    header = "| library | " + " | ".join(f"dim {d}, batch {b}" for d, b in cells) + " |"
    rule = "|---|" + "---|" * len(cells)
    for workload in SPEED_WORKLOADS:
        lines += [f"\n### {workload} (median [min-max] over blocks; x = ratio to clayflow)\n", header, rule]
        for name in names:
            parts = []
            for d, b in cells:
                r, base = value[(name, d, b, workload)], value[(CLAYFLOW, d, b, workload)]
                ratio = float(r["median"]) / float(base["median"])
                parts.append(
                    f"{_fmt(float(r['median']))} [{_fmt(float(r['low']))}-{_fmt(float(r['high']))}] x{ratio:.2f}"
                )
            lines.append(f"| {name} | " + " | ".join(parts) + " |")
        for d, b in cells:
            row = {n: value[(n, d, b, workload)] for n in names}
            peers = {n: row[n] for n in PEERS if n in row}
            fastest = max(peers, key=lambda n: float(peers[n]["median"]))
            best = max((CLAYFLOW, COMPILED), key=lambda n: float(row[n]["median"]) if n in row else 0.0)
            targets.append(
                {
                    "workload": workload,
                    "cell": (d, b),
                    "row": row,
                    "fastest": fastest,
                    "lead": _verdict(row[best], peers[fastest], LEAD_TARGET),
                    "eager": _verdict(row[CLAYFLOW], row[REFERENCE], REFERENCE_TARGET),
                    "compiled": _verdict(row.get(COMPILED), row.get(REFERENCE_COMPILED), REFERENCE_TARGET),
                    "fused": _verdict(row.get(COMPILED), row.get(REFERENCE_FUSED), REFERENCE_TARGET),
                }
            )
    for workload, title in (
        ("parameters", "parameters"),
        ("round-trip error", "round-trip error max |x - f^-1(f(x))| after the speed runs' training"),
    ):
        lines += [f"\n### {title}\n", header, rule]
        for name in names:
            lines.append(
                f"| {name} | "
                + " | ".join(_fmt(float(value[(name, d, b, workload)]["median"])) for d, b in cells)
                + " |"
            )
    return lines, targets


def _verdict(mine: dict | None, theirs: dict | None, target: float) -> tuple[float, str]:
    """(median ratio, "yes" / "tie" / "no"): "tie" when a 1.0x target is missed but the two
    min-max ranges over blocks overlap, i.e. the gap is inside the machine's noise."""
    if mine is None or theirs is None:
        return math.nan, "-"
    ratio = float(mine["median"]) / float(theirs["median"])
    if ratio >= target:
        return ratio, "yes"
    if target == 1.0 and float(mine["high"]) >= float(theirs["low"]):
        return ratio, "tie"
    return ratio, "**no**"


def _target_table(targets: list[dict]) -> list[str]:
    lines = [
        f"\n### Speed targets: >= {LEAD_TARGET}x the fastest peer, >= {REFERENCE_TARGET}x plain PyTorch\n",
        (
            "Lead: the faster of clayflow and clayflow + compile over the fastest peer. Against plain "
            "PyTorch, like is compared with like (eager with eager, compiled with compiled); the "
            "last column gives the hand-written flow clayflow's fused Adam too, so it isolates the "
            "framework's own overhead. tie: below 1.0 but the min-max ranges overlap.\n"
        ),
        (
            "| workload | dim, batch | clayflow | clayflow + compile | fastest peer | lead | met | "
            "vs plain, eager | vs plain, compiled | vs plain, compiled + fused Adam |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        row, (d, b) = t["row"], t["cell"]
        peer = t["fastest"]
        compiled = _fmt(float(row[COMPILED]["median"])) if COMPILED in row else "-"
        cells = [f"{ratio:.2f} {word}" for ratio, word in (t["eager"], t["compiled"], t["fused"])]
        lines.append(
            f"| {t['workload']} | {d}, {b} | {_fmt(float(row[CLAYFLOW]['median']))} | {compiled} | "
            f"{peer} {_fmt(float(row[peer]['median']))} | {t['lead'][0]:.3f} | {t['lead'][1]} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _quality_table(rows: list[dict]) -> list[str]:
    toys = list(dict.fromkeys(r["toy"] for r in rows))
    names = list(dict.fromkeys(r["contender"] for r in rows))
    nll = {
        (n, t): [float(r["test_nll"]) for r in rows if r["contender"] == n and r["toy"] == t]
        for n in names
        for t in toys
    }
    mean = {k: statistics.fmean(v) for k, v in nll.items()}
    seeds = len(next(iter(nll.values())))
    lines = [
        f"\n## Quality: test NLL in nats (mean over {seeds} seeds [min-max]; delta = mean - clayflow's mean)\n",
        "| library | " + " | ".join(toys) + " |",
        "|---|" + "---|" * len(toys),
    ]
    for n in names:
        lines.append(
            f"| {n} | "
            + " | ".join(
                f"{mean[n, t]:.4f} [{min(nll[n, t]):.4f}-{max(nll[n, t]):.4f}] {mean[n, t] - mean[CLAYFLOW, t]:+.4f}"
                for t in toys
            )
            + " |"
        )
    lines += [
        "\n| toy | clayflow | best peer | met (clayflow mean <= best peer mean; tie: the seeds' ranges overlap) |",
        "|---|---|---|---|",
    ]
    for t in toys:
        best = min(
            (n for n in names if n in PEERS),
            key=lambda n: mean[n, t] if math.isfinite(mean[n, t]) else math.inf,
        )
        if mean[CLAYFLOW, t] <= mean[best, t]:
            met = "yes"
        else:
            met = "tie" if min(nll[CLAYFLOW, t]) <= max(nll[best, t]) else "**no**"
        lines.append(f"| {t} | {mean[CLAYFLOW, t]:.4f} | {best} {mean[best, t]:.4f} | {met} |")
    return lines


def _budget_summary(rows: list[dict]) -> list[str]:
    """One row per model and data set ("cnf moons"): each library's test NLL (and bits/dim for
    images), mean over the seeds [min-max], and for each clayflow contender ("clayflow",
    "clayflow + average 0.99") whether its mean is below every peer's mean on the same seeds
    (peers lacking one of them are left out; "-" when none is left)."""
    nll: dict[str, dict[str, dict[str, float]]] = {}
    bpd: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        task, seed = r["workload"].split(" seed ")
        nll.setdefault(task, {}).setdefault(r["contender"], {})[seed] = float(r["test_nll"])
        bpd.setdefault(task, {}).setdefault(r["contender"], []).append(float(r["test_bpd"]))
    lines = [
        "| task | library | seeds | test NLL (nats), mean [min-max] | test bits/dim, mean [min-max] | below every peer's mean on its seeds |",
        "|---|---|---|---|---|---|",
    ]
    for task, libraries in nll.items():
        for name, by_seed in libraries.items():
            v = list(by_seed.values())
            mean = sum(v) / len(v)
            below = ""
            if name.startswith(CLAYFLOW):
                peers = [sum(p[s] for s in by_seed) / len(by_seed) for other, p in libraries.items()
                         if not other.startswith(CLAYFLOW) and set(by_seed) <= set(p)]  # fmt: skip
                below = "-" if not peers else "yes" if mean < min(peers) else "**no**"
            bits = bpd[task][name]
            shown = f"{sum(bits) / len(bits):.4f} [{min(bits):.4f}-{max(bits):.4f}]" if all(map(math.isfinite, bits)) else "-"
            lines.append(f"| {task} | {name} | {len(v)} | {mean:.4f} [{min(v):.4f}-{max(v):.4f}] | {shown} | {below} |")
    return lines


def _budget_table(rows: list[dict]) -> list[str]:
    lines = _budget_summary(rows)
    for workload in dict.fromkeys(r["workload"] for r in rows):
        group = [r for r in rows if r["workload"] == workload]
        image = workload.startswith("glow")
        lines += [
            f"\n### {workload}\n",
            "| library | steps | train s | train examples/s | test NLL (nats) | "
            + ("test bits/dim | " if image else "")
            + "sample /s | ratio to clayflow (examples/s, sample/s) |",
            "|---|---|---|---|---|" + ("---|" if image else "") + "---|---|",
        ]
        base = next(r for r in group if r["contender"] == CLAYFLOW)
        for r in group:
            ratios = f"x{float(r['train_rate']) / float(base['train_rate']):.2f}, x{float(r['sample_rate']) / float(base['sample_rate']):.2f}"
            lines.append(
                f"| {r['contender']} | {r['steps']} | {float(r['seconds']):.0f} | {_fmt(float(r['train_rate']))} | "
                f"{float(r['test_nll']):.4f} | "
                + (f"{float(r['test_bpd']):.4f} | " if image else "")
                + f"{_fmt(float(r['sample_rate']))} | {ratios} |"
            )
    return lines


def _time_to_zuko_table(curves: list[dict], budget_rows: list[dict]) -> list[str]:
    """Per toy: the seconds clayflow's default CNF takes to reach zuko's final test NLL (where
    its learning curve first reaches it, linear between points), against the seconds zuko
    trained for it; medians [min-max] over the seeds."""
    lines = [
        "\n## CNF: time to zuko's final NLL\n",
        "clayflow's test NLL was taken 20 times over its budget, the clock stopped, so a time is known to "
        + "a twentieth of the budget (linear between points; one before the first point reads as the first "
        + "point's); zuko's final NLL is its test NLL after the whole budget. Seconds: median [min-max] over seeds.\n",
        "| toy | seeds | zuko's final NLL, mean | zuko's seconds | clayflow's seconds to it | clayflow's steps "
        + "to it | ratio, median [min-max] |",
        "|---|---|---|---|---|---|---|",
    ]
    finals = {(r["workload"], r["contender"]): r for r in budget_rows}
    by_toy: dict[str, list[tuple[float, float, float, float]]] = {}
    for toy, seed in dict.fromkeys((r["toy"], int(r["seed"])) for r in curves):
        zuko = finals.get((f"cnf {toy} seed {seed}", "zuko"))
        if zuko is None:
            continue
        curve = sorted((time_to_quality.CurvePoint(**typed(r, time_to_quality.CurvePoint)) for r in curves
                        if (r["toy"], int(r["seed"]), r["contender"]) == (toy, seed, CLAYFLOW)), key=lambda p: p.step)  # fmt: skip
        seconds, steps = time_to_quality.first_reach(curve, float(zuko["test_nll"]))
        by_toy.setdefault(toy, []).append((float(zuko["test_nll"]), float(zuko["seconds"]), seconds, steps))
    for toy, runs in by_toy.items():
        nll, zuko_s, ours_s, ours_steps = zip(*runs)
        ratios = [o / z for o, z in zip(ours_s, zuko_s)]

        def spread(values) -> str:  # a seed whose curve never reached zuko's NLL counts as infinite
            values = [v if math.isfinite(v) else math.inf for v in values]
            return f"{statistics.median(values):.3g} [{min(values):.3g}-{max(values):.3g}]".replace("inf", "never")

        lines.append(f"| {toy} | {len(runs)} | {statistics.mean(nll):.4f} | {spread(zuko_s)} | {spread(ours_s)} | "
                     f"{spread(ours_steps)} | {spread(ratios)} |")  # fmt: skip
    return lines


def _plots(folder: Path, speed_rows: list[dict], quality_rows: list[dict]) -> None:
    import matplotlib.pyplot as plt

    if speed_rows:
        cells = sorted({(int(r["features"]), int(r["batch"])) for r in speed_rows})
        names = list(dict.fromkeys(r["contender"] for r in speed_rows))
        fig, axes = plt.subplots(1, len(SPEED_WORKLOADS), figsize=(5 * len(SPEED_WORKLOADS), 4), sharey=True)
        width = 0.8 / len(names)
        for ax, workload in zip(axes, SPEED_WORKLOADS):
            med = {
                (r["contender"], int(r["features"]), int(r["batch"])): float(r["median"])
                for r in speed_rows
                if r["workload"] == workload
            }
            for i, name in enumerate(names):
                ratios = [med[name, d, b] / med[CLAYFLOW, d, b] for d, b in cells]
                ax.bar([j + i * width for j in range(len(cells))], ratios, width, label=name)
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cells))], [f"D{d}\nB{b}" for d, b in cells])
            ax.set_title(f"{workload}, ratio to clayflow")
        axes[0].legend(fontsize=7)
        save_figure(fig, folder / "speed.png")
    if quality_rows:
        toys = list(dict.fromkeys(r["toy"] for r in quality_rows))
        names = list(dict.fromkeys(r["contender"] for r in quality_rows))
        fig, axes = plt.subplots(1, len(toys), figsize=(4 * len(toys), 3.5), squeeze=False)
        axes = axes[0]
        for ax, toy in zip(axes, toys):
            for i, name in enumerate(names):
                values = [
                    float(r["test_nll"]) for r in quality_rows if r["toy"] == toy and r["contender"] == name
                ]
                ax.plot([i] * len(values), values, "o", alpha=0.7)
            ax.set_xticks(range(len(names)), names, rotation=45, fontsize=7)
            ax.set_title(f"{toy}: test NLL (nats), each seed")
        save_figure(fig, folder / "quality.png")


def write(folder: Path, path: Path) -> Path:
    """Render ``path`` (markdown) and the plots from the CSVs and config in ``folder``."""
    info = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    lines = [f"# clayflow beside nflows, normflows, zuko, FrEIA and plain PyTorch ({folder.name})\n"]
    lines.append(
        f"Command: `python benchmarks/compare/run.py` (see its docstring); CSVs and plots in `{folder.name}/`.\n"
    )
    if info:
        m = info["machine"]
        lines.append(
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}, Python {m['python']}, "
            f"torch {m['torch']}, {m['threads']} threads, float32.\n"
        )
        lines.append("Config: " + ", ".join(f"{k}={v}" for k, v in info["config"].items()) + "\n")
        lines += ["| library | version | how it departs from the common architecture |", "|---|---|---|"]
        lines += [f"| {n} | {c['version']} | {c['differs']} |" for n, c in info["contenders"].items()]
    speed_rows = read_rows(folder / "speed.csv")
    if speed_rows:
        lines.append(
            "\n## Speed\n\nEach workload is timed in blocks; inside a block every library runs in turn "
            "(order rotating), so noise hits all alike."
        )
        tables, targets = _speed_tables(speed_rows)
        lines += _target_table(targets) + tables
    quality_rows = read_rows(folder / "quality.csv")
    if quality_rows:
        lines += _quality_table(quality_rows)
    curve_rows = read_rows(folder / "curves.csv")
    if curve_rows:
        lines += time_to_quality.table(curve_rows, PEERS)
    budget_rows = read_rows(folder / "budget.csv")
    if budget_rows:
        lines.append("\n## Equal wall-clock budget: Glow on digits, CNF on toys\n")
        lines += _budget_table(budget_rows)
    cnf_curves = read_rows(folder / "cnf_curves.csv")
    if cnf_curves:
        lines += _time_to_zuko_table(cnf_curves, budget_rows)
    autoregressive = folder.parent / "compare_autoregressive" / "speed.md"
    if autoregressive.exists():  # run.py --only autoregressive
        lines.append(
            "\n## Autoregressive and spline flows\n\nMAF, NSF-AR and NSF-C beside zuko's and nflows' at "
            f"equal architecture: `{os.path.relpath(autoregressive, path.parent)}`."
        )
    _plots(folder, speed_rows, quality_rows)
    path.write_text("\n".join(lines) + "\n")
    return path
