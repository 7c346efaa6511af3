"""Loading saved models with a checksum check.

.. warning::
   A ``.joblib`` file is a pickle: **loading it runs code chosen by whoever wrote
   it**. Load only files you made yourself or got from someone you trust, over a
   channel you trust. :func:`load_model` refuses a file whose SHA-256 differs from
   the one recorded in the metadata JSON beside it, which catches a corrupted,
   truncated or swapped file; it does not stop an attacker who can rewrite both
   files. For that, compare the SHA-256 with one received separately
   (``expected_sha256``).

Every saved model ``<name>.joblib`` has a metadata file ``<name>.json`` beside it
(:func:`metadata_path`) whose ``"sha256"`` field is the hex SHA-256 of the model file.
This module imports joblib and hashlib only, never tensorflow.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import joblib

_BLOCK = 1 << 20


class ChecksumError(ValueError):
    """A model file whose SHA-256 is missing or differs from the recorded one."""


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's contents, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def metadata_path(model_path: str | os.PathLike) -> Path:
    """The metadata JSON recorded beside a model file: same name, suffix ``.json``."""
    return Path(model_path).with_suffix(".json")


def read_metadata(model_path: str | os.PathLike) -> dict[str, Any]:
    """The metadata recorded beside ``model_path``.

    Raises
    ------
    ChecksumError
        If the metadata file is missing, unreadable or holds no ``sha256``.
    """
    path = metadata_path(model_path)
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChecksumError(f"no metadata file {path} beside {model_path}: cannot check the "
                            f"model's SHA-256, refusing to load it") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ChecksumError(f"metadata file {path} is unreadable ({error}); "
                            f"refusing to load {model_path}") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("sha256"), str):
        raise ChecksumError(f"metadata file {path} records no sha256; "
                            f"refusing to load {model_path}")
    return metadata


def load_model(path: str | os.PathLike, *, expected_sha256: str | None = None) -> Any:
    """Load a joblib model after checking its SHA-256.

    The file is read once into memory, hashed, and unpickled from those same bytes,
    so it cannot change between the check and the load.

    Parameters
    ----------
    path : path-like
        A ``.joblib`` file written by the project.
    expected_sha256 : str, optional
        The hex digest to require; by default the ``sha256`` recorded in the
        metadata JSON beside the file (:func:`metadata_path`).

    Returns
    -------
    object
        The unpickled model (for the classical pipelines, a scikit-learn
        ``Pipeline`` from image paths or arrays to predictions).

    Raises
    ------
    ChecksumError
        If no checksum is available or the file's SHA-256 differs; nothing is
        unpickled then.
    FileNotFoundError
        If the model file does not exist.

    Warnings
    --------
    Unpickling runs code from the file; see the module docstring.
    """
    path = Path(path)
    if expected_sha256 is None:
        expected_sha256 = read_metadata(path)["sha256"]
    data = path.read_bytes()
    actual = sha256_bytes(data)
    if actual != expected_sha256.lower():
        raise ChecksumError(
            f"SHA-256 mismatch for {path}: the file has {actual}, but {expected_sha256} was "
            f"recorded; the file is corrupted or was replaced. Refusing to load it (loading "
            f"a joblib file runs code from it).")
    return joblib.load(io.BytesIO(data))
