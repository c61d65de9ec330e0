"""Anomaly detection: clayflow's scores against scikit-learn's detectors on bundled data.

    python benchmarks/anomaly.py [--steps-scale 1.0] [--out runs/anomaly] [--held-out-images] [--threads N]
        [--seeds 0 1 2]

Demonstrations (splits and baselines at seed 0; every split is printed):

1. breast_cancer: a flow trained (``clayflow train``, table defaults) on 70% of the benign
   rows; test: the other benign rows (normal) and every malignant row (anomaly).
2. digits with one class held out, each of the 10 in turn: a flow trained on the 64 pixel
   columns of 70% of the other classes' rows; test: their other rows and every row of the
   held-out class. With ``--held-out-images``, beside it ("clayflow image ..." columns), the
   default image RealNVP (``clayflow.models.realnvp_image``, trained from Python with
   ``clayflow.fit`` and the 0.99 weight average, as ``clayflow train --data digits`` trains
   it) on the same rows as 1x8x8 images of 17 levels, in the same train/validation/test split.
3. digits images: an image RealNVP trained on the digits images (``--data digits``); test:
   its test digits (normal) against the same digits rotated by 90 degrees, inverted
   (16 - x), and 8x8 patches of scikit-learn's two sample photographs (grey, 17 levels).

Scores: clayflow's likelihood, typicality, ratio and complexity, from
``clayflow.diagnostics.anomaly``, on each example's log-likelihood bound over ``DRAWS``
dequantization draws (``clayflow score``'s default); baselines on the same rows (standardised on the training
rows): a full-covariance Gaussian, GaussianMixture (components 1-8 by BIC), KernelDensity
(bandwidth by 5-fold cross-validation) and IsolationForest (200 trees). Prints AUROC for
every method and demonstration.

With ``--seeds``, each table demonstration's flow is trained once per seed (the split and the
baselines stay those of seed 0): its columns ("clayflow ...") give the mean AUROC over the
seeds, and a second table the lowest and highest; the column "clayflow seed mixture" scores
by the likelihood of the equal mixture of the seeds' flows, log p(x) = log mean_k p_k(x) (a
density, not a mean of scores). An ensemble of K flows, it is shown beside the others and not
counted in the verdict, which compares one flow's methods (their means over seeds). The image flows are trained at seed 0 only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn import datasets
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KernelDensity
from sklearn.preprocessing import StandardScaler

import clayflow
from clayflow.data import Dataset, load_dataset
from clayflow.diagnostics.anomaly import METHODS, GaussianReference, calibrate
from clayflow.models import ModelSpec
from clayflow.train.checkpoint import BEST_NAME, read_checkpoint
from clayflow.train.evaluate import log_prob_in_chunks
from clayflow.train.setup import IMAGE_EMA

SEED = 0
DIGIT_LEVELS = 17  # scikit-learn's digits: intensity levels 0..16
DRAWS = 8  # dequantization draws per example, as ``clayflow score`` takes by default (--draws)


def baselines(train: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    """Anomaly scores (higher = more anomalous) of the scikit-learn detectors."""
    scaler = StandardScaler().fit(train)
    a, b = scaler.transform(train), scaler.transform(test)
    gaussian = GaussianReference.fit(torch.as_tensor(a))
    mixtures = [GaussianMixture(k, covariance_type="full", reg_covar=1e-3, random_state=SEED).fit(a) for k in range(1, 9)]
    mixture = min(mixtures, key=lambda m: m.bic(a))
    search = GridSearchCV(KernelDensity(), {"bandwidth": np.logspace(-1.5, 0.5, 12)}, cv=5).fit(a)
    forest = IsolationForest(n_estimators=200, random_state=SEED).fit(a)
    return {
        "gaussian": -gaussian.log_prob(torch.as_tensor(b)).numpy(),
        "gmm (bic)": -mixture.score_samples(b),
        "kde": -search.best_estimator_.score_samples(b),
        "isolation forest": -forest.score_samples(b),
    }


def flow_scores(run: Path, data_spec: str, test: torch.Tensor) -> dict[str, np.ndarray]:
    """clayflow's scores of ``test`` under the run's flow, calibrated on the run's own splits."""
    spec = ModelSpec.from_dict(read_checkpoint(run, prefer_best=True)["model_spec"])
    discrete = dict(zip(spec.discrete, spec.discrete_steps))
    return scores_of(clayflow.load(run), load_dataset(data_spec), test, spec.levels, discrete, "clayflow")


def scores_of(flow: clayflow.Flow, data: Dataset, test: torch.Tensor, levels: int | None,
              discrete: dict[int, float], prefix: str) -> dict[str, np.ndarray]:  # fmt: skip
    """Every method's scores of ``test`` under ``flow``, calibrated on ``data``'s splits."""
    val_log_prob = log_prob_in_chunks(flow, data.val, draws=DRAWS)
    test_log_prob = log_prob_in_chunks(flow, test, draws=DRAWS)
    scores = {}
    for method in METHODS:
        scorer = calibrate(method, 0.01, data.val, val_log_prob, data.train, levels, discrete)
        scores[f"{prefix} {method}"] = scorer.scores(test_log_prob, test).numpy()
    return scores


def as_digit_images(rows: torch.Tensor) -> torch.Tensor:
    """Digits rows ``(N, 64)`` of levels 0..16 as images ``(N, 1, 8, 8)`` uint8."""
    return rows.reshape(-1, 1, 8, 8).round().to(torch.uint8)


def image_flow_scores(csv: Path, run: Path, test: torch.Tensor, scale: float) -> dict[str, np.ndarray]:
    """The default image RealNVP trained (``clayflow.fit``, seed 0) on the digits rows of
    ``csv`` as images, in the table's own split, and its scores of the rows ``test``."""
    table = load_dataset(str(csv))
    data = Dataset(csv.stem, *(as_digit_images(part) for part in (table.train, table.val, table.test)), levels=DIGIT_LEVELS)
    torch.manual_seed(SEED)
    flow = clayflow.models.realnvp_image((1, 8, 8), DIGIT_LEVELS)
    if (run / "results.json").exists():  # trained before: the weights fit kept (best.pt's, averaged)
        flow.load_state_dict(torch.load(run / BEST_NAME, weights_only=True)["model"])
    else:
        clayflow.fit(flow, data.train, data.val, data.test, steps=max(1, int(4000 * scale)), ema=IMAGE_EMA,
                     seed=SEED, out=run, force=True, progress=False, threads=THREADS)  # fmt: skip
    return scores_of(flow.cpu().eval(), data, as_digit_images(test), DIGIT_LEVELS, {}, "clayflow image")


FLOW_ARGS: list[str] = []  # the table demos' model options (--table-flow), beside --data
THREADS: int | None = None  # --threads: torch's threads in every training (None: clayflow's default)
SEEDS: list[int] = [SEED]  # --seeds: the table demos' flow seeds


def train(args: list[str], run: Path, steps: int, scale: float, seed: int = SEED) -> Path:
    if not (run / "results.json").exists():
        command = [sys.executable, "-m", "clayflow", "train", *args, "--steps", str(max(1, int(steps * scale))),
                   "--seed", str(seed), "--no-plots", "--out", str(run), "--force",
                   *(["--threads", str(THREADS)] if THREADS else [])]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
    return run


def table_demo(name: str, normal: np.ndarray, anomalous: np.ndarray, out: Path, scale: float,
               images: bool = False) -> dict[str, list[float]]:  # fmt: skip
    """A table flow per seed of ``SEEDS`` (and with ``images``, an image flow of the rows as
    digit images, seed 0) trained on 70% of the ``normal`` rows; the other rows and every
    ``anomalous`` row scored. Each method's AUROC, one per seed for the table flow's."""
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(normal))
    cut = int(0.7 * len(normal))
    train_rows, test_normal = normal[order[:cut]], normal[order[cut:]]
    out.mkdir(parents=True, exist_ok=True)
    csv = out / f"{name}-train.csv"
    np.savetxt(csv, train_rows, delimiter=",", fmt="%.8g")
    test = np.concatenate([test_normal, anomalous])
    labels = np.r_[np.zeros(len(test_normal)), np.ones(len(anomalous))]
    test_rows = torch.as_tensor(test, dtype=torch.float32)
    aurocs: dict[str, list[float]] = {}
    log_probs = []  # each seed's flow's log p of the test rows
    for seed in SEEDS:  # seed 0's run keeps its name: runs of earlier versions are reused
        run = train(["--data", str(csv), *FLOW_ARGS], out / (name if seed == 0 else f"{name}-seed{seed}"), 4000, scale, seed)
        for method, s in flow_scores(run, str(csv), test_rows).items():
            aurocs.setdefault(method, []).append(roc_auc_score(labels, s))
            if method == "clayflow likelihood":
                log_probs.append(-s)
    if len(log_probs) > 1:  # the equal mixture of the seeds' flows: log p = log mean_k p_k
        aurocs["clayflow seed mixture"] = [roc_auc_score(labels, -logsumexp(np.stack(log_probs), axis=0))]
    others = image_flow_scores(csv, out / f"{name}-images", test_rows, scale) if images else {}
    others.update(baselines(train_rows, test))
    aurocs.update({method: [roc_auc_score(labels, s)] for method, s in others.items()})
    print(f"  {name}: train {len(train_rows)} normal rows; test {len(test_normal)} normal, {len(anomalous)} anomalous")
    return aurocs


def image_demo(out: Path, scale: float) -> dict[str, dict[str, list[float]]]:
    run = train(["--data", "digits"], out / "digits-images", 1500, scale)
    data = load_dataset("digits")
    normal = data.test
    photos = np.concatenate([image.mean(2) for image in datasets.load_sample_images().images])  # two grey photos
    rng = np.random.default_rng(SEED)
    patches = []
    for _ in range(len(normal)):
        i, j = rng.integers(0, photos.shape[0] - 32), rng.integers(0, photos.shape[1] - 32)
        patch = photos[i : i + 32, j : j + 32].reshape(8, 4, 8, 4).mean((1, 3))  # 32x32 -> 8x8
        patches.append(np.floor(patch / 256 * 17).clip(0, 16))
    shifted = {
        "rotated": torch.rot90(normal, 1, (2, 3)),
        "inverted": 16 - normal,
        "photo patches": torch.as_tensor(np.stack(patches)[:, None], dtype=torch.float32),
    }
    results = {}
    for name, anomalous in shifted.items():
        test = torch.cat([normal, anomalous])
        labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
        scores = flow_scores(run, "digits", test)
        flat = data.train.reshape(len(data.train), -1).numpy()
        scores.update(baselines(flat + 0.5, test.reshape(len(test), -1).numpy() + 0.5))
        results[f"digits images vs {name}"] = {m: [roc_auc_score(labels, s)] for m, s in scores.items()}
        print(f"  digits images vs {name}: train {len(data.train)} digits; test {len(normal)} digits, {len(anomalous)} {name}")
    return results


def table_demos(classes: str, out: Path, scale: float, images: bool = False) -> dict[str, dict[str, list[float]]]:
    """breast_cancer, then digits with each of ``classes`` held out in turn (with ``images``,
    scored by an image flow too), and their mean (seed by seed)."""
    cancer = datasets.load_breast_cancer()
    results = {"breast_cancer (malignant)": table_demo(
        "breast_cancer", cancer.data[cancer.target == 1], cancer.data[cancer.target == 0], out, scale
    )}  # fmt: skip
    digits = datasets.load_digits()
    held_out = {}
    for k in map(int, classes):
        held_out[k] = table_demo(f"digits-without-{k}", digits.data[digits.target != k], digits.data[digits.target == k],
                                 out, scale, images=images)  # fmt: skip
        results[f"digits, class {k} held out"] = held_out[k]
    if held_out:
        first = next(iter(held_out.values()))
        results["digits, mean over held-out classes"] = {
            m: [float(np.mean([held_out[k][m][i] for k in held_out])) for i in range(len(first[m]))] for m in first
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/anomaly")
    parser.add_argument("--steps-scale", type=float, default=1.0)
    parser.add_argument("--classes", default="0123456789", help="digits classes to hold out in turn")
    parser.add_argument("--table-flow", default="", metavar="OPTIONS",
                        help="clayflow train options of the table demos' flow (default: none, the defaults)")  # fmt: skip
    parser.add_argument("--no-images", action="store_true", help="skip the image demonstration")
    parser.add_argument("--held-out-images", action="store_true",
                        help="score the held-out digits with an image RealNVP of the same rows too (5-10 min per class)")  # fmt: skip
    parser.add_argument("--no-tables", action="store_true", help="skip the table demonstrations")
    parser.add_argument("--threads", type=int, help="torch threads of every training (default: clayflow's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[SEED],
                        help="train each table demonstration's flow once per seed; report the mean AUROC and the range")  # fmt: skip
    args = parser.parse_args()
    FLOW_ARGS[:] = args.table_flow.split()
    SEEDS[:] = args.seeds
    global THREADS
    THREADS = args.threads
    out = Path(args.out)
    print(f"# anomaly detection: torch {torch.__version__}, seed {SEED}, table flow seeds {' '.join(map(str, SEEDS))}, steps x {args.steps_scale}, "
          f"table flow options {args.table_flow or '(defaults)'}; AUROC")  # fmt: skip
    results = {} if args.no_tables else table_demos(args.classes, out, args.steps_scale, args.held_out_images)
    if not args.no_images:
        results.update(image_demo(out, args.steps_scale))
    print_tables(results)


def print_tables(results: dict[str, dict[str, list[float]]]) -> None:
    """Each method's mean AUROC per demonstration (and whether clayflow's best reaches the best
    baseline's), then, for methods run at several seeds, the lowest and highest."""
    names = sorted({m for r in results.values() for m in r}, key=lambda m: (not m.startswith("clayflow"), m))
    print("\n| demonstration | " + " | ".join(names) + " | best clayflow >= best baseline |")
    print("|---" * (len(names) + 2) + "|")
    for demo, per_seed in results.items():
        aurocs = {m: float(np.mean(values)) for m, values in per_seed.items()}
        ours = max(v for m, v in aurocs.items() if m.startswith("clayflow") and m != "clayflow seed mixture")
        theirs = max(v for m, v in aurocs.items() if not m.startswith("clayflow"))
        row = " | ".join(f"{aurocs[m]:.3f}" if m in aurocs else "" for m in names)
        print(f"| {demo} | {row} | {'yes' if ours >= theirs else 'no'} ({ours:.3f} vs {theirs:.3f}) |")
    seeded = [m for m in names if any(len(r.get(m, [])) > 1 for r in results.values())]
    if seeded:
        print(f"\nLowest and highest AUROC over table flow seeds {' '.join(map(str, SEEDS))}:\n")
        print("| demonstration | " + " | ".join(seeded) + " |")
        print("|---" * (len(seeded) + 1) + "|")
        for demo, per_seed in results.items():
            row = " | ".join(f"{min(per_seed[m]):.3f}-{max(per_seed[m]):.3f}" if m in per_seed else "" for m in seeded)
            print(f"| {demo} | {row} |")


if __name__ == "__main__":
    main()
