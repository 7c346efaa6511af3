"""The shared train/val/test split of a UTKFace index, stored as a JSON manifest.

Every model is trained, tuned and scored on the same split, so the split is made once
(:func:`make_split`), saved as a manifest of file names and reloaded
(:func:`load_or_create_split`).

Stratification rule
-------------------
Faces are stratified on gender x ethnicity x age group. A stratum needs at least
two faces for a stratified split, so rare strata fall back, deterministically, to a
coarser key: the faces of fine strata with fewer than 2 members are pooled by gender
x ethnicity; those still in groups of fewer than 2 are pooled by gender, then all
together; a last single leftover face joins the largest stratum (ties broken by the
smallest key). If there are more strata than faces in the smallest part, the whole
split starts from the next coarser level (gender x ethnicity, gender, none).
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import resources
import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from models.labels import age_group
from pipelines.dataset import DatasetIndex
from pipelines.reports import atomic_write_bytes

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: The project's shared split of the UTKFace dev set (seed 0), shipped as package data
DEFAULT_MANIFEST = Path(str(resources.files("pipelines") / "manifests" / "utkface.json"))
STRATIFY_ON = "gender x ethnicity x age_group"
PARTS: tuple[str, ...] = ("train", "val", "test")
_MIN_STRATUM = 2
_NAMES_SHOWN = 5
_MANIFEST_KEYS = frozenset(
    {"format_version", "seed", "val_size", "test_size", "stratify", *PARTS}
)


def _check_fractions(val_size: float, test_size: float) -> None:
    for label, value in (("val_size", val_size), ("test_size", test_size)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"{label} must be a fraction in (0, 1), got {value!r}")
    if val_size + test_size >= 1:
        raise ValueError(
            f"val_size + test_size must be < 1 to leave faces for training, "
            f"got {val_size} + {test_size}"
        )


@dataclass(frozen=True)
class Split:
    """A train/val/test split as sorted tuples of file names.

    Attributes
    ----------
    train, val, test : tuple of str
        File names of each part, sorted, disjoint.
    seed : int
        Random seed the split was made with.
    val_size, test_size : float
        Requested fractions of the whole index.
    stratify_on : str
        What the split is stratified on.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    seed: int
    val_size: float
    test_size: float
    stratify_on: str = STRATIFY_ON

    def __post_init__(self) -> None:
        _check_fractions(self.val_size, self.test_size)
        for part in PARTS:
            object.__setattr__(self, part, tuple(sorted(getattr(self, part))))
        counts = Counter(name for part in PARTS for name in getattr(self, part))
        duplicates = sorted(name for name, count in counts.items() if count > 1)
        if duplicates:
            raise ValueError(
                f"{len(duplicates)} file names appear more than once across or within "
                f"train/val/test: {duplicates[:_NAMES_SHOWN]}"
            )

    def to_manifest(self) -> dict[str, Any]:
        """Return the split as a JSON-serializable manifest.

        Returns
        -------
        dict
            ``format_version``, ``seed``, ``val_size``, ``test_size``, ``stratify``
            and the ``train``, ``val``, ``test`` file-name lists.
        """
        return {
            "format_version": FORMAT_VERSION,
            "seed": self.seed,
            "val_size": self.val_size,
            "test_size": self.test_size,
            "stratify": self.stratify_on,
            **{part: list(getattr(self, part)) for part in PARTS},
        }

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the manifest's canonical JSON (sorted keys, compact)."""
        canonical = json.dumps(self.to_manifest(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """Write the manifest as JSON, atomically (temp file then ``os.replace``).

        Parameters
        ----------
        path : str or os.PathLike
            Destination file; missing parent folders are created.
        """
        text = json.dumps(self.to_manifest(), indent=1, sort_keys=True) + "\n"
        atomic_write_bytes(path, text.encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Split:
        """Read a manifest written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
            The manifest file.

        Returns
        -------
        Split
            The stored split.

        Raises
        ------
        FileNotFoundError
            If `path` does not exist.
        ValueError
            If the file is not valid JSON, has another format version, misses keys,
            has wrongly typed values or repeats a file name.
        """
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"split manifest not found: {source}")
        try:
            manifest = json.loads(source.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"split manifest {source} is not valid JSON: {error}") from error
        _check_manifest(manifest, source)
        return cls(
            train=tuple(manifest["train"]),
            val=tuple(manifest["val"]),
            test=tuple(manifest["test"]),
            seed=manifest["seed"],
            val_size=manifest["val_size"],
            test_size=manifest["test_size"],
            stratify_on=manifest["stratify"],
        )

    def apply(self, index: DatasetIndex) -> dict[str, DatasetIndex]:
        """Split an index into its train, val and test subsets.

        Parameters
        ----------
        index : DatasetIndex
            An index holding every file the split names.

        Returns
        -------
        dict of str to DatasetIndex
            Keys ``"train"``, ``"val"``, ``"test"``.

        Raises
        ------
        ValueError
            If the split names files that are not in `index`.
        """
        known = set(index.file_names)
        named = [name for part in PARTS for name in getattr(self, part)]
        missing = sorted(name for name in named if name not in known)
        if missing:
            raise ValueError(
                f"the split names {len(missing)} of its {len(named)} files that are not in "
                f"the index of {index.folder} (e.g. {missing[:_NAMES_SHOWN]}); was the "
                f"manifest made for another folder?"
            )
        unassigned = len(index) - len(named)
        if unassigned:
            logger.warning(
                "%d faces of %s are in no part of the split and are left out",
                unassigned, index.folder,
            )
        return {part: index.subset(getattr(self, part)) for part in PARTS}


def names_sha256(names: Iterable[str]) -> str:
    """Hex SHA-256 of a set of file names (sorted, one per line).

    Identifies the faces a model was scored on: two models with the same digest saw
    exactly the same test faces.
    """
    return hashlib.sha256("\n".join(sorted(names)).encode("utf-8")).hexdigest()


def _check_manifest(manifest: Any, source: Path) -> None:
    if not isinstance(manifest, dict):
        raise ValueError(f"split manifest {source} must hold a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"split manifest {source} has format_version {version!r}; "
            f"this code reads version {FORMAT_VERSION}"
        )
    missing = sorted(_MANIFEST_KEYS - manifest.keys())
    if missing:
        raise ValueError(f"split manifest {source} lacks keys {missing}")
    if isinstance(manifest["seed"], bool) or not isinstance(manifest["seed"], int):
        raise ValueError(f"split manifest {source}: seed must be an integer")
    for part in PARTS:
        names = manifest[part]
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ValueError(f"split manifest {source}: {part} must be a list of file names")


def _part_count(fraction: float, total: int) -> int:
    return max(1, math.floor(fraction * total + 0.5))


def _level_keys(columns: list[np.ndarray], level: int) -> np.ndarray:
    """Keys from the first ``len(columns) - level`` columns ("*" when none is left)."""
    kept = columns[: len(columns) - level]
    if not kept:
        return np.full(len(columns[0]), "*", dtype=object)
    return np.array(["/".join(map(str, values)) for values in zip(*kept)], dtype=object)


def _fallback_keys(columns: list[np.ndarray], start_level: int) -> np.ndarray:
    """Give each face the finest key, from `start_level` on, shared by >= 2 pending faces."""
    keys = np.full(len(columns[0]), "", dtype=object)
    pending = np.ones(len(keys), dtype=bool)
    for level in range(start_level, len(columns) + 1):
        level_keys = _level_keys(columns, level)
        counts = Counter(level_keys[pending])
        settled = pending & np.array([counts[key] >= _MIN_STRATUM for key in level_keys])
        keys[settled] = level_keys[settled]
        pending &= ~settled
    if pending.any():
        # A single face is left over at the coarsest level: it joins the largest stratum.
        counts = Counter(keys[~pending])
        keys[pending] = min(counts, key=lambda key: (-counts[key], key))
    return keys


def _stratify_keys(index: DatasetIndex, max_strata: int) -> np.ndarray:
    """Stratum keys, starting as fine as allows at most `max_strata` strata."""
    columns = [index.gender, index.ethnicity, age_group(index.age)]
    for start_level in range(len(columns)):
        keys = _fallback_keys(columns, start_level)
        if len(set(keys)) <= max_strata:
            return keys
    return _fallback_keys(columns, len(columns))


def _stratified_part(
    index: DatasetIndex, part_size: int, seed: int
) -> tuple[DatasetIndex, DatasetIndex]:
    """Split `index` into (rest, part) with `part_size` faces in the part."""
    rest_size = len(index) - part_size
    if rest_size < 1:
        raise ValueError(f"an index of {len(index)} faces is too small to split")
    keys = _stratify_keys(index, max_strata=min(part_size, rest_size))
    rest, part = train_test_split(
        np.arange(len(index)), test_size=part_size, random_state=seed, shuffle=True,
        stratify=keys,
    )
    return index.subset(rest), index.subset(part)


def make_split(
    index: DatasetIndex, *, seed: int = 0, val_size: float = 0.1, test_size: float = 0.1
) -> Split:
    """Make a stratified train/val/test split of an index.

    The test part is split off first, then the val part from the rest, each with
    sklearn's ``train_test_split`` stratified as described in the module docstring.
    Part sizes are ``round(fraction * len(index))``, at least 1 face.

    Parameters
    ----------
    index : DatasetIndex
        The faces to split.
    seed : int, default 0
        Random seed; the same index and seed give the same split.
    val_size, test_size : float, default 0.1
        Fractions of the whole index for validation and test, each in (0, 1),
        summing to less than 1.

    Returns
    -------
    Split
        The split.

    Raises
    ------
    ValueError
        If the fractions are invalid or the index is too small to leave a face in
        each part.
    """
    _check_fractions(val_size, test_size)
    rest, test = _stratified_part(index, _part_count(test_size, len(index)), seed)
    train, val = _stratified_part(rest, _part_count(val_size, len(index)), seed)
    return Split(
        train=train.file_names, val=val.file_names, test=test.file_names,
        seed=seed, val_size=val_size, test_size=test_size,
    )


def load_or_create_split(
    index: DatasetIndex,
    manifest_path: str | os.PathLike,
    *,
    seed: int = 0,
    val_size: float = 0.1,
    test_size: float = 0.1,
) -> Split:
    """Load the split manifest at `manifest_path`, or make and save it if absent.

    A loaded manifest wins over the arguments: a warning is logged when its seed or
    fractions differ from the requested ones.

    Parameters
    ----------
    index : DatasetIndex
        The faces to split when no manifest exists yet.
    manifest_path : str or os.PathLike
        Where the manifest is read from or written to.
    seed : int, default 0
        Random seed for a new split.
    val_size, test_size : float, default 0.1
        Fractions for a new split.

    Returns
    -------
    Split
        The loaded or newly made split.
    """
    path = Path(manifest_path)
    if path.exists():
        split = Split.load(path)
        requested = (seed, val_size, test_size)
        if (split.seed, split.val_size, split.test_size) != requested:
            logger.warning(
                "Split manifest %s has seed=%s, val_size=%s, test_size=%s, not the requested "
                "seed=%s, val_size=%s, test_size=%s; using the manifest",
                path, split.seed, split.val_size, split.test_size, *requested,
            )
        return split
    split = make_split(index, seed=seed, val_size=val_size, test_size=test_size)
    split.save(path)
    logger.info(
        "Saved a new split of %d faces (train %d, val %d, test %d) to %s",
        len(index), len(split.train), len(split.val), len(split.test), path,
    )
    return split
