"""Face detection on composited photos and cropping to the UTKFace framing."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from features.faces import CROP_SCALE, FaceBox, crop_face, detect_faces


def composite(face_path: str, top: int, left: int, size=(520, 420)) -> Image.Image:
    """A UTKFace crop pasted on a flat background at a known place."""
    photo = Image.new("RGB", size, (90, 120, 90))
    photo.paste(Image.open(face_path).convert("RGB"), (left, top))
    return photo


def test_detected_box_overlaps_the_pasted_face(face_paths) -> None:
    hits = 0
    for path in face_paths[8:16]:  # adults and children of the sample
        photo = composite(path, top=120, left=260)
        faces = detect_faces(np.asarray(photo.convert("L")))
        truth = FaceBox(120, 260, 200, 200)
        hits += bool(faces) and faces[0].iou(truth) > 0.5
    assert hits >= 6


def test_large_photo_is_searched_downscaled_and_mapped_back(face_paths) -> None:
    photo = composite(face_paths[12], top=300, left=700, size=(1600, 1000))
    photo = photo.resize((2400, 1500))  # face now 300 px at (450, 1050)
    faces = detect_faces(np.asarray(photo.convert("L")), max_side=800)
    assert faces and faces[0].iou(FaceBox(450, 1050, 300, 300)) > 0.5


def test_blank_image_has_no_face() -> None:
    assert detect_faces(np.full((300, 300), 128, np.uint8)) == []
    with pytest.raises(ValueError, match="grayscale"):
        detect_faces(np.zeros((30, 30, 3), np.uint8))


def test_crop_is_square_and_padded_at_the_border() -> None:
    photo = Image.fromarray(np.arange(100 * 80, dtype=np.uint32).reshape(100, 80).astype(np.uint8))
    crop = crop_face(photo, FaceBox(top=-10, left=50, height=60, width=60))
    assert crop.size == (round(60 * CROP_SCALE),) * 2
    assert np.asarray(crop)[0].tolist() == np.asarray(crop)[1].tolist()  # edge rows repeated
    inside = crop_face(photo, FaceBox(top=20, left=10, height=40, width=40))
    assert inside.size == (round(40 * CROP_SCALE),) * 2
