"""Classical models by name, the learnt feature reduction before them, and mirroring.

A classical pipeline is ``features -> reducer -> estimator``. The features come from
one or more stateless extractors (``features``), concatenated as blocks of columns;
:func:`make_reducer` standardises each block, projects it on its principal components
and brings the blocks to a comparable scale; :func:`make_estimator` builds the model.
:class:`Mirrored` extracts features of mirrored faces; :class:`PerView` and
:class:`MirrorAveraged` reduce and judge a face and its mirror image side by side
(test-time augmentation).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from features._batch import ImageTransformer
from models.svm import make_svm
from models.xgboost_models import make_xgboost

MODELS = ("svm", "linear-svm", "xgboost", "mlp")
#: Settings of ``mlp`` that its parameters override.
MLP_DEFAULTS = {"hidden_layer_sizes": (256,), "alpha": 1e-2, "early_stopping": True,
                "max_iter": 500}


def make_estimator(model: str, kind: str, *, n_jobs: int = 1, random_state: int = 0,
                   **params) -> BaseEstimator:
    """An unfitted estimator by model name.

    Parameters
    ----------
    model : {"svm", "linear-svm", "xgboost", "mlp"}
        RBF SVM (``SVC``/``SVR``), linear SVM (``LinearSVC``/``LinearSVR``),
        XGBoost (``XGBClassifier``/``XGBRegressor``) or a one-hidden-layer perceptron
        (``MLPClassifier``/``MLPRegressor`` with :data:`MLP_DEFAULTS`; it holds out 10 %
        of its training rows to stop early).
    kind : {"classifier", "regressor"}
        Class labels or age in years.
    n_jobs : int
        Threads (XGBoost only; libsvm, liblinear and the perceptron's BLAS ignore it).
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
    if model == "mlp":
        settings = {**MLP_DEFAULTS, "random_state": random_state, **params}
        return MLPClassifier(**settings) if kind == "classifier" else MLPRegressor(**settings)
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


class Mirrored(ImageTransformer):
    """Apply a stateless transformer to horizontally mirrored images.

    Parameters
    ----------
    transformer : transformer
        A stateless extractor of (N, H, W, C) image batches.
    """

    def __init__(self, transformer=None):
        self.transformer = transformer

    def _extract(self, images: np.ndarray) -> np.ndarray:
        """Features of the images mirrored left to right."""
        return self.transformer.transform(np.ascontiguousarray(images[:, :, ::-1]))


def _halves(X) -> tuple[np.ndarray, np.ndarray]:
    """Split rows ``[face | mirror image]`` into their two equal halves."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] % 2:
        raise ValueError(f"expected rows of two equal halves [face | mirror image], "
                         f"got shape {X.shape}")
    half = X.shape[1] // 2
    return X[:, :half], X[:, half:]


class PerView(TransformerMixin, BaseEstimator):
    """Apply a fitted transformer to each half of rows ``[face | mirror image]``.

    Like ``sklearn.frozen.FrozenEstimator``, the transformer is used as it was fitted
    (on faces, one half wide): :meth:`fit` does nothing.

    Parameters
    ----------
    transformer : transformer
        Fitted; transforms one half.
    """

    def __init__(self, transformer):
        self.transformer = transformer

    def fit(self, X=None, y=None):
        """Nothing: the transformer is already fitted."""
        return self

    def transform(self, X) -> np.ndarray:
        """``[transform(face) | transform(mirror image)]``."""
        image, mirror = _halves(X)
        return np.hstack([self.transformer.transform(image), self.transformer.transform(mirror)])

    def __sklearn_is_fitted__(self) -> bool:
        return True


def _model_has(method: str):
    return lambda self: hasattr(self.model, method)


class MirrorAveraged(BaseEstimator):
    """Average a fitted model's outputs over each face and its mirror image.

    Each input row is ``[features of a face | features of its mirror image]``, two
    halves of equal width. A regressor's two predictions are averaged; a classifier
    picks the class with the highest mean probability (or, without ``predict_proba``,
    mean decision value). Like ``sklearn.frozen.FrozenEstimator``, the model is used as
    it was fitted (on faces, one half wide): :meth:`fit` does nothing.

    Parameters
    ----------
    model : estimator
        Fitted; predicts from one half.
    """

    def __init__(self, model):
        self.model = model

    def fit(self, X=None, y=None):
        """Nothing: the model is already fitted."""
        return self

    @property
    def classes_(self) -> np.ndarray:
        """The classes of a classifier ``model``."""
        return self.model.classes_

    @available_if(_model_has("predict_proba"))
    def predict_proba(self, X) -> np.ndarray:
        """Mean of the class probabilities of both views."""
        image, mirror = _halves(X)
        return (self.model.predict_proba(image) + self.model.predict_proba(mirror)) / 2

    def predict(self, X) -> np.ndarray:
        """Mean prediction of both views (regressor), or the class that is most
        probable (or has the largest decision value) on average (classifier)."""
        image, mirror = _halves(X)
        if not hasattr(self.model, "classes_"):
            return (self.model.predict(image) + self.model.predict(mirror)) / 2
        if hasattr(self.model, "predict_proba"):
            return self.classes_[self.predict_proba(X).argmax(axis=1)]
        decision = self.model.decision_function(image) + self.model.decision_function(mirror)
        if decision.ndim == 1:
            return self.classes_[(decision > 0).astype(np.int64)]
        return self.classes_[decision.argmax(axis=1)]

    def __sklearn_is_fitted__(self) -> bool:
        return True
