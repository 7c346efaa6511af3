"""Histogram of oriented gradients computed over a whole batch of images at once.

The values equal ``skimage.feature.hog`` for the same settings (hard orientation
binning, cells, overlapping block normalisation), but one call handles an
``(N, H, W)`` or ``(N, H, W, C)`` batch with numpy, instead of one image per call.
For 8-bit images, gradient orientation and magnitude are read from a lookup table
of every possible integer gradient pair, computed once with exactly the formulas
scikit-image uses, which avoids the costly ``arctan2`` per pixel.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from features._batch import ImageTransformer, as_image_batch

BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")
_EPS = 1e-5
_CHUNK = 8


def _orientation_edges(orientations: int) -> np.ndarray:
    """Bin edges in degrees, rounded to float32 as scikit-image's Cython loop does."""
    step = np.float32(180.0 / orientations)
    return (step * np.arange(orientations + 1, dtype=np.float32)).astype(np.float64)


def _orientation_bins(orientation_deg: np.ndarray, orientations: int) -> np.ndarray:
    """Bin index per orientation; ``orientations`` marks angles outside every bin."""
    edges = _orientation_edges(orientations)
    bins = np.searchsorted(edges, orientation_deg, side="right") - 1
    return np.where((bins < 0) | (bins >= orientations), orientations, bins)


def _orientation_deg(g_row: np.ndarray, g_col: np.ndarray) -> np.ndarray:
    return np.rad2deg(np.arctan2(g_row, g_col)) % 180


@lru_cache(maxsize=8)
def _uint8_orientation_table(orientations: int) -> np.ndarray:
    """Orientation bin of every integer gradient pair in [-255, 255]^2.

    Index ``(g_row + 255) * 511 + (g_col + 255)``.
    """
    values = np.arange(-255, 256, dtype=np.float64)
    g_row, g_col = np.meshgrid(values, values, indexing="ij")
    bins = _orientation_bins(_orientation_deg(g_row, g_col), orientations)
    return bins.astype(np.uint8).ravel()


def _gradients(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred differences along rows and columns, zero on the border, per channel.

    Computed as shifted windows of the flattened batch (contiguous, cheaper in numpy
    than strided 4-D views); the values that straddle two rows or images lie on a
    border and are zeroed.
    """
    flat = np.ascontiguousarray(images).reshape(-1)
    row, column = images.shape[2] * images.shape[3], images.shape[3]
    g_row, g_col = np.empty_like(flat), np.empty_like(flat)
    np.subtract(flat[2 * row:], flat[:flat.size - 2 * row], out=g_row[row:flat.size - row])
    np.subtract(flat[2 * column:], flat[:flat.size - 2 * column],
                out=g_col[column:flat.size - column])
    g_row, g_col = g_row.reshape(images.shape), g_col.reshape(images.shape)
    g_row[:, [0, -1]] = 0
    g_col[:, :, [0, -1]] = 0
    return g_row, g_col


def _strongest_channel(g_row: np.ndarray, g_col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the gradient of the channel with the largest magnitude (as scikit-image)."""
    magnitude = np.hypot(g_row, g_col)
    best = magnitude.argmax(axis=-1)[..., None]
    return (np.take_along_axis(g_row, best, axis=-1)[..., 0],
            np.take_along_axis(g_col, best, axis=-1)[..., 0])


def _bins_and_magnitudes(images: np.ndarray, orientations: int,
                         transform_sqrt: bool) -> tuple[np.ndarray, np.ndarray]:
    """Orientation bin and gradient magnitude per pixel, shape (N, H, W)."""
    n_channels = images.shape[-1]
    if images.dtype == np.uint8 and not transform_sqrt:
        g_row, g_col = _gradients(images.astype(np.int16))
        if n_channels > 1:
            g_row, g_col = _strongest_channel(g_row, g_col)
        else:
            g_row, g_col = g_row[..., 0], g_col[..., 0]
        index = g_row.astype(np.int32) * 511 + g_col
        index += 255 * 511 + 255
        squared = np.square(g_row, dtype=np.float32)
        squared += np.square(g_col, dtype=np.float32)
        # float32 holds the integer sums exactly; the square root is correctly rounded
        return np.take(_uint8_orientation_table(orientations), index), np.sqrt(squared)
    floats = images.astype(np.float64)
    if transform_sqrt:
        floats = np.sqrt(floats)
    g_row, g_col = _gradients(floats)
    if n_channels > 1:
        g_row, g_col = _strongest_channel(g_row, g_col)
    else:
        g_row, g_col = g_row[..., 0], g_col[..., 0]
    return (_orientation_bins(_orientation_deg(g_row, g_col), orientations),
            np.hypot(g_col, g_row))


@lru_cache(maxsize=16)
def _histogram_slots(n_images: int, height: int, width: int, orientations: int,
                     pixels_per_cell: tuple[int, int]) -> np.ndarray:
    """Per pixel of an (n, H, W) batch, the first slot of its (image, cell) histogram in
    one flat array of ``orientations + 1`` slots per cell; the extra slot per cell, and
    one slot past the end for pixels outside every full cell, collect discarded votes."""
    cell_rows, cell_cols = pixels_per_cell
    n_cells_row, n_cells_col = height // cell_rows, width // cell_cols
    rows, cols = np.arange(height) // cell_rows, np.arange(width) // cell_cols
    cell = rows[:, None] * n_cells_col + cols
    cell[(rows >= n_cells_row)[:, None] | (cols >= n_cells_col)] = -1
    n_slots = n_cells_row * n_cells_col * (orientations + 1)
    slots = np.arange(n_images)[:, None, None] * n_slots + cell * (orientations + 1)
    slots[:, cell < 0] = n_images * n_slots
    return slots


def _cell_histograms(bins: np.ndarray, magnitudes: np.ndarray, orientations: int,
                     pixels_per_cell: tuple[int, int]) -> np.ndarray:
    """Sum of magnitudes per (image, cell, orientation) divided by the cell area."""
    n_images, height, width = bins.shape
    n_cells_row, n_cells_col = height // pixels_per_cell[0], width // pixels_per_cell[1]
    slots = _histogram_slots(n_images, height, width, orientations, pixels_per_cell) + bins
    n_slots = n_images * n_cells_row * n_cells_col * (orientations + 1)
    sums = np.bincount(slots.ravel(), weights=magnitudes.ravel(), minlength=n_slots + 1)
    histograms = sums[:n_slots].reshape(n_images, n_cells_row, n_cells_col, orientations + 1)
    return histograms[..., :orientations] / (pixels_per_cell[0] * pixels_per_cell[1])


def _normalize_blocks(blocks: np.ndarray, method: str) -> None:
    """Normalise each block, given as rows of ``blocks`` (..., block_size), in place."""
    if method in ("L1", "L1-sqrt"):
        blocks /= np.abs(blocks).sum(axis=-1, keepdims=True) + _EPS
        if method == "L1-sqrt":
            np.sqrt(blocks, out=blocks)
        return
    blocks /= np.sqrt(np.einsum("...i,...i->...", blocks, blocks)[..., None] + _EPS ** 2)
    if method == "L2-Hys":
        np.minimum(blocks, 0.2, out=blocks)
        blocks /= np.sqrt(np.einsum("...i,...i->...", blocks, blocks)[..., None] + _EPS ** 2)


def hog_batch(images: np.ndarray, orientations: int = 9,
              pixels_per_cell: tuple[int, int] = (8, 8),
              cells_per_block: tuple[int, int] = (2, 2), block_norm: str = "L2-Hys",
              transform_sqrt: bool = False, dtype: np.dtype = np.float32) -> np.ndarray:
    """HOG descriptors of a batch of images.

    Parameters
    ----------
    images : ndarray, shape (N, H, W) or (N, H, W, C)
        Images; ``uint8`` takes the fast lookup-table path, other dtypes are read
        as floats. For several channels, each pixel uses the channel with the
        strongest gradient, as ``skimage.feature.hog(..., channel_axis=-1)``.
    orientations, pixels_per_cell, cells_per_block, block_norm, transform_sqrt
        As in ``skimage.feature.hog``.
    dtype : dtype, optional
        Output type, in which the blocks are also normalised (float32 values lie within
        about 1e-7 of scikit-image's float64 ones).

    Returns
    -------
    ndarray, shape (N, n_features)
        Row ``i`` equals ``skimage.feature.hog(images[i], ..., feature_vector=True)``.
    """
    if block_norm not in BLOCK_NORMS:
        raise ValueError(f"block_norm must be one of {BLOCK_NORMS}, got {block_norm!r}")
    images = as_image_batch(images)
    cell_rows, cell_cols = pixels_per_cell
    block_rows, block_cols = cells_per_block
    n_cells_row, n_cells_col = images.shape[1] // cell_rows, images.shape[2] // cell_cols
    if n_cells_row < block_rows or n_cells_col < block_cols:
        raise ValueError(
            f"images of {images.shape[1]}x{images.shape[2]} pixels hold {n_cells_row}x"
            f"{n_cells_col} cells of {pixels_per_cell}, fewer than one block of "
            f"{cells_per_block} cells")
    n_blocks = (n_cells_row - block_rows + 1) * (n_cells_col - block_cols + 1)
    out = np.empty((len(images), n_blocks * block_rows * block_cols * orientations), dtype)
    # small chunks keep the temporaries in the processor cache
    for start in range(0, len(images), _CHUNK):
        chunk = images[start:start + _CHUNK]
        bins, magnitudes = _bins_and_magnitudes(chunk, orientations, transform_sqrt)
        # normalised in the output type: float32 halves the memory traffic
        histograms = _cell_histograms(bins, magnitudes, orientations,
                                      pixels_per_cell).astype(dtype, copy=False)
        # (n, blocks_r, blocks_c, o, b_r, b_c) copied to the output rows as
        # (n, blocks_r, blocks_c, b_r, b_c, o), then normalised there
        windows = sliding_window_view(histograms, (block_rows, block_cols), axis=(1, 2))
        windows = windows.transpose(0, 1, 2, 4, 5, 3)
        blocks = out[start:start + _CHUNK].reshape(len(chunk), n_blocks, -1)
        blocks.reshape(windows.shape)[...] = windows
        _normalize_blocks(blocks, block_norm)
    return out


class HOGFeatures(ImageTransformer):
    """Scikit-learn transformer: images -> HOG descriptors (see :func:`hog_batch`).

    Parameters
    ----------
    orientations : int
        Number of orientation bins over 0-180 degrees.
    pixels_per_cell : tuple of int
        Cell size in pixels (rows, columns).
    cells_per_block : tuple of int
        Block size in cells, for the overlapping block normalisation.
    block_norm : {'L1', 'L1-sqrt', 'L2', 'L2-Hys'}
        Block normalisation.
    transform_sqrt : bool
        Power-law compression (square root) of the image first.
    """

    def __init__(self, orientations: int = 9, pixels_per_cell: tuple[int, int] = (8, 8),
                 cells_per_block: tuple[int, int] = (2, 2), block_norm: str = "L2-Hys",
                 transform_sqrt: bool = False):
        self.orientations = orientations
        self.pixels_per_cell = pixels_per_cell
        self.cells_per_block = cells_per_block
        self.block_norm = block_norm
        self.transform_sqrt = transform_sqrt

    def _extract(self, images: np.ndarray) -> np.ndarray:
        """HOG descriptors of the images, float32 (N, n_features)."""
        return hog_batch(images, self.orientations, tuple(self.pixels_per_cell),
                         tuple(self.cells_per_block), self.block_norm, self.transform_sqrt)
