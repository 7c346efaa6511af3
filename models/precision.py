"""Numeric precision of a CNN's training: float32, or bfloat16 arithmetic with float32 weights.

Keras' ``mixed_bfloat16`` policy keeps every weight in float32 but computes the layers in
bfloat16, which GPUs and processors with bfloat16 instructions (x86 AVX512-BF16 or
AMX-BF16, used by TensorFlow through oneDNN) run faster; elsewhere it is emulated and
slower than float32. bfloat16 keeps float32's exponent range, so no loss scaling is
needed. On a CPU with AVX512-BF16 a training step of the default network runs faster
than in float32, but whole epochs gain much less (augmentation and validation do not
speed up), so float32 stays the default (measurements in docs/experiment-log.md).

A network trains in the chosen precision and is saved in float32 (:func:`set_precision`),
so a saved model predicts the same way on any machine.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("float32", "mixed_bfloat16")
#: x86 flags of bfloat16 instructions in ``/proc/cpuinfo``.
BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_has_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether the processor has bfloat16 instructions.

    Parameters
    ----------
    cpuinfo : str, optional
        Text of ``/proc/cpuinfo``; read from the system when omitted (``False`` where
        there is no such file).

    Returns
    -------
    bool
        True when the first ``flags`` line names one of :data:`BFLOAT16_CPU_FLAGS`.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return not BFLOAT16_CPU_FLAGS.isdisjoint(line.partition(":")[2].split())
    return False


def check_precision(precision: str, *, n_gpus: int | None = None,
                    cpuinfo: str | None = None) -> str:
    """Check a training precision; warn when bfloat16 would be emulated.

    Parameters
    ----------
    precision : {"float32", "mixed_bfloat16"}
        The precision asked for.
    n_gpus : int, optional
        GPUs TensorFlow sees; asked from TensorFlow when needed and omitted.
    cpuinfo : str, optional
        Text of ``/proc/cpuinfo``, for :func:`cpu_has_bfloat16`.

    Returns
    -------
    str
        ``precision``. For ``"mixed_bfloat16"`` without a GPU, on a CPU without bfloat16
        instructions or with oneDNN turned off (``TF_ENABLE_ONEDNN_OPTS=0``), a warning
        is logged: training will be slower than in float32.

    Raises
    ------
    ValueError
        For a precision not in :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if precision == "float32":
        return precision
    if n_gpus is None:
        import tensorflow as tf

        n_gpus = len(tf.config.list_physical_devices("GPU"))
    if not n_gpus and (not cpu_has_bfloat16(cpuinfo)
                       or os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0"):
        logger.warning("training in %s on a CPU without bfloat16 instructions (or with "
                       "oneDNN off): it is emulated and slower than float32", precision)
    return precision


def set_precision(network: keras.Model, precision: str,
                  float32_layers: Iterable[str] = ()) -> keras.Model:
    """A copy of a network whose layers compute in ``precision``, with the same weights.

    Parameters
    ----------
    network : keras.Model
        Functional network.
    precision : {"float32", "mixed_bfloat16"}
        Keras dtype policy of the copy's layers.
    float32_layers : iterable of str
        Names of layers kept in float32 whatever ``precision`` is (output layers, whose
        probabilities and regression values need float32's resolution).

    Returns
    -------
    keras.Model
        A new network with the same graph, names and weight values; ``network`` itself
        when its layers already have these policies.
    """
    import keras

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    float32_layers = set(float32_layers)

    def policy(layer) -> str:
        return "float32" if layer.name in float32_layers else precision

    if all(layer.dtype_policy.name == policy(layer) for layer in network.layers
           if not isinstance(layer, keras.layers.InputLayer)):
        return network

    # from the configuration rather than keras.models.clone_model, which would also
    # compile the copy with the original's (here unregistered) losses
    config = network.get_config()
    for layer in config["layers"]:
        if layer["class_name"] != "InputLayer":
            layer["config"]["dtype"] = policy(network.get_layer(layer["name"]))
    copy = type(network).from_config(config)
    copy.set_weights(network.get_weights())
    return copy
