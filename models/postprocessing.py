"""Equalized-odds post-processing of a binary score per group (fairlearn).

fairlearn's ``ThresholdOptimizer`` chooses, for each group, a random mix of two
thresholds on a classifier's score so that the true- and false-positive rates are
the same in every group, with the highest accuracy that allows. It post-processes an
estimator; here the score is computed elsewhere (the stack's combined probability of
"female"), so the estimator it wraps is :class:`PrecomputedScore`, which reads the score
from the first column of ``X``.

The mix is random: a face near a group's thresholds is labelled positive with the
probability ``ThresholdOptimizer`` gives. :func:`equalized_odds_labels` draws that
label with a uniform number made from the face's own score (a hash of its float64
bits) rather than from a generator, so a face gets the same label whatever batch it is
predicted in.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

#: Odd 64-bit multiplier of the score hash (2**64 / golden ratio).
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


class PrecomputedScore(ClassifierMixin, BaseEstimator):
    """A binary classifier whose input is its own score: ``X[:, 0]``.

    Lets a prefit ``ThresholdOptimizer`` post-process scores made by another model.
    """

    def fit(self, X: ArrayLike, y: ArrayLike) -> PrecomputedScore:
        """Record the classes of ``y``; there is nothing to learn."""
        self.classes_ = np.unique(np.asarray(y))
        return self

    def predict(self, X: ArrayLike) -> np.ndarray:
        """The score, column 0 of ``X``."""
        check_is_fitted(self)
        return np.asarray(X, dtype=np.float64)[:, 0]


def fit_equalized_odds(score: ArrayLike, labels: ArrayLike, groups: ArrayLike):
    """Fit fairlearn's ``ThresholdOptimizer`` (equalized odds, best accuracy) on scores.

    Parameters
    ----------
    score : array_like, shape (N,)
        Scores of the positive class (higher: more likely positive), e.g. a probability.
    labels : array_like of {0, 1}, shape (N,)
        True labels.
    groups : array_like, shape (N,)
        Group of each face (the sensitive feature).

    Returns
    -------
    fairlearn.postprocessing.ThresholdOptimizer
        Fitted; use it through :func:`equalized_odds_labels`.

    Raises
    ------
    ValueError
        For labels other than 0 and 1, or a group whose faces all have one label.
    """
    from fairlearn.postprocessing import ThresholdOptimizer

    score = np.asarray(score, dtype=np.float64).reshape(-1, 1)
    labels, groups = np.asarray(labels), np.asarray(groups)
    if set(np.unique(labels)) != {0, 1}:
        raise ValueError(f"equalized odds needs binary labels 0 and 1, got "
                         f"{np.unique(labels).tolist()}")
    for group in np.unique(groups).tolist():
        present = np.unique(labels[groups == group])
        if len(present) < 2:
            raise ValueError(f"group {group!r}: all {int(np.sum(groups == group))} of its "
                             f"faces have label {present[0]}; equalized odds needs both "
                             f"labels in every group")
    optimizer = ThresholdOptimizer(
        estimator=PrecomputedScore().fit(score, labels), constraints="equalized_odds",
        objective="accuracy_score", prefit=True, predict_method="predict")
    return optimizer.fit(score, labels, sensitive_features=groups)


def score_uniforms(score: np.ndarray) -> np.ndarray:
    """A number in [0, 1) per score, from a multiplicative hash of its float64 bits."""
    bits = np.ascontiguousarray(score, dtype="<f8").view("<u8")
    return (bits * _HASH_MULTIPLIER >> np.uint64(11)).astype(np.float64) / 2.0 ** 53


def equalized_odds_labels(optimizer, score: ArrayLike, groups: ArrayLike) -> np.ndarray:
    """Post-processed labels (int64, 0 or 1) of scores with their groups.

    Raises
    ------
    ValueError
        For a group the optimizer was not fitted on.
    """
    score = np.asarray(score, dtype=np.float64).ravel()
    groups = np.asarray(groups)
    known = set(optimizer.interpolated_thresholder_.interpolation_dict)
    unknown = sorted(set(groups.tolist()) - known)
    if unknown:
        raise ValueError(f"groups {unknown} were not among those the post-processing was "
                         f"fitted on ({sorted(known)})")
    # fairlearn's probability of the positive label under the random mix of thresholds
    positive = optimizer._pmf_predict(score.reshape(-1, 1), sensitive_features=groups)[:, 1]
    return (score_uniforms(score) < positive).astype(np.int64)
