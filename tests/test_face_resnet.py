"""dlib's face ResNet read without dlib and run in Keras: the file reader, the converted
weights' cache, and agreement with dlib's own network on real faces."""
from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest

from features import dlib_dnn
from features.dlib_dnn import DlibFormatError, parse_network, read_network

pytest.importorskip("face_recognition_models", reason="needs the embeddings extra")
face_resnet = pytest.importorskip("features.face_resnet")
from features.embeddings import (DlibFaceDescriptor, chip_descriptors,  # noqa: E402
                                 face_chips)


@pytest.fixture(scope="module")
def model_file():
    return face_resnet.recognition_model_path()


@pytest.fixture(scope="module")
def model_bytes(model_file) -> bytes:
    return model_file.read_bytes()


@pytest.fixture(scope="module")
def network(model_file):
    return read_network(model_file)


def test_reader_finds_dlibs_face_recognition_resnet(network) -> None:
    assert network.loss.version == "loss_metric_2"
    assert network.input.fields["rows"] == network.input.fields["cols"] == 150
    kinds = [layer.kind for layer in network.layers]
    # dnn_face_recognition_ex.cpp: a 7x7 stem, 14 residual blocks of two 3x3 convolutions,
    # 4 of them down-sampling with an average-pooled shortcut, then a 128-d fc
    assert kinds.count("con") == 1 + 2 * 14 and kinds.count("add_prev") == 14
    assert kinds.count("avg_pool") == 4 + 1 and kinds[-1] == "fc"
    stem = network.layers[0].fields
    assert stem["filters"].shape == (32, 3, 7, 7) and stem["stride_y"] == 2
    fc = network.layers[-1].fields
    assert fc["weights"].shape == (256, 128) and "biases" not in fc
    assert len(network.wrappers) == 14 + 4 * 2


@pytest.mark.parametrize("cut", [1, 100, 5000, 1_000_000, 22_000_000])
def test_truncated_file_is_refused_with_file_and_offset(model_bytes, cut) -> None:
    with pytest.raises(DlibFormatError, match=r"model\.dat: at byte offset \d+: .*"):
        parse_network(model_bytes[:-cut], "model.dat")


def test_altered_bytes_are_refused_with_their_offset(network, model_bytes) -> None:
    affine = network.layers[1]
    renamed = bytearray(model_bytes)
    # a name is its packed length (2 bytes here) and its characters
    renamed[affine.offset + 2:affine.offset + 4] = b"xx"  # "affine_" -> "xxfine_"
    with pytest.raises(DlibFormatError, match=rf"at byte offset {affine.offset}: expected a "
                                              r"supported layer .* found xxfine_"):
        parse_network(bytes(renamed), "model.dat")
    versioned = bytearray(model_bytes)
    tensor = affine.offset + 2 + len("affine_")
    versioned[tensor + 1] = 7  # the affine params tensor's version 2 -> 7
    with pytest.raises(DlibFormatError, match=rf"at byte offset {tensor}: unexpected version 7 "
                                              "of tensor affine params"):
        parse_network(bytes(versioned), "model.dat")
    with pytest.raises(DlibFormatError, match="3 bytes follow the end of the network"):
        parse_network(model_bytes + b"\x01\x01\x01", "model.dat")


def test_packed_integers_and_floats_follow_dlibs_encoding() -> None:
    stream = dlib_dnn._Stream(bytes([0x01, 0x05, 0x81, 0x05, 0x02, 0x34, 0x12,
                                     # float 0.75 = 3 * 2**-2: mantissa 3, exponent -2
                                     0x01, 0x03, 0x81, 0x02]), "x")
    assert [stream.integer(), stream.integer(), stream.integer()] == [5, -5, 0x1234]
    assert stream.real() == 0.75


def test_zero_pad_add_aligns_at_the_first_row_column_and_channel() -> None:
    rng = np.random.default_rng(0)
    small = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    large = rng.normal(size=(2, 4, 4, 6)).astype(np.float32)
    expected = large.copy()
    expected[:, :3, :3, :4] += small
    got = np.asarray(face_resnet.ZeroPadAdd()([small, large]))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def _cache_file(folder, model_file):
    return folder / f"{model_file.stem}.npz"


def test_converted_weights_cache_is_built_reused_and_rebuilt(tmp_path, model_file,
                                                             monkeypatch, caplog) -> None:
    cache = _cache_file(tmp_path, model_file)
    first = face_resnet.converted_weights(cache_dir=tmp_path)
    assert cache.is_file() and not list(tmp_path.glob("*.tmp"))
    reads = []
    monkeypatch.setattr(face_resnet, "read_network",
                        lambda path: reads.append(path) or read_network(path))
    again = face_resnet.converted_weights(cache_dir=tmp_path)
    assert reads == [] and again.ops == first.ops
    for name, array in first.arrays.items():
        np.testing.assert_array_equal(again.arrays[name], array)

    with np.load(cache) as saved:  # made from another .dat: stale
        header = json.loads(str(saved["header"]))
        arrays = {key: saved[key] for key in saved.files if key != "header"}
    np.savez(cache, header=np.array(json.dumps({**header, "source_sha256": "0" * 64})), **arrays)
    with caplog.at_level(logging.INFO, logger="features.face_resnet"):
        rebuilt = face_resnet.converted_weights(cache_dir=tmp_path)
    assert len(reads) == 1 and "stale" in caplog.text
    assert rebuilt.source_sha256 == first.source_sha256

    cache.write_bytes(b"not a zip file")  # unreadable
    face_resnet.converted_weights(cache_dir=tmp_path)
    cache.unlink()  # missing
    face_resnet.converted_weights(cache_dir=tmp_path)
    assert len(reads) == 3 and cache.is_file()
    assert json.loads(str(np.load(cache)["header"]))["source_sha256"] == first.source_sha256


def test_cache_folder_from_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(face_resnet.CACHE_ENV, str(tmp_path / "weights"))
    assert face_resnet.default_cache_dir() == tmp_path / "weights"


@pytest.fixture(scope="module")
def chips(face_paths_200) -> np.ndarray:
    """Aligned chips of 200 real faces and of their mirror images."""
    from features.io import load_images
    faces = load_images(face_paths_200, size=(200, 200), color="rgb", progress=False).images
    return face_chips(np.concatenate([faces, faces[:, :, ::-1]]))


@pytest.fixture(scope="module")
def face_paths_200():
    from pipelines.dataset import default_data_dir, index_folder
    folder = default_data_dir()
    if not folder.is_dir():
        pytest.skip(f"UTKFace sample not found at {folder} (set UTKFACE_DIR)")
    paths = index_folder(folder).paths
    return list(paths[:: max(1, len(paths) // 200)][:200])


def test_keras_descriptors_equal_dlibs_on_real_faces(chips) -> None:
    """The issue's bar is 1e-4; measured: 5e-7 on these 400 chips."""
    pytest.importorskip("dlib")
    keras_rows = chip_descriptors(chips, "keras")
    dlib_rows = chip_descriptors(chips, "dlib")
    assert keras_rows.shape == (400, 128) and keras_rows.dtype == np.float32
    assert np.abs(keras_rows - dlib_rows).max() <= 1e-4
    assert np.abs(dlib_rows).max() > 0.1  # real descriptors, not zeros


def test_extractor_chooses_the_network(face_images) -> None:
    pytest.importorskip("dlib")
    faces = np.repeat(face_images[:2], 3, axis=-1)  # grey faces as RGB: still faces
    default, own = DlibFaceDescriptor(), DlibFaceDescriptor(network="dlib")
    assert default.network == "keras"
    np.testing.assert_allclose(default.transform(faces), own.transform(faces), atol=1e-4)
    with pytest.raises(ValueError, match="network must be one of"):
        DlibFaceDescriptor(network="torch").fit()


def test_extractor_pickled_before_the_network_choice_keeps_dlibs() -> None:
    old = DlibFaceDescriptor()
    state = dict(old.__getstate__())
    del state["network"]
    restored = DlibFaceDescriptor.__new__(DlibFaceDescriptor)
    restored.__setstate__(state)
    assert restored.network == "dlib"
    assert pickle.loads(pickle.dumps(old)).network == "keras"


def test_keras_network_saves_and_loads_with_identical_outputs(tmp_path, chips) -> None:
    import keras
    network = face_resnet.face_resnet()
    network.save(tmp_path / "face_resnet.keras")
    loaded = keras.saving.load_model(tmp_path / "face_resnet.keras")
    batch = chips[:8].astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_on_batch(batch),
                                  network.predict_on_batch(batch))
