"""Evaluation metrics of representations: effective rank and linear-probe accuracy."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

logger = logging.getLogger(__name__)


def effective_rank(z: np.ndarray, center: bool = True) -> float:
    """Return the effective rank ``exp(−Σ p_k log p_k)``, ``p_k = σ_k / Σ σ``, of ``z`` (n, d).

    ``σ_k`` are the singular values of ``z`` (centered over rows by default). The result lies in
    ``[1, min(n, d)]``: 1 for representations collapsed onto a line, ``d`` for isotropic ones.
    NaN when every singular value is zero.
    """
    matrix = np.asarray(z, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"effective_rank expects shape (n, d), got {matrix.shape}")
    if center:
        matrix = matrix - matrix.mean(axis=0, keepdims=True)
    singular = np.linalg.svd(matrix, compute_uv=False)
    total = singular.sum()
    if not np.isfinite(total) or total <= 0:
        return math.nan
    p = singular[singular > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def linear_probe_accuracy(
    z_train: np.ndarray,
    y_train: np.ndarray,
    z_test: np.ndarray,
    y_test: np.ndarray,
    seed: int = 0,
    max_iter: int = 1000,
) -> float:
    """Fit a logistic regression on frozen train representations and return its test accuracy.

    Features are standardized on the train part. NaN if any representation is non-finite.
    """
    if not (np.isfinite(z_train).all() and np.isfinite(z_test).all()):
        return math.nan
    scaler = StandardScaler().fit(z_train)
    classifier = LogisticRegression(max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        classifier.fit(scaler.transform(z_train), y_train)
    if any(issubclass(item.category, ConvergenceWarning) for item in caught):
        logger.debug("linear probe did not converge in %d iterations", max_iter)
    return float(classifier.score(scaler.transform(z_test), y_test))
