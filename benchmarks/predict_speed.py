"""Throughput of ``python -m pipelines.predict`` on face crops, end to end from files.

Run ``python -m benchmarks.predict_speed NAME=RUN_FOLDER ... [--faces 1901]
[--n-jobs 1 2] [--code DIR]``. The test split's first ``--faces`` crops are copied to a
temporary folder; each run folder then predicts them with ``--no-detect`` in a fresh
process (start-up, model loading, reading, predicting, writing a CSV), once on all of
them and once on a quarter. It prints, per run and ``--n-jobs``, the wall time and
faces/s of the whole command, and the steady rate from the difference of the two
(start-up removed). ``--code`` runs another checkout's ``pipelines.predict`` (for a
before/after comparison; ``--n-jobs 0`` leaves the option out, for code without it).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from pipelines.dataset import default_data_dir
from pipelines.run import parse_member
from pipelines.splits import DEFAULT_MANIFEST, Split

REPO = Path(__file__).resolve().parent.parent


def time_predict(code: Path, run: Path, folder: Path, n_jobs: int) -> float:
    """Wall seconds of one ``pipelines.predict`` command on every image of ``folder``."""
    out = folder.parent / f"{folder.name}.csv"
    command = [sys.executable, "-m", "pipelines.predict", str(run), str(folder),
               "--no-detect", "--out", str(out), "--overwrite", "--quiet",
               *(["--n-jobs", str(n_jobs)] if n_jobs else [])]
    start = time.perf_counter()
    subprocess.run(command, cwd=code, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.predict_speed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=parse_member, metavar="NAME=RUN_FOLDER")
    parser.add_argument("--faces", type=int, default=1901)
    parser.add_argument("--n-jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--code", type=Path, default=REPO,
                        help="checkout whose pipelines.predict runs (default: this one)")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    names = Split.load(DEFAULT_MANIFEST).test[:args.faces]
    print("| run | --n-jobs | faces | wall s | faces/s (whole command) | faces/s (steady) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as temp:
        folders = {}
        for label, part in (("all", names), ("quarter", names[:len(names) // 4])):
            folders[label] = Path(temp) / label
            folders[label].mkdir()
            for name in part:
                shutil.copyfile(data_dir / name, folders[label] / name)
        for name, run in args.runs:
            for n_jobs in args.n_jobs:
                whole = time_predict(args.code, run, folders["all"], n_jobs)
                quarter = time_predict(args.code, run, folders["quarter"], n_jobs)
                steady = (len(names) - len(names) // 4) / (whole - quarter)
                print(f"| {name} | {n_jobs or 'not given'} | {len(names)} | {whole:.1f} | "
                      f"{len(names) / whole:.1f} | {steady:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
