"""Index of a flat UTKFace image folder: file names and the labels they encode.

UTKFace names are ``[age]_[gender]_[race]_[date&time].jpg.chip.jpg``. A few real names
are malformed; :func:`parse_utkface_name` keeps those whose labels are unambiguous
(a space before the extension, a missing dot in the extension, a 16- or 18-digit
timestamp) and rejects the others with a reason (notably a missing race field,
where guessing would mislabel the face). Only names are read, never pixels.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from models.labels import AGE_MAX, AGE_MIN, ETHNICITY_NAMES, GENDER_NAMES, TASKS, age_group

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
DATA_DIR_ENV = "UTKFACE_DIR"

_MAX_TIMESTAMP_DIGITS = 20
#: A third and last field this long is a timestamp, so the race field is missing.
_MIN_TIMESTAMP_DIGITS_WITHOUT_RACE = 8
_MAX_NAMES_LOGGED = 10

# An image extension; the dot may be missing after "chip" (".jpg.chipjpg").
_IMAGE_SUFFIX_RE = re.compile(r"(?:\.|chip)(?:jpe?g|png)$", re.IGNORECASE)
# Stem, optional whitespace, then ".jpg.chip.jpg" with any one of its dots possibly
# missing, or a plain image extension.
_NAME_RE = re.compile(
    r"^(?P<stem>.*?)\s*(?:\.?(?:jpe?g|png)\.?chip\.?|\.)(?:jpe?g|png)$", re.IGNORECASE
)
_DIGITS_RE = re.compile(r"[0-9]+")


class UTKFaceNameError(ValueError):
    """A file name that does not encode UTKFace labels unambiguously.

    Attributes
    ----------
    name : str
        The offending file name.
    reason : str
        Why it was rejected, e.g. ``"missing race field"``.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"cannot parse UTKFace file name {name!r}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class FaceLabels:
    """Labels encoded in one UTKFace file name.

    Attributes
    ----------
    age : int
        Age in years, ``AGE_MIN..AGE_MAX``.
    gender : int
        Index into ``GENDER_NAMES`` (0 male, 1 female).
    ethnicity : int
        Index into ``ETHNICITY_NAMES`` (0 White .. 4 Others).
    """

    age: int
    gender: int
    ethnicity: int


def is_image_name(name: str) -> bool:
    """Return whether `name` looks like an image file (hidden files excluded).

    Parameters
    ----------
    name : str
        A file name, without directory.

    Returns
    -------
    bool
        True for non-hidden names ending in .jpg, .jpeg or .png (any case, trailing
        whitespace allowed, and "chipjpg" accepted for a missing dot).
    """
    return not name.startswith(".") and _IMAGE_SUFFIX_RE.search(name.rstrip()) is not None


def parse_utkface_name(name: str) -> FaceLabels:
    """Parse the labels from a UTKFace file name.

    The first three underscore-separated fields are age, gender and race; the
    optional fourth is a timestamp of 1 to 20 digits. Three fields whose last one has
    8 or more digits are age, gender and a timestamp: the race is missing.

    Parameters
    ----------
    name : str
        File name without directory, e.g. ``"25_0_1_20170116174525125.jpg.chip.jpg"``.

    Returns
    -------
    FaceLabels
        The age, gender and ethnicity codes.

    Raises
    ------
    UTKFaceNameError
        (A ``ValueError``) with a ``reason`` when the labels are missing, not
        integers, or out of range.
    """
    match = _NAME_RE.match(name.strip())
    if match is None:
        raise UTKFaceNameError(name, f"not an image file name ({', '.join(IMAGE_EXTENSIONS)})")
    fields = match["stem"].split("_")
    if len(fields) == 3 and len(fields[2]) >= _MIN_TIMESTAMP_DIGITS_WITHOUT_RACE:
        raise UTKFaceNameError(name, "missing race field")
    if len(fields) not in (3, 4):
        raise UTKFaceNameError(
            name, f"expected age_gender_race_datetime, found {len(fields)} '_'-separated fields"
        )
    for label, text in zip(("age", "gender", "race", "timestamp"), fields):
        if not _DIGITS_RE.fullmatch(text):
            raise UTKFaceNameError(name, f"{label} field is not an integer: {text!r}")
    if len(fields) == 4 and len(fields[3]) > _MAX_TIMESTAMP_DIGITS:
        raise UTKFaceNameError(
            name, f"timestamp field has {len(fields[3])} digits (at most {_MAX_TIMESTAMP_DIGITS})"
        )
    age, gender, race = (int(text) for text in fields[:3])
    _check_range(name, "age", age, AGE_MIN, AGE_MAX)
    _check_range(name, "gender", gender, 0, len(GENDER_NAMES) - 1)
    _check_range(name, "race", race, 0, len(ETHNICITY_NAMES) - 1)
    return FaceLabels(age=age, gender=gender, ethnicity=race)


def _check_range(name: str, label: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise UTKFaceNameError(name, f"{label} out of range: {value} (expected {low}..{high})")


def _as_label_array(values: Iterable[int] | np.ndarray) -> np.ndarray:
    array = np.array(values, dtype=np.int64)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class DatasetIndex:
    """The faces of one UTKFace folder and their labels, sorted by file name.

    Attributes
    ----------
    folder : pathlib.Path
        Absolute path of the image folder.
    file_names : tuple of str
        Sorted file names (no directory) of the indexed faces.
    age, gender, ethnicity : numpy.ndarray
        Read-only int64 label arrays aligned with `file_names`.
    skipped : tuple of (str, str)
        ``(file name, reason)`` for the image files of `folder` whose names could
        not be parsed when the folder was indexed (subsets keep the folder's list).
    """

    folder: Path
    file_names: tuple[str, ...]
    age: np.ndarray
    gender: np.ndarray
    ethnicity: np.ndarray
    skipped: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        object.__setattr__(self, "file_names", tuple(self.file_names))
        for name in ("age", "gender", "ethnicity"):
            array = _as_label_array(getattr(self, name))
            if array.shape != (len(self.file_names),):
                raise ValueError(
                    f"{name} has shape {array.shape}, expected ({len(self.file_names)},)"
                )
            object.__setattr__(self, name, array)
        if list(self.file_names) != sorted(set(self.file_names)):
            raise ValueError("file_names must be sorted and unique")

    def __len__(self) -> int:
        return len(self.file_names)

    def __repr__(self) -> str:
        return (
            f"DatasetIndex(folder={str(self.folder)!r}, faces={len(self)}, "
            f"skipped={len(self.skipped)})"
        )

    @property
    def paths(self) -> tuple[str, ...]:
        """Absolute paths of the indexed images, aligned with `file_names`."""
        return tuple(str(self.folder / name) for name in self.file_names)

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {name: position for position, name in enumerate(self.file_names)}

    def subset(self, indices_or_names: Iterable[int] | Iterable[str]) -> DatasetIndex:
        """Return the index restricted to some faces, still sorted by file name.

        Parameters
        ----------
        indices_or_names : iterable of int or iterable of str
            Positions in this index, or file names.

        Returns
        -------
        DatasetIndex
            A new index over the same folder.

        Raises
        ------
        KeyError
            If a file name is not in this index.
        ValueError
            If a face is selected twice.
        """
        selection = list(indices_or_names)
        if selection and all(isinstance(item, str) for item in selection):
            selection = self._lookup(selection)
        positions = np.arange(len(self))[np.asarray(selection, dtype=np.int64)]
        unique = np.unique(positions)
        if len(unique) != len(positions):
            raise ValueError(f"{len(positions) - len(unique)} faces are selected more than once")
        return DatasetIndex(
            folder=self.folder,
            file_names=tuple(self.file_names[position] for position in unique),
            age=self.age[unique],
            gender=self.gender[unique],
            ethnicity=self.ethnicity[unique],
            skipped=self.skipped,
        )

    def _lookup(self, names: list[str]) -> list[int]:
        unknown = [name for name in names if name not in self._positions]
        if unknown:
            raise KeyError(
                f"{len(unknown)} file names are not in the index of {self.folder}: "
                f"{unknown[:5]}"
            )
        return [self._positions[name] for name in names]

    def labels(self, task: str) -> np.ndarray:
        """Return the label array for a prediction task.

        Parameters
        ----------
        task : {"gender", "ethnicity", "age", "age_group"}
            The task; "age_group" gives codes into ``labels.AGE_GROUP_NAMES``.

        Returns
        -------
        numpy.ndarray
            int64 labels aligned with `file_names`.
        """
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        if task == "age_group":
            return age_group(self.age)
        return getattr(self, task)


def index_of_names(folder: str | os.PathLike, names: Sequence[str]) -> DatasetIndex:
    """The faces of ``folder`` named ``names``, in that order, labelled from the names
    (the files are not read).

    Raises
    ------
    UTKFaceNameError
        For a name that does not parse.
    """
    labels = [parse_utkface_name(name) for name in names]
    return DatasetIndex(Path(folder), tuple(names), age=[face.age for face in labels],
                        gender=[face.gender for face in labels],
                        ethnicity=[face.ethnicity for face in labels])


def default_data_dir() -> Path:
    """Return the UTKFace folder: ``$UTKFACE_DIR`` if set, else ``../shared/data/UTKFace``.

    The fallback is relative to the repository root (the parent of the
    ``pipelines`` package directory). The folder may not exist.

    Returns
    -------
    pathlib.Path
        Absolute path of the data folder.
    """
    configured = os.environ.get(DATA_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    repo_root = Path(__file__).resolve().parent.parent
    return (repo_root.parent / "shared" / "data" / "UTKFace").resolve()


def default_cache_dir() -> Path:
    """The feature cache folder: ``.cache/features`` of the source checkout the package
    runs from, else ``utkface-toolkit/features`` in the user's cache folder
    (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    repo_root = Path(__file__).resolve().parent.parent
    if (repo_root / "setup.cfg").is_file():
        return repo_root / ".cache" / "features"
    user_cache = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(user_cache) / "utkface-toolkit" / "features"


def index_folder(folder: str | os.PathLike) -> DatasetIndex:
    """Index the UTKFace images of a flat folder from their file names.

    Files that are not images (other extensions, hidden files, sub-folders) are
    ignored silently; images with unparseable names are skipped, recorded in
    ``DatasetIndex.skipped`` and summarized in one logged warning.

    Parameters
    ----------
    folder : str or os.PathLike
        The image folder; it is not searched recursively.

    Returns
    -------
    DatasetIndex
        The parseable faces, sorted by file name.

    Raises
    ------
    FileNotFoundError
        If `folder` does not exist.
    NotADirectoryError
        If `folder` is not a directory.
    ValueError
        If `folder` holds no image file, or no image file with a parseable name.
    """
    path = Path(folder).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"UTKFace folder not found: {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"UTKFace path is not a directory: {path}")
    names = sorted(
        entry.name for entry in os.scandir(path) if entry.is_file() and is_image_name(entry.name)
    )
    if not names:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {path}")
    parsed, skipped = _parse_names(names)
    if not parsed:
        raise ValueError(
            f"none of the {len(names)} image files in {path} has a parseable UTKFace name "
            f"({len(skipped)} skipped, e.g. {skipped[0][0]!r}: {skipped[0][1]})"
        )
    if skipped:
        _log_skipped(path, skipped, total=len(names))
    return DatasetIndex(
        folder=path,
        file_names=tuple(parsed),
        age=[labels.age for labels in parsed.values()],
        gender=[labels.gender for labels in parsed.values()],
        ethnicity=[labels.ethnicity for labels in parsed.values()],
        skipped=tuple(skipped),
    )


def _parse_names(names: list[str]) -> tuple[dict[str, FaceLabels], list[tuple[str, str]]]:
    parsed: dict[str, FaceLabels] = {}
    skipped: list[tuple[str, str]] = []
    for name in names:
        try:
            parsed[name] = parse_utkface_name(name)
        except UTKFaceNameError as error:
            skipped.append((name, error.reason))
    return parsed, skipped


def _log_skipped(folder: Path, skipped: list[tuple[str, str]], total: int) -> None:
    listed = "; ".join(f"{name!r} ({reason})" for name, reason in skipped[:_MAX_NAMES_LOGGED])
    more = len(skipped) - _MAX_NAMES_LOGGED
    if more > 0:
        listed += f"; and {more} more"
    logger.warning(
        "Skipped %d of %d image files in %s with unparseable names: %s",
        len(skipped), total, folder, listed,
    )
