r"""Anomaly scores from a trained flow, a threshold calibrated at a false-alarm rate, and the
figures of a labelled evaluation (AUROC, AUPRC, achieved false-alarm rate).

Scores (higher = more anomalous), chosen by ``method``:

* ``likelihood``: -log p(x), nats.
* ``typicality``: |-log p(x) - m|, m the mean of -log p over the validation rows: the distance
  from the typical set (Nalisnick et al. 2019), which also flags rows that are *too* likely,
  as out-of-distribution data often are.
* ``ratio``: -log p(x) + log q(x), q a simpler model fitted to the training rows: a
  full-covariance Gaussian for vectors, a model of local pixel correlations for images
  (``LocalPixelReference``, on dequantized levels): a likelihood ratio that cancels what
  both find easy, such as smooth images (Schirrmeister et al. 2020; Ren et al. 2019).
* ``complexity``: -log2 p(x) - L(x), L(x) the bits of a generic code for x, a stand-in for the
  input-complexity term of Serra et al. 2020: for images, the image compressed by zlib at
  level 9; for tables, the code that treats the columns as independent (``ColumnCode``,
  fitted to the training rows), so what the flow learned beyond each column's own
  distribution is what counts.

The threshold is the ``1 - fpr`` quantile of the scores of the validation rows, so about a
fraction ``fpr`` of normal rows is flagged.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clayflow.errors import ClayflowError, UsageError

METHODS = ("likelihood", "typicality", "ratio", "complexity")
_CHUNK = 1024  # images per chunk of the local-pixel model's features
KDE_ROWS = 5000  # training rows of a column's kernel density in ColumnCode (its cost is N_train * N_scored)


@dataclass
class GaussianReference:
    """A full-covariance Gaussian over flattened examples ``(N, D)``, with a small ridge."""

    mean: Tensor
    scale_tril: Tensor

    @classmethod
    def fit(cls, x: Tensor, ridge: float = 1e-3) -> GaussianReference:
        """The sample mean and covariance of ``x`` ``(N, *)``, plus ``ridge`` times the mean variance."""
        flat = x.reshape(len(x), -1).double()
        mean = flat.mean(0)
        centred = flat - mean
        covariance = centred.T @ centred / max(len(flat) - 1, 1)
        covariance += ridge * covariance.diagonal().mean().clamp_min(1e-12) * torch.eye(len(mean), dtype=torch.float64)
        return cls(mean, torch.linalg.cholesky(covariance))

    def log_prob(self, x: Tensor) -> Tensor:
        """log q of each example ``(N, *)`` -> ``(N,)`` float64."""
        distribution = torch.distributions.MultivariateNormal(self.mean, scale_tril=self.scale_tril)
        return distribution.log_prob(x.reshape(len(x), -1).double())


@dataclass
class LocalPixelReference:
    r"""A model of local pixel correlations only, for images ``(N, C, H, W)``: each pixel is
    Gaussian given its upper, left and upper-left neighbours (0 outside the image), by one
    linear regression per channel shared by every position (so it knows how smooth images
    are, not where things are), with a variance of at least 1/12 (a level's dequantization
    noise). Smoothness dominates an image flow's likelihood too; the ratio cancels it and
    keeps what the flow knows beyond it.

        log q(x) = sum_{c,i,j} log N(x_cij; w_c . [1, x_c(i-1)j, x_ci(j-1), x_c(i-1)(j-1)], s2_c)
    """

    weights: Tensor  # (C, 4)
    variance: Tensor  # (C,)

    @staticmethod
    def _features(x: Tensor) -> Tensor:
        x = x.double()
        padded = torch.nn.functional.pad(x, (1, 0, 1, 0))  # a row above and a column to the left
        up, left, corner = padded[:, :, :-1, 1:], padded[:, :, 1:, :-1], padded[:, :, :-1, :-1]
        ones = torch.ones_like(x)
        return torch.stack([ones, up, left, corner], -1).reshape(len(x), x.shape[1], -1, 4)  # (N, C, HW, 4)

    @classmethod
    def fit(cls, x: Tensor, ridge: float = 1e-6) -> LocalPixelReference:
        """Least squares per channel over every image and position of ``x`` ``(N, C, H, W)``,
        accumulated over chunks of images (memory bounded for CIFAR-size sets)."""
        channels = x.shape[1]
        gram = torch.zeros(channels, 4, 4, dtype=torch.float64)
        moment = torch.zeros(channels, 4, dtype=torch.float64)
        for part in x.split(_CHUNK):
            features, target = cls._features(part), part.double().reshape(len(part), channels, -1)
            gram += torch.einsum("ncpk,ncpl->ckl", features, features)
            moment += torch.einsum("ncpk,ncp->ck", features, target)
        count = len(x) * x[0, 0].numel()
        weights = torch.linalg.solve(gram + ridge * count * torch.eye(4, dtype=torch.float64), moment)
        squares = sum(cls(weights, torch.ones(channels))._errors(part).pow(2).sum((0, 2)) for part in x.split(_CHUNK))
        return cls(weights, (squares / count).clamp_min(1 / 12))

    def _errors(self, x: Tensor) -> Tensor:
        """Each pixel minus its prediction from its neighbours, ``(N, C, H * W)``."""
        mean = torch.einsum("ncpk,ck->ncp", self._features(x), self.weights)
        return x.double().reshape(len(x), x.shape[1], -1) - mean

    def log_prob(self, x: Tensor) -> Tensor:
        """log q of each image ``(N, C, H, W)`` -> ``(N,)`` float64."""
        variance = self.variance[:, None]
        parts = [
            (-0.5 * (self._errors(part).pow(2) / variance + variance.log() + math.log(2 * math.pi))).sum((1, 2))
            for part in x.split(_CHUNK)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


@dataclass
class ColumnCode:
    r"""The code length of table rows ``(N, D)`` under independent columns,
    ``L(x) = -\sum_j \log_2 q_j(x_j)``, fitted to training rows.

    The flow's dequantized columns (``discrete``: {column: grid step}) are discrete here too:
    ``q_j`` is the frequency of the value's grid point with add-one smoothing over the points
    seen, plus one share for any point not seen, divided by the step (a mass per unit, as
    the flow's density of a dequantized value is). Other columns have a Gaussian kernel
    density (scipy's ``gaussian_kde``, Scott's bandwidth) of up to ``KDE_ROWS`` training rows.
    So ``L`` and a flow's ``-log2 p`` are on one scale."""

    discrete: dict[int, float]  # column -> grid step
    points: dict[int, Tensor]  # discrete columns: the grid points seen (sorted, as integers)
    log_mass: dict[int, Tensor]  # their log frequencies (add-one)
    log_unseen: dict[int, float]  # the log share of a grid point never seen
    densities: dict[int, Any]  # continuous columns: scipy.stats.gaussian_kde (None if constant)

    @classmethod
    def fit(cls, x: Tensor, discrete: dict[int, float] | None = None) -> ColumnCode:
        """Fit each column of ``x`` ``(N, D)`` on its own."""
        from scipy.stats import gaussian_kde

        rows = x.reshape(len(x), -1).double()
        discrete = dict(discrete or {})
        code = cls(discrete, {}, {}, {}, {})
        sample = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:KDE_ROWS]
        for j, column in enumerate(rows.T):
            if j in discrete:
                points, counts = torch.unique(torch.round(column / discrete[j]).long(), return_counts=True)
                total = counts.sum().item() + len(points) + 1.0  # add one to each, and one unseen point
                code.points[j], code.log_mass[j] = points, (counts.double() + 1).log() - math.log(total)
                code.log_unseen[j] = -math.log(total)
            else:
                values = column[sample].numpy()
                code.densities[j] = gaussian_kde(values) if values.std() > 0 else None
        return code

    def bits(self, x: Tensor) -> Tensor:
        """``L(x)`` of each row of ``x`` ``(N, D)`` -> ``(N,)`` float64."""
        rows = x.reshape(len(x), -1).double()
        total = torch.zeros(len(rows), dtype=torch.float64)
        for j, column in enumerate(rows.T):
            if j in self.discrete:
                step, points = self.discrete[j], self.points[j]
                index = torch.round(column / step).long()
                at = torch.searchsorted(points, index).clamp(max=len(points) - 1)
                seen = (points[at] == index) & (column / step == index)  # on the grid, and seen
                log_q = torch.where(seen, self.log_mass[j][at], torch.full_like(column, self.log_unseen[j]))
                total -= log_q - math.log(step)
            elif self.densities.get(j) is not None:
                total -= torch.as_tensor(self.densities[j].logpdf(column.numpy()), dtype=torch.float64)
        return total / math.log(2)


def compressed_bits(x: Tensor) -> Tensor:
    """Bits of each image ``(N, C, H, W)`` of integer levels (< 256) compressed by zlib (level 9)."""
    images = x.detach().cpu().numpy().astype(np.uint8)
    return torch.tensor([8.0 * len(zlib.compress(image.tobytes(), 9)) for image in images], dtype=torch.float64)


@dataclass
class AnomalyScorer:
    """Scores of one ``method`` and the threshold calibrated on validation rows: ``flag(s)``
    is ``s > threshold``."""

    method: str
    fpr: float
    threshold: float
    typical_nll: float
    reference: GaussianReference | LocalPixelReference | ColumnCode | None = None
    levels: int | None = None

    def scores(self, log_prob: Tensor, x: Tensor) -> Tensor:
        """The anomaly scores ``(N,)`` of examples ``x`` whose model log-densities are ``log_prob``."""
        nll = -log_prob.double()
        if self.method == "likelihood":
            return nll
        if self.method == "typicality":
            return (nll - self.typical_nll).abs()
        if self.method == "ratio":
            return nll + self.reference.log_prob(_dequantized(x, self.levels))
        code_bits = compressed_bits(x) if self.levels is not None else self.reference.bits(x)
        return nll / math.log(2) - code_bits

    def flag(self, scores: Tensor) -> Tensor:
        """Whether each score is above the calibrated threshold ``(N,)`` bool; a NaN score (a
        row the model gives no log-likelihood) is flagged, never passed as normal."""
        return (scores > self.threshold) | scores.isnan()


def check_method(method: str, levels: int | None, fpr: float) -> None:
    """Refuse (``UsageError``) an unknown method, ``complexity`` on images of more than 256
    levels, an fpr outside (0, 1)."""
    if method not in METHODS:
        raise UsageError(f"unknown anomaly score method {method!r}; choose one of: {', '.join(METHODS)}")
    if method == "complexity" and levels is not None and levels > 256:
        raise UsageError("--method complexity scores images of at most 256 levels (their compressed size)")
    if not 0 < fpr < 1:
        raise UsageError(f"--fpr must be in (0, 1), got {fpr}")


def calibrate(method: str, fpr: float, val: Tensor, val_log_prob: Tensor, train: Tensor | None,
              levels: int | None = None, discrete: dict[int, float] | None = None) -> AnomalyScorer:  # fmt: skip
    """The scorer of ``method`` with its threshold at the ``1 - fpr`` quantile of the
    validation rows' scores (``train``: the rows a ``ratio``'s reference and a table's
    ``complexity`` code are fitted to, the validation rows when None; ``discrete``: the
    table columns the flow dequantizes, {column: grid step})."""
    check_method(method, levels, fpr)
    if len(val) < 2:
        raise UsageError("calibrating a threshold needs at least 2 validation rows")
    reference = None
    rows = train if train is not None else val
    if method == "ratio":
        rows = _dequantized(rows, levels)
        reference = LocalPixelReference.fit(rows) if rows.dim() == 4 else GaussianReference.fit(rows)
    elif method == "complexity" and levels is None:
        reference = ColumnCode.fit(rows, discrete)
    scorer = AnomalyScorer(method, fpr, math.inf, float(-val_log_prob.double().mean()), reference, levels)
    scorer.threshold = float(torch.quantile(scorer.scores(val_log_prob, val), 1 - fpr))
    return scorer


def evaluate_labels(scores: Tensor, flags: Tensor, labels: np.ndarray) -> dict[str, Any]:
    """AUROC, AUPRC (anomaly = 1), the false-alarm and detection rates of the flags, and the
    ROC curve, for ``labels`` ``(N,)`` of 0 (normal) and 1 (anomaly)."""
    from scipy.stats import rankdata
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    labels = check_labels(labels)
    s, f = scores.double().numpy(), flags.numpy()
    if not np.isfinite(s).all():  # +inf (log p = -inf) ranks first, as a NaN score flags; only ranks count
        s = rankdata(np.where(np.isnan(s), np.inf, s))
    false_positive, true_positive, _ = roc_curve(labels, s)
    return {
        "auroc": float(roc_auc_score(labels, s)),
        "auprc": float(average_precision_score(labels, s)),
        "false_alarm_rate": float(f[labels == 0].mean()),
        "detection_rate": float(f[labels == 1].mean()),
        "roc": (false_positive, true_positive),
        "normal": int((labels == 0).sum()),
        "anomalies": int((labels == 1).sum()),
    }


def check_labels(labels: np.ndarray, source: str = "labels") -> np.ndarray:
    """``labels`` ``(N,)`` as integers, or a ``ClayflowError`` saying why they cannot measure
    detection: a value other than 0 (normal) and 1 (anomaly), or only one of the two."""
    labels = np.asarray(labels, dtype=np.float64)
    other = np.unique(labels[~np.isin(labels, (0, 1))])
    if len(other):
        shown = ", ".join(f"{value:g}" for value in other[:5]) + (", ..." if len(other) > 5 else "")
        raise ClayflowError(f"{source}: labels must be 0 (normal) or 1 (anomaly), not {shown}")
    if len(np.unique(labels)) < 2:
        raise ClayflowError(f"{source}: every label is {labels[0]:g}; measuring detection needs both "
                            "0 (normal) and 1 (anomaly) rows")  # fmt: skip
    return labels.astype(int)


def _dequantized(x: Tensor, levels: int | None) -> Tensor:
    """Images at the middle of their level's bin (as the model sees them on average); others as they are."""
    return x.double() + 0.5 if levels is not None else x.double()
