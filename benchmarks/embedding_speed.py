"""Cost of dlib face descriptors per face, single process, and the effect of input size.

Usage::

    python -m benchmarks.embedding_speed [--data DIR] [--sample 100] [--repeat 2]

On ``--sample`` UTKFace faces decoded at 200x200 RGB, prints CPU and wall time per
face of each step (face check, landmarks + aligned chip, descriptor network) and of
the descriptor network called one face at a time against dlib's batched calls (a
list of chips; a list of images with their landmarks) and its Keras translation
(interleaved, best of ``--repeat``), then the whole
``DlibFaceDescriptor.transform``, and how far descriptors of the same faces move
when they are extracted from 150x150 or 128x128 instead of 200x200. CPU time is the
figure to compare on a shared machine; wall time includes waiting for a core.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from datetime import date

import numpy as np

from features.embeddings import (CHIP_PADDING, CHIP_SIZE, NETWORKS, DlibFaceDescriptor,
                                 chip_descriptors, descriptor_model, face_detector,
                                 face_scores, landmark_model)
from features.io import load_images
from pipelines.dataset import default_data_dir, index_folder


def _timed(function) -> tuple[object, float, float]:
    """(result, CPU seconds, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = function()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(default_data_dir()),
                        help="UTKFace folder (default: %(default)s)")
    parser.add_argument("--sample", type=int, default=100,
                        help="faces to describe (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="interleaved runs of each network call form, best kept "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import dlib

    paths = index_folder(args.data).paths
    paths = paths[:: max(1, len(paths) // args.sample)][:args.sample]
    faces = load_images(paths, size=(200, 200), color="rgb", progress=False).images
    n = len(faces)
    print(f"{date.today()}  {platform.machine()}, {os.cpu_count()} cores, dlib "
          f"{dlib.__version__}; {n} UTKFace faces 200x200 RGB, single process")

    _, load_cpu, load_wall = _timed(lambda: (face_detector(), landmark_model(68),
                                             descriptor_model()))
    print(f"loading the detector and models once per process: {load_wall:.2f} s wall")

    network = descriptor_model()
    predictor = landmark_model(68)
    box = dlib.rectangle(10, 10, 189, 189)
    rows = []
    _, cpu, wall = _timed(lambda: face_scores(faces))
    rows.append(("face check (HOG detector)", cpu, wall))
    shapes, cpu, wall = _timed(lambda: [predictor(face, box) for face in faces])
    rows.append(("68 landmarks", cpu, wall))
    chips, cpu, wall = _timed(lambda: [dlib.get_face_chip(face, shape, CHIP_SIZE, CHIP_PADDING)
                                       for face, shape in zip(faces, shapes)])
    rows.append(("aligned chip 150x150", cpu, wall))
    calls = {
        "network, one face a call (image, landmarks)": lambda: np.array(
            [network.compute_face_descriptor(face, shape, 0, CHIP_PADDING)
             for face, shape in zip(faces, shapes)]),
        "network, batches of 32 chips": lambda: np.concatenate(
            [np.array(network.compute_face_descriptor(chips[i:i + 32], 0))
             for i in range(0, n, 32)]),
        "network, one call (images, landmarks)": lambda: np.array(
            [list(found[0]) for found in network.compute_face_descriptor(
                list(faces), [dlib.full_object_detections([s]) for s in shapes], 0,
                CHIP_PADDING)]),
        "Keras network, the same chips": lambda: chip_descriptors(np.stack(chips), "keras"),
    }
    # interleaved repeats, best of each: the machine is shared
    best = {name: (np.inf, np.inf) for name in calls}
    results = {}
    for _ in range(args.repeat):
        for name, call in calls.items():
            results[name], cpu, wall = _timed(call)
            best[name] = (min(best[name][0], cpu), min(best[name][1], wall))
    rows += [(name, *best[name]) for name in calls]
    single = results["network, one face a call (image, landmarks)"]
    for name in NETWORKS:
        described, cpu, wall = _timed(lambda: DlibFaceDescriptor(network=name).transform(faces))
        rows.append((f"DlibFaceDescriptor({name}).transform, all steps", cpu, wall))
    jittered, cpu, wall = _timed(lambda: np.array(
        network.compute_face_descriptor(chips[:5], 10)))
    rows.append(("network, num_jitters=10 (first 5 chips)", cpu * n / 5, wall * n / 5))

    print(f"\n{'step':46s} {'CPU ms/face':>12s} {'wall ms/face':>13s}")
    for name, cpu, wall in rows:
        print(f"{name:46s} {cpu / n * 1e3:12.1f} {wall / n * 1e3:13.1f}")
    difference = max(np.abs(single - other).max() for other in [*results.values(), described])
    print(f"same descriptors from every call form: max difference {difference:.1e}")
    print(f"num_jitters=10 moves descriptors by "
          f"{np.linalg.norm(jittered - single[:5], axis=1).mean():.3f} on average")

    print(f"\n{'input size':12s} {'mean distance to 200x200':>26s} {'max':>7s}")
    for size in (150, 128):
        smaller = load_images(paths, size=(size, size), color="rgb", progress=False).images
        distance = np.linalg.norm(DlibFaceDescriptor().transform(smaller) - described, axis=1)
        print(f"{size}x{size:<8d} {distance.mean():26.3f} {distance.max():7.3f}")
    pairs = np.linalg.norm(described[:, None] - described[None], axis=2)[np.triu_indices(n, 1)]
    print(f"(different faces: median {np.median(pairs):.3f}, 1st percentile "
          f"{np.percentile(pairs, 1):.3f}; dlib's same-person threshold 0.6)")


if __name__ == "__main__":
    main()
