"""Extraction speed on a UTKFace folder: batched extractors against scikit-image.

Usage::

    python -m benchmarks.extract_speed [--data DIR] [--sample 500] [--n-jobs 2] [--repeat 3]

Prints, from one run:
1. single process, on ``--sample`` faces already decoded: batched HOG against
   ``skimage.feature.hog`` per image, batched LBP grid histograms against
   ``skimage.feature.local_binary_pattern`` + ``np.histogram`` per cell, per image, and
   batched Gabor energies (64x64 faces) against ``skimage.filters.gabor`` per image and
   filter (on at most ``GABOR_REFERENCE_FACES`` faces: it takes about 0.25 s per face);
2. the whole folder with ``--n-jobs`` processes: decode + resize alone, against
   decode + resize + HOG + LBP features, the two passes alternating ``--repeat`` times;
   the ratio of each pair and their median (a shared virtual machine speeds up or
   slows by up to a third between passes, so one pair alone can mislead).
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import time

import numpy as np

from features.gabor import GaborFeatures
from features.hog import HOGFeatures
from features.io import map_image_chunks
from features.lbp import LBPFeatures
from pipelines.dataset import default_data_dir, index_folder
from pipelines.run import ALL_CORES


def _best_time(function, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def skimage_hog_per_image(images: np.ndarray, hog: HOGFeatures) -> np.ndarray:
    """Reference: ``skimage.feature.hog`` called on each image."""
    from skimage.feature import hog as skimage_hog

    return np.stack([skimage_hog(image[..., 0], hog.orientations, hog.pixels_per_cell,
                                 hog.cells_per_block, hog.block_norm) for image in images])


def skimage_lbp_per_image(images: np.ndarray, lbp: LBPFeatures) -> np.ndarray:
    """Reference: ``local_binary_pattern`` then ``np.histogram`` per grid cell, per image."""
    from skimage.feature import local_binary_pattern

    n_codes = lbp.n_points + 2
    rows_per_cell = images.shape[1] // lbp.grid[0]
    cols_per_cell = images.shape[2] // lbp.grid[1]
    features = []
    for image in images:
        codes = local_binary_pattern(image[..., 0], lbp.n_points, lbp.radius, "uniform")
        cells = [np.histogram(codes[r:r + rows_per_cell, c:c + cols_per_cell], bins=n_codes,
                              range=(0, n_codes), density=True)[0]
                 for r in range(0, lbp.grid[0] * rows_per_cell, rows_per_cell)
                 for c in range(0, lbp.grid[1] * cols_per_cell, cols_per_cell)]
        features.append(np.concatenate(cells))
    return np.stack(features)


GABOR_REFERENCE_FACES = 50


def skimage_gabor_per_image(images: np.ndarray, gabor: GaborFeatures) -> np.ndarray:
    """Reference: ``skimage.filters.gabor`` per image and filter, the magnitude of each
    response averaged over each grid cell (cell k of n along an axis of s pixels spans
    pixels ceil(k s / n) to ceil((k + 1) s / n), written here by slicing)."""
    from skimage.filters import gabor as skimage_gabor

    def bounds(size: int, cells: int) -> list[int]:
        return [-(-k * size // cells) for k in range(cells + 1)]

    rows, cols = bounds(images.shape[1], gabor.grid[0]), bounds(images.shape[2], gabor.grid[1])
    features = []
    for image in images:
        for frequency in gabor.frequencies:
            for k in range(gabor.orientations):
                real, imaginary = skimage_gabor(image[..., 0] / 255, frequency, mode="mirror",
                                                theta=np.pi * k / gabor.orientations)
                magnitude = np.hypot(real, imaginary)
                features.extend(magnitude[rows[r]:rows[r + 1], cols[c]:cols[c + 1]].mean()
                                for r in range(gabor.grid[0]) for c in range(gabor.grid[1]))
    return np.reshape(features, (len(images), -1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(default_data_dir()),
                        help="UTKFace folder (default: %(default)s)")
    parser.add_argument("--sample", type=int, default=500,
                        help="faces for the single-process comparison (default: %(default)s)")
    parser.add_argument("--n-jobs", type=int, default=ALL_CORES,
                        help="processes for the whole-folder run (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="alternating pairs of whole-folder passes (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.sample < 1:
        parser.error("--repeat and --sample must be at least 1")
    logging.basicConfig(level=logging.WARNING)

    index = index_folder(args.data)
    paths = index.paths
    sample_paths = paths[:: max(1, len(paths) // args.sample)][:args.sample]
    sample = map_image_chunks(sample_paths, progress=False).images
    small = map_image_chunks(sample_paths, size=(64, 64), progress=False).images
    hog, lbp, gabor = HOGFeatures(), LBPFeatures(), GaborFeatures()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{len(sample)} faces 128x128 gray (Gabor: 64x64), single process")
    rows = []
    for name, faces, ours, reference, n_reference in [
            ("HOG 9 orient., 8x8 cells, 2x2 blocks", sample, hog.transform,
             lambda faces: skimage_hog_per_image(faces, hog), len(sample)),
            ("LBP P=8 R=1 uniform, 8x8 grid hist.", sample, lbp.transform,
             lambda faces: skimage_lbp_per_image(faces, lbp), len(sample)),
            ("Gabor 4 freq. x 8 orient., 8x8 grid", small, gabor.transform,
             lambda faces: skimage_gabor_per_image(faces, gabor), GABOR_REFERENCE_FACES)]:
        t_ours = _best_time(lambda: ours(faces)) / len(faces)
        reference_faces = faces[:n_reference]
        t_ref = _best_time(lambda: reference(reference_faces), repeat=1) / len(reference_faces)
        rows.append((name, t_ref * 1e3, t_ours * 1e3, t_ref / t_ours))
    print(f"{'extractor':40s} {'skimage ms/face':>16s} {'batched ms/face':>16s} {'speed-up':>9s}")
    for name, ref_ms, ours_ms, ratio in rows:
        print(f"{name:40s} {ref_ms:16.3f} {ours_ms:16.3f} {ratio:8.1f}x")

    # whole folder; a warm-up call starts the worker processes first
    map_image_chunks(paths[:64], n_jobs=args.n_jobs, progress=False)

    def features(batch: np.ndarray) -> np.ndarray:
        return np.hstack([hog.transform(batch), lbp.transform(batch)])

    def timed(transform, description):
        start = time.perf_counter()
        report = map_image_chunks(paths, transform=transform, n_jobs=args.n_jobs,
                                  description=description)
        return time.perf_counter() - start, report

    print(f"\nwhole folder, {len(paths)} faces, {args.n_jobs} processes")
    print(f"{'pass':>4s} {'decode + resize':>16s} {'+ HOG + LBP':>12s} {'ratio':>6s}")
    ratios = []
    for repetition in range(1, args.repeat + 1):
        t_decode, decoded = timed(None, "decode + resize")
        t_extract, extracted = timed(features, "decode + resize + HOG + LBP")
        ratios.append(t_extract / t_decode)
        print(f"{repetition:4d} {t_decode:14.1f} s {t_extract:10.1f} s {ratios[-1]:5.2f}x")
    print(f"{len(decoded.kept)} faces decoded, {extracted.images.shape[1]} features each; "
          f"median ratio: {np.median(ratios):.2f}x the time of decoding alone")


if __name__ == "__main__":
    main()
