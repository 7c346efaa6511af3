"""Support vector machines (scikit-learn): RBF kernel, or linear for speed.

Both expect standardised, low-dimensional inputs (the classical pipelines put a
scaler and PCA before them). An RBF fit costs roughly the square of the number of
training faces; the linear variants scale linearly and suit quick runs.
"""
from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.compose import TransformedTargetRegressor
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR, LinearSVC, LinearSVR
from sklearn.utils import check_array

KERNELS = ("rbf", "linear")
#: Defaults chosen on the validation split of the shared UTKFace split, on the default
#: features after PCA (``pipelines.feature_blocks.DEFAULT_FEATURES``): for the RBF kernel,
#: C from 3 to 30 changed gender and ethnicity accuracy by under half a point and C=30
#: gave the lowest age error; for the linear models, C=0.01 (classes) and C=0.1 (age)
#: were best or within 0.3 points of the best of 0.001-0.1 and 0.01-1.
DEFAULT_C = {("rbf", "classifier"): 10.0, ("rbf", "regressor"): 30.0,
             ("linear", "classifier"): 0.01, ("linear", "regressor"): 0.1}
_CACHE_MB = 1000
#: Objects of these packages are searched for SVMs by :func:`with_blas_kernels`.
_WALKED_MODULES = ("sklearn.", "models.", "features.")


def make_svm(kind: str, kernel: str = "rbf", *, C: float | None = None,
             gamma: str | float = "scale", epsilon: float = 0.1,
             random_state: int = 0) -> BaseEstimator:
    """A support vector classifier or regressor.

    Parameters
    ----------
    kind : {"classifier", "regressor"}
        ``SVC``/``LinearSVC`` for class labels, ``SVR``/``LinearSVR`` for age.
    kernel : {"rbf", "linear"}
        RBF kernel (libsvm), or a linear model (liblinear, much faster).
    C : float, optional
        Regularisation; ``DEFAULT_C`` of the kernel and kind when not given.
    gamma : "scale" or float
        RBF kernel width (``"scale"``: 1 / (n_features * variance of X)).
    epsilon : float
        RBF regressor: width of the insensitive tube, in years. The linear regressor
        fits the standardised target (liblinear would shrink an uncentred
        target's intercept) with no tube.
    random_state : int
        Seed of liblinear's coordinate descent.

    Returns
    -------
    estimator
        An unfitted scikit-learn estimator. The classifiers have no ``predict_proba``;
        calibrate them on held-out faces for probabilities (as
        :func:`pipelines.classical.train_tasks` does).
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose from {KERNELS}")
    if kind not in ("classifier", "regressor"):
        raise ValueError(f"kind must be 'classifier' or 'regressor', got {kind!r}")
    C = DEFAULT_C[kernel, kind] if C is None else C
    if kernel == "linear":
        if kind == "classifier":
            return LinearSVC(C=C, random_state=random_state)
        return TransformedTargetRegressor(
            LinearSVR(C=C, epsilon=0.0, random_state=random_state, max_iter=5000),
            transformer=StandardScaler())
    if kind == "classifier":
        return SVC(C=C, gamma=gamma, cache_size=_CACHE_MB)
    return SVR(C=C, gamma=gamma, epsilon=epsilon, cache_size=_CACHE_MB)


def _rbf_decision_values(svm: SVC | SVR, X) -> np.ndarray:
    """libsvm's decision values (or regression outputs) of a fitted RBF ``svm``, with the
    kernel matrix computed by BLAS (:func:`sklearn.metrics.pairwise.rbf_kernel`).

    Returns the array libsvm's ``decision_function``/``predict`` would: (N, 1) for a
    binary classifier, (N, K(K-1)/2) one-vs-one values for K classes, (N,) for a
    regressor.
    """
    X = check_array(X, dtype=np.float64, order="C")
    kernel = rbf_kernel(X, svm.support_vectors_, gamma=svm._gamma)
    coef, intercept = svm._dual_coef_, svm._intercept_
    if isinstance(svm, SVR):
        return kernel @ coef[0] + intercept[0]
    starts = np.concatenate([[0], np.cumsum(svm._n_support)])
    values = []
    for first, second in combinations(range(len(svm._n_support)), 2):
        in_first = slice(starts[first], starts[first + 1])
        in_second = slice(starts[second], starts[second + 1])
        values.append(kernel[:, in_first] @ coef[second - 1, in_first]
                      + kernel[:, in_second] @ coef[first, in_second])
    return np.column_stack(values) + intercept


class BlasSVC(SVC):
    """A fitted RBF ``SVC`` whose decision values come from one BLAS kernel matrix per
    batch instead of libsvm's per-pair loop: the same values to about 1e-12, many
    times faster on large batches. Made from a fitted ``SVC`` by :func:`with_blas_kernels`."""

    def _dense_decision_function(self, X):
        return _rbf_decision_values(self, X)


class BlasSVR(SVR):
    """A fitted RBF ``SVR`` predicting through one BLAS kernel matrix per batch (see
    :class:`BlasSVC`)."""

    def _dense_predict(self, X):
        return _rbf_decision_values(self, X)


def with_blas_kernels(estimator: Any) -> Any:
    """Swap every fitted RBF ``SVC``/``SVR`` inside a fitted estimator (pipelines,
    wrappers, calibrated classifiers) for :class:`BlasSVC`/:class:`BlasSVR`, in place.

    The swapped models hold the same fitted state (support vectors, coefficients), so
    predictions are unchanged but for float rounding. Returns ``estimator`` (replaced
    itself when it is such a model).
    """
    seen: set[int] = set()

    def swap(node: Any) -> Any:
        if id(node) in seen:
            return node
        seen.add(id(node))
        if type(node) in (SVC, SVR) and node.kernel == "rbf" and hasattr(node, "_dual_coef_"):
            fast = (BlasSVC if isinstance(node, SVC) else BlasSVR).__new__(
                BlasSVC if isinstance(node, SVC) else BlasSVR)
            fast.__dict__.update(node.__dict__)
            return fast
        if isinstance(node, (list, tuple)):
            swapped = [swap(item) for item in node]
            return type(node)(swapped) if isinstance(node, tuple) else swapped
        if isinstance(node, dict):
            return {key: swap(value) for key, value in node.items()}
        if hasattr(node, "__dict__") and type(node).__module__.startswith(_WALKED_MODULES):
            for name, value in vars(node).items():
                setattr(node, name, swap(value))
        return node

    return swap(estimator)
