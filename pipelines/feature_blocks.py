"""Feature blocks: what a classical pipeline extracts from a face, extracted once.

A :class:`FeatureSpec` names one block (extractor, image size, colour, PCA components);
:func:`extract_blocks` extracts blocks in parallel through the feature cache, and
:func:`extract_views` every block a training run needs, over all faces of a split and
their mirror images.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from sklearn.pipeline import Pipeline

from features import ImageLoader, extract_features, make_extractor
from features.io import COLOR_MODES, DEFAULT_SIZE
from models.factory import Mirrored
from pipelines.dataset import DatasetIndex

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSpec:
    """One block of features: an extractor on images of one size and colour mode.

    Attributes
    ----------
    extractor : str
        Name for :func:`features.make_extractor` (``pixels``, ``hog``, ``lbp``, ``lbp-nri``,
        ``hog+lbp``, ``gabor``, ``dlib``).
    size : tuple of int
        Image (height, width) the extractor sees.
    color : {"gray", "rgb"}
        Colour mode of those images.
    n_components : int or None
        Principal components kept after standardising the block; None keeps all columns.
    """

    extractor: str
    size: tuple[int, int] = DEFAULT_SIZE
    color: str = "gray"
    n_components: int | None = None

    def __post_init__(self) -> None:
        make_extractor(self.extractor)          # raises for an unknown name
        if self.color not in COLOR_MODES:
            raise ValueError(f"colour must be one of {COLOR_MODES}, got {self.color!r}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be two positive integers, got {self.size}")
        if self.n_components is not None and self.n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components}")

    @classmethod
    def parse(cls, text: str) -> FeatureSpec:
        """Read ``EXTRACTOR[:SIZE[:COLOUR[:PCA]]]``, e.g. ``hog+lbp:128:gray:300``.

        SIZE is ``N`` (square) or ``HxW``; PCA is a number of components or ``none``.
        Omitted parts take the defaults: ``features.io.DEFAULT_SIZE``, gray and none.
        """
        parts = text.strip().split(":")
        if not 1 <= len(parts) <= 4 or not parts[0]:
            raise ValueError(f"feature spec {text!r}: expected EXTRACTOR[:SIZE[:COLOUR[:PCA]]]")
        try:
            size = tuple(int(v) for v in parts[1].lower().split("x")) if len(parts) > 1 \
                else DEFAULT_SIZE
            size = size * 2 if len(size) == 1 else size
            pca = parts[3].lower() if len(parts) > 3 else "none"
            n_components = None if pca == "none" else int(pca)
        except ValueError:
            raise ValueError(f"feature spec {text!r}: SIZE must be N or HxW and PCA a number "
                             f"of components or 'none'") from None
        return cls(parts[0], size, parts[2] if len(parts) > 2 else "gray", n_components)

    def __str__(self) -> str:
        height, width = self.size
        size = str(height) if height == width else f"{height}x{width}"
        return f"{self.extractor}:{size}:{self.color}:{self.n_components or 'none'}"

    @property
    def name(self) -> str:
        """Block name, e.g. ``hog+lbp@128x128gray``: one block per name in a pipeline."""
        return f"{self.extractor}@{self.size[0]}x{self.size[1]}{self.color}"

    def extractor_for(self, mirror: bool = False):
        """The block's stateless extractor of image batches; of the mirrored images if
        ``mirror``."""
        extractor = make_extractor(self.extractor)
        return Mirrored(extractor) if mirror else extractor

    def branch(self, mirror: bool = False) -> Pipeline:
        """Stateless ``ImageLoader -> extractor`` pipeline of this block."""
        return Pipeline([("load", ImageLoader(tuple(self.size), self.color)),
                         ("extract", self.extractor_for(mirror))])

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings, with the extractor's parameters."""
        return {"spec": str(self), "extractor": repr(make_extractor(self.extractor)),
                "size": list(self.size), "color": self.color,
                "n_components": self.n_components}


#: The default pipeline's features, chosen on the validation split: HOG of 128x128 and
#: 64x64 grayscale faces (shape at two scales), LBP of 128x128 faces (texture; uniform
#: codes that keep their orientation, which beat the rotation invariant ones for gender
#: and ethnicity in every fold of a 5-fold cross-validation on the training and
#: validation faces, and 100 principal components rather than 50, better for gender in
#: every fold and for ethnicity on average; benchmarks/README.md), 16x16 colour
#: thumbnails (skin tone, hair) and Gabor energies of 64x64 faces (oriented texture at
#: four scales; better by 5-fold cross-validation for ethnicity in 4 folds, +0.6 points,
#: for age in all 5, -0.05 years, and for gender on average), each block reduced by its
#: own PCA.
DEFAULT_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("hog", (128, 128), "gray", 250),
    FeatureSpec("hog", (64, 64), "gray", 100),
    FeatureSpec("lbp-nri", (128, 128), "gray", 100),
    FeatureSpec("pixels", (16, 16), "rgb", 50),
    FeatureSpec("gabor", (64, 64), "gray", 200),
)



@dataclass
class Features:
    """Feature rows of the readable faces of an index.

    Attributes
    ----------
    X : ndarray of float32, shape (n_kept, n_columns)
        Blocks concatenated in the order of the specs.
    kept : ndarray of int
        Positions in the index of the rows.
    blocks : list of (name, n_columns, n_components)
        Layout for :func:`models.factory.make_reducer`.
    """

    X: np.ndarray
    kept: np.ndarray
    blocks: list[tuple[str, int, int | None]]


def extract_blocks(index: DatasetIndex, specs: Sequence[FeatureSpec], *, mirror: bool = False,
                   n_jobs: int = 1, cache_dir: str | os.PathLike | None = None,
                   progress: bool = True) -> Features:
    """Extract every feature block of the faces of ``index`` (cached, in parallel).

    With ``mirror``, of the mirror images of the faces. Unreadable files are skipped by
    :func:`features.extract_features` (and logged), and so are faces a block could not
    describe (NaN rows, such as dlib descriptors of a face the detector does not
    confirm); a face is kept when every block has its row.
    """
    reports = [extract_features(index.paths, spec.extractor_for(mirror), size=tuple(spec.size),
                                color=spec.color, n_jobs=n_jobs, cache_dir=cache_dir,
                                progress=progress)
               for spec in specs]
    if not reports[0].kept.size and reports[0].failures:
        path, reason = reports[0].failures[0]
        raise ValueError(f"none of the {len(index)} images could be read, e.g. {path}: "
                         f"{reason}")
    kept = reports[0].kept
    for report in reports[1:]:
        kept = np.intersect1d(kept, report.kept)
    for spec, report in zip(specs, reports):
        undescribed = report.kept[np.isnan(report.images).any(axis=1)]
        if undescribed.size:
            logger.warning("%s: %d faces could not be described and are left out: %s",
                           spec, undescribed.size,
                           ", ".join(index.file_names[i] for i in undescribed[:5]))
            kept = np.setdiff1d(kept, undescribed)
    X = np.hstack([report.images[np.searchsorted(report.kept, kept)] for report in reports])
    blocks = [(spec.name, report.images.shape[1], spec.n_components)
              for spec, report in zip(specs, reports)]
    return Features(X, kept, blocks)




def _union(parts: dict[str, DatasetIndex]) -> DatasetIndex:
    """All faces of the parts as one index, sorted by file name like the folder's index."""
    faces = list(parts.values())
    names = np.concatenate([np.asarray(f.file_names, dtype=object) for f in faces])
    order = np.argsort(names)
    labels = {field: np.concatenate([getattr(f, field) for f in faces])[order]
              for field in ("age", "gender", "ethnicity")}
    return DatasetIndex(faces[0].folder, tuple(names[order]), skipped=faces[0].skipped,
                        **labels)


def _features_per_part(parts: dict[str, DatasetIndex], specs: Sequence[FeatureSpec],
                       extract: dict[str, Any], mirror: bool = False) -> dict[str, Features]:
    """Extract each block once over all faces of the parts (one cached call, whichever
    parts and models use it), then cut the rows of each part."""
    everyone = _union(parts)
    found = extract_blocks(everyone, specs, mirror=mirror, **extract)
    row_of_face = dict(zip(np.asarray(everyone.file_names)[found.kept], range(len(found.kept))))
    features = {}
    for part, faces in parts.items():
        rows = [(position, row_of_face[name]) for position, name in enumerate(faces.file_names)
                if name in row_of_face]
        positions, selected = (np.array(v, dtype=np.int64) for v in zip(*rows)) if rows \
            else (np.empty(0, np.int64), np.empty(0, np.int64))
        features[part] = Features(found.X[selected], positions, found.blocks)
    return features


def extract_views(parts: dict[str, DatasetIndex], specs: Sequence[FeatureSpec], *,
                  flip: bool = False, n_jobs: int = 1,
                  cache_dir: str | os.PathLike | None = None,
                  progress: bool = True) -> tuple[dict[str, Features], dict[str, Features]]:
    """Every feature block :func:`train_tasks` needs, extracted (or read from the cache).

    Each block is extracted once over the faces of all parts, and once over the mirror
    images of the faces that are judged from both views (validation and test, and
    training faces too with ``flip``); calling this first fills the feature cache for
    every model trained on the same blocks.

    Returns
    -------
    (dict, dict)
        :class:`Features` per part of the faces, and of the mirrored faces.
    """
    extract = {"n_jobs": n_jobs, "cache_dir": cache_dir, "progress": progress}
    features = _features_per_part(parts, specs, extract)
    mirrored = _features_per_part({part: faces for part, faces in parts.items()
                                   if part != "train" or flip}, specs, extract, mirror=True)
    return features, mirrored


