"""Batched HOG against skimage.feature.hog, and its transformer API."""
from __future__ import annotations

import joblib
import numpy as np
import pytest
from skimage.feature import hog
from sklearn.base import clone

from features.hog import HOGFeatures, hog_batch

SETTINGS = [
    dict(orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), block_norm="L2-Hys"),
    dict(orientations=8, pixels_per_cell=(7, 6), cells_per_block=(3, 2), block_norm="L1"),
    dict(orientations=12, pixels_per_cell=(16, 16), cells_per_block=(1, 1), block_norm="L2"),
    dict(orientations=7, pixels_per_cell=(8, 8), cells_per_block=(2, 2), block_norm="L1-sqrt"),
]


def reference(images: np.ndarray, **settings) -> np.ndarray:
    channel_axis = -1 if images.ndim == 4 else None
    return np.stack([hog(image, channel_axis=channel_axis, **settings) for image in images])


@pytest.mark.parametrize("settings", SETTINGS)
def test_random_uint8_matches_skimage(settings) -> None:
    images = np.random.default_rng(0).integers(0, 256, (6, 64, 72), dtype=np.uint8)
    np.testing.assert_allclose(hog_batch(images, **settings), reference(images, **settings),
                               rtol=0, atol=1e-6)


def test_real_faces_match_skimage(face_images) -> None:
    faces = face_images[..., 0]
    np.testing.assert_allclose(hog_batch(faces), reference(faces, **SETTINGS[0]),
                               rtol=0, atol=1e-6)


def test_float_sqrt_and_rgb_match_skimage() -> None:
    rng = np.random.default_rng(1)
    floats = rng.random((4, 48, 48))
    np.testing.assert_allclose(hog_batch(floats), reference(floats, **SETTINGS[0]), atol=1e-6)
    images = rng.integers(0, 256, (4, 48, 48), dtype=np.uint8)
    np.testing.assert_allclose(hog_batch(images, transform_sqrt=True),
                               reference(images, transform_sqrt=True, **SETTINGS[0]), atol=1e-6)
    rgb = rng.integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    np.testing.assert_allclose(hog_batch(rgb), reference(rgb, **SETTINGS[0]), atol=1e-6)


def test_flat_and_edge_images_match_skimage() -> None:
    flat = np.full((2, 32, 32), 7, dtype=np.uint8)
    edges = np.zeros((2, 32, 32), dtype=np.uint8)
    edges[0, :, 16:] = 255
    edges[1] = np.triu(np.full((32, 32), 200, dtype=np.uint8))
    images = np.concatenate([flat, edges])
    np.testing.assert_allclose(hog_batch(images), reference(images, **SETTINGS[0]), atol=1e-6)


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="block_norm"):
        hog_batch(np.zeros((1, 32, 32), np.uint8), block_norm="L3")
    with pytest.raises(ValueError, match="fewer than one block"):
        hog_batch(np.zeros((1, 8, 8), np.uint8), cells_per_block=(2, 2))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        hog_batch(np.zeros((32, 32), np.uint8))


def test_transformer_params_clone_and_joblib_round_trip(tmp_path, face_images) -> None:
    extractor = HOGFeatures(orientations=6, pixels_per_cell=(16, 16))
    assert extractor.get_params()["orientations"] == 6
    assert clone(extractor).get_params() == extractor.get_params()
    path = tmp_path / "hog.joblib"
    joblib.dump(extractor, path)
    features = joblib.load(path).transform(face_images)
    assert features.shape == (len(face_images), 7 * 7 * 2 * 2 * 6)
    assert features.dtype == np.float32
    np.testing.assert_array_equal(features, extractor.fit_transform(face_images))
