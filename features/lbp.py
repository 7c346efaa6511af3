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

For the common ``P = 8, R = 1`` on 8-bit images an exact integer test replaces the float64
sampling (:class:`_IntegerBits`; with the histograms 1.8x as fast): it decides every bit
but those of exact ties, and those float64 rounding settles in a way worked out once per
image size (:func:`_tie_rules`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from features._batch import ImageTransformer, as_image_batch, cell_index, to_gray

METHODS = ("uniform", "nri_uniform")
_CHUNK = 4
_INTEGER_CHUNK = 8


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
        # of a diagonal neighbour (R = 1): the pixel of the sampled 2x2 square opposite
        # the centre, as (row, column) offsets
        self.corner = (self.row_shift or 1, self.col_shift or 1)


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


BitWriter = Callable[[int, np.ndarray], None]


def _float_bit_writer(chunk: np.ndarray, neighbours: list[_Neighbour]) -> BitWriter:
    """``write(k, out)``: neighbour ``k``'s bits of a chunk (n, H, W), sampled in float64
    as scikit-image samples them (:func:`_neighbour_bits`)."""
    pad = max(max(abs(n.row_shift), abs(n.col_shift)) for n in neighbours) + 1
    width = chunk.shape[2]
    padded = np.zeros((len(chunk), chunk.shape[1] + 2 * pad, width + 2 * pad), chunk.dtype)
    padded[:, pad:-pad, pad:-pad] = chunk
    value, scratch = np.empty(chunk.shape, np.float64), np.empty(chunk.shape, np.float64)
    centre = chunk.astype(np.float64)
    by_columns = {}

    def write(k: int, out: np.ndarray) -> None:
        neighbour = neighbours[k]
        key = neighbour.column_key
        if key not in by_columns:
            by_columns[key] = _sample_columns(padded, neighbour, pad, width)
        _neighbour_bits(chunk, centre, by_columns[key], neighbour, pad, out, value, scratch)

    return write


# P = 8, R = 1: a diagonal neighbour sits at offsets of +-round(sin 45 deg, 5) = +-0.70711,
# so bilinear sampling weighs the centre C with 0.29289^2, the two axis pixels A and B
# next to it with 0.29289 * 0.70711 each and the diagonal pixel D with 0.70711^2, and
# neighbour - C = 0.70711e-5 * (29289 (A + B - 2C) + 70711 (D - C)) in exact arithmetic.
# For 8-bit pixels that integer is 0 only when A + B = 2C and D = C (29289 and 70711 are
# coprime and |D - C| < 29289), and otherwise at least 71 away from 0, far beyond float64
# rounding: its sign is scikit-image's bit. At the exact ties float64 rounding decides;
# :func:`_tie_rules` works out how, for every pixel.
_AXIS_WEIGHT, _DIAGONAL_WEIGHT = np.int32(29289), np.int32(70711)


@dataclass(frozen=True)
class _TieRule:
    """How float64 rounding settles the exact ties of one diagonal neighbour on the
    pixels of the rows ``rows`` and columns ``cols`` (index arrays): ``table[C, A]`` is
    the bit of a tie with centre ``C`` and axis pixel ``A`` in the neighbour's row (the
    other axis pixel is ``2C - A``)."""

    rows: np.ndarray
    cols: np.ndarray
    table: np.ndarray


@lru_cache(maxsize=16)
def _tie_rules(height: int, width: int) -> dict[int, list[_TieRule]] | None:
    """Per diagonal neighbour of ``P = 8, R = 1``, the rules for the pixels whose ties do
    not all round to 1 (:class:`_IntegerBits` counts ties as 1); ``None`` when the
    neighbours are not where the integer test assumes.

    scikit-image computes each pixel's sampling fractions from its row and column index
    in float64, so their last bits, and with them the rounding of a tie, differ between
    the first rows and columns and the rest (for 128x128 faces: rows and columns 0-1).
    """
    neighbours = _neighbours(8, 1.0, height, width)
    centre = np.arange(256.0)[:, None]
    axis = np.arange(256.0)[None, :]
    possible = (2 * centre - axis >= 0) & (2 * centre - axis <= 255)
    rules = {}
    for k, neighbour in enumerate(neighbours):
        if not (neighbour.row_step or neighbour.col_step):
            continue
        if neighbour.row_step != 1 or neighbour.col_step != 1 \
                or {neighbour.row_shift, neighbour.col_shift} - {-1, 0}:
            return None
        # pixel values of the sampled 2x2 square in a tie: the centre at (0, 0), the
        # diagonal pixel (opposite corner) equal to it, the axis pixels C + t and C - t
        row, col = neighbour.corner
        values = {(0, 0): centre, (row, col): centre + 0 * axis,
                  (row, 0): axis, (0, col): 2 * centre - axis}
        r0, c0 = neighbour.row_shift, neighbour.col_shift
        fractions_rows, fractions_cols = neighbour.frac_rows.ravel(), neighbour.frac_cols
        rules[k] = []
        for dr in np.unique(fractions_rows):
            for dc in np.unique(fractions_cols):
                top = values[r0, c0] * (1 - dc) + values[r0, c0 + 1] * dc
                bottom = values[r0 + 1, c0] * (1 - dc) + values[r0 + 1, c0 + 1] * dc
                table = top * (1 - dr) + bottom * dr >= centre
                if not table[possible].all():
                    rules[k].append(_TieRule(np.flatnonzero(fractions_rows == dr),
                                             np.flatnonzero(fractions_cols == dc), table))
    return rules


class _TieFixes:
    """The pixels of one diagonal neighbour whose exact ties float64 rounding does not
    settle as 1 (:func:`_tie_rules`), gathered over a chunk of ``n_images`` images as
    flat indices, with the bit of a tie at each from a table of every centre and axis
    pixel value."""

    def __init__(self, neighbour: _Neighbour, rules: list[_TieRule], n_images: int,
                 height: int, width: int):
        # the axis pixel in the sampled 2x2 square's row, as in :class:`_TieRule`
        axis_row = neighbour.corner[0]
        rows, cols, classes = [], [], []
        for number, rule in enumerate(rules):
            rule_rows, rule_cols = np.meshgrid(rule.rows, rule.cols, indexing="ij")
            rows.append(rule_rows.ravel())
            cols.append(rule_cols.ravel())
            classes.append(np.full(rule_rows.size, number))
        rows, cols, classes = (np.concatenate(parts) if parts else np.empty(0, np.intp)
                               for parts in (rows, cols, classes))
        images = np.arange(n_images)[:, None]
        padded_size = (height + 2) * (width + 2)
        self.per_image = rows.size
        #: index in the (n, H, W) chunk, in the padded (n, H + 2, W + 2) chunk of the
        #: centre and of the axis pixel, and of the table row of each pixel
        self.pixel = (images * height * width + rows * width + cols).ravel()
        self.centre = (images * padded_size + (rows + 1) * (width + 2) + cols + 1).ravel()
        self.axis = self.centre + axis_row * (width + 2)
        self.table_start = np.tile(classes * 256 * 256, n_images)
        self.tables = (np.stack([rule.table for rule in rules]).ravel() if rules
                       else np.empty(0, bool))

    def apply(self, n_images: int, total: np.ndarray, centre_scaled: np.ndarray,
              padded: np.ndarray, out: np.ndarray) -> None:
        """Set the bits ``out`` of the exact ties (``total == centre_scaled``, counted as 1
        so far) among the pixels of the first ``n_images`` images to the table's."""
        if not self.per_image:
            return
        count = n_images * self.per_image
        pixel = self.pixel[:count]
        ties = np.flatnonzero(np.take(total, pixel) == np.take(centre_scaled, pixel))
        if not ties.size:
            return
        centre = np.take(padded, self.centre[ties]).astype(np.intp)
        axis = np.take(padded, self.axis[ties])
        np.put(out, pixel[ties], self.tables[self.table_start[ties] + centre * 256 + axis])


class _IntegerBits:
    """Neighbour bits of chunks of 8-bit images for ``P = 8, R = 1`` by the exact integer
    test above, exact ties counted as 1 but where :class:`_TieFixes` say otherwise, in
    buffers reused from chunk to chunk (fresh buffers per chunk cost as much again in
    page faults)."""

    def __init__(self, neighbours: list[_Neighbour], tie_rules: dict[int, list[_TieRule]],
                 n_images: int, height: int, width: int):
        self.neighbours = neighbours
        self.tie_fixes = {k: _TieFixes(neighbours[k], rules, n_images, height, width)
                          for k, rules in tie_rules.items()}
        padded_shape = (n_images, height + 2, width + 2)
        self.padded = np.zeros(padded_shape, np.uint8)  # the border stays 0
        self.axis_scaled = np.empty(padded_shape, np.int32)
        self.diagonal_scaled = np.empty(padded_shape, np.int32)
        self.centre_scaled = np.empty((n_images, height, width), np.int32)
        self.total = np.empty((n_images, height, width), np.int32)

    def writer(self, chunk: np.ndarray) -> BitWriter:
        """``write(k, out)`` for a chunk (n, H, W) of at most ``n_images`` images; ``out``
        must be C-contiguous."""
        n, height, width = chunk.shape
        padded = self.padded[:n]
        padded[:, 1:-1, 1:-1] = chunk
        # the test as axis_weight * (A + B) + diagonal_weight * D >= (2 axis + diagonal) * C
        axis_scaled = np.multiply(padded, _AXIS_WEIGHT, out=self.axis_scaled[:n],
                                  dtype=np.int32)
        diagonal_scaled = np.multiply(padded, _DIAGONAL_WEIGHT, out=self.diagonal_scaled[:n],
                                      dtype=np.int32)
        centre_scaled = np.multiply(padded[:, 1:-1, 1:-1], 2 * _AXIS_WEIGHT + _DIAGONAL_WEIGHT,
                                    out=self.centre_scaled[:n], dtype=np.int32)
        total = self.total[:n]

        def window(array: np.ndarray, row: int, col: int) -> np.ndarray:
            return array[:, 1 + row:1 + row + height, 1 + col:1 + col + width]

        def write(k: int, out: np.ndarray) -> None:
            neighbour = self.neighbours[k]
            if not (neighbour.row_step or neighbour.col_step):
                np.greater_equal(window(padded, neighbour.row_shift, neighbour.col_shift),
                                 window(padded, 0, 0), out=out)
                return
            # the sampled 2x2 square holds the centre; the diagonal pixel is its opposite
            row, col = neighbour.corner
            np.add(window(axis_scaled, row, 0), window(axis_scaled, 0, col), out=total)
            np.add(total, window(diagonal_scaled, row, col), out=total)
            np.greater_equal(total, centre_scaled, out=out)
            self.tie_fixes[k].apply(n, total, centre_scaled, padded, out)

        return write


def _chunk_codes(chunk: np.ndarray, write_bit: BitWriter, n_points: int,
                 method: str) -> np.ndarray:
    """LBP codes of a chunk of (n, H, W) images, counted neighbour by neighbour from
    ``write_bit(k, out)``, never holding all P bit planes (see :func:`lbp_codes`)."""
    bit, previous = np.empty(chunk.shape, bool), np.empty(chunk.shape, bool)
    ones, changes = np.zeros(chunk.shape, np.uint8), np.zeros(chunk.shape, np.uint8)
    # nri_uniform: the first bit and the length of the first run of equal bits
    first_bit, first_run = None, np.ones(chunk.shape, np.uint8)
    for k in range(n_points):
        write_bit(k, bit)
        ones += bit.view(np.uint8)
        if k:
            changes += np.not_equal(bit, previous, out=previous).view(np.uint8)
            if method == "nri_uniform":
                first_run += (changes == 0).view(np.uint8)
        elif method == "nri_uniform":
            first_bit = bit.copy()
        bit, previous = previous, bit
    # masked assignments are slow on irregular masks: select by arithmetic or a table
    non_uniform = np.greater(changes, 2, out=bit).view(np.uint8)
    if method == "uniform":
        # non-uniform patterns get code P + 1
        ones += np.multiply(n_points + 1 - ones, non_uniform, out=changes)
        return ones
    index = ones.astype(np.int32)
    index *= n_points + 1
    index += first_run
    index *= 2
    index += first_bit.view(np.uint8)
    index *= 2
    index += non_uniform
    return _nri_table(n_points).take(index)


@lru_cache(maxsize=8)
def _nri_table(n_points: int) -> np.ndarray:
    """``nri_uniform`` code (:func:`_nri_codes`) of every number of bright neighbours
    ``0..P``, first run ``0..P``, first bit and uniformity, flattened in that order."""
    ones, first_run, first_bit, changes = np.meshgrid(
        np.arange(n_points + 1), np.arange(n_points + 1), [False, True], [0, 4],
        indexing="ij")
    return _nri_codes(ones, changes, first_bit, first_run, n_points).ravel()


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
    neighbours = _neighbours(n_points, float(radius), height, width)
    tie_rules = (_tie_rules(height, width) if n_points == 8 and radius == 1
                 and images.dtype == np.uint8 else None)
    if tie_rules is None:
        for start in range(0, len(images), _CHUNK):
            chunk = np.ascontiguousarray(images[start:start + _CHUNK])
            yield start, _chunk_codes(chunk, _float_bit_writer(chunk, neighbours), n_points,
                                      method)
        return
    integer_bits = _IntegerBits(neighbours, tie_rules, _INTEGER_CHUNK, height, width)
    for start in range(0, len(images), _INTEGER_CHUNK):
        chunk = images[start:start + _INTEGER_CHUNK]
        yield start, _chunk_codes(chunk, integer_bits.writer(chunk), n_points, method)


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
    chunk_size = max(_CHUNK, _INTEGER_CHUNK)
    slot = ((np.arange(chunk_size)[:, None, None] * n_cells + cell) * n_codes).astype(np.intp)
    counts = np.empty((n_images, n_cells * n_codes), dtype=np.intp)
    for start, codes in _code_chunks(images, n_points, radius, method):
        n = len(codes)
        counts[start:start + n] = np.bincount(
            (slot[:n] + codes).ravel(), minlength=n * n_cells * n_codes).reshape(n, -1)
    pixels_per_cell = np.bincount(cell.ravel(), minlength=n_cells)
    shares = counts.reshape(n_images, n_cells, n_codes) / pixels_per_cell[:, None]
    return shares.reshape(n_images, -1).astype(dtype)


class LBPFeatures(ImageTransformer):
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

    def _extract(self, images: np.ndarray) -> np.ndarray:
        """LBP histograms of the images, float32."""
        return lbp_histograms(images, self.n_points, self.radius, tuple(self.grid),
                              method=self.method)
