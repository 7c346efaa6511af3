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

Modules
-------
:mod:`~models.cnn.architectures` (networks and heads), :mod:`~models.cnn.augmentation`
(random distortions of training batches), :mod:`~models.cnn.training` (losses and the
training loop), :mod:`~models.cnn.devices` (strategy, GPU) and
:mod:`~models.cnn.predictor` (saving, loading, :class:`CNNPredictor`); their public
names are importable from ``models.cnn``.
"""
from models.cnn.architectures import (AGE_SCALE, ARCHITECTURE_NAMES, ARCHITECTURES,
                                      DESCRIPTOR_OUTPUT, LOSS_WEIGHTS, N_ETHNICITIES,
                                      OUTPUT_LAYERS, TASKS, Architecture, build_model,
                                      network_tasks, resolve_tasks, select_tasks,
                                      set_trunk_trainable, task_output, with_descriptor_head)
from models.cnn.augmentation import augment_batch
from models.cnn.devices import distribution_strategy, gpu_available, strategy_kind
from models.cnn.predictor import CNNPredictor, jittered_views, load_model
from models.cnn.training import (DEFAULT_DESCRIPTOR_WEIGHT, DEFAULT_LABEL_SMOOTHING,
                                 DEFAULT_LEARNING_RATE, DEFAULT_PATIENCE, DEFAULT_WEIGHT_DECAY,
                                 FitSchedule, compile_network, encode_targets, fit_network,
                                 make_dataset)

__all__ = [
    "AGE_SCALE", "ARCHITECTURE_NAMES", "ARCHITECTURES", "DESCRIPTOR_OUTPUT", "LOSS_WEIGHTS",
    "N_ETHNICITIES", "OUTPUT_LAYERS", "TASKS", "Architecture", "build_model", "network_tasks",
    "resolve_tasks", "select_tasks", "set_trunk_trainable", "task_output",
    "with_descriptor_head", "augment_batch", "distribution_strategy", "gpu_available",
    "strategy_kind", "CNNPredictor", "jittered_views", "load_model",
    "DEFAULT_DESCRIPTOR_WEIGHT", "DEFAULT_LABEL_SMOOTHING", "DEFAULT_LEARNING_RATE",
    "DEFAULT_PATIENCE", "DEFAULT_WEIGHT_DECAY", "FitSchedule", "compile_network",
    "encode_targets", "fit_network", "make_dataset",
]
