"""Named extractors, and extraction over many files: parallel, reported, cached on disk."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence

from joblib import Memory
from sklearn.base import clone
from sklearn.pipeline import FeatureUnion

from features.embeddings import DlibFaceDescriptor
from features.gabor import GaborFeatures
from features.hog import HOGFeatures
from features.io import DEFAULT_SIZE, LoadReport, map_image_chunks
from features.lbp import LBPFeatures
from features.pixels import PixelFeatures

logger = logging.getLogger(__name__)

EXTRACTORS = {
    "pixels": PixelFeatures(),
    "hog": HOGFeatures(),
    "lbp": LBPFeatures(),
    "lbp-nri": LBPFeatures(method="nri_uniform"),
    "hog+lbp": FeatureUnion([("hog", HOGFeatures()), ("lbp", LBPFeatures())]),
    "gabor": GaborFeatures(),
    # dlib is imported by fit/transform only; extract with size=(200, 200), color="rgb"
    "dlib": DlibFaceDescriptor(),
}


def make_extractor(name: str):
    """A fresh stateless extractor by name: ``pixels``, ``hog``, ``lbp`` (rotation
    invariant uniform codes), ``lbp-nri`` (uniform codes that keep their orientation),
    ``hog+lbp``, ``gabor`` (Gabor filter-bank energies, :mod:`features.gabor`) or ``dlib``
    (pretrained face descriptors, :mod:`features.embeddings`).

    Learnt steps such as PCA belong to the model pipeline after these (see
    :func:`features.pixels.eigenfaces`).
    """
    if name not in EXTRACTORS:
        raise ValueError(f"unknown extractor {name!r}; choose from {sorted(EXTRACTORS)}")
    return clone(EXTRACTORS[name])


def file_digests(paths: Sequence[str]) -> list[str]:
    """SHA-1 of each file's bytes; ``""`` for a file that cannot be read.

    Part of the cache key, so that a changed, replaced or deleted image is read again
    while a copy or a fresh download of the same images (new modification times)
    is not. Hashing the 19,010 UTKFace files takes about half a second.
    """
    digests = []
    for path in paths:
        try:
            with open(path, "rb") as file:
                digests.append(hashlib.file_digest(file, "sha1").hexdigest())
        except OSError:
            digests.append("")
    return digests


def _extract(paths: list[str], digests: list[str], extractor, size: tuple[int, int],
             color: str, n_jobs: int, progress: bool) -> LoadReport:
    """Cached unit of work; ``digests`` only takes part in the cache key."""
    return map_image_chunks(paths, size, color, extractor.transform, n_jobs,
                            progress=progress, description=f"extracting {type(extractor).__name__}")


def extract_features(paths: Sequence[str | os.PathLike], extractor, *,
                     size: tuple[int, int] = DEFAULT_SIZE, color: str = "gray",
                     n_jobs: int = 1, cache_dir: str | os.PathLike | None = None,
                     progress: bool = True) -> LoadReport:
    """Decode, resize and transform image files with a stateless extractor.

    Parameters
    ----------
    paths : sequence of path-like
        Image files.
    extractor : transformer
        Stateless (``HOGFeatures``, ``LBPFeatures``, ``PixelFeatures`` or a
        ``FeatureUnion`` of them); it runs inside the worker processes.
    size, color
        Image size (height, width) and ``"gray"``/``"rgb"``.
    n_jobs : int
        Worker processes.
    cache_dir : path-like, optional
        Folder of a joblib on-disk cache. The key is the paths, the SHA-1 of each
        file's contents, the extractor's parameters, size and colour: the same files
        with the same settings are read from disk, and a changed image or setting
        extracts again.
    progress : bool
        Show a progress bar.

    Returns
    -------
    LoadReport
        ``images`` holds the feature rows (float32) of the files that could be read,
        ``kept`` their positions in ``paths`` and ``failures`` the skipped files.
    """
    paths = [os.fspath(p) for p in paths]
    if cache_dir is None:
        return _extract(paths, None, extractor, size, color, n_jobs, progress)
    memory = Memory(Path(cache_dir), verbose=0)
    cached = memory.cache(_extract, ignore=["n_jobs", "progress"])
    return cached(paths, file_digests(paths), extractor, tuple(size), color, n_jobs, progress)
