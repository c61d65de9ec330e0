"""What a user would fit instead of a flow: a full-covariance Gaussian, scikit-learn's
GaussianMixture and KernelDensity, each scored as mean test log-likelihood per row in the
data's own units (nats, higher is better).

All three fit the training rows of ``Rows.noisy(seed)`` (one U[0, h) draw on the discrete
columns of grid step h) and score the validation and test copies (fresh draws, averaged), as clayflow does.
The mixture and the KDE are fitted to standardised rows and scored with the standardisation's
log-det added (``Standardiser.in_data_units``).

- ``fit_gaussian``: MLE mean and covariance. Its validation and test log-likelihoods are
  computed in raw units and in standardised units plus the log-det; each pair must agree to
  ``UNITS_RTOL`` (relative) or the run stops with ``UnitsMismatch``.
- ``fit_gmm``: ``GaussianMixture(k, covariance_type)`` for k in ``GMM_COMPONENTS`` and type
  in ``GMM_COVARIANCES`` (``random_state`` = seed), the candidate with the highest validation
  log-likelihood kept; the candidate with the lowest training BIC is noted for information.
- ``fit_kde``: ``KernelDensity(kernel="gaussian")``, bandwidth (standardised units) from
  ``KDE_BANDWIDTHS`` by 5-fold cross-validation on the training rows (folds shuffled by the
  seed). Above ``KDE_CV_ROWS`` training rows (the toys' 50,000) the search runs on a subsample
  of that many rows drawn by the seed, and the bandwidth is scaled to the full training set by
  Scott's rate n^(-1/(D+4)); the final KDE holds every training row.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.linalg import solve_triangular

from .datasets import Rows, Standardiser, mean_ll, row_ll
from .records import Fit

UNITS_RTOL = 1e-9
GMM_COMPONENTS = tuple(range(1, 11))
GMM_COVARIANCES = ("full", "diag")
GMM_MAX_ITER = 500  # sklearn's 100 leaves some 50,000-row toy fits unconverged
KDE_BANDWIDTHS = np.logspace(-2.5, 1.0, 36)  # standardised units
KDE_FOLDS = 5
KDE_CV_ROWS = 5000


class UnitsMismatch(RuntimeError):
    """The same Gaussian scored in raw and in standardised units disagrees: a units bug."""


def gaussian_logpdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """log N(x; mean, cov) of each row of ``x`` (N, D), by a Cholesky factor of ``cov``."""
    chol = np.linalg.cholesky(cov)
    white = solve_triangular(chol, (x - mean).T, lower=True)
    return -0.5 * (white**2).sum(0) - np.log(np.diag(chol)).sum() - 0.5 * x.shape[1] * math.log(2 * math.pi)


def gaussian_mle(x: np.ndarray):
    """``x -> log N(x; mean, cov)`` with the MLE (ddof 0) mean and covariance of ``x``."""
    mean, cov = x.mean(0), np.cov(x, rowvar=False, bias=True)
    return lambda rows: gaussian_logpdf(rows, mean, cov)


def fit_gaussian(rows: Rows, seed: int) -> Fit:
    """Full-covariance Gaussian MLE, with the units check (raw vs standardised + log-det)."""
    data = rows.noisy(seed)
    std = Standardiser.fit(data.train)
    raw = gaussian_mle(data.train)
    standardised = std.in_data_units(gaussian_mle(std(data.train)))
    scores, gaps = {}, []
    for split, copies in (("val", data.val), ("test", data.test)):
        a, b = mean_ll(raw, copies), mean_ll(standardised, copies)
        gap = abs(a - b) / max(abs(a), abs(b))
        if not gap <= UNITS_RTOL:  # also refuses NaN
            raise UnitsMismatch(
                f"{rows.name} seed {seed}: Gaussian {split} log-likelihood {a!r} in raw units but {b!r} "
                f"in standardised units + log-det (relative gap {gap:.1e} > {UNITS_RTOL:g})"
            )
        scores[split], gaps = a, [*gaps, gap]
    test_rows = row_ll(raw, data.test).tolist()
    return Fit(
        test_ll=scores["test"], val_ll=scores["val"], test_rows=test_rows,
        check=f"raw-vs-standardised {max(gaps):.1e}",
    )  # fmt: skip


def _gmm_fits(rows: Rows, seed: int):
    """Every GaussianMixture of the grid on the standardised training rows: the data, the
    standardiser, ``{candidate: (model, validation log-likelihood, BIC)}`` and the notes."""
    from sklearn.mixture import GaussianMixture

    data = rows.noisy(seed)
    std = Standardiser.fit(data.train)
    z = std(data.train)
    fits, candidates = {}, []
    for cov in GMM_COVARIANCES:
        for k in GMM_COMPONENTS:
            name = f"{cov} k={k}"
            gmm = GaussianMixture(k, covariance_type=cov, max_iter=GMM_MAX_ITER, random_state=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ConvergenceWarning: noted below, judged by validation
                try:
                    gmm.fit(z)
                except (ValueError, np.linalg.LinAlgError) as exc:
                    candidates.append({"candidate": name, "note": f"failed: {exc}"[:200]})
                    continue
            val = mean_ll(std.in_data_units(gmm.score_samples), data.val)
            fits[name] = (gmm, val, gmm.bic(z))
            note = "" if gmm.converged_ else f"not converged in {GMM_MAX_ITER} EM iterations"
            candidates.append({"candidate": name, "score": val, "bic": fits[name][2], "note": note})
    return data, std, fits, candidates


def _fit_gmm(rows: Rows, seed: int, by: str) -> Fit:
    """GaussianMixture, components and covariance type by validation log-likelihood
    (``by="val"``) or by the training rows' BIC (``by="bic"``, scikit-learn's usual advice)."""
    data, std, fits, candidates = _gmm_fits(rows, seed)
    if not fits:
        return Fit(status="failed", detail="every GaussianMixture fit failed", candidates=candidates)
    by_val = max(fits, key=lambda c: fits[c][1])
    by_bic = min(fits, key=lambda c: fits[c][2])
    best, other = (by_val, f"BIC would pick {by_bic}") if by == "val" else (by_bic, f"validation would pick {by_val}")
    gmm, val, _ = fits[best]
    edge = "largest k of the grid; " if best.endswith(f"k={GMM_COMPONENTS[-1]}") else ""
    test_rows = row_ll(std.in_data_units(gmm.score_samples), data.test)
    return Fit(
        test_ll=float(test_rows.mean()),
        test_rows=test_rows.tolist(),
        val_ll=val,
        choice=best,
        detail=f"{edge}{other}",
        candidates=candidates,
    )


def fit_gmm(rows: Rows, seed: int) -> Fit:
    return _fit_gmm(rows, seed, "val")


def fit_gmm_bic(rows: Rows, seed: int) -> Fit:
    return _fit_gmm(rows, seed, "bic")


def fit_kde(rows: Rows, seed: int) -> Fit:
    """KernelDensity, bandwidth by cross-validation on the (standardised) training rows."""
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.neighbors import KernelDensity

    data = rows.noisy(seed)
    std = Standardiser.fit(data.train)
    z = std(data.train)
    cv_rows = z
    if len(z) > KDE_CV_ROWS:
        cv_rows = z[np.random.default_rng(seed).choice(len(z), KDE_CV_ROWS, replace=False)]
    search = GridSearchCV(
        KernelDensity(kernel="gaussian"),
        {"bandwidth": KDE_BANDWIDTHS},
        cv=KFold(KDE_FOLDS, shuffle=True, random_state=seed),
        scoring=lambda kde, x, y=None: kde.score_samples(x).mean(),  # per row, not per fold
    ).fit(cv_rows)
    h_cv = float(search.best_params_["bandwidth"])
    h = h_cv
    if len(cv_rows) < len(z):  # Scott's rate, from the folds' training rows to all of them
        h *= (len(cv_rows) * (KDE_FOLDS - 1) / KDE_FOLDS / len(z)) ** (1 / (z.shape[1] + 4))
    kde = KernelDensity(kernel="gaussian", bandwidth=h).fit(z)
    log_q = std.in_data_units(kde.score_samples)
    detail = "at the edge of the bandwidth grid" if h_cv in (KDE_BANDWIDTHS[0], KDE_BANDWIDTHS[-1]) else ""
    if h != h_cv:
        detail = f"CV on {len(cv_rows)} rows chose {h_cv:.3g}, scaled to all rows. {detail}".strip()
    candidates = [
        {"candidate": f"h={b:.4g}", "score": s + std.logdet}
        for b, s in zip(KDE_BANDWIDTHS, search.cv_results_["mean_test_score"])
    ]
    test_rows = row_ll(log_q, data.test)
    return Fit(
        test_ll=float(test_rows.mean()),
        test_rows=test_rows.tolist(),
        val_ll=mean_ll(log_q, data.val),
        choice=f"h={h:.3g}",
        detail=detail,
        candidates=candidates,
    )


BASELINES = {"gaussian": fit_gaussian, "gmm": fit_gmm, "gmm_bic": fit_gmm_bic, "kde": fit_kde}
