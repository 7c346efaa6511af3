"""Named extractors, parallel extraction and the on-disk feature cache."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from features.extract import extract_features, make_extractor
from features.hog import HOGFeatures
from features.io import load_images
from features.pixels import PixelFeatures, eigenfaces


def test_named_extractors_are_fresh_and_known() -> None:
    assert make_extractor("hog") is not make_extractor("hog")
    assert make_extractor("hog+lbp").transform(np.zeros((1, 128, 128), np.uint8)).shape == (
        1, 8100 + 640)
    with pytest.raises(ValueError, match="unknown extractor 'sift'"):
        make_extractor("sift")


def test_parallel_extraction_equals_in_memory(face_paths, face_images) -> None:
    report = extract_features(face_paths, make_extractor("hog+lbp"), n_jobs=2, progress=False)
    np.testing.assert_array_equal(report.images,
                                  make_extractor("hog+lbp").transform(face_images))
    assert report.kept.tolist() == list(range(len(face_paths)))


def test_cache_hits_and_invalidation(tmp_path, face_paths, counted_extraction) -> None:
    paths = []
    for path in face_paths[:6]:
        paths.append(str(tmp_path / os.path.basename(path)))
        shutil.copy(path, paths[-1])
    cache = tmp_path / "cache"
    first = extract_features(paths, HOGFeatures(), cache_dir=cache, progress=False)
    again = extract_features(paths, HOGFeatures(), cache_dir=cache, n_jobs=2, progress=False)
    assert len(counted_extraction) == 1
    np.testing.assert_array_equal(first.images, again.images)

    extract_features(paths, HOGFeatures(orientations=6), cache_dir=cache, progress=False)
    extract_features(paths, HOGFeatures(), size=(64, 64), cache_dir=cache, progress=False)
    assert len(counted_extraction) == 3  # settings changed

    os.utime(paths[1], ns=(0, 0))  # same contents, new modification time: still cached
    extract_features(paths, HOGFeatures(), cache_dir=cache, progress=False)
    assert len(counted_extraction) == 3

    shutil.copy(face_paths[10], paths[0])  # an image replaced under the same name
    changed = extract_features(paths, HOGFeatures(), cache_dir=cache, progress=False)
    assert len(counted_extraction) == 4
    assert not np.array_equal(changed.images[0], first.images[0])
    np.testing.assert_array_equal(changed.images[1:], first.images[1:])


def test_pixels_and_eigenfaces(face_images) -> None:
    pixels = PixelFeatures().transform(face_images)
    assert pixels.shape == (24, 128 * 128) and pixels.max() <= 1 and pixels.dtype == np.float32
    faces = eigenfaces(n_components=10).fit(face_images)
    projected = faces.transform(face_images)
    assert projected.shape == (24, 10)
    np.testing.assert_allclose(projected.std(axis=0, ddof=1), 1, rtol=1e-3)  # whitened


def test_failures_travel_through_extraction(tmp_path, face_paths) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    report = extract_features([face_paths[0], str(bad), face_paths[1]], HOGFeatures(),
                              progress=False)
    assert report.kept.tolist() == [0, 2] and report.failures[0][0] == str(bad)
    np.testing.assert_array_equal(report.images,
                                  HOGFeatures().transform(load_images(
                                      [face_paths[0], face_paths[1]], progress=False).images))
