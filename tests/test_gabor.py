"""Batched Gabor energies against skimage.filters.gabor, image by image."""
from __future__ import annotations

import joblib
import numpy as np
import pytest
from skimage.filters import gabor_kernel
from sklearn.pipeline import Pipeline

from benchmarks.extract_speed import skimage_gabor_per_image
from features.extract import make_extractor
from features.gabor import GaborFeatures, gabor_energies


def test_equal_to_skimage_on_real_faces(face_images) -> None:
    """The default bank on real faces reduced to 64x64, as in the pipelines."""
    faces = face_images[:3, ::2, ::2]
    energies = GaborFeatures().transform(faces)
    assert energies.shape == (3, 4 * 8 * 64) and energies.dtype == np.float32
    np.testing.assert_allclose(energies, skimage_gabor_per_image(faces, GaborFeatures()),
                               rtol=1e-5, atol=1e-7)


def test_equal_to_skimage_on_uneven_random_images() -> None:
    """Sizes the grid does not divide, a chunk and a half of images, odd orientations."""
    images = np.random.default_rng(0).integers(0, 256, (13, 37, 30), dtype=np.uint8)
    energies = gabor_energies(images, (0.3, 0.07), 3, (4, 3))
    assert energies.shape == (13, 2 * 3 * 12)
    picked = [0, 8, 12]                   # both chunks of 8 images
    expected = skimage_gabor_per_image(images[picked, ..., None],
                                       GaborFeatures((0.3, 0.07), 3, (4, 3)))
    np.testing.assert_allclose(energies[picked], expected, rtol=1e-5, atol=1e-7)


def test_colour_faces_are_filtered_as_luma() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    gray = np.clip(np.rint(rgb @ np.array([0.299, 0.587, 0.114])), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(gabor_energies(rgb, (0.25,), 2, (2, 2)),
                                  gabor_energies(gray, (0.25,), 2, (2, 2)))


def test_flat_image_energy_is_the_kernel_sum() -> None:
    """On a constant image (mirrored edges stay constant) every response is the
    constant times the kernel's sum, the filter's small DC leak."""
    energies = gabor_energies(np.full((1, 32, 32), 200, np.uint8), (0.1, 0.4), 2, (2, 2))
    leaks = [abs(gabor_kernel(frequency, theta=np.pi * k / 2).sum())
             for frequency in (0.1, 0.4) for k in range(2)]
    np.testing.assert_allclose(energies.reshape(4, 4), np.repeat(leaks, 4).reshape(4, 4)
                               * 200 / 255, rtol=1e-4)


def test_argument_errors() -> None:
    image = np.zeros((1, 16, 16), np.uint8)
    with pytest.raises(ValueError, match=r"frequencies must be in \(0, 0.5\]"):
        gabor_energies(image, (0.6,))
    with pytest.raises(ValueError, match="orientations must be a positive integer"):
        gabor_energies(image, (0.2,), 0)
    with pytest.raises(ValueError, match="cannot split 16 pixels into 17 cells"):
        gabor_energies(image, (0.2,), 2, (17, 2))


def test_named_extractor_in_pipeline_survives_joblib(tmp_path, face_images) -> None:
    faces = face_images[:4, ::2, ::2]
    pipeline = Pipeline([("gabor", make_extractor("gabor"))])
    expected = GaborFeatures().transform(faces)
    joblib.dump(pipeline, tmp_path / "gabor.joblib")
    restored = joblib.load(tmp_path / "gabor.joblib")
    np.testing.assert_array_equal(restored.transform(faces), expected)
    assert restored.get_params()["gabor__orientations"] == 8
