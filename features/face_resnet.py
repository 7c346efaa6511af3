"""dlib's face-recognition ResNet as a Keras network: the same 128-d descriptors, batched.

The weights are those of ``dlib_face_recognition_resnet_model_v1.dat`` (package
``face-recognition-models``), read by :mod:`features.dlib_dnn` without dlib. Each
convolution is followed in that file by an affine layer (dlib's frozen batch norm),
which is folded into the convolution's kernel and bias. The converted weights are
cached as a ``.npz`` file (see :func:`converted_weights`), rebuilt whenever it is
missing, unreadable or made from another ``.dat`` file.

dlib's file names no tag ids, so its tag and skip wrappers are read as in dlib's
residual networks (``dnn_face_recognition_ex.cpp``, ``dnn_imagenet_ex.cpp``): a lone
wrapper tags a block's input; a pair tags the block's output and skips back to its
input (the down-sampling blocks, whose shortcut is an average pool); ``add_prev``
adds the most recent tag. Where the two tensors differ in size, dlib adds them
aligned at the first row, column and channel and fills the rest with zeros;
:class:`ZeroPadAdd` does the same.

This module imports Keras on import; :mod:`features.embeddings` imports it only when
descriptors are computed with ``network="keras"``.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import keras
import numpy as np

from features.dlib_dnn import DlibFormatError, DlibNetwork, read_network
from features.embeddings import CHIP_SIZE, N_FEATURES, RECOGNITION_MODEL, model_dir

logger = logging.getLogger(__name__)

CACHE_ENV = "UTKFACE_WEIGHTS_DIR"
# bump when the conversion changes: older caches are then rebuilt
CONVERSION_FORMAT = 1
_CONV_MODE = 0


@keras.saving.register_keras_serializable(package="utkface")
class ZeroPadAdd(keras.layers.Layer):
    """Sum of two (N, H, W, C) tensors of possibly different sizes, as dlib's ``add_prev``:
    each is padded with zeros after its last row, column and channel to the larger size."""

    def compute_output_shape(self, input_shapes):
        first, second = input_shapes
        return (first[0],) + tuple(max(a, b) for a, b in zip(first[1:], second[1:]))

    def call(self, inputs):
        first, second = inputs
        target = self.compute_output_shape((first.shape, second.shape))[1:]

        def padded(x):
            pads = [(0, 0)] + [(0, size - have) for size, have in zip(target, x.shape[1:])]
            return keras.ops.pad(x, pads) if any(p[1] for p in pads) else x

        return padded(first) + padded(second)


@dataclass
class ConvertedNetwork:
    """dlib's network in Keras terms.

    Attributes
    ----------
    ops : list of dict
        The layers from input to output, JSON-serialisable: ``input`` (per-channel
        mean and scale), ``conv``, ``relu``, ``max_pool``, ``avg_pool``,
        ``global_avg_pool``, ``tag``, ``skip``, ``add`` and ``dense``.
    arrays : dict of str to ndarray
        Kernels (rows, cols, in, out) and biases by op name.
    source_sha256 : str
        SHA-256 of the ``.dat`` file they come from.
    """

    ops: list[dict]
    arrays: dict[str, np.ndarray]
    source_sha256: str


def recognition_model_path() -> Path:
    """``dlib_face_recognition_resnet_model_v1.dat`` of the face-recognition-models package."""
    return model_dir() / RECOGNITION_MODEL


def _padding(layer, kernel: tuple[int, int]) -> str:
    """Keras padding equal to dlib's explicit padding of ``layer``."""
    stride = (layer.fields["stride_y"], layer.fields["stride_x"])
    padding = (layer.fields["padding_y"], layer.fields["padding_x"])
    if padding == (0, 0):
        return "valid"
    if stride == (1, 1) and all(k % 2 and p == k // 2 for k, p in zip(kernel, padding)):
        return "same"
    raise DlibFormatError(f"at byte offset {layer.offset}: {layer.version} padding {padding} "
                          f"with stride {stride} and window {kernel} has no Keras equivalent")


def convert(network: DlibNetwork, source_sha256: str = "") -> ConvertedNetwork:
    """Translate a parsed dlib network into :class:`ConvertedNetwork` ops and arrays.

    Raises
    ------
    DlibFormatError
        For a layer or arrangement this translation does not support (an affine
        layer not after a convolution, a padded pooling window, ...).
    """
    source = network.input
    ops = [{"op": "input", "rows": source.fields["rows"], "cols": source.fields["cols"],
            "mean": [source.fields[f"avg_{c}"] for c in ("red", "green", "blue")],
            "scale": 1 / 256}]
    arrays = {}
    wrappers = list(network.wrappers)
    layers = network.layers
    i = 0
    while i <= len(layers):
        tags = wrappers.count(i)
        if tags == 1:
            ops.append({"op": "tag"})
        elif tags == 2:
            ops += [{"op": "tag"}, {"op": "skip"}]
        elif tags:
            raise DlibFormatError(f"{tags} tag or skip wrappers in a row before layer {i}")
        if i == len(layers):
            break
        layer, name = layers[i], f"{layers[i].kind}_{len(ops)}"
        fields = layer.fields
        if layer.kind == "con":
            kernel = fields["filters"].transpose(2, 3, 1, 0)
            bias = fields.get("biases", np.zeros(kernel.shape[-1], np.float32))
            following = layers[i + 1] if i + 1 < len(layers) else None
            if following is not None and following.kind == "affine" and (i + 1) not in wrappers:
                if following.fields["mode"] != _CONV_MODE:
                    raise DlibFormatError(f"at byte offset {following.offset}: an affine layer "
                                          "in fully connected mode after a convolution")
                if not following.fields["disabled"]:
                    kernel = kernel * following.fields["gamma"]
                    bias = bias * following.fields["gamma"] + following.fields["beta"]
                i += 1
            ops.append({"op": "conv", "name": name, "filters": int(kernel.shape[-1]),
                        "kernel": list(kernel.shape[:2]),
                        "strides": [fields["stride_y"], fields["stride_x"]],
                        "padding": _padding(layer, kernel.shape[:2])})
            arrays[f"{name}/kernel"] = kernel.astype(np.float32)
            arrays[f"{name}/bias"] = bias.astype(np.float32)
        elif layer.kind == "relu":
            if not fields["disabled"]:
                ops.append({"op": "relu"})
        elif layer.kind in ("max_pool", "avg_pool"):
            window = (fields["rows"], fields["cols"])
            if layer.kind == "avg_pool" and window == (0, 0):
                ops.append({"op": "global_avg_pool"})
            else:
                if (fields["padding_y"], fields["padding_x"]) != (0, 0):
                    raise DlibFormatError(f"at byte offset {layer.offset}: padded pooling "
                                          "windows are not supported")
                ops.append({"op": layer.kind, "pool": list(window),
                            "strides": [fields["stride_y"], fields["stride_x"]]})
        elif layer.kind == "add_prev":
            ops.append({"op": "add"})
        elif layer.kind == "fc":
            ops.append({"op": "dense", "name": name, "units": fields["num_outputs"],
                        "bias": "biases" in fields})
            arrays[f"{name}/kernel"] = fields["weights"].astype(np.float32)
            if "biases" in fields:
                arrays[f"{name}/bias"] = fields["biases"].astype(np.float32)
        else:
            raise DlibFormatError(f"at byte offset {layer.offset}: no Keras translation for "
                                  f"a {layer.version} layer here")
        i += 1
    return ConvertedNetwork(ops, arrays, source_sha256)


def default_cache_dir() -> Path:
    """Folder of converted weights: ``$UTKFACE_WEIGHTS_DIR``, else the user's cache folder."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base) / "utkface-toolkit"


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _read_cache(path: Path, source_sha256: str) -> ConvertedNetwork | None:
    """The cached conversion, or None where it is missing, unreadable or stale."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            header = json.loads(str(saved["header"]))
            if (header.get("format") != CONVERSION_FORMAT
                    or header.get("source_sha256") != source_sha256):
                logger.info("converted weights %s are stale: rebuilding", path)
                return None
            arrays = {key: saved[key] for key in saved.files if key != "header"}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as error:
        logger.warning("converted weights %s are unreadable (%s): rebuilding", path, error)
        return None
    return ConvertedNetwork(header["ops"], arrays, source_sha256)


def _write_cache(path: Path, converted: ConvertedNetwork) -> None:
    """Write the conversion atomically; a folder that cannot be written only logs."""
    header = json.dumps({"format": CONVERSION_FORMAT, "source_sha256": converted.source_sha256,
                         "ops": converted.ops})
    buffer = io.BytesIO()
    np.savez(buffer, header=np.array(header), **converted.arrays)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp",
                                         delete=False) as file:
            file.write(buffer.getvalue())
        os.replace(file.name, path)
    except OSError as error:
        logger.warning("could not cache the converted weights in %s (%s); they are "
                       "converted again in the next process", path, error)


def converted_weights(source: str | os.PathLike | None = None,
                      cache_dir: str | os.PathLike | None = None) -> ConvertedNetwork:
    """The converted network of ``source``, from the cache or read and cached now.

    Parameters
    ----------
    source : path-like, optional
        dlib's network file; by default :func:`recognition_model_path`.
    cache_dir : path-like, optional
        Where the ``.npz`` lives; by default :func:`default_cache_dir`.

    Raises
    ------
    DlibFormatError
        If ``source`` is not a network this module can translate.
    """
    source = Path(source) if source is not None else recognition_model_path()
    digest = _sha256(source)
    cache = Path(cache_dir or default_cache_dir()) / f"{source.stem}.npz"
    converted = _read_cache(cache, digest)
    if converted is None:
        converted = convert(read_network(source), digest)
        _write_cache(cache, converted)
    return converted


def apply_network(converted: ConvertedNetwork, inputs):
    """Build the layers of ``converted`` on the Keras tensor ``inputs`` (N, rows, cols, 3),
    RGB pixels in 0-255, with their weights; return the (N, 128) descriptor tensor.

    Layers are named after their op (``con_1``, ``relu_3``, ``add_9``, ...), so a
    network built on them can be cut at a layer by name. They compute in float32
    whatever Keras' global dtype policy.
    """
    layers = keras.layers
    first, *rest = converted.ops
    x = layers.Normalization(mean=first["mean"], variance=[1 / first["scale"] ** 2] * 3,
                             dtype="float32", name="dlib_input")(inputs)
    tags = []
    for index, op in enumerate(rest, start=1):
        kind = op["op"]
        if kind == "conv":
            layer = layers.Conv2D(op["filters"], op["kernel"], strides=op["strides"],
                                  padding=op["padding"], dtype="float32", name=op["name"])
        elif kind == "relu":
            layer = layers.ReLU(dtype="float32", name=f"relu_{index}")
        elif kind in ("max_pool", "avg_pool"):
            pool = layers.MaxPooling2D if kind == "max_pool" else layers.AveragePooling2D
            layer = pool(op["pool"], strides=op["strides"], dtype="float32",
                         name=f"{kind}_{index}")
        elif kind == "global_avg_pool":
            layer = layers.GlobalAveragePooling2D(dtype="float32", name=f"{kind}_{index}")
        elif kind == "dense":
            layer = layers.Dense(op["units"], use_bias=op["bias"], dtype="float32",
                                 name=op["name"])
        elif kind == "tag":
            tags.append(x)
            continue
        elif kind == "skip":
            # the pair tag + skip: keep the branch's output, go back to the block's input
            branch = tags.pop()
            x, tags[-1] = tags[-1], branch
            continue
        elif kind == "add":
            x = ZeroPadAdd(dtype="float32", name=f"add_{index}")([x, tags.pop()])
            continue
        else:
            raise ValueError(f"unknown op {kind!r}")
        x = layer(x)
        if f"{layer.name}/kernel" in converted.arrays:
            layer.set_weights([converted.arrays[f"{layer.name}/{part}"]
                               for part in ("kernel", "bias")
                               if f"{layer.name}/{part}" in converted.arrays])
    return x


def network_input(converted: ConvertedNetwork, name: str = "chips"):
    """The Keras input tensor of the network: (N, rows, cols, 3) float32 pixels."""
    first = converted.ops[0]
    return keras.Input((first["rows"], first["cols"], 3), name=name, dtype="float32")


def build_network(converted: ConvertedNetwork, name: str = "face_resnet") -> keras.Model:
    """The Keras model of ``converted``: (N, rows, cols, 3) RGB pixels in 0-255, float
    -> (N, 128) descriptors (see :func:`apply_network`)."""
    inputs = network_input(converted)
    return keras.Model(inputs, apply_network(converted, inputs), name=name)


def block_outputs(network: keras.Model) -> list[str]:
    """Names of the layers that end each residual block (the ReLU after each
    :class:`ZeroPadAdd`), from the input up: cut points for fine-tuning the top."""
    names = {layer.name for layer in network.layers}
    adds = sorted(int(layer.name.split("_")[1]) for layer in network.layers
                  if isinstance(layer, ZeroPadAdd))
    # an add op at position N of the ops is followed by the block's ReLU at N + 1
    return [f"relu_{index + 1}" for index in adds if f"relu_{index + 1}" in names]


@lru_cache(maxsize=1)
def face_resnet() -> keras.Model:
    """The default network (face-recognition-models' file), built once per process."""
    return build_network(converted_weights())


def chip_descriptors(chips, batch_size: int = 64) -> np.ndarray:
    """Descriptors of aligned 150x150 RGB face chips (as ``dlib.get_face_chip`` makes them).

    Parameters
    ----------
    chips : array-like, shape (N, 150, 150, 3)
        uint8 (or float in 0-255) RGB chips.
    batch_size : int
        Chips per call of the network.

    Returns
    -------
    ndarray of float32, shape (N, 128)
    """
    chips = np.asarray(chips)
    if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
        raise ValueError(f"expected face chips shaped (N, {CHIP_SIZE}, {CHIP_SIZE}, 3), "
                         f"got {chips.shape}")
    network = face_resnet()
    out = np.empty((len(chips), N_FEATURES), dtype=np.float32)
    for start in range(0, len(chips), batch_size):
        batch = chips[start:start + batch_size].astype(np.float32)
        out[start:start + len(batch)] = network.predict_on_batch(batch)
    return out
