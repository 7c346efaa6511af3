"""Feature extraction on a Dask cluster against plain joblib, on this machine.

Usage::

    python -m benchmarks.dask_speed [--data DIR] [--limit 2000] [--workers 1 2] [--repeat 1]

Times :func:`features.extract_features` (decode + resize to 128x128 gray + HOG + LBP,
no cache) over ``--limit`` faces spread over the sorted folder, with:

- plain joblib, ``n_jobs`` worker processes (loky, the path without a scheduler);
- a ``dask.distributed.LocalCluster`` of as many worker processes (one thread each,
  loopback only), reached through :func:`pipelines.cluster.connect`, which routes the
  same joblib calls to the workers (the path of ``--scheduler``).

Each setup runs once untimed first (processes started, modules imported on every
worker), the features of every setup are checked to be identical, and a table gives the seconds,
faces per second and the overhead of Dask against joblib with the same number of
workers (time with Dask / time with joblib - 1). The scheduler and the client run in
this process, as they would on a user's machine.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from typing import Sequence

import numpy as np

from features import extract_features, make_extractor
from pipelines.dataset import default_data_dir, index_folder

def _extract(paths: Sequence[str], n_jobs: int) -> tuple[float, np.ndarray]:
    """Seconds to extract HOG + LBP of ``paths``, and the features."""
    start = time.perf_counter()
    report = extract_features(paths, make_extractor("hog+lbp"), n_jobs=n_jobs, progress=False)
    return time.perf_counter() - start, report.images


def _best(paths: Sequence[str], n_jobs: int, repeat: int) -> tuple[float, np.ndarray]:
    """Best time of ``repeat`` runs after an untimed one, and the features."""
    _extract(paths, n_jobs)
    runs = [_extract(paths, n_jobs) for _ in range(repeat)]
    return min(seconds for seconds, _ in runs), runs[0][1]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dask_speed",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(default_data_dir()),
                        help="UTKFace folder (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=2000,
                        help="faces, spread over the folder (default: %(default)s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts to compare (default: 1 2)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="timed runs per setup, the best is kept (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from distributed import LocalCluster

    from pipelines.cluster import connect

    logging.getLogger("distributed").setLevel(logging.WARNING)   # set by its import

    paths = index_folder(args.data).paths
    paths = list(paths[:: max(1, len(paths) // args.limit)][:args.limit])
    print(f"{platform.machine()}, {os.cpu_count()} cores; {len(paths)} faces, "
          f"128x128 gray, HOG + LBP, no cache; best of {args.repeat}")
    # every joblib setup first: a closed LocalCluster's threads in this process would
    # slow the joblib runs after it
    joblib_runs = {workers: _best(paths, workers, args.repeat) for workers in args.workers}
    reference = joblib_runs[args.workers[0]][1]
    rows = []
    for workers in args.workers:
        joblib_seconds, features = joblib_runs[workers]
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None) as cluster, \
                connect(cluster.scheduler_address):
            dask_seconds, dask_features = _best(paths, workers, args.repeat)
        for found in (features, dask_features):
            if not np.array_equal(found, reference):
                raise RuntimeError("the setups extracted different features")
        rows.append((f"joblib, n_jobs={workers}", joblib_seconds, None))
        rows.append((f"Dask LocalCluster, {workers} worker(s)", dask_seconds,
                     dask_seconds / joblib_seconds - 1))
    print(f"{'setup':34s} {'seconds':>8s} {'faces/s':>8s} {'Dask overhead':>14s}")
    for name, seconds, overhead in rows:
        print(f"{name:34s} {seconds:8.2f} {len(paths) / seconds:8.0f} "
              f"{'' if overhead is None else f'{overhead:+.0%}':>14s}")


if __name__ == "__main__":
    main()
