"""Validation of image batches shared by the extractors."""
from __future__ import annotations

import numpy as np


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
