"""Face detection and alignment on synthetic scenes with known boxes."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchmarks.scenes import compose_scene, paste_face, read_truth, write_scene_set
from features.alignment import (ALIGNED_SIZE, UTKFACE_LANDMARKS, FaceBox, align_face,
                                dlib_landmarks, measure_template)
from features.faces import DETECTORS, _search_view, detect_faces

dlib = pytest.importorskip("dlib")


def scene(face_path: str, side: int, roll: float, centre=(210, 300),
          size=(560, 420)) -> tuple[Image.Image, FaceBox]:
    """A UTKFace crop scaled to ``side``, rolled and pasted on a flat background."""
    photo = Image.new("RGB", size, (90, 120, 90))
    face = Image.open(face_path).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    paste_face(photo, np.asarray(face), centre, roll)
    row, col = centre
    return photo, FaceBox(row - side // 2, col - side // 2, side, side)


@pytest.fixture(scope="module")
def adults(face_paths) -> list[str]:
    """Sample faces of adults (ages 20-60), which every detector should find upright."""
    return [path for path in face_paths
            if 20 <= int(path.rsplit("/", 1)[-1].split("_")[0]) <= 60][:6]


@pytest.mark.parametrize("detector", DETECTORS)
def test_upright_faces_are_found_at_their_box(adults, detector) -> None:
    found = 0
    for path in adults[:3]:
        photo, truth = scene(path, 160, 0.0)
        faces = detect_faces(photo, detector)
        found += bool(faces) and faces[0].box.iou(truth) >= 0.5
        assert len(faces) <= 1   # no second box for one face
    assert found >= 2


@pytest.mark.parametrize("side, roll", [(200, 25.0), (200, -30.0), (64, 0.0), (64, 15.0)])
def test_rolled_and_small_faces_are_found_and_levelled(adults, side, roll) -> None:
    hits = 0
    for path in adults:
        photo, truth = scene(path, side, roll)
        faces = detect_faces(photo)
        if faces and faces[0].box.iou(truth) >= 0.5:
            hits += 1
            assert faces[0].angle == pytest.approx(roll, abs=6)
            assert faces[0].crop.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3)
    assert hits >= 5


def test_alignment_puts_the_landmarks_where_utkface_has_them(adults) -> None:
    """A rolled, shrunk face, found and aligned, has its landmarks back at the template."""
    for path in adults[:3]:
        photo, _ = scene(path, 120, 20.0)
        (face,) = detect_faces(photo)
        points = dlib_landmarks(face.crop, dlib.rectangle(15, 15, 195, 195))
        assert np.abs(points - UTKFACE_LANDMARKS).mean() < 4   # UTKFace's own spread: ~5 px sd


def test_align_face_on_the_template_returns_the_photo_itself(face_paths) -> None:
    image = np.asarray(Image.open(face_paths[0]).convert("RGB"))
    aligned = align_face(image, UTKFACE_LANDMARKS, score=1.5)
    assert aligned.box == FaceBox(0, 0, 200, 200) and aligned.angle == pytest.approx(0)
    assert aligned.score == 1.5
    assert np.abs(aligned.crop.astype(int) - image).max() <= 1
    with pytest.raises(ValueError, match="51 finite"):
        align_face(image, UTKFACE_LANDMARKS[:4])


def test_template_is_the_mean_of_utkface_crops(face_paths) -> None:
    template, missed = measure_template(face_paths[:40])
    assert missed <= 4 and template.shape == UTKFACE_LANDMARKS.shape == (51, 2)
    assert np.abs(template - UTKFACE_LANDMARKS).max() < 5


def test_search_view_maps_points_back_exactly() -> None:
    photo = Image.new("RGB", (300, 200))
    photo.putpixel((250, 40), (255, 255, 255))
    view, to_view = _search_view(photo, 1.5, 20.0)
    bright = np.argwhere(view[..., 0] > 60)
    (col, row), = to_view([[250.5, 40.5]])
    assert np.abs(bright.mean(axis=0) - [row, col]).max() < 1.5
    assert to_view.inverse(to_view([[250, 40]])) == pytest.approx(np.array([[250, 40]]))


@pytest.mark.parametrize("detector", DETECTORS)
def test_no_face_in_blank_or_noise(detector) -> None:
    rng = np.random.default_rng(0)
    assert detect_faces(np.full((300, 400, 3), 128, np.uint8), detector) == []
    assert detect_faces(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), detector) == []


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="detector must be one of"):
        detect_faces(np.zeros((50, 50, 3), np.uint8), "haar")
    with pytest.raises(ValueError, match="min_size"):
        detect_faces(np.zeros((50, 50, 3), np.uint8), min_size=0)


def test_scene_set_has_faces_where_its_truth_says(face_paths, tmp_path) -> None:
    truth_path = write_scene_set(tmp_path, face_paths[:12], 4, seed=3,
                                 face_sizes=(80, 140), max_roll=10)
    truth = read_truth(truth_path)
    assert sorted(truth) == [f"scene_{i:04d}.jpg" for i in range(4)]
    names = {path.rsplit("/", 1)[-1] for path in face_paths[:12]}
    placed = [face for faces in truth.values() for face in faces]
    assert {face.file for face in placed} <= names
    assert len({face.file for face in placed}) == len(placed)    # each face used once
    hits = sum(any(face.box.iou(found.box) >= 0.5
                   for found in detect_faces(Image.open(tmp_path / photo)))
               for photo, faces in truth.items() for face in faces)
    assert hits >= len(placed) - 1
    with pytest.raises(ValueError, match="faces"):
        write_scene_set(tmp_path, face_paths[:5], 4)


def test_compose_scene_keeps_faces_apart(face_paths) -> None:
    _, faces = compose_scene(np.random.default_rng(0), face_paths[:3], face_sizes=(100, 150))
    for i, a in enumerate(faces):
        for b in faces[i + 1:]:
            assert a.box.iou(b.box) == 0
