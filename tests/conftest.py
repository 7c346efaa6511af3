"""Shared fixtures: a small, fixed sample of real UTKFace faces."""
from __future__ import annotations

import numpy as np
import pytest

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
