"""Face descriptors from dlib's own ResNet against its Keras translation, on the same faces.

Usage::

    python -m benchmarks.descriptor_speed [--data DIR] [--sample 256] [--folder-sample 3000]
        [--model RUN_FOLDER] [--predict-sample 300]

Prints three tables:

1. the network alone on aligned 150x150 chips of ``--sample`` faces, in one and in two
   worker processes started together (each describes its share of the chips once
   untimed, to load the network and trace its batch shapes, then once timed): faces
   per second, CPU time per face summed over the processes, and the speed-up of Keras
   over dlib at the same number of processes; Keras with one thread per process gives
   the per-core figure;
2. whole-folder extraction, every step (decode, face check, landmarks, alignment,
   network): :func:`features.extract_features` with ``DlibFaceDescriptor(network=...)``,
   200x200 RGB, two processes, no cache, on ``--folder-sample`` files (the time
   includes starting the worker processes, each of which imports TensorFlow and builds
   the network when ``network="keras"``);
3. with ``--model`` (a run folder of :mod:`pipelines.run` with ``dlib`` features),
   :func:`pipelines.photos.predict_photos` on ``--predict-sample`` crops
   (``--no-detect``), the run's descriptor step switched between the two networks.

Faces are spread over the sorted folder; the descriptors of both networks are compared
(largest absolute difference).
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from features.embeddings import NETWORKS, DlibFaceDescriptor, chip_descriptors, face_chips
from features.extract import extract_features
from features.io import load_images
from pipelines.dataset import default_data_dir, index_folder

def _describe_share(chips_file: str, share: slice, network: str, threads: int | None,
                    barrier, results) -> None:
    """Worker: load and warm the network, wait for the others, time its share of chips."""
    if threads is not None and network == "keras":
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    chips = np.load(chips_file)[share]
    chip_descriptors(chips, network)  # untimed pass: loading, tracing every batch shape
    barrier.wait()
    cpu, wall = time.process_time(), time.perf_counter()
    chip_descriptors(chips, network)
    results.put((time.perf_counter() - wall, time.process_time() - cpu))


def network_throughput(chips_file: str, n: int, network: str, processes: int,
                       threads: int | None = None) -> tuple[float, float]:
    """(faces per second, CPU ms per face) of ``network`` over ``n`` chips in ``processes``
    spawned processes that start together."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    bounds = np.linspace(0, n, processes + 1).astype(int)
    workers = [context.Process(target=_describe_share,
                               args=(chips_file, slice(lo, hi), network, threads, barrier,
                                     results))
               for lo, hi in zip(bounds[:-1], bounds[1:])]
    for worker in workers:
        worker.start()
    timings = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
        if worker.exitcode:
            raise RuntimeError(f"a {network} worker failed (exit code {worker.exitcode})")
    wall = max(t[0] for t in timings)
    return n / wall, sum(t[1] for t in timings) / n * 1e3


def _switch_network(predictor, network: str) -> int:
    """Set ``network`` on every descriptor step of a loaded predictor; how many there are."""
    switched = 0
    for model in predictor.classical:
        for key, value in model.features.get_params(deep=True).items():
            if isinstance(value, DlibFaceDescriptor):
                model.features.set_params(**{f"{key}__network": network})
                switched += 1
    return switched


def _table(header: tuple[str, ...], rows: list[tuple]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(default_data_dir()),
                        help="UTKFace folder (default: %(default)s)")
    parser.add_argument("--sample", type=int, default=256,
                        help="faces whose chips the networks describe (default: %(default)s)")
    parser.add_argument("--folder-sample", type=int, default=3000,
                        help="files for the whole-folder extraction (default: %(default)s)")
    parser.add_argument("--model", type=Path, default=None,
                        help="run folder with dlib features for the prediction table")
    parser.add_argument("--predict-sample", type=int, default=300,
                        help="crops predicted with --model (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("sample", "folder_sample", "predict_sample"):
        if getattr(args, name) < 2:
            parser.error(f"--{name.replace('_', '-')} must be at least 2")
    logging.basicConfig(level=logging.WARNING)
    import dlib
    import tensorflow as tf

    paths = index_folder(args.data).paths
    spread = list(paths[:: max(1, len(paths) // args.sample)][:args.sample])
    faces = load_images(spread, size=(200, 200), color="rgb", progress=False).images
    chips = face_chips(faces)
    n = len(chips)
    print(f"{date.today()}  {platform.machine()}, {os.cpu_count()} cores, dlib "
          f"{dlib.__version__}, TensorFlow {tf.__version__}\n")

    difference = np.abs(chip_descriptors(chips, "keras") - chip_descriptors(chips, "dlib")).max()
    print(f"1. The network alone, {n} aligned chips (descriptors differ by at most "
          f"{difference:.1e})\n")
    with tempfile.TemporaryDirectory() as folder:
        chips_file = os.path.join(folder, "chips.npy")
        np.save(chips_file, chips)
        measured = {}
        for network, processes, threads in (("dlib", 1, None), ("keras", 1, 1),
                                            ("keras", 1, None), ("dlib", 2, None),
                                            ("keras", 2, 1), ("keras", 2, None)):
            measured[network, processes, threads] = network_throughput(
                chips_file, n, network, processes, threads)
    rows = []
    for (network, processes, threads), (rate, cpu) in measured.items():
        versus = measured["dlib", processes, None][0]
        rows.append((network, processes, threads or "default", f"{rate:.1f}", f"{cpu:.1f}",
                     "" if network == "dlib" else f"{rate / versus:.1f}x"))
    _table(("network", "processes", "threads", "faces/s", "CPU ms/face", "vs dlib"), rows)

    folder_paths = list(paths[:: max(1, len(paths) // args.folder_sample)][:args.folder_sample])
    print(f"\n2. Whole-folder extraction, {len(folder_paths)} files, 2 processes, no cache\n")
    rows = []
    for network in NETWORKS[::-1]:
        start = time.perf_counter()
        report = extract_features(folder_paths, DlibFaceDescriptor(network=network),
                                  size=(200, 200), color="rgb", n_jobs=2, progress=False)
        wall = time.perf_counter() - start
        rows.append((network, f"{wall:.1f}", f"{len(folder_paths) / wall:.1f}",
                     int(np.isnan(report.images).any(axis=1).sum())))
    _table(("network", "wall s", "faces/s", "no face found"), rows)

    if args.model is not None:
        crops = list(paths[:: max(1, len(paths) // args.predict_sample)][:args.predict_sample])
        _prediction_table(args.model, crops)


def _prediction_table(model: Path, crops: list) -> None:
    """Part 3: ``pipelines.predict``'s path on crops with each network, and whether the
    predictions agree."""
    from pipelines.photos import FaceSearch, predict_photos
    from pipelines.predictor import load_predictor

    print(f"\n3. pipelines.predict {model} on {len(crops)} crops (--no-detect), one process\n")
    predictor = load_predictor(model)
    rows, answers = [], {}
    for network in NETWORKS[::-1]:
        if not _switch_network(predictor, network):
            raise SystemExit(f"{model} has no dlib descriptor step")
        list(predict_photos(predictor, crops[:2], search=FaceSearch(None), progress=False))  # warm
        start = time.perf_counter()
        answers[network] = [record for photo in predict_photos(
            predictor, crops, search=FaceSearch(None), progress=False) for record in photo]
        wall = time.perf_counter() - start
        rows.append((network, f"{wall:.1f}", f"{len(crops) / wall:.1f}"))
    _table(("network", "wall s", "faces/s"), rows)
    tasks = [task for task in predictor.tasks if task != "age"]
    same = sum(all(a.get(t) == b.get(t) for t in tasks)
               for a, b in zip(answers["dlib"], answers["keras"]))
    print(f"\nsame predicted classes ({', '.join(tasks) or 'none'}) for {same} of "
          f"{len(crops)} crops")
    if "age" in predictor.tasks:
        ages = np.array([[a["age"], b["age"]] for a, b in
                         zip(answers["dlib"], answers["keras"])], dtype=float)
        print(f"predicted ages differ by at most {np.abs(ages[:, 0] - ages[:, 1]).max():.2e}")

if __name__ == "__main__":
    main()
