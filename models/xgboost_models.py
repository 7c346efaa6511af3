"""Gradient-boosted trees (XGBoost) with the scikit-learn API.

Trees need no feature scaling; on thousands of raw HOG values they are slow, so the
classical pipelines feed them PCA components. :func:`fit_on_cluster` trains the same
estimators with ``xgboost.dask`` on the workers of a Dask cluster and returns them as
ordinary, cluster-free XGBoost estimators.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted
from xgboost import XGBClassifier, XGBRegressor

if TYPE_CHECKING:
    from distributed import Client

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


def _scattered_rows(client: Client, X: np.ndarray, y: np.ndarray):
    """``X`` and ``y`` as Dask arrays of one block of rows per worker, the blocks
    scattered to the workers (not embedded in the task graph), and the futures of the
    blocks: the arrays hold only their keys, so the caller keeps the futures alive while
    it uses the arrays, and releases them after."""
    import dask.array as da

    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    step = -(-len(X) // n_workers)
    starts = range(0, len(X), step)
    # hash=False: fresh keys, so that releasing the blocks of one fit never drops the
    # blocks of a later fit on the same rows
    X_parts = client.scatter([X[s:s + step] for s in starts], hash=False)
    y_parts = client.scatter([y[s:s + step] for s in starts], hash=False)
    X_blocks = [da.from_delayed(part, (min(step, len(X) - s), X.shape[1]), X.dtype)
                for s, part in zip(starts, X_parts)]
    y_blocks = [da.from_delayed(part, (min(step, len(y) - s),), y.dtype)
                for s, part in zip(starts, y_parts)]
    return da.concatenate(X_blocks), da.concatenate(y_blocks), X_parts + y_parts


def fit_on_cluster(estimator: BaseEstimator, X, y, client: Client) -> BaseEstimator:
    """Fit an estimator of :func:`make_xgboost` with ``xgboost.dask`` on a Dask cluster.

    The rows are split into one block per worker and scattered; ``DaskXGBClassifier``
    or ``DaskXGBRegressor`` trains with the estimator's parameters (each worker uses its
    own threads), and the trained booster is loaded into ``estimator`` itself, which
    then predicts, pickles and loads like one fitted with ``fit`` on this machine.

    Parameters
    ----------
    estimator : EncodedClassifier or XGBRegressor
        Unfitted, from :func:`make_xgboost`; fitted in place.
    X : array-like, shape (n_samples, n_features)
        Training features.
    y : array-like, shape (n_samples,)
        Labels or targets.
    client : dask.distributed.Client
        Connected client of the cluster.

    Returns
    -------
    estimator
        ``estimator``, fitted.

    Notes
    -----
    The model equals the one ``estimator.fit(X, y)`` gives up to float rounding (in the
    tests, regression predictions within 1e-4, identical classes) when the row
    subsampling is off (``subsample=1``) and no feature has more distinct values than
    XGBoost's histogram bins (``max_bin``, 256). Otherwise it is a different model
    of the same kind: each worker draws its own row sample, and the histogram bin
    edges come from merged per-worker quantile sketches instead of one sketch of all
    rows, so predictions differ as they do between two seeds.
    """
    if isinstance(estimator, EncodedClassifier):
        estimator.classes_, codes = np.unique(np.asarray(y), return_inverse=True)
        estimator.estimator_ = fit_on_cluster(clone(estimator.estimator), X, codes, client)
        return estimator
    from xgboost import dask as dxgb

    if isinstance(estimator, XGBClassifier):
        dask_model = dxgb.DaskXGBClassifier(**{**estimator.get_params(), "n_jobs": None})
    elif isinstance(estimator, XGBRegressor):
        dask_model = dxgb.DaskXGBRegressor(**{**estimator.get_params(), "n_jobs": None})
    else:
        raise TypeError(f"expected an estimator of make_xgboost, got {estimator!r}")
    dask_model.client = client
    X_dask, y_dask, futures = _scattered_rows(client, np.asarray(X), np.asarray(y))
    dask_model.fit(X_dask, y_dask)
    client.cancel(futures)
    estimator.load_model(bytearray(dask_model.get_booster().save_raw("ubj")))
    return estimator
