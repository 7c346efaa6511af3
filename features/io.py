"""Reading face images into uint8 arrays: one file, or many in parallel with a report.

Every Pillow mode is accepted (1, L, P, RGB, RGBA, LA, CMYK, YCbCr, I;16, I, F, ...):
EXIF orientation is applied, transparency is composited on white, 16- and 32-bit
images are scaled to 8 bits, and the image is resized with LANCZOS.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from joblib import Parallel, delayed
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

COLOR_MODES = ("gray", "rgb")
DEFAULT_SIZE = (128, 128)
# Pillow's own decompression-bomb threshold (about 89 megapixels)
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
# several frames are one photo in a camera's multi-picture JPEG
_SINGLE_PHOTO_FORMATS = ("MPO",)


class ImageLoadError(ValueError):
    """An image file that cannot be read; the message names the file and the cause."""


@dataclass
class LoadReport:
    """Outcome of loading many images.

    Attributes
    ----------
    images : ndarray of uint8, shape (n_kept, H, W, C)
        The images that could be read, in input order.
    kept : ndarray of int
        Position in the input of each row of ``images``.
    failures : list of (str, str)
        ``(path, reason)`` of every input that was skipped.
    """

    images: np.ndarray
    kept: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)


def _check_color(color: str) -> int:
    if color not in COLOR_MODES:
        raise ValueError(f"color must be one of {COLOR_MODES}, got {color!r}")
    return 1 if color == "gray" else 3


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be two positive integers (height, width), got {size}")
    return size


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit integer or float single-channel image to mode L."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        low, high = float(values.min()), float(values.max())
        values = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
    else:
        values = values / 257 if values.max() > 255 else values
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def convert_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to L (channels=1) or RGB (channels=3)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if channels == 1:
        return image if image.mode == "L" else image.convert("RGB").convert("L")
    return image if image.mode == "RGB" else image.convert("RGB")


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decode one image file at full size, EXIF orientation applied, in its own mode.

    Raises
    ------
    ImageLoadError
        If the file is missing, empty, not an image, truncated, animated (several
        frames; a camera's multi-picture JPEG counts as one photo), or larger than
        ``MAX_PIXELS`` (a decompression bomb); the message names the file.
    """
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise ImageLoadError(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_header(path, image)
                image.load()
                return ImageOps.exif_transpose(image)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: no such file") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(f"{path}: refused as a possible decompression bomb ({error})") \
            from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"{path}: unreadable or truncated image ({error})") from None


def _check_header(path: str, image: Image.Image) -> None:
    """Refuse a decompression bomb and an animation before decoding any pixel."""
    if image.width * image.height > MAX_PIXELS:
        raise ImageLoadError(f"{path}: {image.width}x{image.height} pixels exceeds the "
                             f"{MAX_PIXELS:,}-pixel limit (possible decompression bomb)")
    frames = getattr(image, "n_frames", 1)
    if frames > 1 and image.format not in _SINGLE_PHOTO_FORMATS:
        raise ImageLoadError(f"{path}: animated or multi-frame {image.format} image "
                             f"({frames} frames) refused; save the frame you want as a "
                             f"still image")


def load_image(path: str | os.PathLike, size: tuple[int, int] = DEFAULT_SIZE,
               color: str = "gray") -> np.ndarray:
    """Read one image file as a resized uint8 array.

    Parameters
    ----------
    path : str or path-like
        Image file (any still format Pillow reads).
    size : tuple of int
        Output (height, width).
    color : {'gray', 'rgb'}
        One luma channel or three colour channels.

    Returns
    -------
    ndarray of uint8, shape (height, width, 1 or 3)

    Raises
    ------
    ImageLoadError
        See :func:`open_image`.
    """
    channels = _check_color(color)
    size = _check_size(size)
    return _prepare(open_image(path), size, channels)


def _prepare(image: Image.Image, size: tuple[int, int], channels: int) -> np.ndarray:
    """Any-mode Pillow image -> resized (H, W, channels) uint8 array."""
    image = convert_mode(image, channels)
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8).reshape(*size, channels)


def image_from_array(array: np.ndarray, size: tuple[int, int] = DEFAULT_SIZE,
                     color: str = "gray") -> np.ndarray:
    """Bring one in-memory image to the loader's size and colour, as :func:`load_image`.

    Parameters
    ----------
    array : ndarray, shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)
        uint8 pixels (RGB order for colour), or 16-bit integers.

    Returns
    -------
    ndarray of uint8, shape (size[0], size[1], 1 or 3)
    """
    channels = _check_color(color)
    size = _check_size(size)
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an image shaped (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                         f"got {array.shape}")
    if array.dtype == np.uint16 and array.ndim == 2:
        image = Image.fromarray(array, "I;16")
    elif array.dtype == np.uint8:
        image = Image.fromarray(array)
    else:
        raise ValueError(f"expected uint8 (or 16-bit grayscale) pixels, got {array.dtype}")
    return _prepare(image, size, channels)


def _worker_name() -> str | None:
    """Address of the Dask worker running this code, or None outside Dask."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:
        return None


def _load_chunk(paths: Sequence[str], size: tuple[int, int], color: str,
                transform) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Worker: load a chunk of paths and transform it.

    Returns the rows, their positions in the chunk and the ``(path, reason)`` of the
    skipped files.
    """
    images, kept, failures = [], [], []
    for position, path in enumerate(paths):
        try:
            images.append(load_image(path, size, color))
            kept.append(position)
        except ImageLoadError as error:
            reason = str(error).removeprefix(f"{path}: ")
            worker = _worker_name()
            failures.append((path, reason if worker is None else f"{reason} on worker {worker}"))
    batch = np.stack(images) if images else np.empty((0, *size, _check_color(color)), np.uint8)
    if transform is not None and len(batch):
        batch = transform(batch)
    return batch, np.asarray(kept, dtype=np.int64), failures


def map_image_chunks(paths: Sequence[str | os.PathLike], size: tuple[int, int] = DEFAULT_SIZE,
                     color: str = "gray", transform=None, n_jobs: int = 1,
                     chunk_size: int = 256, progress: bool = True,
                     description: str = "loading images") -> LoadReport:
    """Load images in parallel chunks, optionally applying ``transform`` in the workers.

    Parameters
    ----------
    paths : sequence of path-like
        Image files.
    size, color
        See :func:`load_image`.
    transform : callable, optional
        Applied in the worker to each chunk's (n, H, W, C) uint8 batch; its output
        rows (for example features) replace the images in the report.
    n_jobs : int
        Worker processes (joblib; -1 for all cores). The joblib backend in force is
        used, so ``joblib.parallel_config(backend="dask")`` spreads the chunks over a
        Dask cluster.
    chunk_size : int
        Images per task.
    progress : bool
        Show a tqdm progress bar.
    description : str
        Progress bar label.

    Returns
    -------
    LoadReport
        Rows of the readable files in input order, their input positions and the
        skipped files with reasons. Unreadable files never stop the run.
    """
    from tqdm.auto import tqdm

    _check_color(color)
    size = _check_size(size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    paths = [os.fspath(p) for p in paths]
    starts = range(0, len(paths), chunk_size)
    tasks = (delayed(_load_chunk)(paths[s:s + chunk_size], size, color, transform)
             for s in starts)
    rows, kept, failures = _RowCollector(len(paths)), [], []
    with tqdm(total=len(paths), desc=description, unit="img", disable=not progress) as bar:
        for start, (batch, positions, chunk_failures) in zip(
                starts, Parallel(n_jobs=n_jobs, return_as="generator")(tasks)):
            rows.add(batch)
            kept.append(positions + start)
            failures.extend(chunk_failures)
            bar.update(len(positions) + len(chunk_failures))
    if failures:
        logger.warning("skipped %d of %d images: %s", len(failures), len(paths),
                       "; ".join(f"{p} ({r})" for p, r in failures[:10])
                       + (" ..." if len(failures) > 10 else ""))
    images = rows.result(np.empty((0, *size, _check_color(color)), dtype=np.uint8))
    return LoadReport(images, np.concatenate(kept) if kept else np.empty(0, np.int64), failures)


class _RowCollector:
    """Rows of consecutive batches gathered in one array allocated for every input, so
    that the batches are copied once and never held twice."""

    def __init__(self, capacity: int):
        self.capacity, self.filled, self.rows = capacity, 0, None

    def add(self, batch: np.ndarray) -> None:
        if not len(batch):
            return
        if self.rows is None:
            self.rows = np.empty((self.capacity, *batch.shape[1:]), dtype=batch.dtype)
        self.rows[self.filled:self.filled + len(batch)] = batch
        self.filled += len(batch)

    def result(self, empty: np.ndarray) -> np.ndarray:
        """The rows added (a view: skipped inputs leave unused rows at the end), or
        ``empty`` when there were none."""
        return empty if self.rows is None else self.rows[:self.filled]


def load_images(paths: Iterable[str | os.PathLike], size: tuple[int, int] = DEFAULT_SIZE,
                color: str = "gray", n_jobs: int = 1, progress: bool = True) -> LoadReport:
    """Read many image files into one (N, H, W, C) uint8 batch, skipping bad files.

    See :func:`map_image_chunks`; ``report.kept`` keeps labels aligned with the
    images that were read.
    """
    return map_image_chunks(list(paths), size, color, None, n_jobs, progress=progress)
