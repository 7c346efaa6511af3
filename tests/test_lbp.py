"""Batched uniform LBP (both methods) against skimage.feature.local_binary_pattern."""
from __future__ import annotations

import warnings

import joblib
import numpy as np
import pytest
from skimage.feature import local_binary_pattern
from sklearn.pipeline import FeatureUnion, Pipeline

from features.hog import HOGFeatures
from features.lbp import (LBPFeatures, _chunk_codes, _float_bit_writer, _neighbours,
                          _tie_rules, lbp_codes, lbp_histograms)

NEIGHBOURHOODS = [(8, 1), (16, 2), (8, 1.5), (24, 3), (4, 1)]


def reference_codes(images: np.ndarray, n_points: int, radius: float,
                    method: str = "uniform") -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage warns on float images
        return np.stack([local_binary_pattern(image, n_points, radius, method)
                         for image in images]).astype(np.uint16)


def tie_heavy_images() -> np.ndarray:
    """Flat areas and +-1 noise: neighbours equal to the centre up to float64 rounding."""
    rng = np.random.default_rng(2)
    images = np.full((3, 40, 40), 100, dtype=np.uint8)
    images[:, 10:30, 10:30] = rng.integers(99, 102, (3, 20, 20))
    images[2] = 255
    return images


@pytest.mark.parametrize("method", ["uniform", "nri_uniform"])
@pytest.mark.parametrize("n_points,radius", NEIGHBOURHOODS)
def test_codes_identical_to_skimage(n_points, radius, method, face_images) -> None:
    rng = np.random.default_rng(0)
    for images in (face_images[:8, ..., 0], rng.integers(0, 256, (4, 37, 41), dtype=np.uint8),
                   tie_heavy_images()):
        np.testing.assert_array_equal(lbp_codes(images, n_points, radius, method),
                                      reference_codes(images, n_points, radius, method))


@pytest.mark.parametrize("n_points,radius", NEIGHBOURHOODS + [(12, 2.5)])
def test_few_grey_levels_identical_to_skimage(n_points, radius) -> None:
    """2-4 grey levels: most neighbours tie with the centre, in flat areas and across
    edges, or miss it by a few multiples of the interpolation weights."""
    rng = np.random.default_rng(7)
    for levels in (2, 3, 4):
        codes = rng.integers(0, levels, (3, 33, 29))
        for images in ((codes + 100).astype(np.uint8), (codes * 85).astype(np.uint8)):
            for method in ("uniform", "nri_uniform"):
                np.testing.assert_array_equal(lbp_codes(images, n_points, radius, method),
                                              reference_codes(images, n_points, radius, method))


def test_ramps_identical_to_skimage() -> None:
    """On a ramp a diagonal neighbour's two axis neighbours are the centre plus and minus
    one step and its diagonal pixel equals the centre: a tie in exact arithmetic that
    float64 rounding decides, so those pixels are recomputed one by one."""
    ramps = np.stack([np.add.outer(np.arange(48), np.arange(48)) * step % 256
                      for step in (1, 3, 7, 100)]).astype(np.uint8)
    images = np.concatenate([ramps, ramps[:, :, ::-1], 255 - ramps])
    for method in ("uniform", "nri_uniform"):
        np.testing.assert_array_equal(lbp_codes(images, 8, 1, method),
                                      reference_codes(images, 8, 1, method))


@pytest.mark.parametrize("size", [(128, 128), (200, 200), (37, 53)])
def test_integer_test_gives_the_float64_sampling_codes(size, face_images) -> None:
    """P = 8, R = 1 on 8-bit images takes the exact integer test (with float64's tie
    rounding from tables); the float64 sampling, which equals scikit-image's codes above,
    is the reference, on faces, noise, few grey levels and ramps in every direction at the
    sizes of the pipelines, the original faces and an odd shape."""
    assert _tie_rules(*size) is not None
    rng = np.random.default_rng(11)
    height, width = size
    ramp = np.add.outer(np.arange(height), np.arange(width))
    images = np.concatenate([
        np.stack([np.resize(face, size) for face in face_images[:4, ..., 0]]),
        rng.integers(0, 256, (4, *size), dtype=np.uint8),
        (rng.integers(0, 3, (2, *size)) * 100).astype(np.uint8),
        np.stack([ramp * step % 256 for step in (1, 2, 5, 51)]).astype(np.uint8),
        np.stack([ramp[:, ::-1] * step % 256 for step in (1, 3)]).astype(np.uint8),
        np.stack([ramp[::-1] * step % 256 for step in (1, 3)]).astype(np.uint8)])
    neighbours = _neighbours(8, 1.0, *size)
    for method in ("uniform", "nri_uniform"):
        reference = _chunk_codes(images, _float_bit_writer(images, neighbours), 8, method)
        np.testing.assert_array_equal(lbp_codes(images, 8, 1, method), reference)
    np.testing.assert_array_equal(lbp_codes(images[-8:], 8, 1),
                                  reference_codes(images[-8:], 8, 1))


def test_code_types_hold_every_code() -> None:
    images = np.random.default_rng(5).integers(0, 256, (2, 20, 20), dtype=np.uint8)
    assert lbp_codes(images, 16, 2, "nri_uniform").dtype == np.uint8    # 243 codes
    codes = lbp_codes(images, 24, 3, "nri_uniform")                     # 555 codes
    assert codes.dtype == np.uint16 and codes.max() > 255


def test_float_images_identical_to_skimage() -> None:
    images = np.random.default_rng(3).random((3, 30, 30))
    np.testing.assert_array_equal(lbp_codes(images), reference_codes(images, 8, 1))


def test_histograms_match_per_cell_numpy_histogram(face_images) -> None:
    faces = face_images[:4, ..., 0]
    grid = (4, 4)
    histograms = lbp_histograms(faces, 8, 1, grid).reshape(4, 16, 10)
    for image, features in zip(faces, histograms):
        codes = reference_codes(image[None], 8, 1)[0]
        cells = [codes[r:r + 32, c:c + 32] for r in range(0, 128, 32) for c in range(0, 128, 32)]
        expected = [np.histogram(cell, bins=10, range=(0, 10))[0] / cell.size for cell in cells]
        np.testing.assert_allclose(features, expected, atol=1e-7)


def test_nri_histograms_have_one_bin_per_code(face_images) -> None:
    faces = face_images[:3, ..., 0]
    histograms = LBPFeatures(grid=(2, 2), method="nri_uniform").transform(faces)
    assert histograms.shape == (3, 4 * 59)
    codes = reference_codes(faces, 8, 1, "nri_uniform")
    top_left = codes[:, :64, :64].reshape(3, -1)
    expected = np.stack([np.bincount(row, minlength=59) / row.size for row in top_left])
    np.testing.assert_allclose(histograms.reshape(3, 4, 59)[:, 0], expected, atol=1e-7)


def test_uneven_grid_covers_every_pixel() -> None:
    histograms = lbp_histograms(np.zeros((2, 30, 29), np.uint8), 8, 1, (4, 3))
    assert histograms.shape == (2, 4 * 3 * 10)
    np.testing.assert_allclose(histograms.reshape(2, 12, 10).sum(axis=-1), 1, atol=1e-6)


def test_batches_larger_than_a_chunk() -> None:
    """Codes and histograms are computed in chunks of images; 37 spans three."""
    images = np.random.default_rng(4).integers(0, 256, (37, 24, 20), dtype=np.uint8)
    np.testing.assert_array_equal(lbp_codes(images), reference_codes(images, 8, 1))
    one_by_one = np.vstack([lbp_histograms(image[None], grid=(2, 2)) for image in images])
    np.testing.assert_array_equal(lbp_histograms(images, grid=(2, 2)), one_by_one)


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="n_points"):
        lbp_codes(np.zeros((1, 8, 8), np.uint8), 0, 1)
    with pytest.raises(ValueError, match="n_points <= 254"):
        lbp_codes(np.zeros((1, 8, 8), np.uint8), 255, 1)
    with pytest.raises(ValueError, match="cells"):
        lbp_histograms(np.zeros((1, 8, 8), np.uint8), grid=(9, 2))
    with pytest.raises(ValueError, match="unknown LBP method 'ror'"):
        lbp_codes(np.zeros((1, 8, 8), np.uint8), method="ror")


def test_concatenated_extractors_in_pipeline_survive_joblib(tmp_path, face_images) -> None:
    union = Pipeline([("features", FeatureUnion([("hog", HOGFeatures()),
                                                  ("lbp", LBPFeatures(grid=(4, 4)))]))])
    expected = np.hstack([HOGFeatures().transform(face_images),
                          LBPFeatures(grid=(4, 4)).transform(face_images)])
    joblib.dump(union, tmp_path / "union.joblib")
    restored = joblib.load(tmp_path / "union.joblib")
    np.testing.assert_array_equal(restored.transform(face_images), expected)
    assert restored.get_params()["features__lbp__grid"] == (4, 4)
