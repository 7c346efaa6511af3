"""Image-batch helpers: the grid cells that HOG, LBP and Gabor features are pooled over."""
from __future__ import annotations

import numpy as np
import pytest

from features._batch import as_image_batch, cell_index


@pytest.mark.parametrize("size, cells", [(10, 3), (10, 4), (37, 4), (30, 3), (7, 7), (5, 1)])
def test_cells_are_contiguous_near_equal_and_cover_every_pixel(size, cells) -> None:
    index = cell_index(size, cells)
    assert index.shape == (size,) and index[0] == 0 and index[-1] == cells - 1
    assert set(np.diff(index)) <= {0, 1}                     # contiguous, in order
    counts = np.bincount(index, minlength=cells)
    assert counts.sum() == size and counts.max() - counts.min() <= 1
    # cell k spans pixels ceil(k * size / cells) .. ceil((k + 1) * size / cells) - 1
    starts = [-(-k * size // cells) for k in range(cells + 1)]
    for k in range(cells):
        assert (index[starts[k]:starts[k + 1]] == k).all()


def test_remainder_pixels_spread_over_the_cells() -> None:
    # 10 pixels in 4 cells: the two spare pixels go to cells 0 and 2, not both to the end
    np.testing.assert_array_equal(cell_index(10, 4), [0, 0, 0, 1, 1, 2, 2, 2, 3, 3])


def test_grid_errors() -> None:
    with pytest.raises(ValueError, match="cannot split 3 pixels into 4 cells"):
        cell_index(3, 4)
    with pytest.raises(ValueError, match="batch of images"):
        as_image_batch(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="no images"):
        as_image_batch(np.zeros((0, 4, 5)))
