"""How sure a test figure is: bootstrap intervals and paired tests between two models.

A test split of 1,901 faces leaves every figure uncertain (about +-0.6 points for a
gender accuracy of 0.93). Per face, a classification scores 1 when right and 0 when
wrong, a regression its absolute error; a figure is the mean of those scores.

- :func:`bootstrap_interval`: the 95 % percentile interval of that mean, resampling the
  faces (``scipy.stats.bootstrap``, seeded).
- :func:`compare`: two models on the same faces. Accuracy: McNemar's exact test on the
  faces where exactly one of them is right (``scipy.stats.binomtest``). MAE: the
  paired bootstrap interval of the mean difference of absolute errors. A difference is
  significant at 5 % when the p-value is below 0.05, or when the interval excludes 0.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import binomtest, bootstrap

from pipelines.metrics import class_names

CONFIDENCE = 0.95
N_RESAMPLES = 2000
ALPHA = 0.05


def face_scores(task: str, y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """Per face: 1.0 right / 0.0 wrong for a classification, the absolute error for age."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.shape} labels but {y_pred.shape} predictions")
    if class_names(task) is None:
        return np.abs(y_pred.astype(np.float64) - y_true)
    return (y_pred == y_true).astype(np.float64)


def bootstrap_interval(scores: ArrayLike, *, seed: int = 0) -> tuple[float, float]:
    """The :data:`CONFIDENCE` percentile bootstrap interval of the mean of ``scores``."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 faces, got {scores.size}")
    if np.all(scores == scores[0]):
        return float(scores[0]), float(scores[0])
    result = bootstrap((scores,), np.mean, n_resamples=N_RESAMPLES, method="percentile",
                       confidence_level=CONFIDENCE, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mcnemar_p(correct_a: ArrayLike, correct_b: ArrayLike) -> float:
    """Exact two-sided McNemar p-value of two classifiers judged on the same faces."""
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def compare(task: str, y_true: ArrayLike, pred_a: ArrayLike, pred_b: ArrayLike, *,
            seed: int = 0) -> dict[str, Any]:
    """Model A against model B on the same faces.

    Returns
    -------
    dict
        ``difference`` (A's figure minus B's: accuracy, or MAE), ``p_mcnemar`` (a
        classification) or ``difference_ci95`` (the paired bootstrap interval, age), and
        ``significant`` (at 5 %).
    """
    scores_a, scores_b = face_scores(task, y_true, pred_a), face_scores(task, y_true, pred_b)
    difference = float(np.mean(scores_a) - np.mean(scores_b))
    if class_names(task) is not None:
        p = mcnemar_p(scores_a, scores_b)
        return {"difference": difference, "p_mcnemar": p, "significant": p < ALPHA}
    low, high = bootstrap_interval(scores_a - scores_b, seed=seed)
    return {"difference": difference, "difference_ci95": [low, high],
            "significant": bool(low > 0 or high < 0)}
