"""What a run folder holds: the names of its files, and the versions saved with a model.

Training (:mod:`pipelines.classical`, :mod:`pipelines.cnn_training`,
:mod:`pipelines.stacking`) writes these files and prediction (:mod:`pipelines.predictor`)
reads them; both take the names from here.
"""
from __future__ import annotations

import platform
from importlib import metadata as package_metadata

#: The distribution name of this package, recorded with every saved model.
PACKAGE = "utkface-toolkit"

#: A CNN run: the network of the best epoch, its training summary, the checkpoint
#: written while training, the training curves and the split it trained on.
CNN_MODEL_FILE = "model.keras"
CNN_SUMMARY_FILE = "cnn_summary.json"
CNN_CHECKPOINT_FILE = "best.weights.h5"
CURVES_FILE = "training_curves.png"
SPLIT_FILE = "split.json"
#: A stack's model (its members inside).
STACK_FILE = "stack_model.joblib"
#: The summary table of a classical run or a stack.
SUMMARY_FILE = "summary.json"


def task_model_file(task: str) -> str:
    """The file of a classical run's model of one task."""
    return f"{task}_model.joblib"


def versions() -> dict[str, str]:
    """Versions of this package and of the libraries a saved model depends on."""
    names = (PACKAGE, "numpy", "scikit-learn", "scikit-image", "xgboost", "joblib", "pillow")
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found
