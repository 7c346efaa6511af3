"""The ``face-resnet`` architecture: dlib's pretrained face ResNet with the three task heads.

The trunk is the Keras translation of dlib's face-recognition ResNet
(:mod:`features.face_resnet`, trained by dlib on about three million faces) up to its
128-d descriptor; a LayerNormalization and a dropout lead to the task outputs of
:mod:`models.cnn` (gender sigmoid, ethnicity softmax), and for age to a softmax over
0..116 years (``age_distribution``) whose expectation is the ``age`` output, in years:
deep label distribution learning, trained by :func:`label_distribution_loss`.
On the validation split it gave a lower age error than the L1 regression of the other
networks (docs/face-resnet.md). The network takes aligned 150x150 RGB chips, pixels in
0-255, as dlib's alignment makes them (:func:`features.embeddings.face_chips`: 68
landmarks, ``get_face_chip``); the predictor (``models.cnn.CNNPredictor``) aligns the
faces it is given first.

Fine-tuning on two CPU cores: only the last ``tuned_blocks`` residual blocks, the
descriptor layer and the heads are trained; the frozen part of the trunk runs once per
face (and once per mirror image) to cache its activations (:func:`top_training_data`),
so an epoch runs the trained part only.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

#: Name of the architecture, and of its Keras models (how a saved one is recognised).
ARCHITECTURE = "face-resnet"
#: Residual blocks at the top of the trunk trained by default: dlib's two last stages
#: (three blocks at 4x4 and one at 2x2, 256 channels), fed by 8x8x128 activations.
DEFAULT_TUNED_BLOCKS = 4
#: Size faces are read at before they are aligned (UTKFace's own).
LOAD_SIZE = (200, 200)
FEATURE_DROPOUT = 0.2
#: Oldest age of the age distribution's bins (UTKFace's labels reach 116).
MAX_AGE = 116
#: Name of the age head's distribution over whole years (the ``age`` output is its
#: expectation, trained through the distribution's loss).
AGE_DISTRIBUTION = "age_distribution"
#: Spread (years) of the Gaussian label distribution an age is turned into.
AGE_LABEL_SIGMA = 2.0
#: Weight, per year of error, of the expectation's absolute error in that loss.
AGE_EXPECTATION_WEIGHT = 0.1
_BATCH = 128


def build_face_model(tasks: Sequence[str], *, seed: int | None = None) -> keras.Model:
    """The untrained-heads network: chips (N, 150, 150, 3) float in 0-255 -> task outputs.

    Parameters
    ----------
    tasks : sequence of str
        Heads to build, in ``models.cnn.TASKS`` order.
    seed : int, optional
        Seeds the heads' initialisation (``keras.utils.set_random_seed``).
    """
    import keras
    from keras import layers

    from features import face_resnet
    from models.cnn import task_output

    if seed is not None:
        keras.utils.set_random_seed(seed)
    converted = face_resnet.converted_weights()
    inputs = face_resnet.network_input(converted, name="image")
    features = face_resnet.apply_network(converted, inputs)
    features = layers.LayerNormalization(name="face_norm")(features)
    features = layers.Dropout(FEATURE_DROPOUT, name="face_dropout")(features)
    outputs = {task: task_output(features, task) for task in tasks if task != "age"}
    if "age" in tasks:
        outputs[AGE_DISTRIBUTION] = layers.Dense(MAX_AGE + 1, activation="softmax",
                                                 name=AGE_DISTRIBUTION)(features)
        expectation = layers.Dense(1, use_bias=False, trainable=False, name="age")
        outputs["age"] = expectation(outputs[AGE_DISTRIBUTION])
        expectation.set_weights([np.arange(MAX_AGE + 1, dtype=np.float32)[:, None]])
    return keras.Model(inputs, outputs, name=ARCHITECTURE)


def label_distribution_loss(y_true, y_pred):
    """Loss of an age distribution over 0..K years against ages in years, per face.

    Deep label distribution learning: the Kullback-Leibler divergence from a Gaussian of
    :data:`AGE_LABEL_SIGMA` years around the true age (normalised over the bins) to the
    predicted distribution, plus :data:`AGE_EXPECTATION_WEIGHT` times the absolute error
    of its expectation, the age the network predicts.
    """
    from keras import ops

    bins = ops.cast(ops.arange(ops.shape(y_pred)[-1]), y_pred.dtype)[None]
    ages = ops.reshape(ops.cast(y_true, y_pred.dtype), (-1, 1))
    target = ops.exp(-0.5 * ops.square((bins - ages) / AGE_LABEL_SIGMA))
    target = target / ops.sum(target, axis=1, keepdims=True)
    tiny = 1e-7
    divergence = ops.sum(target * (ops.log(target + tiny) - ops.log(y_pred + tiny)), axis=1)
    expected = ops.sum(y_pred * bins, axis=1)
    return divergence + AGE_EXPECTATION_WEIGHT * ops.abs(expected - ages[:, 0])


def is_face_model(network: keras.Model) -> bool:
    """Whether ``network`` is of this architecture (takes aligned chips)."""
    return network.name == ARCHITECTURE


def split_top(network: keras.Model, tuned_blocks: int = DEFAULT_TUNED_BLOCKS
              ) -> tuple[keras.Model, keras.Model]:
    """The frozen part and the trained part of a face network, sharing its layers.

    Returns
    -------
    (trunk, top) : keras.Model
        ``trunk`` maps chips to the activations after the last frozen residual block,
        ``top`` maps those to the task outputs; training ``top`` trains ``network``.

    Raises
    ------
    ValueError
        If ``tuned_blocks`` is not between 1 and the number of residual blocks.
    """
    import keras

    from features.face_resnet import block_outputs

    ends = block_outputs(network)
    if not 1 <= tuned_blocks < len(ends):
        raise ValueError(f"tuned_blocks must be between 1 and {len(ends) - 1}, "
                         f"got {tuned_blocks}")
    cut = network.get_layer(ends[-tuned_blocks - 1]).output
    return (keras.Model(network.input, cut, name=f"{ARCHITECTURE}-trunk"),
            keras.Model(cut, network.output, name=f"{ARCHITECTURE}-top"))


def _batches(count: int, progress: bool, description: str):
    from tqdm.auto import tqdm

    return tqdm(range(0, count, _BATCH), desc=description, unit="batch", disable=not progress)


def aligned_chips(images: np.ndarray, progress: bool = False) -> np.ndarray:
    """:func:`features.embeddings.face_chips` of (N, H, W, 3) uint8 faces, in batches."""
    from features.embeddings import CHIP_SIZE, face_chips

    chips = np.empty((len(images), CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
    for start in _batches(len(images), progress, "aligning faces"):
        chips[start:start + _BATCH] = face_chips(images[start:start + _BATCH])
    return chips


def _activations(trunk: keras.Model, chips: np.ndarray, progress: bool) -> np.ndarray:
    """The trunk's outputs, float16 (half the memory of the cache)."""
    rows = None
    for start in _batches(len(chips), progress, "frozen trunk"):
        batch = trunk.predict_on_batch(chips[start:start + _BATCH].astype(np.float32))
        if rows is None:
            rows = np.empty((len(chips), *batch.shape[1:]), dtype=np.float16)
        rows[start:start + len(batch)] = batch
    return rows


def with_mirror_rows(values: np.ndarray) -> np.ndarray:
    """Per-face values (labels, sample weights) laid out as the training activations of
    :func:`top_training_data`: the faces, then their mirror images in the same order."""
    return np.concatenate([values, values])


def top_training_data(network: keras.Model,
                      train: tuple[np.ndarray, Mapping[str, np.ndarray]],
                      val: tuple[np.ndarray, Mapping[str, np.ndarray]],
                      tuned_blocks: int = DEFAULT_TUNED_BLOCKS, progress: bool = False):
    """The trained part of ``network`` and its inputs: frozen-trunk activations.

    Parameters
    ----------
    network : keras.Model
        A face network (:func:`build_face_model`, or a saved one).
    train, val : tuple of (ndarray, mapping)
        Aligned chips (N, 150, 150, 3) uint8 and label codes per task.
    tuned_blocks : int
        Residual blocks trained (see :func:`split_top`).
    progress : bool
        Show progress bars.

    Returns
    -------
    top : keras.Model
        Activations -> task outputs, sharing ``network``'s layers.
    train, val : tuple of (ndarray, dict)
        Activations (float16, to halve their memory) and labels; the training part
        holds the faces, then their mirror images in the same order, the mirror being
        the augmentation that the cache keeps (:func:`with_mirror_rows` lays out other
        per-face values alike).
    """
    trunk, top = split_top(network, tuned_blocks)
    chips, labels = train
    train_rows = np.concatenate([_activations(trunk, chips, progress),
                                 _activations(trunk, chips[:, :, ::-1], progress)])
    train_labels = {task: with_mirror_rows(values) for task, values in labels.items()}
    val_rows = _activations(trunk, val[0], progress)
    return top, (train_rows, train_labels), (val_rows, dict(val[1]))
