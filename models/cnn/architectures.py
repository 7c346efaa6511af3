"""The networks: trunks and task heads, the architectures, and what a built network
holds (its tasks, a training-only descriptor head, a trainable trunk)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from features.io import DEFAULT_SIZE
from models.face_model import ARCHITECTURE as FACE_ARCHITECTURE
from models.labels import ETHNICITY_NAMES
from models.labels import TASKS as LABEL_TASKS

if TYPE_CHECKING:
    import keras


#: Tasks a network can have a head for, in output order (age groups come from the age).
TASKS: tuple[str, ...] = tuple(task for task in LABEL_TASKS if task != "age_group")
#: Layers that make the outputs (kept in float32 by ``models.precision.set_precision``).
OUTPUT_LAYERS: tuple[str, ...] = (*TASKS, "age_scaled", "age_distribution")
N_ETHNICITIES = len(ETHNICITY_NAMES)
#: The age head's linear unit predicts age / AGE_SCALE.
AGE_SCALE = 100.0
_AGE_BIAS_INIT = 0.3
LOSS_WEIGHTS: dict[str, float] = {"gender": 1.0, "ethnicity": 1.0, "age": 1.0 / AGE_SCALE}
#: Training-only output that regresses a teacher's standardised face descriptors
#: (:func:`with_descriptor_head`); saved networks never have it.
DESCRIPTOR_OUTPUT = "descriptor"

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


def build_model(architecture: str = "default",
                input_shape: Sequence[int] = (*DEFAULT_SIZE, 1),
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


