"""Uniform local binary patterns over a whole batch, histogrammed over a grid of cells.

Two kinds of uniform codes (at most two changes between consecutive neighbours):
``"uniform"``, rotation invariant, the number of bright neighbours (``P + 2`` codes), and
``"nri_uniform"``, which also keeps where the bright arc lies (``P (P - 1) + 3`` codes,
59 for ``P = 8``: the ``u2`` histograms of Ahonen et al.'s face descriptor, which keep
the orientation of edges and corners). The codes equal
``skimage.feature.local_binary_pattern(image, P, R, method)`` bit for bit.

scikit-image samples each circular neighbour by bilinear interpolation in float64
and compares it with the centre; where a neighbour is a weighted mix of pixels that
equals the centre, float64 rounding decides the bit. Here the same float64 arithmetic,
in the same order and with the same per-row and per-column weights, runs over a few
images at a time (small chunks keep the float64 temporaries in the processor cache),
so every bit is scikit-image's.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from features._batch import as_image_batch, cell_index, to_gray

METHODS = ("uniform", "nri_uniform")
_CHUNK = 4


def _neighbour_offsets(n_points: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of the circular neighbours, as scikit-image rounds them."""
    angles = 2 * np.pi * np.arange(n_points, dtype=np.float64) / n_points
    return np.round(-radius * np.sin(angles), 5), np.round(radius * np.cos(angles), 5)


class _Neighbour:
    """Where one circular neighbour is sampled from, for every pixel of an (H, W) image.

    Bilinear sampling reads the pixels at ``(r + row_shift + {0, row_step},
    c + col_shift + {0, col_step})`` and weighs them with the fractions
    ``frac_rows[r]`` and ``frac_cols[c]``, computed as scikit-image does
    (``r + offset - floor(r + offset)`` in float64); ``frac_rows`` is a column (H, 1)
    that broadcasts along each row.
    """

    def __init__(self, row_offset: float, col_offset: float, height: int, width: int):
        rows = np.arange(height, dtype=np.float64) + row_offset
        cols = np.arange(width, dtype=np.float64) + col_offset
        self.frac_rows = (rows - np.floor(rows))[:, None]
        self.frac_cols = cols - np.floor(cols)
        self.row_shift = int(np.floor(rows[0]))
        self.col_shift = int(np.floor(cols[0]))
        self.row_step = int(self.frac_rows.any())
        self.col_step = int(self.frac_cols.any())
        # equal for neighbours that share the sampling along columns
        self.column_key = (self.col_shift, self.frac_cols.tobytes())


@lru_cache(maxsize=16)
def _neighbours(n_points: int, radius: float, height: int, width: int) -> list[_Neighbour]:
    return [_Neighbour(r, c, height, width)
            for r, c in zip(*_neighbour_offsets(n_points, radius))]


def _sample_columns(padded: np.ndarray, neighbour: _Neighbour, pad: int,
                    width: int) -> np.ndarray:
    """Sampling along columns over every padded row, (n, H + 2 pad, W): scikit-image's
    ``(1 - dc) * left + dc * right`` in float64 (``left`` alone for whole offsets)."""
    c0 = pad + neighbour.col_shift
    left = padded[:, :, c0:c0 + width]
    if not neighbour.col_step:
        return left
    dc = neighbour.frac_cols
    left = left.astype(np.float64)
    out = np.multiply(left, 1 - dc, out=left)
    out += np.multiply(padded[:, :, c0 + 1:c0 + 1 + width], dc)
    return out


def _neighbour_bits(chunk: np.ndarray, centre: np.ndarray, by_columns: np.ndarray,
                    neighbour: _Neighbour, pad: int, out: np.ndarray, value: np.ndarray,
                    scratch: np.ndarray) -> None:
    """Write scikit-image's ``neighbour >= centre`` for a chunk (n, H, W) into ``out``.

    ``centre`` is the chunk in float64 (compared with interpolated values without a cast
    per neighbour); ``by_columns`` is the chunk sampled along columns
    (:func:`_sample_columns`); the rows are sampled here as ``(1 - dr) * top + dr *
    bottom``. ``value`` and ``scratch`` are float64 buffers of the chunk's shape.
    """
    height = chunk.shape[1]
    r0 = pad + neighbour.row_shift
    top = by_columns[:, r0:r0 + height]
    if not neighbour.row_step:
        np.greater_equal(top, chunk, out=out)
        return
    dr = neighbour.frac_rows
    np.multiply(top, 1 - dr, out=value)
    value += np.multiply(by_columns[:, r0 + 1:r0 + 1 + height], dr, out=scratch)
    np.greater_equal(value, centre, out=out)


def _chunk_codes(chunk: np.ndarray, neighbours: list[_Neighbour], pad: int,
                 method: str) -> np.ndarray:
    """LBP codes of a chunk of (n, H, W) images, counted neighbour by neighbour, never
    holding all P bit planes (see :func:`lbp_codes`)."""
    n_points = len(neighbours)
    width = chunk.shape[2]
    padded = np.zeros((len(chunk), chunk.shape[1] + 2 * pad, width + 2 * pad), chunk.dtype)
    padded[:, pad:-pad, pad:-pad] = chunk
    value, scratch = np.empty(chunk.shape, np.float64), np.empty(chunk.shape, np.float64)
    bit, previous = np.empty(chunk.shape, bool), np.empty(chunk.shape, bool)
    ones, changes = np.zeros(chunk.shape, np.uint8), np.zeros(chunk.shape, np.uint8)
    # nri_uniform: the first bit and the length of the first run of equal bits
    first_bit, first_run = None, np.ones(chunk.shape, np.uint8)
    by_columns = {}
    centre = chunk.astype(np.float64)
    for k, neighbour in enumerate(neighbours):
        key = neighbour.column_key
        if key not in by_columns:
            by_columns[key] = _sample_columns(padded, neighbour, pad, width)
        _neighbour_bits(chunk, centre, by_columns[key], neighbour, pad, bit, value, scratch)
        ones += bit.view(np.uint8)
        if k:
            changes += np.not_equal(bit, previous, out=previous).view(np.uint8)
            if method == "nri_uniform":
                first_run += (changes == 0).view(np.uint8)
        elif method == "nri_uniform":
            first_bit = bit.copy()
        bit, previous = previous, bit
    if method == "uniform":
        np.copyto(ones, n_points + 1, where=changes > 2)
        return ones
    return _nri_codes(ones, changes, first_bit, first_run, n_points)


def _nri_codes(ones: np.ndarray, changes: np.ndarray, first_bit: np.ndarray,
               first_run: np.ndarray, n_points: int) -> np.ndarray:
    """scikit-image's ``nri_uniform`` codes from the number of bright neighbours, the
    changes between consecutive neighbours, the first neighbour's bit and the length of
    the first run: 0 all dark, ``P (P - 1) + 1`` all bright, ``P (P - 1) + 2`` not
    uniform, else ``1 + (ones - 1) P + rotation`` with the rotation ``P - first_run``
    (a bright arc after ``first_run`` dark neighbours) or ``ones - first_run`` (an arc
    that wraps around the first neighbour)."""
    ones = ones.astype(np.uint16)
    first_run = first_run.astype(np.uint16)
    rotation = np.where(first_bit, ones - first_run, n_points - first_run)
    codes = 1 + (ones - 1) * n_points + rotation
    codes[ones == 0] = 0
    codes[ones == n_points] = n_points * (n_points - 1) + 1
    codes[changes > 2] = n_points * (n_points - 1) + 2
    return codes.astype(_code_dtype(n_points, "nri_uniform"), copy=False)


def _n_codes(n_points: int, method: str) -> int:
    """Number of distinct codes of a method."""
    return n_points + 2 if method == "uniform" else n_points * (n_points - 1) + 3


def _code_dtype(n_points: int, method: str) -> type:
    return np.uint8 if _n_codes(n_points, method) <= 256 else np.uint16


def _code_chunks(images: np.ndarray, n_points: int, radius: float, method: str):
    """Yield ``(start, codes)`` of consecutive chunks of a batch (see :func:`lbp_codes`)."""
    if method not in METHODS:
        raise ValueError(f"unknown LBP method {method!r}; choose from {METHODS}")
    if n_points < 1 or radius <= 0:
        raise ValueError(f"need n_points >= 1 and radius > 0, got {n_points} and {radius}")
    if n_points > 254:
        raise ValueError(f"need n_points <= 254, got {n_points}")
    images = to_gray(as_image_batch(images))
    height, width = images.shape[1:]
    pad = int(np.ceil(radius)) + 1
    neighbours = _neighbours(n_points, float(radius), height, width)
    for start in range(0, len(images), _CHUNK):
        yield start, _chunk_codes(np.ascontiguousarray(images[start:start + _CHUNK]),
                                  neighbours, pad, method)


def lbp_codes(images: np.ndarray, n_points: int = 8, radius: float = 1.0,
              method: str = "uniform") -> np.ndarray:
    """Uniform LBP codes of a batch of grayscale images.

    Parameters
    ----------
    images : ndarray, shape (N, H, W) or (N, H, W, C)
        Images; several channels are first converted to luma (ITU-R 601-2).
    n_points : int
        Number of circular neighbours ``P``.
    radius : float
        Radius ``R`` of the circle.
    method : {"uniform", "nri_uniform"}
        Rotation invariant uniform codes ``0..P+1``, or the non rotation invariant ones
        ``0..P(P-1)+2`` (see the module docstring).

    Returns
    -------
    ndarray of uint8 (uint16 above 256 codes), shape (N, H, W)
        Codes equal to ``skimage.feature.local_binary_pattern(images[i], P, R, method)``.
    """
    images = as_image_batch(images)
    codes = np.empty(images.shape[:3], dtype=_code_dtype(n_points, method))
    for start, chunk_codes in _code_chunks(images, n_points, radius, method):
        codes[start:start + len(chunk_codes)] = chunk_codes
    return codes


def lbp_histograms(images: np.ndarray, n_points: int = 8, radius: float = 1.0,
                   grid: tuple[int, int] = (8, 8), dtype: np.dtype = np.float32,
                   method: str = "uniform") -> np.ndarray:
    """Histograms of uniform LBP codes over a grid of cells, each summing to 1.

    Parameters
    ----------
    images : ndarray, shape (N, H, W) or (N, H, W, C)
        Images (see :func:`lbp_codes`).
    n_points, radius
        LBP neighbours and radius.
    grid : tuple of int
        Number of cells along rows and columns; pixels are split into near-equal cells.
    dtype : dtype
        Output type.
    method : {"uniform", "nri_uniform"}
        Which codes (see :func:`lbp_codes`).

    Returns
    -------
    ndarray, shape (N, grid[0] * grid[1] * n_codes)
        Per cell (row-major), the share of its pixels with each code; ``n_codes`` is
        ``P + 2`` (uniform) or ``P (P - 1) + 3`` (nri_uniform).
    """
    images = as_image_batch(images)
    n_images, height, width = images.shape[:3]
    n_codes, n_cells = _n_codes(n_points, method), grid[0] * grid[1]
    cell = cell_index(height, grid[0])[:, None] * grid[1] + cell_index(width, grid[1])
    # bin of (image in chunk, cell, code) = slot + code
    slot = ((np.arange(_CHUNK)[:, None, None] * n_cells + cell) * n_codes).astype(np.intp)
    counts = np.empty((n_images, n_cells * n_codes), dtype=np.intp)
    for start, codes in _code_chunks(images, n_points, radius, method):
        n = len(codes)
        counts[start:start + n] = np.bincount(
            (slot[:n] + codes).ravel(), minlength=n * n_cells * n_codes).reshape(n, -1)
    pixels_per_cell = np.bincount(cell.ravel(), minlength=n_cells)
    shares = counts.reshape(n_images, n_cells, n_codes) / pixels_per_cell[:, None]
    return shares.reshape(n_images, -1).astype(dtype)


class LBPFeatures(TransformerMixin, BaseEstimator):
    """Scikit-learn transformer: images -> grid of uniform LBP histograms.

    Parameters
    ----------
    n_points : int
        Number of circular neighbours ``P``.
    radius : float
        Radius ``R``.
    grid : tuple of int
        Cells along rows and columns.
    method : {"uniform", "nri_uniform"}
        Rotation invariant uniform codes (``P + 2`` per cell) or not (``P (P - 1) + 3``).
    """

    def __init__(self, n_points: int = 8, radius: float = 1.0, grid: tuple[int, int] = (8, 8),
                 method: str = "uniform"):
        self.n_points = n_points
        self.radius = radius
        self.grid = grid
        self.method = method

    def fit(self, X, y=None):
        """Stateless: nothing is learnt."""
        return self

    def transform(self, X) -> np.ndarray:
        """LBP histograms of images ``X`` (N, H, W[, C]), float32."""
        return lbp_histograms(X, self.n_points, self.radius, tuple(self.grid),
                              method=self.method)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags
