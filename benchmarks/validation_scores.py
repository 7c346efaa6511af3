"""Validation scores of saved classical runs, to choose between them without the test faces.

Usage::

    python -m benchmarks.validation_scores RUN_DIR [RUN_DIR ...] [--task gender]
        [--cache-dir DIR]

For each output folder of ``python -m pipelines.run`` (classical models), reads the
feature blocks of its ``summary.json`` for the validation faces of its split (from the
feature cache when the run filled it), and prints the saved model's validation
accuracy, macro F1 and log loss of its probabilities (classes), or MAE and RMSE (age).
Useful as a second criterion when two runs tie on the validation accuracy that
``pipelines.run`` chose by. The probabilities of an SVM are calibrated on these same
validation faces (two parameters per class), so its log loss is slightly optimistic,
equally for every SVM compared.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import joblib
import numpy as np
from sklearn.metrics import f1_score, log_loss

from pipelines.artifacts import SUMMARY_FILE, task_model_file
from pipelines.classical import task_kind
from pipelines.dataset import index_folder
from pipelines.feature_blocks import FeatureSpec, extract_views
from pipelines.run import DEFAULT_CACHE
from pipelines.splits import load_or_create_split


def validation_scores(run_dir: str | Path, task: str,
                      cache_dir: str | Path | None = DEFAULT_CACHE) -> dict[str, Any]:
    """Scores of a run's saved ``task`` model on its validation faces.

    Parameters
    ----------
    run_dir : path-like
        Output folder of a classical ``pipelines.run``.
    task : str
        Task whose model is scored.
    cache_dir : path-like, optional
        Feature cache folder (the run's, to read instead of extracting).

    Returns
    -------
    dict
        ``faces`` and ``accuracy``, ``f1_macro``, ``log_loss`` (classes) or ``mae``,
        ``rmse`` (age).
    """
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    specs = [FeatureSpec.parse(block["spec"]) for block in summary["config"]["features"]]
    index = index_folder(summary["data"])
    parts = load_or_create_split(index, summary["split"]["manifest"]).apply(index)
    features, mirrored = extract_views(parts, specs, cache_dir=cache_dir, progress=False)
    image, mirror = features["val"], mirrored["val"]
    rows = np.intersect1d(image.kept, mirror.kept)
    X = np.hstack([image.X[np.searchsorted(image.kept, rows)],
                   mirror.X[np.searchsorted(mirror.kept, rows)]])
    pipeline = joblib.load(run_dir / task_model_file(task))
    Z = pipeline.named_steps["reduce"].transform(X)
    model = pipeline.named_steps["model"]
    truth = parts["val"].labels(task)[rows]
    predicted = model.predict(Z)
    if task_kind(task) == "regressor":
        error = predicted - truth
        return {"faces": len(rows), "mae": float(np.abs(error).mean()),
                "rmse": float(np.sqrt((error ** 2).mean()))}
    scores = {"faces": len(rows), "accuracy": float(np.mean(predicted == truth)),
              "f1_macro": float(f1_score(truth, predicted, average="macro"))}
    if hasattr(model, "predict_proba"):
        scores["log_loss"] = float(log_loss(truth, model.predict_proba(Z),
                                            labels=model.classes_))
    return scores


def main(argv: Sequence[str] | None = None) -> None:
    """Print a table of validation scores, one row per run."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.validation_scores",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="output folders of pipelines.run")
    parser.add_argument("--task", default="gender", help="task to score (default: gender)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="feature cache folder (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    rows = [(str(run), validation_scores(run, args.task, args.cache_dir)) for run in args.runs]
    columns = list(rows[0][1])
    width = max(len(name) for name, _ in rows)
    print(f"{'run':{width}s}  " + "  ".join(f"{c:>9s}" for c in columns))
    for name, scores in rows:
        print(f"{name:{width}s}  " + "  ".join(
            f"{scores.get(c, float('nan')):9d}" if c == "faces"
            else f"{scores.get(c, float('nan')):9.4f}" for c in columns))


if __name__ == "__main__":
    main()
