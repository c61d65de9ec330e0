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
* ``complexity`` (images): -log2 p(x) - L(x), L the bits of the image compressed by zlib at
  level 9, a stand-in for the input-complexity term of Serra et al. 2020.

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

from clayflow.errors import UsageError

METHODS = ("likelihood", "typicality", "ratio", "complexity")


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
        """Least squares per channel over every image and position of ``x`` ``(N, C, H, W)``."""
        features, target = cls._features(x), x.double().reshape(len(x), x.shape[1], -1)
        count = features.shape[0] * features.shape[2]
        gram = torch.einsum("ncpk,ncpl->ckl", features, features) + ridge * count * torch.eye(4, dtype=torch.float64)
        weights = torch.linalg.solve(gram, torch.einsum("ncpk,ncp->ck", features, target))
        residual = target - torch.einsum("ncpk,ck->ncp", features, weights)
        return cls(weights, residual.pow(2).mean((0, 2)).clamp_min(1 / 12))

    def log_prob(self, x: Tensor) -> Tensor:
        """log q of each image ``(N, C, H, W)`` -> ``(N,)`` float64."""
        mean = torch.einsum("ncpk,ck->ncp", self._features(x), self.weights)
        error = x.double().reshape(len(x), x.shape[1], -1) - mean
        variance = self.variance[:, None]
        return (-0.5 * (error.pow(2) / variance + variance.log() + math.log(2 * math.pi))).sum((1, 2))


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
    reference: GaussianReference | LocalPixelReference | None = None
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
        return nll / math.log(2) - compressed_bits(x)

    def flag(self, scores: Tensor) -> Tensor:
        """Whether each score is above the calibrated threshold ``(N,)`` bool."""
        return scores > self.threshold


def check_method(method: str, levels: int | None, fpr: float) -> None:
    """Refuse (``UsageError``) an unknown method, ``complexity`` on non-images, an fpr outside (0, 1)."""
    if method not in METHODS:
        raise UsageError(f"unknown anomaly score method {method!r}; choose one of: {', '.join(METHODS)}")
    if method == "complexity" and (levels is None or levels > 256):
        raise UsageError("--method complexity scores images of at most 256 levels (their compressed size)")
    if not 0 < fpr < 1:
        raise UsageError(f"--fpr must be in (0, 1), got {fpr}")


def calibrate(method: str, fpr: float, val: Tensor, val_log_prob: Tensor, train: Tensor | None,
              levels: int | None = None) -> AnomalyScorer:  # fmt: skip
    """The scorer of ``method`` with its threshold at the ``1 - fpr`` quantile of the
    validation rows' scores (``train``: the rows a ``ratio``'s Gaussian is fitted to)."""
    check_method(method, levels, fpr)
    if len(val) < 2:
        raise UsageError("calibrating a threshold needs at least 2 validation rows")
    reference = None
    if method == "ratio":
        rows = _dequantized(train if train is not None else val, levels)
        reference = LocalPixelReference.fit(rows) if rows.dim() == 4 else GaussianReference.fit(rows)
    scorer = AnomalyScorer(method, fpr, math.inf, float(-val_log_prob.double().mean()), reference, levels)
    scorer.threshold = float(torch.quantile(scorer.scores(val_log_prob, val), 1 - fpr))
    return scorer


def evaluate_labels(scores: Tensor, flags: Tensor, labels: np.ndarray) -> dict[str, Any]:
    """AUROC, AUPRC (anomaly = 1), the false-alarm and detection rates of the flags, and the
    ROC curve, for ``labels`` ``(N,)`` of 0 (normal) and 1 (anomaly)."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    labels = np.asarray(labels).astype(int)
    if set(np.unique(labels)) != {0, 1}:
        raise UsageError("labels must hold both 0 (normal) and 1 (anomaly), and nothing else")
    s, f = scores.numpy(), flags.numpy()
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


def _dequantized(x: Tensor, levels: int | None) -> Tensor:
    """Images at the middle of their level's bin (as the model sees them on average); others as they are."""
    return x.double() + 0.5 if levels is not None else x.double()
