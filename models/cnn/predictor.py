"""Saving and loading networks, and :class:`CNNPredictor`, which predicts from image
paths or arrays and pickles with its network."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from features.loader import ImageLoader
from models.cnn.architectures import network_tasks
from models.face_model import LOAD_SIZE, is_face_model
from models.stack import labels_of

if TYPE_CHECKING:
    import keras


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
    ``models.labels``: gender and ethnicity codes (int) and age in years (float).

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
        self._forward = None

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
        self._forward = None

    def _check_task(self, task: str | None) -> tuple[str, ...]:
        if task is None:
            return self.tasks
        if task not in self.tasks:
            raise ValueError(f"this network predicts {self.tasks}, not {task!r}")
        return (task,)

    def _forward_pass(self):
        """The network's inference pass as a TensorFlow graph, traced once for any batch
        size (on 2 CPU cores about twice as fast as eager calls)."""
        if self._forward is None:
            import tensorflow as tf

            network = self.network
            spec = tf.TensorSpec((None, *network.input_shape[1:]), tf.float32)
            self._forward = tf.function(lambda images: network(images, training=False),
                                        input_signature=[spec])
        return self._forward

    def _outputs(self, X, batch_size: int) -> dict[str, np.ndarray]:
        images = ImageLoader(self.size, self.color).transform(X)
        if self.aligned:
            from features.embeddings import face_chips
            images = face_chips(images)
        views = jittered_views(images) if self.jitter else [images]
        if self.mirror:
            views += [view[:, :, ::-1] for view in views]
        outputs = {task: [] for task in self.tasks}
        for start in range(0, len(images), batch_size):
            # every view of the batch's faces in one call (about 20 % faster on 2 cores
            # than a call per view), then the views' outputs averaged per face
            batch = np.concatenate([view[start:start + batch_size] for view in views])
            result = self._forward_pass()(batch.astype(np.float32))
            for task in self.tasks:
                values = np.asarray(result[task])
                outputs[task].append(values.reshape(len(views), -1, *values.shape[1:])
                                     .mean(axis=0))
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
            Faces per forward pass (each with all its views).

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
