"""Gradient-boosted trees (XGBoost) with the scikit-learn API.

Trees need no feature scaling; on thousands of raw HOG values they are slow, so the
classical pipelines feed them PCA components.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted
from xgboost import XGBClassifier, XGBRegressor

#: Defaults chosen on the validation split: on the default pipeline's PCA features,
#: early stopping on validation faces stopped near 400-500 rounds at depth 6.
DEFAULT_PARAMS = {"n_estimators": 500, "learning_rate": 0.1, "max_depth": 6,
                  "subsample": 0.8, "colsample_bytree": 0.5, "min_child_weight": 1.0}


class EncodedClassifier(ClassifierMixin, BaseEstimator):
    """Fit a classifier on the codes 0..K-1 of whatever labels ``y`` holds.

    XGBoost requires the labels it sees to be exactly ``0..K-1``; a training set
    lacking a class (a rare age group in a small sample) would fail. This wrapper
    maps the present labels to codes and back, so ``predict`` returns the original
    labels and ``predict_proba`` has one column per entry of ``classes_``.

    Parameters
    ----------
    estimator : classifier
        The wrapped classifier, cloned on fit.
    """

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, X, y, **fit_params):
        """Fit the wrapped classifier on the label codes of ``y``."""
        self.classes_, codes = np.unique(np.asarray(y), return_inverse=True)
        self.estimator_ = clone(self.estimator).fit(X, codes, **fit_params)
        return self

    def predict(self, X) -> np.ndarray:
        """Predicted labels (values of ``classes_``)."""
        check_is_fitted(self)
        return self.classes_[np.asarray(self.estimator_.predict(X), dtype=np.int64)]

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self)
        return self.estimator_.predict_proba(X)


def make_xgboost(kind: str, *, n_jobs: int = 1, random_state: int = 0,
                 **params) -> BaseEstimator:
    """An XGBoost classifier or regressor with the histogram tree method.

    Parameters
    ----------
    kind : {"classifier", "regressor"}
        ``XGBClassifier`` (wrapped in :class:`EncodedClassifier`) or ``XGBRegressor``
        (squared error, for age in years).
    n_jobs : int
        Threads.
    random_state : int
        Seed of the row and column subsampling.
    **params
        XGBoost parameters overriding ``DEFAULT_PARAMS``.

    Returns
    -------
    estimator
        An unfitted scikit-learn compatible estimator.
    """
    settings = {**DEFAULT_PARAMS, **params, "tree_method": "hist", "n_jobs": n_jobs,
                "random_state": random_state}
    if kind == "classifier":
        return EncodedClassifier(XGBClassifier(**settings))
    if kind == "regressor":
        return XGBRegressor(**settings)
    raise ValueError(f"kind must be 'classifier' or 'regressor', got {kind!r}")
