"""Classical models by name, and the learnt feature reduction that goes before them.

A classical pipeline is ``features -> reducer -> estimator``. The features come from
one or more stateless extractors (``features``), concatenated as blocks of columns;
:func:`make_reducer` standardises each block, projects it on its principal components
and brings the blocks to a comparable scale; :func:`make_estimator` builds the model.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from models.svm import make_svm
from models.xgboost_models import make_xgboost

MODELS = ("svm", "linear-svm", "xgboost")


def make_estimator(model: str, kind: str, *, n_jobs: int = 1, random_state: int = 0,
                   **params) -> BaseEstimator:
    """An unfitted estimator by model name.

    Parameters
    ----------
    model : {"svm", "linear-svm", "xgboost"}
        RBF SVM (``SVC``/``SVR``), linear SVM (``LinearSVC``/``LinearSVR``) or
        XGBoost (``XGBClassifier``/``XGBRegressor``).
    kind : {"classifier", "regressor"}
        Class labels or age in years.
    n_jobs : int
        Threads (XGBoost only; libsvm and liblinear use one).
    random_state : int
        Seed.
    **params
        Model parameters, e.g. ``C`` for an SVM, ``max_depth`` for XGBoost.
    """
    if model == "svm":
        return make_svm(kind, "rbf", random_state=random_state, **params)
    if model == "linear-svm":
        return make_svm(kind, "linear", random_state=random_state, **params)
    if model == "xgboost":
        return make_xgboost(kind, n_jobs=n_jobs, random_state=random_state, **params)
    raise ValueError(f"unknown model {model!r}; choose from {MODELS}")


class GlobalScaler(TransformerMixin, BaseEstimator):
    """Divide every column by one number: the root mean column variance seen in fit.

    Keeps the relative scale of principal components (unlike whitening, which would
    blow up the noisy last components), while giving every feature block the same
    average component variance.
    """

    def fit(self, X, y=None):
        """Learn ``scale_``, the root of the mean column variance of ``X``."""
        variance = float(np.mean(np.var(np.asarray(X, dtype=np.float64), axis=0)))
        self.scale_ = np.sqrt(variance) if variance > 0 else 1.0
        return self

    def transform(self, X) -> np.ndarray:
        """``X / scale_``."""
        check_is_fitted(self)
        return np.asarray(X) / self.scale_


def make_reducer(blocks: Sequence[tuple[str, int, int | None]], n_samples: int,
                 random_state: int = 0) -> ColumnTransformer:
    """Per feature block: standardise, PCA, then :class:`GlobalScaler`.

    Parameters
    ----------
    blocks : sequence of (name, n_columns, n_components)
        The blocks of the feature matrix in column order. ``n_components`` None keeps
        the standardised columns without PCA.
    n_samples : int
        Number of training rows; the components are capped at it and at the block's
        width (PCA cannot find more).
    random_state : int
        Seed of the randomised SVD.

    Returns
    -------
    ColumnTransformer
        Unfitted; its output concatenates the reduced blocks.
    """
    transformers, start = [], 0
    for name, n_columns, n_components in blocks:
        steps = [("scale", StandardScaler())]
        if n_components is not None:
            steps.append(("pca", PCA(min(n_components, n_columns, n_samples),
                                     svd_solver="randomized", random_state=random_state)))
        steps.append(("balance", GlobalScaler()))
        transformers.append((name, Pipeline(steps), slice(start, start + n_columns)))
        start += n_columns
    return ColumnTransformer(transformers)
