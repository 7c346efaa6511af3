"""dlib face descriptors: shape, stability, the face check, the optional extra, caching, pickling.

Thresholds were measured on UTKFace 200x200 crops: a 3-pixel shift moves a descriptor
by 0.02-0.1 (0.16 at most over 40 faces); the 8 different people sampled below are at
least 0.56 apart, 0.85 in the median (dlib calls < 0.6 the same person).
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from features.embeddings import DlibFaceDescriptor, describe_faces
from features.extract import extract_features, make_extractor
from features.io import load_images
from features.loader import ImageLoader
from pipelines.dataset import parse_utkface_name

ROOT = Path(__file__).resolve().parent.parent
INSTALL = 'pip install -e ".[embeddings]"'


@pytest.fixture(scope="module")
def dlib():
    return pytest.importorskip("dlib", reason=f"the embeddings extra is not installed: {INSTALL}")


@pytest.fixture(scope="module")
def rgb_faces(face_paths) -> np.ndarray:
    """8 sample faces at UTKFace's own 200x200, in colour."""
    return load_images(face_paths[:8], size=(200, 200), color="rgb", progress=False).images


@pytest.fixture(scope="module")
def descriptors(dlib, rgb_faces) -> np.ndarray:
    return DlibFaceDescriptor().transform(rgb_faces)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=1)


def test_shape_type_and_determinism(rgb_faces, descriptors) -> None:
    assert descriptors.shape == (8, 128) and descriptors.dtype == np.float32
    assert np.isfinite(descriptors).all()
    np.testing.assert_array_equal(DlibFaceDescriptor().fit(rgb_faces).transform(rgb_faces),
                                  descriptors)


def test_small_shift_keeps_the_person_and_people_differ(rgb_faces, descriptors) -> None:
    rolled = DlibFaceDescriptor().transform(np.roll(rgb_faces, (3, 3), axis=(1, 2)))
    cropped = DlibFaceDescriptor().transform(rgb_faces[:, 3:, 3:])
    assert _distances(rolled, descriptors).max() < 0.2
    assert _distances(cropped, descriptors).max() < 0.2
    pairs = np.linalg.norm(descriptors[:, None] - descriptors[None], axis=2)[np.triu_indices(8, 1)]
    assert pairs.min() > 0.45 and np.median(pairs) > 0.7


def test_given_box_in_a_larger_photo(rgb_faces, descriptors) -> None:
    photos = np.full((8, 320, 360, 3), 90, np.uint8)
    photos[:, 50:250, 80:280] = rgb_faces
    # the default box of a 200x200 crop is inset by 10 pixels
    boxed = describe_faces(photos, [(60, 90, 180, 180)] * 8)
    assert _distances(boxed, descriptors).max() < 0.2


def test_faces_not_found_are_nan_rows_and_logged(dlib, rgb_faces, descriptors, caplog) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    batch = np.stack([np.zeros((200, 200, 3), np.uint8), rgb_faces[0], noise])
    with caplog.at_level(logging.WARNING, logger="features.embeddings"):
        rows = DlibFaceDescriptor().transform(batch)
    assert np.isnan(rows[[0, 2]]).all()
    np.testing.assert_array_equal(rows[1], descriptors[0])
    assert "no face found in 2 of 3 images (positions [0, 2])" in caplog.text
    unchecked = DlibFaceDescriptor(min_face_score=None).transform(batch)
    assert np.isfinite(unchecked).all()


def test_gray_and_wrong_types_are_refused(dlib, rgb_faces) -> None:
    with pytest.raises(ValueError, match='color="rgb"'):
        DlibFaceDescriptor().transform(rgb_faces[..., :1])
    with pytest.raises(ValueError, match="uint8"):
        describe_faces(rgb_faces.astype(np.float32))
    with pytest.raises(ValueError, match="landmarks"):
        DlibFaceDescriptor(landmarks=7).transform(rgb_faces[:1])


def test_missing_extra_says_how_to_install(monkeypatch, rgb_faces) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)
    descriptor = make_extractor("dlib")  # building and cloning need no dlib
    assert clone(descriptor).get_params()["num_jitters"] == 0
    for call in (descriptor.fit, descriptor.transform):
        with pytest.raises(ImportError, match=INSTALL.replace("[", r"\[").replace(".", r"\.")):
            call(rgb_faces[:1])


def test_missing_models_say_how_to_install(dlib, monkeypatch, rgb_faces) -> None:
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)
    with pytest.raises(ImportError, match="face-recognition-models package: pip install"):
        DlibFaceDescriptor().fit(rgb_faces[:1])


def test_registry_imports_neither_dlib_nor_tensorflow() -> None:
    code = ("import sys; import features; from features.extract import make_extractor; "
            "make_extractor('dlib'); print('dlib' in sys.modules, 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "False False"


def test_cached_extraction(tmp_path, face_paths, rgb_faces, descriptors,
                           counted_extraction) -> None:
    calls = counted_extraction
    settings = dict(size=(200, 200), color="rgb", cache_dir=tmp_path, progress=False)
    first = extract_features(face_paths[:4], make_extractor("dlib"), **settings)
    again = extract_features(face_paths[:4], make_extractor("dlib"), **settings)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.images, descriptors[:4])
    np.testing.assert_array_equal(again.images, first.images)


def test_pipeline_round_trip_in_a_fresh_process(dlib, tmp_path, face_paths) -> None:
    paths = face_paths[:20]
    genders = [parse_utkface_name(Path(p).name).gender for p in paths]
    pipeline = Pipeline([("load", ImageLoader(size=(200, 200), color="rgb")),
                         ("describe", DlibFaceDescriptor()), ("svm", SVC(C=10))])
    expected = pipeline.fit(paths, genders).predict(paths[:6]).tolist()
    joblib.dump(pipeline, tmp_path / "model.joblib")
    code = ("import json, sys, joblib; model = joblib.load(sys.argv[1]); "
            "print(json.dumps(model.predict(json.loads(sys.argv[2])).tolist()))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.joblib"),
                           json.dumps(paths[:6])], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout) == expected
