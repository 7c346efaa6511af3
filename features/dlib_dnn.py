"""Reader of dlib's serialized deep networks (``dlib::serialize(net)``), in numpy.

dlib writes a network as nested records, outermost layer first: the loss layer,
then one wrapper per layer (``add_layer``, ``add_tag_layer``, ``add_skip_layer``)
down to the input layer, and on the way back up each computational layer's
parameters and state (see ``dlib/dnn/core.h``, ``layers.h``, ``input.h`` and
``loss.h``). Integers are packed as a control byte (low four bits: the number of
little-endian bytes that follow; bit 7: the sign), floating-point scalars as a
packed 64-bit mantissa and 16-bit exponent, strings as a packed length and their
bytes, booleans as the characters ``'0'``/``'1'``, and tensors as a packed version
(2), four packed sizes and the values as little-endian float32.

The reader turns such a file into a flat list of :class:`DlibLayer` records, input
first, with the position of every tag or skip wrapper (which dlib identifies by
type, not in the file). Any byte that does not follow the format raises a
:class:`DlibFormatError` naming the file and the offset.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_TENSOR_VERSION = 2
_ALIAS_VERSION = 1
_FLOAT_SPECIAL = {32000: np.inf, 32001: -np.inf, 32002: np.nan}
# a name longer than this is not a layer name (the file is corrupt)
_MAX_NAME = 64


class DlibFormatError(ValueError):
    """A dlib network file that does not follow dlib's format; names file and offset."""


@dataclass
class DlibLayer:
    """One layer record of a dlib network file.

    Attributes
    ----------
    kind : str
        dlib's layer type without its version suffix: ``input_rgb_image_sized``,
        ``con``, ``fc``, ``affine`` (a ``bn_`` layer is converted on reading, as dlib
        does when it loads one into an ``affine_``), ``relu``, ``max_pool``,
        ``avg_pool``, ``add_prev`` or ``loss_metric``.
    version : str
        The record's name as written, e.g. ``"con_4"``.
    offset : int
        Byte offset of the record in the file.
    fields : dict
        Its settings (ints, floats, bools) and parameter tensors (float32 arrays in
        dlib's layout: convolution filters (out, in, rows, cols), fully connected
        weights (inputs, outputs), affine ``gamma`` and ``beta`` per channel).
    """

    kind: str
    version: str
    offset: int
    fields: dict = field(default_factory=dict)


@dataclass
class DlibNetwork:
    """A parsed network.

    Attributes
    ----------
    loss : DlibLayer
        The loss layer's record.
    input : DlibLayer
        The input layer's record.
    layers : list of DlibLayer
        Computational layers from the input up to the loss.
    wrappers : list of int
        For each tag or skip wrapper, the number of layers of ``layers`` below it
        (a wrapper at 4 stands between ``layers[3]`` and ``layers[4]``), bottom first.
    """

    loss: DlibLayer
    input: DlibLayer
    layers: list[DlibLayer]
    wrappers: list[int]


class _Stream:
    """Cursor over the file's bytes; every read checks the format and names the offset."""

    def __init__(self, data: bytes, path: str):
        self.data = data
        self.path = path
        self.pos = 0

    def error(self, message: str, offset: int | None = None) -> DlibFormatError:
        at = self.pos if offset is None else offset
        return DlibFormatError(f"{self.path}: at byte offset {at}: {message}")

    def take(self, count: int, what: str) -> bytes:
        if self.pos + count > len(self.data):
            raise self.error(f"the file ends inside {what} ({count} bytes needed, "
                             f"{len(self.data) - self.pos} left): truncated?")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def integer(self, what: str = "an integer") -> int:
        start = self.pos
        control = self.take(1, what)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.error(f"expected {what}, found control byte 0x{control:02x}", start)
        value = int.from_bytes(self.take(size, what), "little")
        return -value if control & 0x80 else value

    def real(self, what: str = "a floating-point number") -> float:
        mantissa = self.integer(what)
        exponent = self.integer(what)
        if exponent in _FLOAT_SPECIAL:
            return float(_FLOAT_SPECIAL[exponent])
        return float(np.ldexp(float(mantissa), exponent))

    def boolean(self, what: str) -> bool:
        start = self.pos
        char = self.take(1, what)
        if char not in (b"0", b"1"):
            raise self.error(f"expected {what} ('0' or '1'), found {char!r}", start)
        return char == b"1"

    def peek_name(self) -> str | None:
        """The string starting here if it looks like a layer name, without consuming it."""
        start = self.pos
        try:
            size = self.integer()
            if not 0 < size <= _MAX_NAME:
                return None
            name = self.take(size, "a name")
        except DlibFormatError:
            return None
        finally:
            self.pos = start
        if not all(48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c == 95 for c in name):
            return None
        return name.decode("ascii")

    def name(self, expected: tuple[str, ...], what: str) -> str:
        start = self.pos
        found = self.peek_name()
        if found is None or found not in expected:
            raise self.error(f"expected {what} ({', '.join(expected)}), found "
                             f"{found if found is not None else 'no name'}", start)
        self.integer()
        self.pos += len(found)
        return found

    def version(self, expected: tuple[int, ...], what: str) -> int:
        start = self.pos
        value = self.integer(f"the version of {what}")
        if value not in expected:
            raise self.error(f"unexpected version {value} of {what} (expected "
                             f"{' or '.join(map(str, expected))})", start)
        return value

    def tensor(self, what: str) -> np.ndarray:
        self.version((_TENSOR_VERSION,), f"tensor {what}")
        shape = tuple(self.integer(f"the shape of tensor {what}") for _ in range(4))
        if min(shape) < 0:
            raise self.error(f"negative size in the shape {shape} of tensor {what}")
        count = int(np.prod(shape))
        values = np.frombuffer(self.take(4 * count, f"tensor {what}"), dtype="<f4")
        return values.reshape(shape).astype(np.float32)

    def alias(self, what: str) -> tuple[int, ...]:
        self.version((_ALIAS_VERSION,), f"alias tensor {what}")
        return tuple(self.integer(f"the shape of {what}") for _ in range(4))


def _multipliers(stream: _Stream, fields: dict, bias: bool = True) -> None:
    names = ["learning_rate_multiplier", "weight_decay_multiplier"]
    if bias:
        names += ["bias_learning_rate_multiplier", "bias_weight_decay_multiplier"]
    for name in names:
        fields[name] = stream.real(name)


def _window(stream: _Stream, fields: dict, kind: str) -> None:
    for name in ("rows", "cols", "stride_y", "stride_x", "padding_y", "padding_x"):
        fields[name] = stream.integer(f"{kind} {name}")


def _split(stream: _Stream, params: np.ndarray, shapes: dict, offset: int, kind: str) -> dict:
    """Cut a layer's flat parameter tensor into its named parts of the given shapes."""
    flat = params.ravel()
    sizes = {name: int(np.prod(shape)) for name, shape in shapes.items()}
    if sum(sizes.values()) != flat.size:
        raise stream.error(f"{kind} holds {flat.size} parameters, its parts "
                           f"{dict(shapes)} need {sum(sizes.values())}", offset)
    parts, start = {}, 0
    for name, shape in shapes.items():
        parts[name] = flat[start:start + sizes[name]].reshape(shape)
        start += sizes[name]
    return parts


def _read_con(stream: _Stream, version: str, offset: int) -> dict:
    params = stream.tensor("con params")
    fields = {"num_filters": stream.integer("con num_filters")}
    _window(stream, fields, "con")
    filters = stream.alias("con filters")
    biases = stream.alias("con biases")
    _multipliers(stream, fields)
    fields["use_bias"] = stream.boolean("con use_bias") if version != "con_4" else True
    if version == "con_6":
        fields["use_relu"] = stream.boolean("con use_relu")
    shapes = {"filters": filters}
    if fields["use_bias"]:
        shapes["biases"] = (biases[1],)
    fields.update(_split(stream, params, shapes, offset, "con"))
    return fields


def _read_fc(stream: _Stream, version: str, offset: int) -> dict:
    fields = {"num_outputs": stream.integer("fc num_outputs"),
              "num_inputs": stream.integer("fc num_inputs")}
    params = stream.tensor("fc params")
    weights = stream.alias("fc weights")
    biases = stream.alias("fc biases")
    fields["bias_mode"] = stream.integer("fc bias_mode")
    _multipliers(stream, fields)
    fields["use_bias"] = stream.boolean("fc use_bias") if version == "fc_3" else True
    shapes = {"weights": weights[:2]}
    if fields["bias_mode"] == 0 and fields["use_bias"]:
        shapes["biases"] = (biases[1],)
    fields.update(_split(stream, params, shapes, offset, "fc"))
    return fields


def _read_affine(stream: _Stream, version: str, offset: int) -> dict:
    params = stream.tensor("affine params")
    gamma = stream.alias("affine gamma")
    beta = stream.alias("affine beta")
    fields = {"mode": stream.integer("affine mode")}
    fields["disabled"] = stream.boolean("affine disabled") if version == "affine_2" else False
    fields.update(_split(stream, params, {"gamma": (int(np.prod(gamma)),),
                                          "beta": (int(np.prod(beta)),)}, offset, "affine"))
    return fields


def _read_bn(stream: _Stream, version: str, offset: int) -> dict:
    """A batch-norm record folded to an affine one, as dlib's ``affine_(const bn_&)``."""
    params = stream.tensor("bn params")
    gamma = stream.alias("bn gamma")
    beta = stream.alias("bn beta")
    for name in ("means", "invstds"):
        stream.tensor(f"bn {name}")
    running_means = stream.tensor("bn running_means").ravel()
    running_variances = stream.tensor("bn running_variances").ravel()
    stream.integer("bn num_updates")
    stream.integer("bn running_stats_window_size")
    fields = {}
    _multipliers(stream, fields)
    eps = stream.real("bn eps")
    parts = _split(stream, params, {"gamma": (int(np.prod(gamma)),),
                                    "beta": (int(np.prod(beta)),)}, offset, "bn")
    scale = parts["gamma"] / np.sqrt(running_variances + np.float32(eps))
    fields.update(mode=0 if version == "bn_con2" else 1, disabled=False, gamma=scale,
                  beta=parts["beta"] - scale * running_means)
    return fields


def _read_relu(stream: _Stream, version: str, offset: int) -> dict:
    return {"disabled": stream.boolean("relu disabled") if version == "relu_2" else False}


def _read_pool(stream: _Stream, version: str, offset: int) -> dict:
    fields = {}
    _window(stream, fields, version[:-2])
    return fields


def _read_nothing(stream: _Stream, version: str, offset: int) -> dict:
    return {}


# record name -> (kind, reader)
_LAYERS = {
    "con_4": ("con", _read_con), "con_5": ("con", _read_con), "con_6": ("con", _read_con),
    "fc_2": ("fc", _read_fc), "fc_3": ("fc", _read_fc),
    "affine_": ("affine", _read_affine), "affine_2": ("affine", _read_affine),
    "bn_con2": ("affine", _read_bn), "bn_fc2": ("affine", _read_bn),
    "relu_": ("relu", _read_relu), "relu_2": ("relu", _read_relu),
    "max_pool_2": ("max_pool", _read_pool), "avg_pool_2": ("avg_pool", _read_pool),
    "add_prev_": ("add_prev", _read_nothing),
}
_INPUTS = ("input_rgb_image_sized",)
_LOSSES = ("loss_metric_", "loss_metric_2")
# versions of dlib's wrappers: add_layer over a layer, over the input, tag and skip
_ADD_LAYER = (2,)
_ADD_INPUT_LAYER = (2, 3)
_TAG_OR_SKIP = 1


def _read_loss(stream: _Stream) -> DlibLayer:
    stream.version((1,), "add_loss_layer")
    offset = stream.pos
    name = stream.name(_LOSSES, "a supported loss layer")
    fields = {}
    if name == "loss_metric_2":
        fields = {"margin": stream.real("loss margin"),
                  "distance_threshold": stream.real("loss distance threshold")}
    return DlibLayer("loss_metric", name, offset, fields)


def _read_input(stream: _Stream) -> DlibLayer:
    offset = stream.pos
    name = stream.name(_INPUTS, "a supported input layer")
    fields = {f"avg_{c}": stream.real(f"input avg_{c}") for c in ("red", "green", "blue")}
    fields["rows"] = stream.integer("input rows")
    fields["cols"] = stream.integer("input cols")
    return DlibLayer(name, name, offset, fields)


def _read_layer(stream: _Stream) -> DlibLayer:
    offset = stream.pos
    name = stream.name(tuple(_LAYERS), "a supported layer")
    kind, reader = _LAYERS[name]
    return DlibLayer(kind, name, offset, reader(stream, name, offset))


def _skip_layer_state(stream: _Stream, over_input: int | None) -> None:
    """The training state dlib writes after each layer's record: flags and tensors."""
    for name in ("this_layer_setup_called", "gradient_input_is_stale",
                 "get_output_and_gradient_input_disabled"):
        stream.boolean(name)
    for name in ("x_grad", "cached_output", "grad_final" if over_input else "params_grad"):
        stream.tensor(name)
    if over_input == 3:
        stream.integer("sample_expansion_factor")


def parse_network(data: bytes, path: str = "<bytes>") -> DlibNetwork:
    """Parse the bytes of a serialized dlib network (see the module docstring).

    Raises
    ------
    DlibFormatError
        Where the bytes do not follow the format, with the offset; also for bytes
        left over after the network.
    """
    stream = _Stream(data, path)
    loss = _read_loss(stream)
    nesting = []
    while stream.peek_name() not in _INPUTS:
        start = stream.pos
        nesting.append((stream.integer("a layer wrapper's version"), start))
        if nesting[-1][0] not in (_TAG_OR_SKIP, *_ADD_LAYER, *_ADD_INPUT_LAYER):
            raise stream.error(f"unexpected version {nesting[-1][0]} of a layer wrapper", start)
    if not nesting or nesting[-1][0] not in _ADD_INPUT_LAYER:
        raise stream.error("the input layer is not wrapped by a computational layer")
    source = _read_input(stream)
    layers, wrappers = [], []
    for depth, (version, start) in enumerate(reversed(nesting)):
        if depth and version == _TAG_OR_SKIP:
            wrappers.append(len(layers))
            continue
        if depth and version not in _ADD_LAYER:
            raise stream.error(f"unexpected add_layer version {version}", start)
        layers.append(_read_layer(stream))
        _skip_layer_state(stream, version if depth == 0 else None)
    if stream.pos != len(data):
        raise stream.error(f"{len(data) - stream.pos} bytes follow the end of the network")
    return DlibNetwork(loss, source, layers, wrappers)


def read_network(path: str | os.PathLike) -> DlibNetwork:
    """Read and parse a dlib network file such as ``dlib_face_recognition_resnet_model_v1.dat``.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    DlibFormatError
        If it does not follow dlib's format; the message names the file and offset.
    """
    path = Path(path)
    return parse_network(path.read_bytes(), str(path))
