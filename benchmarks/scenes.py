"""Synthetic photos with faces at known places: the scene set of the detection benchmark.

A scene is a background (a random region of one of scikit-image's sample photos,
flipped at random, or smooth generated noise) with one or more UTKFace crops pasted
in, each scaled to a side in ``face_sizes``, rolled by up to ``max_roll`` degrees and
placed so that no two overlap. A face's true box is the square its crop covers before
the roll: the UTKFace framing, which is what :func:`features.faces.detect_faces` reports.

UTKFace's crops have no surroundings, while a face realigned in a photo is framed from
its own landmarks, a few pixels off its crop; so each crop is pasted with a margin of
``margin`` of its side on every side, its own border mirrored (as a photo would have
more of the scene there), rather than with a hard edge to the background.
:func:`write_scene_set` writes photos and a ``truth.csv``; :func:`read_truth` reads it.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from features.alignment import FaceBox
from features.io import load_image
from pipelines.reports import atomic_write_bytes

#: scikit-image sample photos without human faces (``skimage.data`` names; not
#: ``astronaut`` or ``camera``, which show people, nor ``coins``, which shows heads).
BACKGROUNDS: tuple[str, ...] = (
    "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "brick", "grass", "gravel",
    "immunohistochemistry", "moon", "clock", "colorwheel")
TRUTH_FILE = "truth.csv"
TRUTH_COLUMNS = ("photo", "face", "file", "top", "left", "height", "width", "roll")
_GENERATED_SHARE = 0.25
_PLACEMENT_TRIES = 200


@dataclass(frozen=True)
class PlacedFace:
    """A face pasted into a scene: its source crop, true box and roll in degrees
    (counter-clockwise as displayed)."""

    file: str
    box: FaceBox
    roll: float


def background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A (width, height) RGB background: a random region of a sample photo, or noise."""
    width, height = size
    if rng.random() < _GENERATED_SHARE:
        noise = rng.normal(size=(height // 8 + 1, width // 8 + 1, 3))
        smooth = gaussian_filter(noise, sigma=(2, 2, 0))
        smooth = (smooth - smooth.min()) / np.ptp(smooth) * 255
        return Image.fromarray(smooth.astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    from skimage import data

    photo = Image.fromarray(getattr(data, BACKGROUNDS[rng.integers(len(BACKGROUNDS))])())
    photo = photo.convert("RGB")
    part = rng.uniform(0.5, 1.0)
    crop_w, crop_h = round(photo.width * part), round(photo.height * part)
    left = int(rng.integers(photo.width - crop_w + 1))
    top = int(rng.integers(photo.height - crop_h + 1))
    region = photo.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        region = region.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return region.resize(size, Image.Resampling.BILINEAR)


def paste_face(scene: Image.Image, crop: np.ndarray, centre: tuple[float, float],
               roll: float, border: int = 0) -> None:
    """Paste a face crop into ``scene`` (in place), centred at ``centre`` (row, col),
    rolled by ``roll`` degrees, with ``border`` pixels of its own edge mirrored around it."""
    face = Image.fromarray(np.pad(crop, ((border, border), (border, border), (0, 0)),
                                  mode="symmetric"))
    mask = Image.new("L", face.size, 255).rotate(roll, expand=True)
    face = face.rotate(roll, resample=Image.Resampling.BICUBIC, expand=True)
    row, col = centre
    scene.paste(face, (round(col - face.width / 2), round(row - face.height / 2)), mask)


def compose_scene(rng: np.random.Generator, face_paths: Sequence[str | os.PathLike], *,
                  size: tuple[int, int] = (640, 480), face_sizes: tuple[int, int] = (60, 260),
                  max_roll: float = 30.0,
                  margin: float = 0.15) -> tuple[Image.Image, list[PlacedFace]]:
    """Paste the given faces into a new background.

    Parameters
    ----------
    rng : numpy Generator
        Source of every random choice.
    face_paths : sequence of path-like
        UTKFace crops to paste, in order; a face that finds no free place (after 200
        tries) is left out.
    size : (int, int)
        (width, height) of the scene.
    face_sizes : (int, int)
        Smallest and largest side of a pasted crop, pixels.
    max_roll : float
        Largest roll, degrees, either way.
    margin : float
        Mirrored border added around each crop, as a fraction of its side.

    Returns
    -------
    (PIL.Image.Image, list of PlacedFace)
    """
    scene = background(rng, size)
    placed: list[tuple[PlacedFace, float]] = []   # with the rolled crop's half extent
    for path in face_paths:
        side = int(rng.integers(face_sizes[0], face_sizes[1] + 1))
        border = round(margin * side)
        roll = float(rng.uniform(-max_roll, max_roll))
        half = (side + 2 * border) * (abs(np.cos(np.radians(roll)))
                                      + abs(np.sin(np.radians(roll)))) / 2
        for _ in range(_PLACEMENT_TRIES):
            if 2 * half >= min(size):
                break
            col = rng.uniform(half, size[0] - half)
            row = rng.uniform(half, size[1] - half)
            box = FaceBox(round(row - side / 2), round(col - side / 2), side, side)
            free = all(abs(row - (other.box.top + other.box.height / 2)) > half + extent
                       or abs(col - (other.box.left + other.box.width / 2)) > half + extent
                       for other, extent in placed)
            if free:
                paste_face(scene, load_image(path, (side, side), "rgb"), (row, col), roll,
                           border)
                placed.append((PlacedFace(Path(path).name, box, roll), half))
                break
    return scene, [face for face, _ in placed]


def write_scene_set(out_dir: str | os.PathLike, face_paths: Sequence[str | os.PathLike],
                    n_photos: int, *, seed: int = 0, faces_per_photo: tuple[int, int] = (1, 3),
                    **scene_options) -> Path:
    """Write ``n_photos`` scenes (``scene_0000.jpg``...) and their ``truth.csv``.

    Faces are drawn without replacement from ``face_paths`` (so ``n_photos`` x the
    largest ``faces_per_photo`` must not exceed them); ``scene_options`` go to
    :func:`compose_scene`. Returns the truth file's path.
    """
    rng = np.random.default_rng(seed)
    if n_photos * faces_per_photo[1] > len(face_paths):
        raise ValueError(f"{n_photos} photos of up to {faces_per_photo[1]} faces need "
                         f"{n_photos * faces_per_photo[1]} faces, got {len(face_paths)}")
    order = rng.permutation(len(face_paths))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, used = [], 0
    for index in range(n_photos):
        count = int(rng.integers(faces_per_photo[0], faces_per_photo[1] + 1))
        chosen = [face_paths[i] for i in order[used:used + count]]
        used += count
        scene, faces = compose_scene(rng, chosen, **scene_options)
        name = f"scene_{index:04d}.jpg"
        scene.save(out / name, quality=95)
        rows += [[name, i, face.file, face.box.top, face.box.left, face.box.height,
                  face.box.width, round(face.roll, 2)] for i, face in enumerate(faces)]
    lines = [",".join(TRUTH_COLUMNS)] + [",".join(map(str, row)) for row in rows]
    truth = out / TRUTH_FILE
    atomic_write_bytes(truth, ("\n".join(lines) + "\n").encode())
    return truth


def read_truth(path: str | os.PathLike) -> dict[str, list[PlacedFace]]:
    """Photo name -> its faces, from a ``truth.csv`` written by :func:`write_scene_set`."""
    scenes: dict[str, list[PlacedFace]] = {}
    with open(path, newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            box = FaceBox(*(int(row[key]) for key in ("top", "left", "height", "width")))
            scenes.setdefault(row["photo"], []).append(
                PlacedFace(row["file"], box, float(row["roll"])))
    return scenes
