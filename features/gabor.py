"""Gabor filter-bank energies over a whole batch, averaged over a grid of cells.

Each face is filtered by a bank of complex Gabor filters (``skimage.filters.gabor_kernel``:
several spatial frequencies, each at evenly spaced orientations); the magnitude of each
response, the local energy of that frequency and orientation, is averaged over each cell
of a grid. The responses equal ``skimage.filters.gabor(image, frequency, theta=theta,
mode="mirror")`` (to float32 rounding), but the whole batch is filtered at once in the
Fourier domain: one FFT per face and frequency, one inverse FFT per face and filter,
instead of two direct convolutions per face and filter with kernels up to 35x35.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import fft

from features._batch import ImageTransformer, as_image_batch, cell_index, to_gray

_CHUNK = 8


@lru_cache(maxsize=16)
def _filter_spectra(frequency: float, orientations: int, height: int,
                    width: int) -> tuple[int, np.ndarray]:
    """Border width and spectra (orientations, H', W') complex64 of one frequency's
    filters, for images of ``height`` x ``width`` mirrored by that border."""
    from skimage.filters import gabor_kernel

    kernels = [gabor_kernel(frequency, theta=np.pi * k / orientations)
               for k in range(orientations)]
    border = max(max(kernel.shape) for kernel in kernels) // 2
    shape = (fft.next_fast_len(height + 2 * border), fft.next_fast_len(width + 2 * border))
    spectra = np.empty((orientations, *shape), dtype=np.complex64)
    for spectrum, kernel in zip(spectra, kernels):
        rows, cols = kernel.shape
        padded = np.zeros(shape, dtype=np.complex128)
        padded[:rows, :cols] = kernel
        # the kernel's centre at the origin: circular convolution is then centred
        spectrum[...] = fft.fft2(np.roll(padded, (-(rows // 2), -(cols // 2)), (0, 1)))
    spectra.flags.writeable = False
    return border, spectra


def gabor_energies(images: np.ndarray, frequencies: Sequence[float] = (0.1, 0.16, 0.25, 0.4),
                   orientations: int = 8, grid: tuple[int, int] = (8, 8),
                   dtype: np.dtype = np.float32) -> np.ndarray:
    """Mean magnitude of Gabor responses per filter and grid cell.

    Parameters
    ----------
    images : ndarray, shape (N, H, W) or (N, H, W, C)
        Images; uint8 is scaled to [0, 1], floats are taken as they are, three channels
        are combined to luma first.
    frequencies : sequence of float
        Spatial frequencies of the filters, in cycles per pixel, each in (0, 0.5].
    orientations : int
        Filters per frequency, at angles ``pi * k / orientations``.
    grid : tuple of int
        Number of cells along rows and columns; pixels are split into near-equal cells.
    dtype : dtype
        Output type.

    Returns
    -------
    ndarray, shape (N, len(frequencies) * orientations * grid[0] * grid[1])
        Per frequency, then orientation, the mean response magnitude of each cell (row-major).

    Raises
    ------
    ValueError
        For a frequency outside (0, 0.5], fewer than one orientation, or a grid with
        more cells than pixels along an axis.
    """
    frequencies = [float(frequency) for frequency in frequencies]
    if not frequencies or not all(0 < frequency <= 0.5 for frequency in frequencies):
        raise ValueError(f"frequencies must be in (0, 0.5] cycles per pixel, got {frequencies}")
    if int(orientations) != orientations or orientations < 1:
        raise ValueError(f"orientations must be a positive integer, got {orientations}")
    orientations = int(orientations)
    images = to_gray(as_image_batch(images))
    images = images / np.float32(255) if images.dtype == np.uint8 else images.astype(np.float32)
    n_images, height, width = images.shape
    rows, cols = cell_index(height, grid[0]), cell_index(width, grid[1])
    row_starts = np.flatnonzero(np.diff(rows, prepend=-1))
    col_starts = np.flatnonzero(np.diff(cols, prepend=-1))
    cell_pixels = np.diff(row_starts, append=height)[:, None] * np.diff(col_starts, append=width)
    out = np.empty((n_images, len(frequencies), orientations, grid[0], grid[1]), dtype=dtype)
    for index, frequency in enumerate(frequencies):
        border, spectra = _filter_spectra(frequency, orientations, height, width)
        for start in range(0, n_images, _CHUNK):
            chunk = np.pad(images[start:start + _CHUNK], ((0, 0), (border, border),
                                                          (border, border)), mode="reflect")
            responses = fft.ifft2(fft.fft2(chunk, s=spectra.shape[1:])[:, None] * spectra)
            magnitudes = np.abs(responses[..., border:border + height, border:border + width])
            sums = np.add.reduceat(np.add.reduceat(magnitudes, row_starts, axis=-2),
                                   col_starts, axis=-1)
            out[start:start + _CHUNK, index] = sums / cell_pixels
    return out.reshape(n_images, -1)


class GaborFeatures(ImageTransformer):
    """Scikit-learn transformer: images -> Gabor energies per filter and grid cell.

    Parameters
    ----------
    frequencies : tuple of float
        Spatial frequencies of the filters, in cycles per pixel. The defaults span
        wavelengths of 2.5 to 10 pixels, meant for faces of about 64x64 pixels.
    orientations : int
        Filters per frequency, evenly spaced over half a turn.
    grid : tuple of int
        Cells along rows and columns.
    """

    def __init__(self, frequencies: tuple[float, ...] = (0.1, 0.16, 0.25, 0.4),
                 orientations: int = 8, grid: tuple[int, int] = (8, 8)):
        self.frequencies = frequencies
        self.orientations = orientations
        self.grid = grid

    def _extract(self, images: np.ndarray) -> np.ndarray:
        """Gabor energies of the images, float32."""
        return gabor_energies(images, tuple(self.frequencies), self.orientations, tuple(self.grid))
