"""Shared fixtures: a small, fixed sample of real UTKFace faces."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

from features import extract
from features.io import load_images
from pipelines.dataset import default_data_dir, index_folder


@pytest.fixture(scope="session")
def face_paths() -> list[str]:
    """24 real faces spread over the sorted folder (all ages), or skip without data."""
    folder = default_data_dir()
    if not folder.is_dir():
        pytest.skip(f"UTKFace sample not found at {folder} (set UTKFACE_DIR)")
    paths = index_folder(folder).paths
    return list(paths[:: max(1, len(paths) // 24)][:24])


@pytest.fixture(scope="session")
def face_images(face_paths) -> np.ndarray:
    """The sample decoded to (24, 128, 128, 1) uint8."""
    return load_images(face_paths, progress=False).images


@pytest.fixture
def counted_extraction(monkeypatch) -> list:
    """Record every extraction that really runs (feature-cache misses)."""
    calls = []
    original = extract.map_image_chunks

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(extract, "map_image_chunks", counting)
    return calls


def link_faces(folder: Path, paths) -> Path:
    """Make ``folder`` a UTKFace-style folder of symbolic links to ``paths`` (no copies)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        (folder / os.path.basename(path)).symlink_to(path)
    return folder


def link_random_faces(folder: Path, data: Path, count: int, seed: int) -> Path:
    """Make ``folder`` a folder of links to ``count`` faces of ``data``, drawn with ``seed``."""
    names = random.Random(seed).sample(sorted(os.listdir(data)), count)
    return link_faces(folder, [data / name for name in names])
