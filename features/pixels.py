"""Raw pixels as features, and eigenfaces (scikit-learn's PCA on those pixels)."""
from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline

from features._batch import ImageTransformer


class PixelFeatures(ImageTransformer):
    """Scikit-learn transformer: images (N, H, W[, C]) uint8 -> flattened floats in [0, 1].

    Parameters
    ----------
    dtype : str
        Output type name (``"float32"`` halves memory against float64).
    """

    def __init__(self, dtype: str = "float32"):
        self.dtype = dtype

    def _extract(self, images: np.ndarray) -> np.ndarray:
        """Flattened pixels scaled to [0, 1], shape (N, H * W * C)."""
        scale = 1 / 255 if images.dtype == np.uint8 else 1.0
        return (images.reshape(len(images), -1) * scale).astype(self.dtype, copy=False)


def eigenfaces(n_components: int = 150, whiten: bool = True, random_state: int = 0) -> Pipeline:
    """Pixels -> PCA (randomised SVD), the classic eigenfaces representation.

    Parameters
    ----------
    n_components : int
        Number of eigenfaces kept.
    whiten : bool
        Scale components to unit variance (helps RBF kernels).
    random_state : int
        Seed of the randomised SVD.
    """
    return Pipeline([("pixels", PixelFeatures()),
                     ("pca", PCA(n_components, whiten=whiten, svd_solver="randomized",
                                 random_state=random_state))])
