"""First step of an end-to-end pipeline: image paths or arrays -> uint8 batch."""
from __future__ import annotations

import os

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from features.io import DEFAULT_SIZE, image_from_array, load_image


class ImageLoader(TransformerMixin, BaseEstimator):
    """Scikit-learn transformer: image files or arrays -> (N, H, W, C) uint8 batch.

    Lets a saved pipeline predict straight from what a user has: a list of paths,
    a list of arrays of any size, or one (N, H, W[, C]) array. Every image goes
    through the same decoding, colour conversion and LANCZOS resize as training.

    Parameters
    ----------
    size : tuple of int
        (height, width) of the output.
    color : {'gray', 'rgb'}
        Output colour mode.

    Raises
    ------
    features.io.ImageLoadError
        From ``transform``, for a file that cannot be read (the message names it),
        so that a prediction never silently drops or shifts a row.
    """

    def __init__(self, size: tuple[int, int] = DEFAULT_SIZE, color: str = "gray"):
        self.size = size
        self.color = color

    def fit(self, X=None, y=None):
        """Stateless: nothing is learnt."""
        return self

    def transform(self, X) -> np.ndarray:
        """Load or convert every image of ``X``; see the class docstring."""
        size = tuple(self.size)
        if isinstance(X, (str, os.PathLike)):
            X = [X]
        if isinstance(X, np.ndarray) and X.ndim in (3, 4) and X.dtype != object:
            channels = 1 if self.color == "gray" else 3
            if X.shape[1:3] == size and X.dtype == np.uint8 and (
                    X.ndim == 3 and channels == 1 or X.ndim == 4 and X.shape[-1] == channels):
                return X.reshape(len(X), *size, channels)
            X = list(X)
        images = [load_image(x, size, self.color) if isinstance(x, (str, os.PathLike))
                  else image_from_array(x, size, self.color) for x in X]
        if not images:
            raise ValueError("no images given")
        return np.stack(images)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags
