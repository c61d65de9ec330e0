"""``tabular.md`` from ``fits.csv``: what was run, on what, and how each estimator scored.

The main table has a row per dataset: the mean test log-likelihood per row (nats, data units,
higher is better) ± its standard error over seeds for each estimator, the best estimator, and
"default realnvp − best sklearn": clayflow's default realnvp minus the best of the Gaussian,
GaussianMixture and KDE on that dataset (the best chosen by its test score, which favours
scikit-learn). Then wall times, what each selection chose, the units checks and the notes.
Those standard errors are over seeds only: with test splits of 15 (iris) to 180 (digits64)
rows, the test rows' own sampling error is not in them. The last column adds it: realnvp
minus the best sklearn estimator on each test row (each averaged over seeds), mean ± standard
error over the rows, a paired comparison on the same rows.
"""

from __future__ import annotations

import datetime
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .baselines import GMM_COMPONENTS, GMM_COVARIANCES, KDE_CV_ROWS, KDE_FOLDS, UNITS_RTOL
from .datasets import DATASETS, DIGITS, SCORE_DRAWS, TOYS
from .flows import FLOWS, train_command
from .plot import plot
from .records import number, read_csv, read_test_rows

SKLEARN = ("gaussian", "gmm", "gmm_bic", "kde")
ESTIMATORS = (*SKLEARN, *FLOWS)
DEFAULT_FLOW = "realnvp"
SELECTION = ("datasets", "models", "seeds", "steps")  # options of __main__ shown in the header


@dataclass
class Cell:
    """The fits of one estimator on one dataset, over seeds."""

    rows: list[dict] = field(default_factory=list)

    @property
    def scores(self) -> list[float]:
        return [number(r, "test_ll") for r in self.rows if r["status"] == "ok"]

    @property
    def failed(self) -> int:
        return sum(r["status"] != "ok" for r in self.rows)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores) if self.scores else math.nan

    @property
    def se(self) -> float:
        s = self.scores
        return statistics.stdev(s) / math.sqrt(len(s)) if len(s) > 1 else math.nan

    def values(self, column: str) -> list[float]:
        """The column's finite values (a wall time not measured is empty, so left out)."""
        return [v for v in (number(r, column) for r in self.rows) if math.isfinite(v)]

    def average(self, column: str) -> float:
        return statistics.fmean(self.values(column)) if self.values(column) else math.nan

    def total(self, column: str) -> float:
        return sum(self.values(column))


def fmt(value: float, digits: int = 2, sign: bool = False) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:{'+' if sign else ''}.{digits}f}".replace("-", "−")


def with_se(mean: float, se: float, sign: bool = False) -> str:
    return fmt(mean, sign=sign) + (f" ± {fmt(se)}" if math.isfinite(se) else "")


def listed(value) -> str:
    """An option's value for the header: ``[0, 1]`` -> ``0 1``, ``None`` -> ``default``."""
    if value is None:
        return "default"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def table(header: list[str], body: list[list[str]]) -> list[str]:
    """A markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in body]


def collect(rows: list[dict]) -> tuple[dict, list[str], list[str]]:
    """(dataset, estimator) -> Cell, and the datasets and estimators present, in order."""
    cells: dict = {}
    for row in rows:
        cells.setdefault((row["dataset"], row["estimator"]), Cell()).rows.append(row)
    present = {d for d, _ in cells}
    datasets = [d for d in DATASETS if d in present] + sorted(present - set(DATASETS))
    estimators = [e for e in ESTIMATORS if any(e == c for _, c in cells)]
    return cells, datasets, estimators


def best_of(cells: dict, dataset: str, estimators) -> tuple[str | None, float]:
    scored = [(cells[dataset, e].mean, e) for e in estimators if (dataset, e) in cells]
    scored = [(m, e) for m, e in scored if math.isfinite(m)]
    return (max(scored)[1], max(scored)[0]) if scored else (None, math.nan)


def score_text(cells: dict, dataset: str, estimator: str, seeds: int, best: str | None) -> str:
    cell = cells.get((dataset, estimator))
    if cell is None:
        return "—"
    if not cell.scores:
        return "failed"
    text = with_se(cell.mean, cell.se)
    text = f"**{text}**" if estimator == best else text
    if len(cell.scores) < seeds or cell.failed:
        text += f" ({len(cell.scores)} seed{'s' * (len(cell.scores) != 1)}"
        text += f", {cell.failed} failed)" if cell.failed else ")"
    return text


def realnvp_gap(cells: dict, dataset: str) -> tuple[str, bool | None]:
    """The cell "default realnvp − best sklearn", and whether realnvp reaches the best (None: not run).
    Its standard error combines the two means' (none unless both have several seeds)."""
    flow = cells.get((dataset, DEFAULT_FLOW))
    name, _ = best_of(cells, dataset, SKLEARN)
    if flow is None or not flow.scores or name is None:
        return "—", None
    base = cells[dataset, name]
    gap, reaches = flow.mean - base.mean, flow.mean >= base.mean
    text = with_se(gap, math.hypot(flow.se, base.se), sign=True)
    return f"{text} ({'reaches' if reaches else 'falls short'})", reaches


def paired_gap(folder: Path, cells: dict, dataset: str) -> str:
    """Default realnvp − best sklearn per test row (each estimator's log-likelihood of the row
    averaged over its seeds): "mean ± s.e. over N rows", or "—" without the per-row files
    (kept for the tables only)."""
    name, _ = best_of(cells, dataset, SKLEARN)
    if (dataset, DEFAULT_FLOW) not in cells or name is None:
        return "—"
    per_row = []
    for estimator in (DEFAULT_FLOW, name):
        kept = [read_test_rows(folder, r) for r in cells[dataset, estimator].rows if r["status"] == "ok"]
        kept = [values for values in kept if values is not None]
        if not kept:
            return "—"
        per_row.append([statistics.fmean(values) for values in zip(*kept)])
    gaps = [a - b for a, b in zip(*per_row)]
    mean, se = statistics.fmean(gaps), statistics.stdev(gaps) / math.sqrt(len(gaps))
    noise = " (within 2 s.e.)" if abs(mean) < 2 * se else ""
    return f"{with_se(mean, se, sign=True)} over {len(gaps)} rows{noise}"


def header_lines(info: dict, rows: list[dict], estimators: list[str]) -> list[str]:
    p = info.get("provenance", {})
    seeds = sorted({int(r["seed"]) for r in rows})
    steps = sorted({r["steps_flag"] for r in rows if r["estimator"] in FLOWS and r["steps_flag"]})
    srcs = sorted({h for r in rows if r["estimator"] in FLOWS for h in r["clayflow_src"].split(",") if h})
    lines = [
        "# Tables as users have them (issue 15): clayflow's defaults against what a user would fit instead",
        "",
        (
            f"Written {datetime.datetime.now().isoformat(timespec='seconds')} by `python -m benchmarks.tabular` "
            f"from `fits.csv` ({len(rows)} fits). Last command: `{info.get('command', '?')}`."
        ),
        "",
        (
            f"- Seeds: {', '.join(map(str, seeds))} (clayflow's `--seed`; GaussianMixture's `random_state`, "
            "the KDE's CV folds and subsample, and the baselines' dequantization noise)."
        ),
        f"- Estimators in the table: {', '.join(estimators)}. The last command's selection: "
        + ", ".join(f"{k} {listed((info.get('options') or {}).get(k))}" for k in SELECTION)
        + ".",
        f"- clayflow {p.get('clayflow', '?')}, git HEAD {p.get('git_head', '?')}"
        + (" with uncommitted changes in src/" if p.get("src_uncommitted") else "")
        + f"; hash of src/clayflow/**/*.py at each flow fit: {', '.join(srcs) or '—'}"
        + (" — **several versions: src/ changed between fits**." if len(srcs) > 1 else "."),
        (
            f"- Machine: {p.get('cpu', '?')}, {p.get('cpu_count', '?')} CPUs ({p.get('torch_threads', '?')} torch "
            f"threads), {p.get('platform', '?')}; Python {p.get('python', '?')}, torch {p.get('torch', '?')}, "
            f"scikit-learn {p.get('scikit-learn', '?')}, numpy {p.get('numpy', '?')}. Shared with other work: "
            "wall times are indicative."
        ),
        "",
        "Every flow is clayflow's default command, with no tuning flags:",
        "",
        "```",
        "python -m clayflow " + " ".join(train_command("DATA", "M", "S", Path("RUN"), None)),
        "```",
        "",
    ]
    if steps:
        lines += [f"**Smoke run, not the defaults:** `--steps {', '.join(steps)}` was added.", ""]
    return lines


def main_table(folder: Path, cells: dict, datasets: list[str], estimators: list[str], rows: list[dict]) -> list[str]:
    seeds = len({r["seed"] for r in rows})
    shape = {r["dataset"]: (r["rows"], r["discrete"]) for r in rows}
    body, verdicts = [], {}
    for d in datasets:
        best, _ = best_of(cells, d, estimators)
        gap, verdicts[d] = realnvp_gap(cells, d)
        body.append(
            [d, *shape[d]]
            + [score_text(cells, d, e, seeds, best) for e in estimators]
            + [best or "—", gap, paired_gap(folder, cells, d)]
        )
    header = [
        "dataset",
        "train/val/test x D",
        "discrete",
        *estimators,
        "best",
        f"default {DEFAULT_FLOW} − best sklearn",
        "the same, paired over test rows",
    ]
    reached = [d for d, v in verdicts.items() if v]
    judged = [d for d, v in verdicts.items() if v is not None]
    return [
        "## Mean test log-likelihood (nats per row, data units; higher is better)",
        "",
        ("Mean ± standard error over seeds; **bold**: the best estimator of the row. — : not run. Last "
        "column: realnvp − best sklearn on each test row (averaged over seeds), mean ± standard error over "
        "the test rows, which includes the test split's own sampling error."),
        "",
        *table(header, body),
        "",
        (
            f"Default {DEFAULT_FLOW} reaches the best scikit-learn estimator on {len(reached)} of {len(judged)} "
            f"datasets{': ' + ', '.join(reached) if reached else ''}."
        ),
        "",
    ]


def wall_table(cells: dict, datasets: list[str], estimators: list[str]) -> list[str]:
    body = []
    for d in datasets:
        row = [d]
        for e in estimators:
            cell = cells.get((d, e))
            wall = cell.average("wall_s") if cell else math.nan
            train = cell.average("train_s") if cell else math.nan
            row.append(fmt(wall, 1) + (f" ({fmt(train, 1)})" if math.isfinite(train) else ""))
        body.append(row)
    totals = [
        fmt(sum(c.total("wall_s") for (_, x), c in cells.items() if x == e) / 60, 1) + " min"
        for e in estimators
    ]
    return [
        "## Wall time per fit (seconds, mean over seeds)",
        "",
        (
            "Flows: the whole `clayflow train` process (in parentheses its `train_seconds`). Baselines: "
            "fit, selection and scoring."
        ),
        "",
        *table(["dataset", *estimators], [*body, ["**total**", *totals]]),
        "",
    ]


def selection_table(cells: dict, datasets: list[str], estimators: list[str]) -> list[str]:
    chosen = [e for e in estimators if e != "gaussian"]
    body = []
    for d in datasets:
        row = [d]
        for e in chosen:
            fits = cells[d, e].rows if (d, e) in cells else []
            row.append(" / ".join(
                (r["choice"] or r["status"]) + (f" [{r['detail']}]" if r["detail"] else "") for r in fits
            ) or "—")  # fmt: skip
        body.append(row)
    return [
        "## What each selection chose (per seed)",
        "",
        (
            "GaussianMixture: covariance type and components by validation log-likelihood (the training "
            "BIC's pick in brackets). KDE: bandwidth in standardised units. Flows: the step whose weights "
            "were kept (clayflow keeps the lowest validation NLL), of the steps trained."
        ),
        "",
        *table(["dataset", *chosen], body),
        "",
    ]


CHECKS = {  # the name a Fit gives its check -> what the report says it is
    "raw-vs-standardised": (
        "validation and test log-likelihoods in raw units vs in standardised units + log-det, "
        f"largest relative gap (a run stops above {UNITS_RTOL:g})"
    ),
    "reload": "flow reloaded with `clayflow.load` and scored here on the same test rows vs results.json, largest gap (nats)",
}


def checks_lines(rows: list[dict]) -> list[str]:
    gaps: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r["check"]:
            name, _, value = r["check"].rpartition(" ")
            gaps.setdefault((name, r["estimator"]), []).append(float(value))
    lines = [
        f"- {e}: {CHECKS.get(name, name)}: {max(values):.1e} over {len(values)} fits."
        for (name, e), values in sorted(gaps.items())
    ]
    return ["## Units checks", "", *lines, ""]


def notes(rows: list[dict], datasets: list[str]) -> list[str]:
    cnf_toys = any(r["estimator"] == "cnf" and r["dataset"] in TOYS for r in rows)
    lines = [
        "## Notes",
        "",
        (
            "- Rows: `clayflow.data.load_dataset(name)`'s own split for every estimator, never re-split "
            f"(tables 80/10/10, toys 50,000/5,000/10,000). `{DIGITS}`: scikit-learn's 8x8 digits as 64 columns "
            "of integer levels 0..16, written as a CSV that clayflow trains on (`--data FILE`)."
        ),
        (
            '- Discrete columns (`clayflow.data.discrete.discrete_columns(data, "auto")`: diabetes\' sex and all '
            "digit columns, step 1; iris' sepal and petal widths, recorded to 0.1 cm) are scored as "
            "E_u log q(x + h u), u ~ U[0, 1) for grid step h: a lower bound on the log-probability of the "
            "discrete values over h times the density of the rest. clayflow dequantizes inside the flow (one noise "
            f"draw per test row, fixed seed); the baselines fit one noisy draw of the training rows and average "
            f"{SCORE_DRAWS} fresh draws per validation/test row. Both estimate the same expectation."
        ),
        (
            f"- GaussianMixture: k in {GMM_COMPONENTS[0]}..{GMM_COMPONENTS[-1]} x covariance "
            f"{'/'.join(GMM_COVARIANCES)} on standardised rows, chosen by validation log-likelihood; all "
            "candidates are in `selection.csv`."
        ),
        (
            f"- KDE: bandwidth by {KDE_FOLDS}-fold CV on the training rows only; on the toys the CV runs on "
            f"{KDE_CV_ROWS:,} of the 50,000 training rows and the bandwidth is scaled by Scott's rate "
            "n^(-1/(D+4)) to all of them."
        ),
        "- Selection data: the flows and GaussianMixture use the validation rows, the KDE does not.",
        (
            "- The best scikit-learn estimator of a dataset is picked by its test score (an oracle choice "
            "that favours scikit-learn in the realnvp comparison)."
        ),
        (
            "- The standard errors of the estimators' columns are over seeds only; the small tables' test "
            "splits (see their sizes above) add sampling error of their own, which the paired column shows."
        ),
    ]
    if not cnf_toys and any(d in TOYS for d in datasets):
        lines.append(
            "- cnf is not in the default model list for the 2D toys: its default training (dopri5 ODE "
            "solves, 50,000 rows) takes very long on 2 CPU cores; `--models cnf --datasets moons ...` runs it."
        )
    return [
        *lines,
        "",
        (
            "Files: every fit in `fits.csv`, every selection candidate in `selection.csv`, each flow run's "
            "metrics in `metrics/`, the figure `tabular.png`."
        ),
    ]


def report(folder: Path) -> Path | None:
    """Rebuild ``tabular.md`` and ``tabular.png`` in ``folder`` from its CSVs; the path, or None."""
    rows = read_csv(folder / "fits.csv")
    if not rows:
        return None
    info_path = folder / "config.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    cells, datasets, estimators = collect(rows)
    lines = header_lines(info, rows, estimators)
    lines += main_table(folder, cells, datasets, estimators, rows)
    lines += wall_table(cells, datasets, estimators)
    lines += selection_table(cells, datasets, estimators)
    lines += checks_lines(rows)
    lines += notes(rows, datasets)
    path = folder / "tabular.md"
    path.write_text("\n".join(lines) + "\n")
    plot(folder / "tabular.png", {k: (c.mean, c.se) for k, c in cells.items()}, datasets, estimators)
    return path
