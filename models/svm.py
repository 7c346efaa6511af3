"""Support vector machines (scikit-learn): RBF kernel, or linear for speed.

Both expect standardised, low-dimensional inputs (the classical pipelines put a
scaler and PCA before them). An RBF fit costs roughly the square of the number of
training faces; the linear variants scale linearly and suit quick runs.
"""
from __future__ import annotations

from sklearn.base import BaseEstimator
from sklearn.compose import TransformedTargetRegressor
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR, LinearSVC, LinearSVR

KERNELS = ("rbf", "linear")
#: Defaults chosen on the validation split of the shared UTKFace split, on the default
#: features after PCA (``pipelines.feature_blocks.DEFAULT_FEATURES``): for the RBF kernel,
#: C from 3 to 30 changed gender and ethnicity accuracy by under half a point and C=30
#: gave the lowest age error; for the linear models, C=0.01 (classes) and C=0.1 (age)
#: were best or within 0.3 points of the best of 0.001-0.1 and 0.01-1.
DEFAULT_C = {("rbf", "classifier"): 10.0, ("rbf", "regressor"): 30.0,
             ("linear", "classifier"): 0.01, ("linear", "regressor"): 0.1}
_CACHE_MB = 1000


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
