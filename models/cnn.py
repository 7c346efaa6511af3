"""Multi-task Keras CNN for gender, ethnicity and age, and a picklable predictor around it.

Importing this module is cheap: TensorFlow and Keras are imported inside the functions
that build, train or load a network, never at module level.

Network
-------
One shared trunk and one head per task, named after the task so that Keras matches
outputs, losses and targets by name:

- ``gender``: one sigmoid unit, the probability of code 1 (female);
- ``ethnicity``: softmax over the 5 ethnicity codes;
- ``age``: age in years, a linear unit followed by a fixed ``Rescaling(AGE_SCALE)``.

Age loss and scaling. The age head is trained with the mean absolute error, the metric it
is scored on: L1 is minimised by the conditional median, which minimises the expected
absolute error, and it is robust to UTKFace's noisy age labels (a squared loss chases
them; Huber is L1 beyond its threshold and only adds a knob). Log-age was rejected: L1 on
log-age minimises the *relative* error, trading years on the many adults for fractions of
a year on infants, which raises the MAE in years. The head's linear unit predicts
age / 100 (it starts at a constant 0.3, near the median age), so its weights are of order 1
like the other heads' logits; the ``Rescaling`` layer turns it back into years, so saved
networks, progress lines and curves all speak in years. The age loss weight
``1 / AGE_SCALE`` makes the age term the MAE of age / 100: its gradient at the linear unit
is +-1 per face, the same bound as a cross-entropy's gradient at its logits, so no task
drowns the shared trunk's updates. (These are reasoned choices; a comparison of losses
by full training runs was beyond this machine's budget.)

Architectures (:data:`ARCHITECTURES`):

``default``
    Compact VGG-style trunk for a CPU budget that works at half the input resolution:
    a 2x2 average pooling (64x64 for a 128x128 input), a 32-channel stride-2 3x3 stem,
    then three stages, each a 2x2 max-pooling and two Conv3x3-BatchNorm-ReLU blocks,
    with 64, 128 and 256 channels (at 16x16, 8x8 and 4x4), global average pooling and
    dropout 0.2; per task a Dense-128 + Dropout-0.3 head. About 1.26 M weights and
    0.04 GMAC per 128x128 face; working at half the resolution makes a training step
    about 3x faster than at full resolution (docs/experiment-log.md).
``seed_baseline``
    The reference notebook's network, kept for comparison: Conv 32-64-128-256 (3x3,
    ReLU, valid padding), each followed by 2x2 max-pooling, Flatten, then per task Dense
    256 + Dropout 0.3. Gender and age heads only; inputs of at least 46x46 pixels.

Both are trained with the same protocol (:func:`fit_network`): on-the-fly augmentation,
label smoothing of 0.1 on the gender and ethnicity cross-entropies (targets 0.05 / 0.95
and 0.02 / 0.92, a guard against overconfident fits to noisy labels; with two seeds it
scored better on every task of the validation split, see the README), AdamW with
decoupled weight decay, a cosine learning-rate schedule with warm-up, early
stopping on the validation loss in the second half of the schedule and the best epoch's
weights restored.

Distillation (``descriptors`` of :func:`fit_network`; on by default in
``pipelines.run`` for a new network of the default architecture): the network also
learns to regress a teacher's face descriptors of its training faces, standardised
(dlib's 128-d face-recognition descriptors, from a ResNet trained on millions of
faces). The regression is a linear ``descriptor`` output on the shared features
(:func:`with_descriptor_head`), weighted by :data:`DEFAULT_DESCRIPTOR_WEIGHT` in the
training loss (3 scored better than 1 on the validation split with two seeds, see the
README), and exists only while training: the saved network predicts from pixels alone,
and its epochs are judged by the tasks' part of the validation loss.

Devices
-------
:func:`distribution_strategy` picks the ``tf.distribute`` strategy a network is built,
compiled and trained under (:func:`strategy_kind`): ``MultiWorkerMirroredStrategy``
when the environment variable ``TF_CONFIG`` describes a cluster of workers (each worker
runs the same command with its own ``TF_CONFIG``), ``MirroredStrategy`` when TensorFlow
sees several GPUs, and otherwise TensorFlow's default strategy on one device (the CPU
or the one GPU). The batch size is the global batch, split over the replicas. The
one-device path is the tested one; the other two have not been run on this project's
machines.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from features.loader import ImageLoader
from models.face_model import ARCHITECTURE as FACE_ARCHITECTURE
from models.face_model import (AGE_DISTRIBUTION, LOAD_SIZE, is_face_model,
                               label_distribution_loss)
from models.stack import labels_of

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

#: Tasks a network can have a head for, in output order.
TASKS: tuple[str, ...] = ("gender", "ethnicity", "age")
#: Layers that make the outputs (kept in float32 by ``models.precision.set_precision``).
OUTPUT_LAYERS: tuple[str, ...] = (*TASKS, "age_scaled", "age_distribution")
N_ETHNICITIES = 5
#: The age head's linear unit predicts age / AGE_SCALE.
AGE_SCALE = 100.0
_AGE_BIAS_INIT = 0.3
LOSS_WEIGHTS: dict[str, float] = {"gender": 1.0, "ethnicity": 1.0, "age": 1.0 / AGE_SCALE}
#: Training-only output that regresses a teacher's standardised face descriptors
#: (:func:`with_descriptor_head`); saved networks never have it.
DESCRIPTOR_OUTPUT = "descriptor"
#: Weight of the descriptor regression (mean squared error of standardised values;
#: chosen on the validation split, see the README).
DEFAULT_DESCRIPTOR_WEIGHT = 3.0

DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_WEIGHT_DECAY = 1e-2
DEFAULT_PATIENCE = 5
#: Label smoothing of the gender and ethnicity cross-entropies (chosen on the validation
#: split, see the README).
DEFAULT_LABEL_SMOOTHING = 0.1
_FINAL_LR_FRACTION = 0.01
_NO_DECAY = ("bias", "gamma", "beta")


# --- architectures ----------------------------------------------------------------------


def _conv_bn_relu(x, filters: int, name: str, strides: int = 1):
    from keras import layers

    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    # momentum 0.9, not Keras' 0.99: the inference statistics settle within a few dozen
    # steps, which short runs and fine-tuning on small folders need
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _default_trunk(x):
    from keras import layers

    x = layers.AveragePooling2D(2, name="downsample")(x)
    x = _conv_bn_relu(x, 32, "stem", strides=2)
    for stage, filters in enumerate((64, 128, 256), start=1):
        x = layers.MaxPooling2D(name=f"stage{stage}_pool")(x)
        x = _conv_bn_relu(x, filters, f"stage{stage}a")
        x = _conv_bn_relu(x, filters, f"stage{stage}b")
    x = layers.GlobalAveragePooling2D(name="trunk_pool")(x)
    return layers.Dropout(0.2, name="trunk_dropout")(x)


def _seed_baseline_trunk(x):
    from keras import layers

    for filters in (32, 64, 128, 256):
        x = layers.Conv2D(filters, 3, activation="relu", name=f"conv{filters}")(x)
        x = layers.MaxPooling2D(name=f"pool{filters}")(x)
    return layers.Flatten(name="trunk_flatten")(x)


def task_output(x, task: str):
    """The task's output layer, named after the task."""
    from keras import initializers, layers

    if task == "gender":
        return layers.Dense(1, activation="sigmoid", name=task)(x)
    if task == "ethnicity":
        return layers.Dense(N_ETHNICITIES, activation="softmax", name=task)(x)
    # Zero weights: every face starts at the median-like age instead of +-100 years of noise.
    x = layers.Dense(1, name="age_scaled", kernel_initializer="zeros",
                     bias_initializer=initializers.Constant(_AGE_BIAS_INIT))(x)
    return layers.Rescaling(AGE_SCALE, name=task)(x)


def _head(x, task: str, units: int, dropout: float):
    from keras import layers

    x = layers.Dense(units, activation="relu", name=f"{task}_dense")(x)
    x = layers.Dropout(dropout, name=f"{task}_dropout")(x)
    return task_output(x, task)


@dataclass(frozen=True)
class Architecture:
    """A named network design.

    Attributes
    ----------
    trunk : callable
        Maps the rescaled input tensor to the shared feature tensor.
    head_units, head_dropout : int, float
        Width and dropout of each task's hidden Dense layer.
    tasks : tuple of str
        Tasks the design supports (and trains by default).
    """

    trunk: Callable
    head_units: int
    head_dropout: float
    tasks: tuple[str, ...]


ARCHITECTURES: dict[str, Architecture] = {
    "default": Architecture(_default_trunk, 128, 0.3, TASKS),
    "seed_baseline": Architecture(_seed_baseline_trunk, 256, 0.3, ("gender", "age")),
}
#: Every architecture :func:`build_model` builds: the above, trained from scratch on
#: pixels, and ``face-resnet``, dlib's pretrained face ResNet on aligned chips
#: (:mod:`models.face_model`).
ARCHITECTURE_NAMES: tuple[str, ...] = (*ARCHITECTURES, FACE_ARCHITECTURE)


def resolve_tasks(architecture: str, tasks: Sequence[str] | None = None) -> tuple[str, ...]:
    """Check a task selection against an architecture, in canonical order.

    Parameters
    ----------
    architecture : str
        A key of :data:`ARCHITECTURES`.
    tasks : sequence of str, optional
        Non-empty subset of the architecture's tasks; all of them when omitted.

    Returns
    -------
    tuple of str
        The tasks, ordered as in :data:`TASKS`.

    Raises
    ------
    ValueError
        For an unknown architecture, an empty selection or an unsupported task.
    """
    if architecture not in ARCHITECTURE_NAMES:
        raise ValueError(f"unknown architecture {architecture!r}; "
                         f"expected one of {sorted(ARCHITECTURE_NAMES)}")
    supported = ARCHITECTURES[architecture].tasks if architecture in ARCHITECTURES else TASKS
    if tasks is None:
        return supported
    if isinstance(tasks, str):
        tasks = [tasks]
    unsupported = sorted(set(tasks) - set(supported))
    if unsupported:
        raise ValueError(f"architecture {architecture!r} has no head for {unsupported}; "
                         f"it supports {supported}")
    if not tasks:
        raise ValueError("tasks must name at least one task")
    return tuple(task for task in TASKS if task in tasks)


def build_model(architecture: str = "default", input_shape: Sequence[int] = (128, 128, 1),
                tasks: Sequence[str] | None = None, *, seed: int | None = None) -> keras.Model:
    """Build an untrained multi-task network.

    Parameters
    ----------
    architecture : {"default", "seed_baseline", "face-resnet"}
        Network design, see the module docstring and :mod:`models.face_model`.
    input_shape : sequence of int
        ``(height, width, channels)``, channels 1 (grayscale) or 3 (RGB). The network
        takes raw pixel values in 0..255 and rescales them itself. ``face-resnet``
        takes aligned 150x150 RGB chips whatever this says.
    tasks : sequence of str, optional
        Heads to build, a non-empty subset of the architecture's tasks (all by default).
    seed : int, optional
        Seeds Python, NumPy and TensorFlow (``keras.utils.set_random_seed``) before the
        weights are initialised.

    Returns
    -------
    keras.Model
        Uncompiled functional model with one input and a dict of outputs keyed by task:
        ``gender`` (N, 1) probability of female, ``ethnicity`` (N, 5) probabilities,
        ``age`` (N, 1) years.
    """
    tasks = resolve_tasks(architecture, tasks)
    if architecture not in ARCHITECTURES:
        from models.face_model import build_face_model
        return build_face_model(tasks, seed=seed)
    height, width, channels = (int(value) for value in input_shape)
    if channels not in (1, 3):
        raise ValueError(f"input_shape must have 1 or 3 channels, got {input_shape}")
    import keras
    from keras import layers

    if seed is not None:
        keras.utils.set_random_seed(seed)
    design = ARCHITECTURES[architecture]
    inputs = keras.Input((height, width, channels), name="image")
    features = design.trunk(layers.Rescaling(1 / 255, name="rescale")(inputs))
    outputs = {task: _head(features, task, design.head_units, design.head_dropout)
               for task in tasks}
    return keras.Model(inputs, outputs, name=architecture)


# --- network introspection --------------------------------------------------------------


def network_tasks(network: keras.Model) -> tuple[str, ...]:
    """Tasks a network has an output for, in :data:`TASKS` order."""
    names = {layer.name for layer in network.layers}
    return tuple(task for task in TASKS if task in names)


def select_tasks(network: keras.Model, tasks: Sequence[str]) -> keras.Model:
    """A network sharing ``network``'s layers and weights with only some task outputs.

    Raises
    ------
    ValueError
        If ``network`` has no head for one of ``tasks``.
    """
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    missing = sorted(set(tasks) - set(network_tasks(network)))
    if missing:
        raise ValueError(f"the network has no head for {missing}; "
                         f"it has {network_tasks(network)}")
    if set(tasks) == set(network_tasks(network)):
        return network
    import keras

    outputs = {task: network.get_layer(task).output for task in TASKS if task in tasks}
    return keras.Model(network.input, outputs, name=network.name)


def _is_head_layer(name: str) -> bool:
    return name == DESCRIPTOR_OUTPUT or any(name == task or name.startswith(f"{task}_")
                                            for task in TASKS)


def with_descriptor_head(network: keras.Model, units: int) -> keras.Model:
    """The network plus a linear output regressing a teacher's face descriptors.

    The ``descriptor`` output (:data:`DESCRIPTOR_OUTPUT`) is a Dense layer of ``units``
    on the shared features the task heads start from, so regressing it teaches the
    trunk what the teacher's descriptors encode. The returned model shares every other
    layer, and its weights, with ``network``: training it trains ``network``, which
    stays as it was built (the head is for training only and is never saved).
    """
    import keras
    from keras import layers

    tasks = network_tasks(network)
    features = network.get_layer(f"{tasks[0]}_dense").input
    outputs = {task: network.get_layer(task).output for task in tasks}
    outputs[DESCRIPTOR_OUTPUT] = layers.Dense(units, dtype="float32",
                                              name=DESCRIPTOR_OUTPUT)(features)
    return keras.Model(network.input, outputs, name=network.name)


def set_trunk_trainable(network: keras.Model, trainable: bool) -> None:
    """Freeze or unfreeze every layer outside the task heads.

    Frozen BatchNormalization layers run in inference mode, so their statistics are
    kept too. Recompile (:func:`compile_network`) after a change.
    """
    for layer in network.layers:
        if not _is_head_layer(layer.name):
            layer.trainable = trainable


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


# --- training ---------------------------------------------------------------------------


def _sparse_crossentropy(label_smoothing: float) -> Callable:
    """Sparse categorical cross-entropy with label smoothing, which Keras' own sparse
    loss lacks: the integer codes are one-hot encoded first."""
    import keras
    from keras import ops

    def sparse_crossentropy(y_true, y_pred):
        codes = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        return keras.losses.categorical_crossentropy(
            ops.one_hot(codes, ops.shape(y_pred)[-1], dtype=y_pred.dtype), y_pred,
            label_smoothing=label_smoothing)

    return sparse_crossentropy


def compile_network(network: keras.Model, *, learning_rate: float = DEFAULT_LEARNING_RATE,
                    total_steps: int, warmup_steps: int = 0,
                    weight_decay: float = DEFAULT_WEIGHT_DECAY,
                    label_smoothing: float = DEFAULT_LABEL_SMOOTHING,
                    descriptor_weight: float = DEFAULT_DESCRIPTOR_WEIGHT) -> None:
    """Compile with per-task losses and metrics, AdamW and a cosine schedule.

    Parameters
    ----------
    network : keras.Model
        A network from :func:`build_model` (or a saved one).
    learning_rate : float
        Peak learning rate, reached after the warm-up.
    total_steps : int
        Optimizer steps the schedule spans; it decays to 1% of the peak.
    warmup_steps : int
        Steps of linear warm-up from 10% of the peak.
    weight_decay : float
        AdamW decoupled weight decay (not applied to biases and normalisation).
    label_smoothing : float
        Share of each gender and ethnicity target spread evenly over the classes.
    descriptor_weight : float
        Weight of the mean squared error of the ``descriptor`` output, for a network
        from :func:`with_descriptor_head`.

    Notes
    -----
    Losses: binary cross-entropy (gender), categorical cross-entropy of the ethnicity
    codes (both with label smoothing), mean absolute error in years (age), weighted by
    :data:`LOSS_WEIGHTS`; for a network with an ``age_distribution`` output, age is
    learnt through ``models.face_model.label_distribution_loss`` on it instead (the
    ``age`` output's error is then weighted 0). Metrics are logged as ``gender_acc``, ``ethnicity_acc`` and
    ``age_mae`` (years).
    """
    import keras

    tasks = network_tasks(network)
    warmup_steps = min(warmup_steps, total_steps // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate * 0.1 if warmup_steps else learning_rate,
        decay_steps=max(1, total_steps - warmup_steps), alpha=_FINAL_LR_FRACTION,
        warmup_target=learning_rate if warmup_steps else None, warmup_steps=warmup_steps)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay)
    optimizer.exclude_from_weight_decay(var_names=list(_NO_DECAY))
    losses = {"gender": keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
              "ethnicity": _sparse_crossentropy(label_smoothing),
              "age": keras.losses.MeanAbsoluteError()}
    metrics = {"gender": [keras.metrics.BinaryAccuracy(name="acc")],
               "ethnicity": [keras.metrics.SparseCategoricalAccuracy(name="acc")],
               "age": [keras.metrics.MeanAbsoluteError(name="mae")]}
    loss = {task: losses[task] for task in tasks}
    loss_weights = {task: LOSS_WEIGHTS[task] for task in tasks}
    if DESCRIPTOR_OUTPUT in network.output_names:
        loss[DESCRIPTOR_OUTPUT] = keras.losses.MeanSquaredError()
        loss_weights[DESCRIPTOR_OUTPUT] = descriptor_weight
    if AGE_DISTRIBUTION in network.output_names:
        loss[AGE_DISTRIBUTION] = label_distribution_loss
        loss_weights[AGE_DISTRIBUTION], loss_weights["age"] = 1.0, 0.0
    network.compile(optimizer=optimizer, loss=loss, loss_weights=loss_weights,
                    metrics={task: metrics[task] for task in tasks})


#: Ranges of the training-time distortions (see :func:`augment_batch`): shift as a
#: fraction of the size per axis, rotation in degrees, zoom as a fraction of the scale,
#: brightness as a fraction of 0..255, contrast as a fraction of the deviation from the mean.
AUGMENT_SHIFT, AUGMENT_ROTATION_DEG, AUGMENT_ZOOM = 0.06, 10.8, 0.1
AUGMENT_BRIGHTNESS, AUGMENT_CONTRAST = 0.15, 0.2


def augment_batch(images: tf.Tensor, generator: tf.random.Generator) -> tf.Tensor:
    """Random distortions of a float32 batch (N, H, W, C) of faces with pixel values 0..255.

    Each face gets its own draw: a horizontal flip (half of the faces), a shift of up to
    6% of the size along each axis, a rotation of up to 10.8 degrees and a zoom of up to
    10%, composed into one affine map and applied by a single bilinear resampling with
    mirrored edges; then a brightness change of up to 15% of the range and a contrast
    change of up to 20%, each clipped to 0..255. None changes a face's gender,
    ethnicity or age, so labels stay valid.

    One resampling instead of one per geometric distortion (Keras' ``RandomTranslation``,
    ``RandomRotation`` and ``RandomZoom`` in a row) blurs the face once, and made an
    augmented training step about 1.3x faster on a 2-core CPU.

    Parameters
    ----------
    images : tf.Tensor, float32, shape (N, H, W, C)
        Faces.
    generator : tf.random.Generator
        Source of the random draws; a seeded one gives a reproducible sequence.

    Returns
    -------
    tf.Tensor, float32, shape (N, H, W, C)
    """
    import tensorflow as tf

    shape = tf.shape(images)
    one_per_face = shape[:1]
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)

    def uniform(bound: float) -> tf.Tensor:
        return generator.uniform(one_per_face, -bound, bound)

    flip = tf.where(generator.uniform(one_per_face) < 0.5, -1.0, 1.0)
    angle = uniform(AUGMENT_ROTATION_DEG * np.pi / 180)
    scale = 1.0 + uniform(AUGMENT_ZOOM)    # input pixels per output pixel; > 1 zooms out
    shift_x, shift_y = uniform(AUGMENT_SHIFT) * width, uniform(AUGMENT_SHIFT) * height
    # output pixel (x, y) reads input pixel A @ (flip * (x - cx), y - cy) + (cx, cy) - shift
    cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
    center_x, center_y = (width - 1) / 2, (height - 1) / 2
    a0, a1, b0, b1 = cos * flip, -sin, sin * flip, cos
    zeros = tf.zeros_like(angle)
    transforms = tf.stack([a0, a1, center_x - a0 * center_x - a1 * center_y - shift_x,
                           b0, b1, center_y - b0 * center_x - b1 * center_y - shift_y,
                           zeros, zeros], axis=1)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT")
    brightness = uniform(AUGMENT_BRIGHTNESS * 255)[:, None, None, None]
    images = tf.clip_by_value(images + brightness, 0.0, 255.0)
    contrast = 1.0 + uniform(AUGMENT_CONTRAST)[:, None, None, None]
    mean = tf.reduce_mean(images, axis=(1, 2), keepdims=True)
    return tf.clip_by_value((images - mean) * contrast + mean, 0.0, 255.0)


def encode_targets(labels: Mapping[str, np.ndarray],
                   tasks: Sequence[str]) -> dict[str, np.ndarray]:
    """Network targets from label codes.

    Gender (N, 1) float32, ethnicity (N,) int32 codes, age (N, 1) float32 years (also
    for the ``age_distribution`` output), and for the ``descriptor`` output (N, D)
    float32 rows.
    """
    dtypes = {"gender": np.float32, "ethnicity": np.int32, "age": np.float32,
              AGE_DISTRIBUTION: np.float32, DESCRIPTOR_OUTPUT: np.float32}
    targets = {task: np.asarray(labels[task], dtype=dtypes[task]) for task in tasks}
    return {task: values.reshape((len(values), -1) if task == DESCRIPTOR_OUTPUT
                                 else (-1,) if task == "ethnicity" else (-1, 1))
            for task, values in targets.items()}


def make_dataset(images: np.ndarray, labels: Mapping[str, np.ndarray], tasks: Sequence[str], *,
                 batch_size: int, training: bool, seed: int | None = None,
                 augment: bool = True) -> tf.data.Dataset:
    """A ``tf.data`` pipeline of (float32 image batch, dict of task targets).

    Parameters
    ----------
    images : ndarray of uint8, shape (N, H, W, C)
        Faces.
    labels : mapping of str to ndarray
        Label codes per task (age in years), aligned with ``images``.
    tasks : sequence of str
        Tasks whose targets are yielded.
    batch_size : int
        Faces per batch.
    training : bool
        Shuffle every epoch and, with ``augment``, augment (:func:`augment_batch`) each
        batch.
    seed : int, optional
        Seed of the shuffle and the augmentation.
    augment : bool
        False for inputs that are not images (cached activations): shuffled only.

    Returns
    -------
    tf.data.Dataset
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, encode_targets(labels, tasks)))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    generator = None
    if training and augment:
        generator = (tf.random.Generator.from_non_deterministic_state() if seed is None
                     else tf.random.Generator.from_seed(seed))

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def prepare(images, targets):
        images = tf.cast(images, tf.float32)
        return (images if generator is None else augment_batch(images, generator)), targets

    # A sequential map: parallel calls would draw from the generator's state in a
    # varying order, breaking seeded runs. Prefetching still overlaps it with training.
    return dataset.batch(batch_size).map(prepare).prefetch(tf.data.AUTOTUNE)


def fit_network(network: keras.Model, train: tuple[np.ndarray, Mapping[str, np.ndarray]],
                val: tuple[np.ndarray, Mapping[str, np.ndarray]], *, epochs: int,
                batch_size: int, checkpoint_path: str | os.PathLike,
                learning_rate: float = DEFAULT_LEARNING_RATE,
                weight_decay: float = DEFAULT_WEIGHT_DECAY, patience: int = DEFAULT_PATIENCE,
                freeze_trunk_epochs: int = 0, head_learning_rate: float | None = None,
                augment: bool = True,
                descriptors: tuple[np.ndarray, np.ndarray] | None = None,
                descriptor_weight: float = DEFAULT_DESCRIPTOR_WEIGHT,
                seed: int | None = None, verbose: int = 2) -> dict[str, list[float]]:
    """Train a network in place and leave it with the weights of its best epoch.

    Training runs in up to two phases: ``freeze_trunk_epochs`` epochs with the trunk
    frozen (heads only, for fine-tuning), then the rest with every layer trainable. Each
    phase is compiled afresh (:func:`compile_network`) with a one-epoch warm-up and a
    cosine decay over the phase, and, in the second half of the phase, stops early after
    ``patience`` epochs without a lower validation loss. The weights of the epoch with the
    lowest validation loss, over both phases, are checkpointed to ``checkpoint_path`` and
    restored at the end.

    With ``descriptors`` (a teacher's face descriptors of the training and validation
    faces), the network trains with an extra output regressing them
    (:func:`with_descriptor_head`), a distillation of what the teacher has learnt from
    far more faces; the validation loss that early stopping and the checkpoint watch is
    then the tasks' part only (``val_task_loss``), so epochs are judged as without it.

    Parameters
    ----------
    network : keras.Model
        Network to train; all its layers are left trainable.
    train, val : tuple of (ndarray, mapping)
        uint8 images (N, H, W, C) and label codes per task (see :func:`make_dataset`).
    epochs : int
        Maximum number of epochs over both phases.
    batch_size : int
        Faces per step.
    checkpoint_path : path-like
        Weights file of the best epoch; must end in ``.weights.h5``.
    learning_rate, weight_decay : float
        Peak learning rate and AdamW weight decay.
    patience : int
        Epochs without improvement of the validation loss before a phase stops.
    freeze_trunk_epochs : int
        Epochs, at the start, that train the heads only.
    head_learning_rate : float, optional
        Peak learning rate of those epochs; ``learning_rate`` by default.
    augment : bool
        Distort the training images (:func:`augment_batch`); False for inputs that are
        not images, such as cached activations.
    descriptors : tuple of ndarray, optional
        Standardised teacher descriptors (N, D) float32 of the ``train`` and ``val``
        faces, aligned with their images; no NaN.
    descriptor_weight : float
        Weight of the descriptor regression in the training loss.
    seed : int, optional
        Seeds shuffling, augmentation and dropout (``keras.utils.set_random_seed``).
    verbose : int
        Keras verbosity; 2 prints one line per epoch.

    Returns
    -------
    dict of str to list of float
        Keras history over all epochs run (``loss``, ``val_loss``, ``<task>_loss``,
        ``gender_acc``, ``age_mae``, ... and their ``val_`` twins), plus
        ``trunk_frozen`` (1.0 for the epochs of the frozen phase) and, with
        ``descriptors``, ``descriptor_loss`` and ``val_task_loss``.
    """
    if not 0 <= freeze_trunk_epochs <= epochs or epochs < 1:
        raise ValueError(f"need epochs >= 1 and 0 <= freeze_trunk_epochs <= epochs, got "
                         f"epochs={epochs}, freeze_trunk_epochs={freeze_trunk_epochs}")
    import keras

    if seed is not None:
        keras.utils.set_random_seed(seed)
    tasks = network_tasks(network)
    trained, monitor, callbacks = network, "val_loss", []
    if AGE_DISTRIBUTION in network.output_names:  # learnt from the ages themselves
        train, val = ((images, {**labels, AGE_DISTRIBUTION: labels["age"]})
                      for images, labels in (train, val))
        tasks = (*tasks, AGE_DISTRIBUTION)
    if descriptors is not None:
        train, val = ((images, {**labels, DESCRIPTOR_OUTPUT: rows})
                      for (images, labels), rows in zip((train, val), descriptors))
        tasks = (*tasks, DESCRIPTOR_OUTPUT)
        with network.distribute_strategy.scope():
            trained = with_descriptor_head(network, descriptors[0].shape[1])
        monitor = "val_task_loss"
        callbacks.append(_task_loss_callback(descriptor_weight))
    train_data = make_dataset(*train, tasks, batch_size=batch_size, training=True, seed=seed,
                              augment=augment)
    val_data = make_dataset(*val, tasks, batch_size=batch_size, training=False)
    steps_per_epoch = -(-len(train[0]) // batch_size)
    checkpoint = keras.callbacks.ModelCheckpoint(
        os.fspath(checkpoint_path), monitor=monitor, mode="min", save_best_only=True,
        save_weights_only=True)
    history: dict[str, list[float]] = {}
    done = 0
    phases = ((freeze_trunk_epochs, True), (epochs - freeze_trunk_epochs, False))
    for phase_epochs, frozen in phases:
        if phase_epochs == 0:
            continue
        set_trunk_trainable(trained, not frozen)
        peak = (head_learning_rate or learning_rate) if frozen else learning_rate
        with network.distribute_strategy.scope():   # the strategy the network was built in
            compile_network(trained, learning_rate=peak, weight_decay=weight_decay,
                            total_steps=phase_epochs * steps_per_epoch,
                            warmup_steps=steps_per_epoch, descriptor_weight=descriptor_weight)
        # Early stopping watches the second half of the phase only: at a high learning
        # rate the validation loss is noisy, and a stop there skips the low-rate epochs
        # that give the best weights (a 40-epoch run stopped at epoch 22, best 17).
        stopper = keras.callbacks.EarlyStopping(monitor=monitor, mode="min", patience=patience,
                                                start_from_epoch=done + phase_epochs // 2)
        result = trained.fit(train_data, validation_data=val_data, initial_epoch=done,
                             epochs=done + phase_epochs,
                             callbacks=[*callbacks, checkpoint, stopper],
                             shuffle=False, verbose=verbose)
        for key, values in result.history.items():
            history.setdefault(key, []).extend(float(value) for value in values)
        history.setdefault("trunk_frozen", []).extend([float(frozen)] * len(result.epoch))
        done += len(result.epoch)
    set_trunk_trainable(trained, True)
    # The optimizer of the last phase may not match the checkpoint's: restore weights only.
    trained.load_weights(os.fspath(checkpoint_path), objects_to_skip=[trained.optimizer])
    return history


def _task_loss_callback(descriptor_weight: float):
    """A Keras callback adding ``val_task_loss``, the validation loss without the
    weighted descriptor term, to each epoch's logs (before the callbacks after it)."""
    import keras

    class TaskLoss(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is not None and "val_loss" in logs:
                logs["val_task_loss"] = (logs["val_loss"] - descriptor_weight
                                         * logs[f"val_{DESCRIPTOR_OUTPUT}_loss"])

    return TaskLoss()


# --- saving, loading, predicting --------------------------------------------------------


@contextmanager
def _atomic_target(path: Path, suffix: str) -> Iterator[Path]:
    """Yield a temporary file name beside ``path``; move it onto ``path`` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        temp.chmod(0o644)  # mkstemp makes it private to its owner
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _save_network(network: keras.Model, path: Path) -> None:
    """Save layers and weights only, not the 2x larger optimizer state of a compiled one."""
    if getattr(network, "optimizer", None) is not None:
        import keras

        outputs = {task: network.get_layer(task).output for task in network_tasks(network)}
        network = keras.Model(network.input, outputs, name=network.name)
    network.save(path)


def _network_to_bytes(network: keras.Model) -> bytes:
    with tempfile.TemporaryDirectory(prefix="utkface-cnn-") as scratch:
        path = Path(scratch) / "network.keras"
        _save_network(network, path)
        return path.read_bytes()


def _load_network(path: Path) -> keras.Model:
    """A saved ``.keras`` network, by Keras' safe loader."""
    import keras

    import features.face_resnet  # noqa: F401  (registers the face ResNet's layer)

    return keras.saving.load_model(path, compile=False)


def _network_from_bytes(data: bytes) -> keras.Model:
    with tempfile.TemporaryDirectory(prefix="utkface-cnn-") as scratch:
        path = Path(scratch) / "network.keras"
        path.write_bytes(data)
        return _load_network(path)


#: Shift and zoom of :func:`jittered_views`, as a fraction of the image size (4 pixels
#: of 128), within the training augmentation's range (shifts up to 6%, zoom up to 10%).
JITTER_FRACTION = 1 / 32


def jittered_views(images: np.ndarray) -> list[np.ndarray]:
    """A batch of faces and five jittered copies, for test-time averaging.

    Parameters
    ----------
    images : ndarray of uint8, shape (N, H, W, C)
        Faces.

    Returns
    -------
    list of ndarray of uint8, each (N, H, W, C)
        The faces; shifted by ``m = max(1, round(JITTER_FRACTION * H))`` pixels up,
        down, left and right, with the edges mirrored; and their central
        ``(H - 2m, W - 2m)`` crop resized back to ``(H, W)`` (bilinear).
    """
    from PIL import Image

    _, height, width, channels = images.shape
    m = max(1, round(JITTER_FRACTION * height))
    padded = np.pad(images, ((0, 0), (m, m), (m, m), (0, 0)), mode="symmetric")
    shifted = [padded[:, m + dy:m + dy + height, m + dx:m + dx + width]
               for dy, dx in ((-m, 0), (m, 0), (0, -m), (0, m))]
    crops = images[:, m:height - m, m:width - m]
    if channels == 1:
        crops = crops[..., 0]
    zoomed = np.stack([np.asarray(Image.fromarray(crop).resize((width, height),
                                                               Image.Resampling.BILINEAR))
                       for crop in crops]).reshape(images.shape)
    return [images, *shifted, zoomed]


class CNNPredictor:
    """A trained network with its preprocessing and label decoding.

    Takes what a user has (image paths, or uint8 arrays (N, H, W[, C]) or a list of
    arrays of any size) through :class:`features.loader.ImageLoader` at the network's
    input size and colour, then decodes the outputs into the label codes of
    ``pipelines.labels``: gender and ethnicity codes (int) and age in years (float).

    Each face is judged from several views whose outputs (class probabilities, ages)
    are averaged: with ``jitter``, the face itself, shifted by :data:`JITTER_FRACTION`
    of its size up, down, left and right (edges mirrored, as in the training
    augmentation) and zoomed in by as much at each border; with ``mirror``, each of
    these and its mirror image. Training distorts faces in these ways at random, so
    every view is a face like those the network learnt from; on the validation split
    the 12 views score better than the face alone on every task (figures in
    docs/experiment-log.md).

    A ``face-resnet`` network (:mod:`models.face_model`) takes aligned chips: faces are
    read at 200x200 RGB and aligned by dlib (:func:`features.embeddings.face_chips`,
    which needs the ``[embeddings]`` extra) before the views are made.

    Pickling (``joblib.dump``) stores the network as ``.keras`` bytes; unpickling does
    not import TensorFlow, which happens on the first prediction.

    Parameters
    ----------
    network : keras.Model
        A network from :func:`build_model` (trained).
    mirror : bool
        Also judge the mirror image of every view (twice the work).
    jitter : bool, optional
        Also judge five shifted and zoomed views (six times the work); by default on,
        except for a ``face-resnet`` network, which trains on aligned chips and their
        mirror images only.

    Attributes
    ----------
    tasks : tuple of str
        Tasks the network predicts.
    size : tuple of int
        (height, width) faces are read at: the network's input, or 200x200 before the
        alignment of an ``aligned`` one.
    color : {"gray", "rgb"}
        Input colour mode.
    aligned : bool
        Faces are aligned to chips before the network (``face-resnet``).
    mirror, jitter : bool
        Which views are averaged (see above).
    """

    def __init__(self, network: keras.Model, mirror: bool = True,
                 jitter: bool | None = None) -> None:
        height, width, channels = network.input_shape[1:]
        self.aligned = is_face_model(network)
        self.mirror = mirror
        self.jitter = not self.aligned if jitter is None else jitter
        self.tasks = network_tasks(network)
        self.size = LOAD_SIZE if self.aligned else (int(height), int(width))
        self.color = "gray" if channels == 1 else "rgb"
        self._network = network
        self._keras_bytes: bytes | None = None

    def __repr__(self) -> str:
        return (f"CNNPredictor(tasks={self.tasks}, size={self.size}, color={self.color!r}, "
                f"aligned={self.aligned}, mirror={self.mirror}, jitter={self.jitter})")

    @property
    def network(self) -> keras.Model:
        """The Keras network (loaded from the stored bytes on first use)."""
        if self._network is None:
            self._network = _network_from_bytes(self._keras_bytes)
            self._keras_bytes = None
        return self._network

    def __getstate__(self) -> dict[str, Any]:
        data = self._keras_bytes if self._network is None else _network_to_bytes(self._network)
        return {"tasks": self.tasks, "size": self.size, "color": self.color,
                "aligned": self.aligned, "mirror": self.mirror, "jitter": self.jitter,
                "keras_bytes": data}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.tasks = tuple(state["tasks"])
        self.size = tuple(state["size"])
        self.color = state["color"]
        self.aligned = state.get("aligned", False)
        # predictors pickled before these views existed judge the views they had
        self.mirror = state.get("mirror", False)
        self.jitter = state.get("jitter", False)
        self._network = None
        self._keras_bytes = state["keras_bytes"]

    def _check_task(self, task: str | None) -> tuple[str, ...]:
        if task is None:
            return self.tasks
        if task not in self.tasks:
            raise ValueError(f"this network predicts {self.tasks}, not {task!r}")
        return (task,)

    def _outputs(self, X, batch_size: int) -> dict[str, np.ndarray]:
        # Eager calls per batch: no graph to trace, unlike ``Model.predict``.
        images = ImageLoader(self.size, self.color).transform(X)
        if self.aligned:
            from features.embeddings import face_chips
            images = face_chips(images)
        views = jittered_views(images) if self.jitter else [images]
        if self.mirror:
            views += [view[:, :, ::-1] for view in views]
        outputs = {task: [] for task in self.tasks}
        for start in range(0, len(images), batch_size):
            results = [self.network(view[start:start + batch_size].astype(np.float32),
                                    training=False)
                       for view in views]
            for task in self.tasks:
                outputs[task].append(np.mean([np.asarray(result[task]) for result in results],
                                             axis=0))
        return {task: np.concatenate(batches) for task, batches in outputs.items()}

    def task_outputs(self, X, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Class probabilities and ages of every task, from one pass of the network.

        Parameters
        ----------
        X, batch_size
            See :meth:`predict`.

        Returns
        -------
        dict of str to ndarray
            ``gender`` and ``ethnicity``: (N, n_classes) float64 probabilities whose
            columns follow the label codes (gender: male, female); ``age``: (N,) float64
            years (>= 0).
        """
        outputs = self._outputs(X, batch_size)
        return {task: (_ages(outputs[task]) if task == "age"
                       else _probabilities(task, outputs[task]))
                for task in self.tasks}

    def predict(self, X, task: str | None = None,
                batch_size: int = 64) -> dict[str, np.ndarray] | np.ndarray:
        """Predict label codes and ages.

        Parameters
        ----------
        X : path-like, sequence of path-like or arrays, or ndarray (N, H, W[, C])
            Faces; arrays are uint8 and converted to the network's size and colour.
        task : str, optional
            One task to predict; all the network's tasks when omitted.
        batch_size : int
            Faces per forward pass.

        Returns
        -------
        ndarray or dict of str to ndarray
            For one task, its (N,) predictions; otherwise a dict task -> predictions:
            ``gender`` and ``ethnicity`` int64 codes, ``age`` float64 years (>= 0).

        Raises
        ------
        features.io.ImageLoadError
            For an unreadable file (no row is ever dropped silently).
        """
        tasks = self._check_task(task)
        outputs = self.task_outputs(X, batch_size)
        decoded = {name: labels_of(name, outputs[name]) for name in tasks}
        return decoded[task] if task is not None else decoded

    def predict_proba(self, X, task: str | None = None,
                      batch_size: int = 64) -> dict[str, np.ndarray] | np.ndarray:
        """Class probabilities of the classification tasks.

        Parameters
        ----------
        X, batch_size
            See :meth:`predict`.
        task : {"gender", "ethnicity"}, optional
            One task; all the network's classification tasks when omitted.

        Returns
        -------
        ndarray or dict of str to ndarray
            (N, n_classes) float probabilities whose columns follow the label codes
            (gender: male, female), for one task or as a dict task -> probabilities.

        Raises
        ------
        ValueError
            For ``task="age"``, a regression.
        """
        if task == "age":
            raise ValueError("age is a regression: use predict()")
        tasks = [name for name in self._check_task(task) if name != "age"]
        if not tasks:
            raise ValueError("this network has no classification task")
        outputs = self.task_outputs(X, batch_size)
        proba = {name: outputs[name] for name in tasks}
        return proba[task] if task is not None else proba

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: the native network for a ``.keras`` path, else a joblib pickle.

        Returns
        -------
        pathlib.Path
            ``path``.
        """
        import joblib

        path = Path(path)
        if path.suffix == ".keras":
            with _atomic_target(path, ".keras") as temp:
                _save_network(self.network, temp)
        else:
            with _atomic_target(path, ".tmp") as temp:
                joblib.dump(self, temp)
        return path


def _probabilities(task: str, output: np.ndarray) -> np.ndarray:
    output = output.astype(np.float64)
    if task == "gender":
        return np.column_stack([1.0 - output[:, 0], output[:, 0]])
    return output


def _ages(output: np.ndarray) -> np.ndarray:
    return np.maximum(output[:, 0].astype(np.float64), 0.0)


def load_model(path: str | os.PathLike) -> CNNPredictor:
    """Load a saved CNN as a :class:`CNNPredictor`.

    Parameters
    ----------
    path : path-like
        A native Keras network (``.keras``, as written by :meth:`CNNPredictor.save`
        or ``train_cnn``), or a joblib pickle of a :class:`CNNPredictor`.

    Returns
    -------
    CNNPredictor

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    TypeError
        If a pickle holds something other than a :class:`CNNPredictor`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved CNN at {path}")
    if path.suffix == ".keras":
        return CNNPredictor(_load_network(path))
    import joblib

    predictor = joblib.load(path)
    if not isinstance(predictor, CNNPredictor):
        raise TypeError(f"{path} holds a {type(predictor).__name__}, not a CNNPredictor")
    return predictor
