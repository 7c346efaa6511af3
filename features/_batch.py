"""Validation of image batches, and the base class of the stateless image extractors."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_array, validate_data


def as_image_batch(images) -> np.ndarray:
    """Return ``images`` as an (N, H, W, C) array, accepting (N, H, W) too.

    Raises
    ------
    ValueError
        If the array does not have 3 or 4 dimensions, or has no images.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(
            f"expected a batch of images shaped (N, H, W) or (N, H, W, C), got {images.shape}")
    if images.shape[0] == 0:
        raise ValueError("the batch holds no images")
    return images


def cell_index(size: int, n_cells: int) -> np.ndarray:
    """Cell of every pixel along one axis split into ``n_cells`` near-equal cells.

    Raises
    ------
    ValueError
        If there are more cells than pixels.
    """
    if not 1 <= n_cells <= size:
        raise ValueError(f"cannot split {size} pixels into {n_cells} cells")
    return np.arange(size) * n_cells // size


_LUMA = np.array([299, 587, 114]) / 1000


def to_gray(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) batch -> (N, H, W); three channels are combined to luma (ITU-R 601-2,
    as Pillow's ``convert("L")``), one channel is taken as it is."""
    if images.shape[-1] == 1:
        return images[..., 0]
    if images.shape[-1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {images.shape[-1]}")
    gray = images @ _LUMA
    if images.dtype == np.uint8:
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    return gray


class ImageTransformer(TransformerMixin, BaseEstimator):
    """Base of the stateless extractors: a batch of images in, one row of features each out.

    Subclasses implement :meth:`_extract` on an (N, H, W, C) batch. ``fit`` learns
    nothing: it validates ``X`` as scikit-learn does (a finite, non-empty, real array of
    2 or more dimensions, not sparse) and records ``n_features_in_`` (its second
    dimension: the image rows of a batch, which ``transform`` does not hold images to,
    as it takes any size). ``transform`` validates alike, then needs images: (N, H, W)
    or (N, H, W, C).

    Their inputs are image batches, 3-D or 4-D arrays, which their tags declare; they
    keep scikit-learn's 2-D tag so that its API checks run, and the checks that feed
    tabular data to ``transform`` are expected failures (tests/test_conformance.py).
    """

    def fit(self, X, y=None):
        """Validate ``X`` and record ``n_features_in_``; nothing is learnt."""
        validate_data(self, X, allow_nd=True, dtype=None)
        return self

    def transform(self, X) -> np.ndarray:
        """Features of the images ``X``, one row per image."""
        return self._extract(as_image_batch(check_array(X, allow_nd=True, dtype=None)))

    def _extract(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.three_d_array = True
        return tags
