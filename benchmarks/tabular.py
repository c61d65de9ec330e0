"""Issue 15: clayflow's default command on small real tables against what a user would pick
instead (a full-covariance Gaussian, scikit-learn's GaussianMixture and KernelDensity).

    python benchmarks/tabular.py                      # everything, 3 seeds (hours on 2 cores)
    python benchmarks/tabular.py --quick              # smoke run: --steps 200 (cnf 20), 1 seed, iris + moons
    python benchmarks/tabular.py --datasets wine diabetes --models gaussian gmm realnvp --seeds 1
    python benchmarks/tabular.py --report-only        # rebuild tabular.md and tabular.png from the CSV

Every estimator sees the same rows: ``clayflow.data.load_dataset(name)``'s deterministic
train/validation/test split (80/10/10 for tables; the toys' 50,000/5,000/10,000). Scores are
mean test log-likelihoods in nats per row, in the data's own units (higher is better):

- ``gaussian``: full-covariance Gaussian, MLE on train (float64). Computed twice, in raw units
  and in standardised units plus the standardisation's log-det; they must agree to 1e-9.
- ``gmm``: ``GaussianMixture(covariance_type="full", reg_covar=1e-6)`` on standardised train
  (+ log-det), the number of components chosen by validation log-likelihood (the train BIC's
  choice is recorded too); 1..10 components, toys also 15..50; ``random_state`` = seed.
- ``kde``: ``KernelDensity(kernel="gaussian")`` on standardised train (+ log-det), bandwidth
  by 5-fold cross-validation (folds shuffled by the seed) over a log grid. On the toys the CV
  runs on a 5,000-row subsample of train (drawn by the seed) and the final KDE on all 50,000
  rows uses the CV bandwidth scaled by Scott's factor (4,000 / 50,000)^(1/(D+4)).
- ``realnvp nice glow cnf``: clayflow's default command, ``python -m clayflow train --data X
  --model M --seed S --no-plots --no-progress --out RUN`` (no tuning flags), read from
  ``RUN/results.json``: log-likelihood = -test_nll. The coupling flows are reloaded with
  ``clayflow.load`` and their test log-likelihood recomputed here as a check of rows and units.

``digits64`` is scikit-learn's 8x8 digits as 64-column vectors; its integer levels 0..16 are
dequantized once, for every estimator, by adding uniform [0, 1) noise (numpy seed 0) to all
1,797 rows before clayflow's split, so every score is a density of the dequantized data (a lower
bound on the discrete log-probability of the levels). The file is written to ``--work``.

Each fit is a row of ``tabular.csv`` (keyed by dataset, estimator, seed and --steps); a run skips
the rows already there, so a stopped run continues where it was (a flow killed mid-training is
resumed with ``clayflow train --resume``). ``tabular.md`` and ``tabular.png`` are rebuilt after
every fit. Each flow's metrics.csv, config.json and results.json are kept under ``runs/``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "tabular"
SKLEARN = ("gaussian", "gmm", "kde")
FLOWS = ("realnvp", "nice", "glow", "cnf")
ESTIMATORS = (*SKLEARN, *FLOWS)
TABLES = ("iris", "wine", "breast_cancer", "diabetes", "digits64")
TOYS = ("moons", "8gaussians", "checkerboard")
DATASETS = (*TABLES, *TOYS)
QUICK_DATASETS = ("iris", "moons")
DEQUANTIZE_SEED = 0
GMM_COMPONENTS = tuple(range(1, 11))
GMM_TOY_COMPONENTS = (*GMM_COMPONENTS, 15, 20, 30, 40, 50)
GMM_REG_COVAR = 1e-6
KDE_BANDWIDTHS = np.logspace(-2.5, 1.0, 36)  # standardised units
KDE_CV_ROWS = 5000
GAUSSIAN_UNITS_TOLERANCE = 1e-9
FIELDS = (
    "dataset", "estimator", "seed", "steps", "status", "test_ll", "val_ll", "train_ll",
    "wall_s", "train_s", "n_train", "features", "detail", "check", "src", "finished",
)  # fmt: skip


# ----------------------------------------------------------------------------- data


def data_spec(name: str, work: Path) -> str:
    """What ``clayflow train --data`` and ``load_dataset`` take for ``name``."""
    if name != "digits64":
        return name
    path = work / "data" / "digits64.npy"
    if not path.exists():
        from sklearn.datasets import load_digits

        levels = load_digits().data.astype(np.float64)  # (1797, 64), integers 0..16
        noise = np.random.default_rng(DEQUANTIZE_SEED).random(levels.shape)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".tmp.npy")
        np.save(temp, levels + noise)
        os.replace(temp, path)
    return str(path)


_LOADED: dict = {}


def load(name: str, work: Path):
    """(train, val, test) float64 arrays: clayflow's float32 split, as the flows see it."""
    if name not in _LOADED:
        from clayflow.data import load_dataset

        data = load_dataset(data_spec(name, work))
        _LOADED[name] = tuple(split.double().numpy() for split in (data.train, data.val, data.test))
    return _LOADED[name]


def standardise(train: np.ndarray):
    """x -> (x - mean) / std with the train's mean and std (ddof 0), and log|det| of that map."""
    mean, std = train.mean(0), train.std(0)
    return (lambda x: (x - mean) / std), -np.log(std).sum()


# ----------------------------------------------------------------------------- sklearn


def gaussian_logpdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    from scipy.linalg import solve_triangular

    chol = np.linalg.cholesky(cov)
    white = solve_triangular(chol, (x - mean).T, lower=True)
    return -0.5 * (white**2).sum(0) - np.log(np.diag(chol)).sum() - 0.5 * x.shape[1] * math.log(2 * math.pi)


def fit_gaussian(train, val, test, seed):
    """Full-covariance MLE; the test log-likelihood in raw and in standardised units must agree."""
    mean, cov = train.mean(0), np.cov(train, rowvar=False, bias=True)
    raw = [gaussian_logpdf(x, mean, cov).mean() for x in (train, val, test)]
    to_z, logdet = standardise(train)
    z = to_z(train)
    zcov = np.cov(z, rowvar=False, bias=True)
    in_z = gaussian_logpdf(to_z(test), z.mean(0), zcov).mean() + logdet
    gap = abs(raw[2] - in_z)
    assert gap <= GAUSSIAN_UNITS_TOLERANCE, f"Gaussian test LL raw {raw[2]!r} vs standardised {in_z!r}"
    return {
        "train_ll": raw[0],
        "val_ll": raw[1],
        "test_ll": raw[2],
        "detail": "",
        "check": f"raw-vs-std {gap:.1e}",
    }


def fit_gmm(train, val, test, seed, toy: bool):
    from sklearn.mixture import GaussianMixture

    to_z, logdet = standardise(train)
    zt, zv, zs = to_z(train), to_z(val), to_z(test)
    fits = {}
    for k in GMM_TOY_COMPONENTS if toy else GMM_COMPONENTS:
        if k > len(zt):
            break
        gmm = GaussianMixture(
            k, covariance_type="full", reg_covar=GMM_REG_COVAR, max_iter=500, random_state=seed
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: kept, judged by validation
            try:
                gmm.fit(zt)
            except (ValueError, np.linalg.LinAlgError):
                continue
        fits[k] = (gmm, gmm.score(zv) + logdet, gmm.bic(zt))
    k = max(fits, key=lambda c: fits[c][1])
    edge = " AT GRID EDGE" if k == max(fits) else ""
    k_bic = min(fits, key=lambda c: fits[c][2])
    gmm = fits[k][0]
    # Second units check: one component on standardised data (+ log-det) is the Gaussian MLE
    # up to reg_covar.
    mean, cov = train.mean(0), np.cov(train, rowvar=False, bias=True)
    one = fits[1][0].score(zs) + logdet if 1 in fits else math.nan
    gap = abs(one - gaussian_logpdf(test, mean, cov).mean())
    assert gap < 1e-2, f"GMM k=1 on standardised data {one} vs Gaussian MLE (gap {gap})"
    return {
        "train_ll": gmm.score(zt) + logdet,
        "val_ll": fits[k][1],
        "test_ll": gmm.score(zs) + logdet,
        "detail": f"k={k}{edge} (by val; BIC picks {k_bic})",
        "check": f"k1-vs-gaussian {gap:.1e}",
    }


def fit_kde(train, val, test, seed, toy: bool):
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.neighbors import KernelDensity

    to_z, logdet = standardise(train)
    zt = to_z(train)
    rng = np.random.default_rng(seed)
    cv_rows = zt[rng.choice(len(zt), KDE_CV_ROWS, replace=False)] if toy and len(zt) > KDE_CV_ROWS else zt
    search = GridSearchCV(
        KernelDensity(kernel="gaussian"),
        {"bandwidth": KDE_BANDWIDTHS},
        cv=KFold(5, shuffle=True, random_state=seed),
        n_jobs=1,
    ).fit(cv_rows)
    h_cv = float(search.best_params_["bandwidth"])
    h = h_cv
    if len(cv_rows) < len(zt):  # Scott's rule: bandwidth ~ n^(-1/(D+4))
        h = h_cv * (0.8 * len(cv_rows) / len(zt)) ** (1 / (zt.shape[1] + 4))
    kde = KernelDensity(kernel="gaussian", bandwidth=h).fit(zt)
    edge = " AT GRID EDGE" if h_cv in (KDE_BANDWIDTHS[0], KDE_BANDWIDTHS[-1]) else ""
    detail = f"h={h:.3g} std units{edge}"
    if h != h_cv:
        detail += f" (CV on {len(cv_rows)} rows: {h_cv:.3g})"
    return {
        "train_ll": math.nan,  # a KDE scores its own rows with their own kernels; not meaningful
        "val_ll": kde.score_samples(to_z(val)).mean() + logdet,
        "test_ll": kde.score_samples(to_z(test)).mean() + logdet,
        "detail": detail,
        "check": "",
    }


# ----------------------------------------------------------------------------- clayflow


def flow_command(spec: str, model: str, seed: int, run: Path, steps: int | None) -> list[str]:
    cmd = ["train", "--data", spec, "--model", model, "--seed", str(seed)]
    cmd += ["--no-plots", "--no-progress", "--out", str(run)]
    return cmd + (["--steps", str(steps)] if steps else [])


def fit_flow(name, model, seed, steps, work: Path, keep: Path, log):
    spec = data_spec(name, work)
    tag = f"{name}-{model}-s{seed}" + (f"-steps{steps}" if steps else "")
    run = work / "runs" / tag
    logfile = work / "logs" / f"{tag}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    resumed = ""
    if (run / "results.json").exists():
        resumed = " (results of an earlier run)"
        args = None
    elif (run / "checkpoints" / "last.pt").exists():
        args, resumed = ["train", "--resume", str(run), "--no-plots", "--no-progress"], " (resumed)"
    else:
        if run.exists():
            shutil.rmtree(run)  # a run that never checkpointed: ours, in the work folder
        args = flow_command(spec, model, seed, run, steps)
    if args is not None:
        with logfile.open("a") as out:
            out.write(f"$ clayflow {shlex.join(args)}\n")
            out.flush()
            code = subprocess.run(
                [sys.executable, "-m", "clayflow", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=work,
                check=False,
            ).returncode
        if code in (129, 130, 143):
            raise KeyboardInterrupt(f"clayflow stopped by a signal (exit {code}); rerun to resume")
        if code != 0:
            lines = [line for line in logfile.read_text().splitlines() if line.strip()]
            return {"status": "failed", "detail": f"exit {code}: {lines[-1] if lines else ''}"[:300]}
    results = json.loads((run / "results.json").read_text())
    config = json.loads((run / "config.json").read_text())
    target = keep / "runs" / tag
    target.mkdir(parents=True, exist_ok=True)
    for file in ("results.json", "config.json", "metrics.csv"):
        if (run / file).exists():
            shutil.copyfile(run / file, target / file)
    check = ""
    if model != "cnf":  # the CNF's exact-trace ODE solve over the test rows is too slow to repeat
        check = f"reload {abs(reloaded_test_ll(run, name, work) + results['test_nll']):.1e}"
    detail = f"best step {results.get('selected_step')}/{results.get('steps', config.get('steps'))}"
    if config.get("patience"):
        detail += f", patience {config['patience']}"
    return {
        "test_ll": -results["test_nll"],
        "val_ll": -results["val_nll"] if results.get("val_nll") is not None else math.nan,
        "train_ll": math.nan,
        "train_s": results.get("train_seconds", math.nan),
        "detail": detail + resumed,
        "check": check,
    }


def reloaded_test_ll(run: Path, name: str, work: Path) -> float:
    import torch

    import clayflow

    flow = clayflow.load(run)
    test = torch.from_numpy(load(name, work)[2]).float()
    with torch.no_grad():
        return torch.cat([flow.log_prob(chunk).double() for chunk in test.split(4096)]).mean().item()


# ----------------------------------------------------------------------------- bookkeeping


def source_hash() -> str:
    """A short hash of clayflow's sources: other people edit src/ while a long run goes on."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "src" / "clayflow").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:10]


def git_head() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict]) -> None:
    temp = path.with_suffix(".tmp")
    with temp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temp, path)


def key(row: dict) -> tuple:
    return (row["dataset"], row["estimator"], str(row["seed"]), str(row["steps"] or ""))


def machine() -> dict:
    import torch

    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        cpu = next(
            (
                l.split(":", 1)[1].strip()
                for l in Path("/proc/cpuinfo").read_text().splitlines()
                if "model name" in l
            ),
            cpu,
        )
    import sklearn

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }


# ----------------------------------------------------------------------------- report


def _f(value: float, digits: int = 2) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.{digits}f}".replace("-", "−")


def summarise(rows: list[dict]) -> dict:
    """(dataset, estimator) -> {mean, se, n, wall, failed, details}; the ok rows only in mean."""
    cells: dict = {}
    for row in rows:
        cell = cells.setdefault(
            (row["dataset"], row["estimator"]), {"ll": [], "wall": [], "failed": [], "details": []}
        )
        if row["status"] == "ok":
            cell["ll"].append(float(row["test_ll"]))
        else:
            cell["failed"].append(row["detail"])
        cell["wall"].append(float(row["wall_s"]))
        cell["details"].append(f"s{row['seed']}: {row['detail']}")
    for cell in cells.values():
        ll = cell["ll"]
        cell["n"] = len(ll)
        cell["mean"] = statistics.fmean(ll) if ll else math.nan
        cell["se"] = statistics.stdev(ll) / math.sqrt(len(ll)) if len(ll) > 1 else math.nan
        cell["wall_mean"] = statistics.fmean(cell["wall"])
    return cells


def report(folder: Path) -> None:
    rows = read_rows(folder / "tabular.csv")
    if not rows:
        print(f"no rows in {folder / 'tabular.csv'}")
        return
    info = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    cells = summarise(rows)
    datasets = [d for d in DATASETS if any(r["dataset"] == d for r in rows)]
    datasets += sorted({r["dataset"] for r in rows} - set(datasets))
    estimators = [e for e in ESTIMATORS if any(r["estimator"] == e for r in rows)]
    seeds = sorted({int(r["seed"]) for r in rows})
    steps = {e: sorted({r["steps"] or "default" for r in rows if r["estimator"] == e}) for e in FLOWS}
    steps = {e: v for e, v in steps.items() if v and v != ["default"]}
    best_sk = {}
    for d in datasets:
        sk = [(cells[d, e]["mean"], e) for e in SKLEARN if (d, e) in cells and cells[d, e]["n"]]
        best_sk[d] = max(sk) if sk else (math.nan, None)

    def cell_text(d, e):
        c = cells.get((d, e))
        if c is None:
            return "—"
        if not c["n"]:
            return "failed"
        text = f"{_f(c['mean'])} ± {_f(c['se'])}" if c["n"] > 1 else _f(c["mean"])
        if best_sk[d][1] == e:
            text = f"**{text}**"
        if c["n"] < len(seeds) or c["failed"]:
            text += f" ({c['n']} seed{'s' if c['n'] != 1 else ''}{', ' + str(len(c['failed'])) + ' failed' if c['failed'] else ''})"
        return text

    lines = [
        "# Tabular benchmark (issue 15): clayflow's defaults against a Gaussian, GaussianMixture and KDE",
        "",
        f"Written {datetime.datetime.now().isoformat(timespec='seconds')} by `benchmarks/tabular.py`.",
        "",
        f"Command: `{info.get('command', 'python benchmarks/tabular.py')}`",
        "",
        "Each flow is clayflow's default command, no tuning flags"
        + (
            " except `--steps` ("
            + "; ".join(f"{e} {', '.join(v)}" for e, v in steps.items())
            + "): a smoke run, not the defaults"
            if steps
            else ""
        )
        + ":",
        "",
        "```",
        "python -m clayflow train --data X --model M --seed S --no-plots --no-progress --out RUN",
        "```",
        "",
        (
            f"Seeds: {', '.join(map(str, seeds))} (the flows' training seed; GaussianMixture's `random_state` and "
            "the KDE's CV folds and subsample). Rows: `clayflow.data.load_dataset(X)`'s fixed split "
            "(tables 80/10/10; toys 50,000/5,000/10,000)."
        ),
        "",
    ]
    m = info.get("machine", {})
    if m:
        lines += [
            (
                f"Machine: {m.get('cpu')}, {m.get('cores')} cores ({m.get('torch threads')} torch threads), "
                f"{m.get('platform')}; Python {m.get('python')}, torch {m.get('torch')}, scikit-learn "
                f"{m.get('scikit-learn')}, numpy {m.get('numpy')}. Machine shared with other work, so wall "
                "times are indicative."
            ),
            "",
        ]
    srcs = sorted({(r["src"]) for r in rows if r["estimator"] in FLOWS and r["src"]})
    if srcs:
        lines += [
            f"clayflow sources (hash of src/clayflow/**/*.py at each flow fit): {', '.join(srcs)}"
            + (f" (git HEAD {info['git']})" if info.get("git") else "")
            + (". **Several versions**: src/ changed during the run." if len(srcs) > 1 else "."),
            "",
        ]
    lines += [
        "## Mean test log-likelihood (nats per row, data units; higher is better)",
        "",
        "Mean ± standard error over seeds. **Bold**: the best scikit-learn estimator of the column.",
        "",
        "| estimator | " + " | ".join(datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    for e in estimators:
        lines.append(f"| {e} | " + " | ".join(cell_text(d, e) for d in datasets) + " |")
    lines += [
        "",
        "## Does each clayflow default beat the best scikit-learn estimator / the Gaussian?",
        "",
        "Difference of mean test log-likelihoods (flow − best sklearn; flow − Gaussian), nats per row.",
        "",
        "| model | " + " | ".join(datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    summary = []
    for e in [e for e in estimators if e in FLOWS]:
        parts, beats_sk, beats_g = [], [], []
        for d in datasets:
            c = cells.get((d, e))
            if c is None or not c["n"]:
                parts.append("—" if c is None else "failed")
                continue
            sk_mean, sk_name = best_sk[d]
            g = cells.get((d, "gaussian"), {}).get("mean", math.nan)
            vs_sk, vs_g = c["mean"] - sk_mean, c["mean"] - g
            mark_sk = "✓" if vs_sk >= 0 else "✗"
            mark_g = "✓" if vs_g >= 0 else "✗"
            parts.append(f"{mark_sk} {_f(vs_sk)} vs {sk_name}; {mark_g} {_f(vs_g)} vs Gaussian")
            if vs_sk >= 0:
                beats_sk.append(d)
            if vs_g >= 0:
                beats_g.append(d)
        lines.append(f"| {e} | " + " | ".join(parts) + " |")
        summary.append(
            f"- **{e}** beats the best scikit-learn estimator on: {', '.join(beats_sk) or 'none'}; "
            f"beats the Gaussian on: {', '.join(beats_g) or 'none'}."
        )
    lines += ["", *summary, ""]
    lines += [
        "## Wall time per fit (seconds, mean over seeds; flows: the whole `clayflow train` process)",
        "",
        "| estimator | " + " | ".join(datasets) + " | total |",
        "|---|" + "---|" * (len(datasets) + 1),
    ]
    for e in estimators:
        walls = [cells[d, e]["wall_mean"] if (d, e) in cells else math.nan for d in datasets]
        total = sum(float(r["wall_s"]) for r in rows if r["estimator"] == e)
        lines.append(
            f"| {e} | "
            + " | ".join("—" if math.isnan(w) else f"{w:.1f}" for w in walls)
            + f" | {total / 60:.1f} min |"
        )
    total = sum(float(r["wall_s"]) for r in rows)
    lines += ["", f"All {len(rows)} fits: {total / 3600:.2f} h."]
    cnf = [r for r in rows if r["estimator"] == "cnf"]
    if cnf:
        each = ", ".join(f"{r['dataset']} s{r['seed']} {float(r['wall_s']) / 60:.0f} min" for r in cnf)
        lines.append(
            f"CNF (clayflow's default: 4000 steps of dopri5 ODE solves unless --steps is listed above): "
            f"{sum(float(r['wall_s']) for r in cnf) / 3600:.2f} h for {len(cnf)} fits ({each})."
        )
    lines.append("")
    lines += [
        "## Selection details per fit",
        "",
        (
            "GaussianMixture: components chosen by validation log-likelihood. KDE: bandwidth in "
            "standardised units. Flows: the step whose weights were kept (lowest validation NLL)."
        ),
        "",
        "| dataset | estimator | details |",
        "|---|---|---|",
    ]
    for d in datasets:
        for e in estimators:
            if (d, e) in cells and e != "gaussian":
                lines.append(f"| {d} | {e} | {'; '.join(cells[d, e]['details'])} |")
    gauss_gap = [float(r["check"].split()[-1]) for r in rows if r["estimator"] == "gaussian" and r["check"]]
    k1_gap = [float(r["check"].split()[-1]) for r in rows if r["estimator"] == "gmm" and r["check"]]
    reload_gap = [float(r["check"].split()[-1]) for r in rows if r["estimator"] in FLOWS and r["check"]]
    lines += [
        "",
        "## Unit checks",
        "",
        (
            f"- Gaussian test log-likelihood in raw units vs standardised units + log-det: max |difference| "
            f"{max(gauss_gap, default=math.nan):.1e} over {len(gauss_gap)} fits (asserted <= {GAUSSIAN_UNITS_TOLERANCE:g})."
        ),
        (
            f"- GaussianMixture with 1 component on standardised data + log-det vs the Gaussian MLE in raw units: "
            f"max |difference| {max(k1_gap, default=math.nan):.1e} (reg_covar {GMM_REG_COVAR:g}; asserted < 1e-2)."
        ),
        (
            f"- Coupling flows reloaded with `clayflow.load` and scored here on the same test rows vs "
            f"`results.json`: max |difference| {max(reload_gap, default=math.nan):.1e} over {len(reload_gap)} fits "
            "(float32; not repeated for cnf)."
        ),
        "",
        "## Notes",
        "",
        (
            "- digits64: scikit-learn's 8x8 digits as 64-column vectors, integer levels 0..16 dequantized once "
            f"for every estimator by adding uniform [0, 1) noise (numpy seed {DEQUANTIZE_SEED}) to all rows "
            "before clayflow's split; scores are densities of the dequantized data."
        ),
        (
            f"- KDE on the toys: bandwidth by 5-fold CV on a {KDE_CV_ROWS:,}-row subsample of the 50,000 train "
            "rows, final KDE on all train rows with the bandwidth scaled by Scott's factor "
            f"({int(0.8 * KDE_CV_ROWS)}/50,000)^(1/(D+4)). Tables: 5-fold CV on all train rows, refit on all."
        ),
        (
            f"- GaussianMixture: full covariance, reg_covar {GMM_REG_COVAR:g} on standardised data, "
            f"k in {GMM_COMPONENTS[0]}..{GMM_COMPONENTS[-1]} (toys also {', '.join(map(str, GMM_TOY_COMPONENTS[10:]))}), "
            "chosen by validation log-likelihood; the train-BIC choice is listed in the details."
        ),
        (
            "- The flows use the validation rows for model selection (best weights), as GaussianMixture does; "
            "the KDE uses only train rows."
        ),
        "",
        "Every fit: `tabular.csv`; plot: `tabular.png`; each flow run's metrics.csv/config.json/results.json: `runs/`.",
    ]
    (folder / "tabular.md").write_text("\n".join(lines) + "\n")
    plot(folder, cells, datasets, estimators)


def plot(folder: Path, cells: dict, datasets: list[str], estimators: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(datasets))
    rows = math.ceil(len(datasets) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    colors = {"gaussian": "0.55", "gmm": "0.35", "kde": "0.75"}
    palette = plt.get_cmap("tab10")
    for i, e in enumerate(FLOWS):
        colors[e] = palette(i)
    for ax, d in zip(axes.flat, datasets):
        base = cells.get((d, "gaussian"), {}).get("mean", math.nan)
        if not math.isfinite(base):
            base = 0.0
        names = [e for e in estimators if (d, e) in cells]
        values = [cells[d, e]["mean"] - base for e in names]
        errors = [0.0 if math.isnan(cells[d, e]["se"]) else cells[d, e]["se"] for e in names]
        xs = range(len(names))
        ax.bar(
            xs, [0.0 if math.isnan(v) else v for v in values], yerr=errors, capsize=3,
            color=[colors.get(e, "C9") for e in names],
        )  # fmt: skip
        for x, v in zip(xs, values):
            if math.isnan(v):
                ax.text(x, 0, "failed", rotation=90, ha="center", va="bottom", fontsize=8)
        for x, e, v in zip(xs, names, values):
            if not math.isnan(v):
                ax.annotate(
                    f"{cells[d, e]['mean']:.2f}", (x, v), ha="center", va="bottom" if v >= 0 else "top",
                    fontsize=7, xytext=(0, 2 if v >= 0 else -2), textcoords="offset points",
                )  # fmt: skip
        ax.axhline(0, color="k", lw=0.8)
        if max((abs(v) for v in values if not math.isnan(v)), default=0) > 10:
            ax.set_yscale("symlog", linthresh=1.0)  # a flow hundreds of nats off would hide the rest
        else:
            ax.margins(y=0.15)
        ax.set_xticks(list(xs), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{d} (Gaussian: {base:.2f})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(datasets) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("test LL − Gaussian's (nats/row)", fontsize=8)
    fig.suptitle(
        "Mean test log-likelihood minus the full-covariance Gaussian's (± s.e. over seeds)\n"
        "bar labels: the log-likelihood (nats/row); symlog axis where a bar passes 10 nats",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(folder / "tabular.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), help=f"of {', '.join(DATASETS)}")
    parser.add_argument("--models", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--steps", type=int, help="pass --steps to clayflow (default: clayflow's own)")
    parser.add_argument(
        "--cnf-steps", type=int, help="pass --steps to clayflow for cnf (default: as --steps)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="--steps 200 (cnf: --steps 20), 1 seed, iris and moons"
    )
    parser.add_argument("--report-only", action="store_true", help="rebuild tabular.md/png from the CSV")
    parser.add_argument("--retry-failed", action="store_true", help="refit rows whose status is failed")
    parser.add_argument("--out", type=Path, help=f"results folder (default {RESULTS}, --quick: .../quick)")
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/clayflow-tabular"), help="flow run directories and data files"
    )
    args = parser.parse_args()
    if args.quick:
        args.steps = args.steps or 200
        args.cnf_steps = args.cnf_steps or 20
        args.seeds = 1
        if args.datasets == list(DATASETS):
            args.datasets = list(QUICK_DATASETS)
    unknown = set(args.datasets) - set(DATASETS)
    if unknown:
        parser.error(f"unknown datasets {sorted(unknown)}; choose from {', '.join(DATASETS)}")
    folder = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        report(folder)
        print(f"wrote {folder / 'tabular.md'} and {folder / 'tabular.png'}")
        return
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps(
            {
                "command": "python " + shlex.join(["benchmarks/tabular.py", *sys.argv[1:]]),
                "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "machine": machine(),
                "git": git_head(),
            },
            indent=2,
        )
    )
    log = functools.partial(print, flush=True)
    csv_path = folder / "tabular.csv"
    rows = read_rows(csv_path)
    done = {key(r): i for i, r in enumerate(rows)}
    steps_of = {e: (args.cnf_steps or args.steps) if e == "cnf" else args.steps for e in FLOWS}
    # Cheap estimators first, then the flows seed by seed (so a partial run already has a
    # full table for seed 0), CNF last.
    plan = [(d, e, s) for e in SKLEARN if e in args.models for s in range(args.seeds) for d in args.datasets]
    for group in (("realnvp", "nice", "glow"), ("cnf",)):
        plan += [
            (d, e, s) for s in range(args.seeds) for e in group if e in args.models for d in args.datasets
        ]
    todo = []
    for d, e, s in plan:
        k = (d, e, str(s), str(steps_of.get(e) or ""))
        if k in done and not (args.retry_failed and rows[done[k]]["status"] == "failed"):
            continue
        todo.append((d, e, s))
    log(f"{len(plan)} fits planned, {len(plan) - len(todo)} already in {csv_path}, {len(todo)} to run")
    spent: dict[str, list[float]] = {}
    started = time.perf_counter()
    for i, (d, e, s) in enumerate(todo, 1):
        train, val, test = load(d, work)
        row = {
            "dataset": d, "estimator": e, "seed": s, "steps": steps_of.get(e) or "", "status": "ok",
            "test_ll": math.nan, "val_ll": math.nan, "train_ll": math.nan, "train_s": math.nan,
            "n_train": len(train), "features": train.shape[1], "detail": "", "check": "",
            "src": source_hash() if e in FLOWS else "",
        }  # fmt: skip
        log(f"[{i}/{len(todo)}] {e} on {d} ({len(train)} train rows x {train.shape[1]}), seed {s} ...")
        t0 = time.perf_counter()
        if e == "gaussian":
            row.update(fit_gaussian(train, val, test, s))
        elif e == "gmm":
            row.update(fit_gmm(train, val, test, s, d in TOYS))
        elif e == "kde":
            row.update(fit_kde(train, val, test, s, d in TOYS))
        else:
            row.update(fit_flow(d, e, s, steps_of[e], work, folder, log))
        row["wall_s"] = time.perf_counter() - t0
        row["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        k = key(row)
        if k in done:
            rows[done[k]] = row
        else:
            done[k] = len(rows)
            rows.append(row)
        write_rows(csv_path, rows)
        report(folder)
        spent.setdefault(e, []).append(row["wall_s"])
        left = sum(statistics.fmean(spent.get(x, [row["wall_s"]])) for _, x, _ in todo[i:])
        result = f"test LL {row['test_ll']:.4f}" if row["status"] == "ok" else f"FAILED: {row['detail']}"
        log(
            f"    {result}  {row['detail']}  ({row['wall_s']:.1f} s; elapsed "
            f"{(time.perf_counter() - started) / 60:.1f} min, about {left / 60:.0f} min left)"
        )
    report(folder)
    log(f"wrote {folder / 'tabular.md'}, {folder / 'tabular.png'} and {csv_path}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\nstopped; the same command continues where this run was (finished fits are in the CSV)")
        sys.exit(130)
