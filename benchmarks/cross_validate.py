"""Compare feature blocks by k-fold cross-validation on the training and validation faces.

Usage::

    python -m benchmarks.cross_validate --features BLOCK [BLOCK ...] \\
        --features BLOCK [BLOCK ...] [--tasks gender ethnicity] [--folds 5]

One validation split of 1,901 faces cannot tell apart settings less than about a point
of accuracy apart. Here every face of the split's training and validation parts is
scored once, by a model fitted on the other folds, and every candidate sees the same
folds, so the per-fold differences between candidates are paired. The test faces are
never scored. Each candidate is the classical pipeline of ``pipelines.run`` for those
blocks: per-block scaling and PCA (fitted once, on the training part's faces, without
labels), the model with its defaults (or ``--param``), each face judged with its mirror
image.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold

from models.factory import MODELS, MirrorAveraged, make_estimator
from models.labels import TASKS
from pipelines.classical import TrainConfig, reduced_views, task_kind
from pipelines.dataset import default_data_dir, index_folder
from pipelines.feature_blocks import FeatureSpec
from pipelines.run import (ALL_CORES, DEFAULT_CACHE, parse_cli_args,
                           parse_feature_spec, parse_param)
from pipelines.splits import DEFAULT_MANIFEST, load_or_create_split

logger = logging.getLogger(__name__)


def _fold_score(estimator, both: np.ndarray, y: np.ndarray, train: np.ndarray,
                held_out: np.ndarray, regressor: bool, flip: bool = False) -> float:
    """Fit on ``train`` rows (and their mirror images with ``flip``); accuracy (or MAE)
    on ``held_out`` rows, mirror-averaged. Rows of ``both`` are ``[face | mirror]``."""
    half = both.shape[1] // 2
    image, mirror = both[train, :half], both[train, half:]
    if flip:
        model = clone(estimator).fit(np.vstack([image, mirror]), np.tile(y[train], 2))
    else:
        model = clone(estimator).fit(image, y[train])
    predicted = MirrorAveraged(model).predict(both[held_out])
    if regressor:
        return float(np.mean(np.abs(predicted - y[held_out])))
    return float(np.mean(predicted == y[held_out]))


def cross_validate(data_dir: str | Path, candidates: Sequence[Sequence[FeatureSpec]],
                   config: TrainConfig, *, folds: int = 5,
                   split_path: str | Path = DEFAULT_MANIFEST,
                   cache_dir: str | Path | None = DEFAULT_CACHE,
                   progress: bool = True) -> list[dict[str, Any]]:
    """Per-fold scores of each candidate set of feature blocks on each task.

    Parameters
    ----------
    data_dir : path-like
        UTKFace folder.
    candidates : sequence of sequences of FeatureSpec
        The feature blocks of each candidate.
    config : TrainConfig
        Tasks to score, the model (:data:`models.factory.MODELS`, with its defaults and
        ``params``), ``flip`` (also fit on the mirror image of every fitted face, as
        ``pipelines.run --flip``), ``n_jobs`` (processes for feature extraction, and
        folds fitted side by side) and ``seed`` (of the folds, the PCA and the models);
        its ``features`` are replaced by each candidate's.
    folds : int
        Number of folds, stratified on the task's classes (on age groups for age).
    split_path : path-like
        Split manifest; its training and validation faces are cross-validated.
    cache_dir : path-like, optional
        Feature cache.
    progress : bool
        Progress bars while extracting.

    Returns
    -------
    list of dict
        One per (candidate, task): ``features`` (block specs), ``task``, ``metric``
        (``accuracy`` or ``mae``), ``faces`` (scored), ``folds`` (scores) and ``mean``.
    """
    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    seed, n_jobs = config.seed, config.n_jobs
    index = index_folder(data_dir)
    parts = load_or_create_split(index, split_path, seed=seed).apply(index)
    extract = {"n_jobs": n_jobs, "cache_dir": cache_dir, "progress": progress}
    rows = []
    for specs in candidates:
        # every training face's mirror image too: the folds mix training and validation
        _, views = reduced_views(
            parts, dataclasses.replace(config, features=tuple(specs), flip=True), extract)
        train, val = views["train"], views["val"]
        both = np.vstack([train.both, val.both])
        for task in config.tasks:
            kind = task_kind(task)
            labels = np.concatenate([parts["train"].labels(task)[train.rows],
                                     parts["val"].labels(task)[val.rows]])
            strata = labels if kind == "classifier" else np.concatenate(
                [parts["train"].labels("age_group")[train.rows],
                 parts["val"].labels("age_group")[val.rows]])
            splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
            estimator = make_estimator(config.model, kind, random_state=seed, **config.params)
            start = time.perf_counter()
            scores = Parallel(n_jobs=n_jobs)(
                delayed(_fold_score)(estimator, both, labels, fit_rows, held_out,
                                     kind == "regressor", config.flip)
                for fit_rows, held_out in splitter.split(both, strata))
            logger.info("%s %s: %s (%.0f s)", task, " ".join(map(str, specs)),
                        np.round(scores, 4), time.perf_counter() - start)
            rows.append({"features": [str(spec) for spec in specs], "task": task,
                         "flip": config.flip,
                         "metric": "mae" if kind == "regressor" else "accuracy",
                         "faces": len(labels), "folds": scores, "mean": float(np.mean(scores))})
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Per task and candidate: mean score, its standard error, and the paired difference
    with the task's first candidate (mean, and in how many folds it is better)."""
    lines = [f"{'task':<10} {'candidate':<9} {'metric':<8} {'mean':>7} {'s.e.':>7} "
             f"{'vs #1':>8} {'better':>7}  features"]
    for task in dict.fromkeys(row["task"] for row in rows):
        of_task = [row for row in rows if row["task"] == task]
        first = np.asarray(of_task[0]["folds"])
        for number, row in enumerate(of_task, start=1):
            scores = np.asarray(row["folds"])
            error = scores.std(ddof=1) / np.sqrt(len(scores))
            sign = -1 if row["metric"] == "mae" else 1
            better = int(np.sum(sign * (scores - first) > 0))
            lines.append(f"{task:<10} #{number:<8} {row['metric']:<8} {row['mean']:>7.4f} "
                         f"{error:>7.4f} {np.mean(scores - first):>+8.4f} "
                         f"{better:>3}/{len(scores):<3}  {' '.join(row['features'])}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cross_validate",
        description=" ".join(__doc__.split("\n\n")[3].split()))
    parser.add_argument("--features", nargs="+", action="append", type=parse_feature_spec,
                        required=True, metavar="BLOCK",
                        help="blocks of one candidate, as in pipelines.run --features; "
                             "repeat the option for each candidate")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=["gender"],
                        help="tasks to score (default: gender)")
    parser.add_argument("--model", choices=MODELS, default="svm", help="default: svm")
    parser.add_argument("--param", action="append", default=[], type=parse_param,
                        metavar="NAME=VALUE", help="model parameter, for every candidate")
    parser.add_argument("--flip", action="store_true",
                        help="also fit on the mirror image of every fitted face, as "
                             "pipelines.run --flip (an RBF SVM fit takes about 4x longer)")
    parser.add_argument("--folds", type=int, default=5, help="default: 5")
    parser.add_argument("--data", help="UTKFace folder (default: ../shared/data/UTKFace or "
                                       "$UTKFACE_DIR)")
    parser.add_argument("--split", default=DEFAULT_MANIFEST, help="split manifest")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE, help="feature cache folder")
    parser.add_argument("--n-jobs", type=int, default=ALL_CORES,
                        help="extraction processes and folds fitted side by side "
                             "(default: all %(default)s cores)")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument("--out", help="also write the per-fold scores to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_cli_args(build_parser(), argv)
    try:
        config = TrainConfig(features=tuple(args.features[0]), model=args.model,
                             tasks=tuple(args.tasks), params=dict(args.param), flip=args.flip,
                             n_jobs=args.n_jobs, seed=args.seed)
        rows = cross_validate(args.data or default_data_dir(), args.features, config,
                              folds=args.folds, split_path=args.split,
                              cache_dir=args.cache_dir, progress=not args.quiet)
    except (FileNotFoundError, NotADirectoryError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
