"""Compiling and training a network: losses, targets, the input pipeline, the loop."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from models.cnn.architectures import (DESCRIPTOR_OUTPUT, LOSS_WEIGHTS, network_tasks,
                                      set_trunk_trainable, with_descriptor_head)
from models.cnn.augmentation import augment_batch
from models.face_model import AGE_DISTRIBUTION, label_distribution_loss

if TYPE_CHECKING:
    import keras
    import tensorflow as tf


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
    ``age`` output's error is then weighted 0). Metrics are logged as ``gender_acc``,
    ``ethnicity_acc`` and ``age_mae`` (years).
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


def output_weights(sample_weight: Mapping[str, np.ndarray], tasks: Sequence[str],
                   count: int) -> dict[str, np.ndarray]:
    """Per-face weights (float32) of every network output: a task's own, the age's for
    the ``age_distribution`` output, and 1 for an output without weights (the
    distilled descriptor)."""
    source = {**sample_weight}
    if "age" in sample_weight:
        source.setdefault(AGE_DISTRIBUTION, sample_weight["age"])
    weights = {task: np.asarray(source.get(task, np.ones(count)), dtype=np.float32)
               for task in tasks}
    for task, values in weights.items():
        if values.shape != (count,):
            raise ValueError(f"{task}: {values.shape[0]} sample weights for {count} faces")
    return weights


def make_dataset(images: np.ndarray, labels: Mapping[str, np.ndarray], tasks: Sequence[str], *,
                 batch_size: int, training: bool, seed: int | None = None,
                 augment: bool = True,
                 sample_weight: Mapping[str, np.ndarray] | None = None) -> tf.data.Dataset:
    """A ``tf.data`` pipeline of (float32 image batch, dict of task targets[, dict of
    per-face weights]).

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
    sample_weight : mapping of str to ndarray, optional
        Per-face weights of each task's loss (and metrics), aligned with ``images``
        (:func:`output_weights`); Keras takes them as the batches' third element.

    Returns
    -------
    tf.data.Dataset
    """
    import tensorflow as tf

    parts = (images, encode_targets(labels, tasks))
    if sample_weight is not None:
        parts += (output_weights(sample_weight, tasks, len(images)),)
    dataset = tf.data.Dataset.from_tensor_slices(parts)
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    generator = None
    if training and augment:
        generator = (tf.random.Generator.from_non_deterministic_state() if seed is None
                     else tf.random.Generator.from_seed(seed))

    @tf.autograph.experimental.do_not_convert  # plain tensor code, nothing to convert
    def prepare(images, *rest):  # rest: targets[, weights]
        images = tf.cast(images, tf.float32)
        return (images if generator is None else augment_batch(images, generator), *rest)

    # A sequential map: parallel calls would draw from the generator's state in a
    # varying order, breaking seeded runs. Prefetching still overlaps it with training.
    return dataset.batch(batch_size).map(prepare).prefetch(tf.data.AUTOTUNE)


@dataclass(frozen=True)
class FitSchedule:
    """How :func:`fit_network` trains a network.

    Training runs in up to two phases: ``freeze_trunk_epochs`` epochs with the trunk
    frozen (heads only, for fine-tuning), then the rest with every layer trainable. Each
    phase is compiled afresh (:func:`compile_network`) with a one-epoch warm-up and a
    cosine decay over the phase, and, in the second half of the phase, stops early after
    ``patience`` epochs without a lower validation loss.

    Attributes
    ----------
    epochs : int
        Maximum number of epochs over both phases.
    batch_size : int
        Faces per step.
    learning_rate, weight_decay : float
        Peak learning rate and AdamW weight decay.
    label_smoothing : float
        Label smoothing of the gender and ethnicity losses.
    patience : int
        Epochs without improvement of the validation loss before a phase stops.
    freeze_trunk_epochs : int
        Epochs, at the start, that train the heads only.
    head_learning_rate : float, optional
        Peak learning rate of those epochs; ``learning_rate`` by default.
    augment : bool
        Distort the training images (:func:`augment_batch`); False for inputs that are
        not images, such as cached activations.
    descriptor_weight : float
        Weight of the descriptor regression in the training loss (with descriptors).
    seed : int, optional
        Seeds shuffling, augmentation and dropout (``keras.utils.set_random_seed``).
    verbose : int
        Keras verbosity; 2 prints one line per epoch.
    """

    epochs: int
    batch_size: int
    learning_rate: float = DEFAULT_LEARNING_RATE
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    label_smoothing: float = DEFAULT_LABEL_SMOOTHING
    patience: int = DEFAULT_PATIENCE
    freeze_trunk_epochs: int = 0
    head_learning_rate: float | None = None
    augment: bool = True
    descriptor_weight: float = DEFAULT_DESCRIPTOR_WEIGHT
    seed: int | None = None
    verbose: int = 2

    def __post_init__(self) -> None:
        if not 0 <= self.freeze_trunk_epochs <= self.epochs or self.epochs < 1:
            raise ValueError(f"need epochs >= 1 and 0 <= freeze_trunk_epochs <= epochs, got "
                             f"epochs={self.epochs}, "
                             f"freeze_trunk_epochs={self.freeze_trunk_epochs}")

    def phases(self) -> tuple[tuple[int, bool, float], ...]:
        """(epochs, trunk frozen, peak learning rate) of each phase that has epochs."""
        return tuple(phase for phase in (
            (self.freeze_trunk_epochs, True, self.head_learning_rate or self.learning_rate),
            (self.epochs - self.freeze_trunk_epochs, False, self.learning_rate)) if phase[0])


def fit_network(network: keras.Model, train: tuple[np.ndarray, Mapping[str, np.ndarray]],
                val: tuple[np.ndarray, Mapping[str, np.ndarray]], schedule: FitSchedule, *,
                checkpoint_path: str | os.PathLike,
                descriptors: tuple[np.ndarray, np.ndarray] | None = None,
                sample_weight: Mapping[str, np.ndarray] | None = None
                ) -> dict[str, list[float]]:
    """Train a network in place and leave it with the weights of its best epoch.

    The phases are those of ``schedule`` (:class:`FitSchedule`). The weights of the epoch
    with the lowest validation loss, over both phases, are checkpointed to
    ``checkpoint_path`` (ending in ``.weights.h5``) and restored at the end.

    With ``descriptors`` (a teacher's standardised face descriptors (N, D) float32 of the
    training and validation faces, aligned with their images, no NaN), the network
    trains with an extra output regressing them (:func:`with_descriptor_head`), a
    distillation of what the teacher has learnt from far more faces; the validation loss
    that early stopping and the checkpoint watch is then the tasks' part only
    (``val_task_loss``), so epochs are judged as without it.

    Parameters
    ----------
    network : keras.Model
        Network to train; all its layers are left trainable.
    train, val : tuple of (ndarray, mapping)
        uint8 images (N, H, W, C) and label codes per task (see :func:`make_dataset`).
    sample_weight : mapping of str to ndarray, optional
        Per-face weights of the training faces per task (see :func:`output_weights`);
        the validation loss that picks the epoch stays unweighted.

    Returns
    -------
    dict of str to list of float
        Keras history over all epochs run (``loss``, ``val_loss``, ``<task>_loss``,
        ``gender_acc``, ``age_mae``, ... and their ``val_`` twins), plus
        ``trunk_frozen`` (1.0 for the epochs of the frozen phase) and, with
        ``descriptors``, ``descriptor_loss`` and ``val_task_loss``.
    """
    import keras

    if schedule.seed is not None:
        keras.utils.set_random_seed(schedule.seed)
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
        callbacks.append(_task_loss_callback(schedule.descriptor_weight))
    data = (make_dataset(*train, tasks, batch_size=schedule.batch_size, training=True,
                         seed=schedule.seed, augment=schedule.augment,
                         sample_weight=sample_weight),
            make_dataset(*val, tasks, batch_size=schedule.batch_size, training=False))
    checkpoint = keras.callbacks.ModelCheckpoint(
        os.fspath(checkpoint_path), monitor=monitor, mode="min", save_best_only=True,
        save_weights_only=True)
    history: dict[str, list[float]] = {}
    steps_per_epoch = -(-len(train[0]) // schedule.batch_size)
    for phase_epochs, frozen, peak in schedule.phases():
        done = len(history.get("trunk_frozen", ()))
        set_trunk_trainable(trained, not frozen)
        with network.distribute_strategy.scope():   # the strategy the network was built in
            compile_network(trained, learning_rate=peak, weight_decay=schedule.weight_decay,
                            label_smoothing=schedule.label_smoothing,
                            total_steps=phase_epochs * steps_per_epoch,
                            warmup_steps=steps_per_epoch,
                            descriptor_weight=schedule.descriptor_weight)
        # Early stopping watches the second half of the phase only: at a high learning
        # rate the validation loss is noisy, and a stop there skips the low-rate epochs
        # that give the best weights (a 40-epoch run stopped at epoch 22, best 17).
        stopper = keras.callbacks.EarlyStopping(monitor=monitor, mode="min",
                                                patience=schedule.patience,
                                                start_from_epoch=done + phase_epochs // 2)
        result = trained.fit(data[0], validation_data=data[1], initial_epoch=done,
                             epochs=done + phase_epochs,
                             callbacks=[*callbacks, checkpoint, stopper],
                             shuffle=False, verbose=schedule.verbose)
        for key, values in result.history.items():
            history.setdefault(key, []).extend(float(value) for value in values)
        history.setdefault("trunk_frozen", []).extend([float(frozen)] * len(result.epoch))
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


