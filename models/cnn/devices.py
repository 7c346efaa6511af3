"""Where a network trains: the ``tf.distribute`` strategy, and whether there is a GPU."""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf


# --- devices ----------------------------------------------------------------------------

def strategy_kind(tf_config: str | None, n_gpus: int) -> str:
    """Which ``tf.distribute`` strategy to train with.

    Parameters
    ----------
    tf_config : str or None
        Value of the environment variable ``TF_CONFIG``.
    n_gpus : int
        GPUs TensorFlow sees.

    Returns
    -------
    {"one-device", "mirrored", "multi-worker"}
        ``multi-worker`` when ``tf_config`` names a cluster, ``mirrored`` for several
        GPUs, else ``one-device``.

    Raises
    ------
    ValueError
        If ``tf_config`` is set but is not a JSON object.
    """
    if tf_config:
        try:
            config = json.loads(tf_config)
        except json.JSONDecodeError as error:
            raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from None
        if not isinstance(config, dict):
            raise ValueError(f"TF_CONFIG must be a JSON object, got {tf_config!r}")
        if config.get("cluster"):
            return "multi-worker"
    return "mirrored" if n_gpus > 1 else "one-device"


def distribution_strategy() -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy of :func:`strategy_kind` for this process.

    Build (or load) and compile a network inside ``strategy.scope()``; ``fit`` then
    spreads each batch over the strategy's replicas. Create it before any other
    TensorFlow work when ``TF_CONFIG`` is set.

    Returns
    -------
    tf.distribute.Strategy
        ``MultiWorkerMirroredStrategy``, ``MirroredStrategy``, or the default strategy
        (``tf.distribute.get_strategy()``, one device).
    """
    import tensorflow as tf

    kind = strategy_kind(os.environ.get("TF_CONFIG"),
                         len(tf.config.list_physical_devices("GPU")))
    if kind == "multi-worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()




def gpu_available() -> bool:
    """Whether TensorFlow sees a GPU (imports TensorFlow)."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))
