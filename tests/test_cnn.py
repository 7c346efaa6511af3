"""Tests for models.cnn and pipelines.cnn_training, on tiny inputs (32x32, 1-2 epochs)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import cnn
from models.cnn import (OUTPUT_LAYERS, TASKS, CNNPredictor, FitSchedule, build_model,
                        compile_network, encode_targets, fit_network, load_model,
                        make_dataset, set_trunk_trainable)
from models.precision import set_precision
from pipelines.artifacts import CNN_MODEL_FILE, SPLIT_FILE
from pipelines.cnn_training import CNNConfig, train_cnn
from pipelines.dataset import default_data_dir, index_folder

# Keras converts TensorFlow tensors with np.array(copy=False), which numpy 2 flags
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

SIZE = 32
BASELINE_SIZE = 48  # the seed baseline's valid convolutions need at least 46 pixels
N_FACES = 40


def synthetic_labels(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"gender": rng.integers(0, 2, count), "ethnicity": rng.integers(0, 5, count),
            "age": rng.integers(1, 90, count)}


@pytest.fixture(scope="module")
def face_dir(tmp_path_factory) -> Path:
    """A folder of links to 40 real faces spread over the data folder (no copies)."""
    source = default_data_dir()
    if not source.is_dir():
        pytest.skip(f"UTKFace sample not found at {source} (set UTKFACE_DIR)")
    paths = index_folder(source).paths
    folder = tmp_path_factory.mktemp("faces")
    for path in paths[:: len(paths) // N_FACES][:N_FACES]:
        os.symlink(path, folder / Path(path).name)
    return folder


@pytest.fixture(scope="module")
def trained(face_dir, tmp_path_factory) -> dict:
    """A default network trained for 2 epochs on the 40 faces, at 32x32, in bfloat16
    (saved in float32)."""
    out = tmp_path_factory.mktemp("trained")
    return train_cnn(face_dir, out, CNNConfig(size=(SIZE, SIZE), epochs=2, batch_size=16,
                                              n_jobs=1, precision="mixed_bfloat16"),
                     progress=False)


# --- architectures ----------------------------------------------------------------------


@pytest.mark.parametrize("architecture,tasks,channels", [
    ("default", TASKS, 1), ("default", ("gender",), 1), ("default", ("ethnicity",), 3),
    ("default", ("age",), 1), ("default", ("gender", "age"), 3),
    ("seed_baseline", ("gender", "age"), 1), ("seed_baseline", ("age",), 3),
])
def test_output_shapes(architecture, tasks, channels):
    size = BASELINE_SIZE if architecture == "seed_baseline" else SIZE
    network = build_model(architecture, (size, size, channels), tasks, seed=0)
    outputs = network(np.zeros((3, size, size, channels), np.float32))
    widths = {"gender": 1, "ethnicity": 5, "age": 1}
    assert {task: tuple(output.shape) for task, output in outputs.items()} == \
        {task: (3, widths[task]) for task in tasks}


def test_default_tasks_follow_the_architecture():
    assert cnn.resolve_tasks("default") == TASKS
    assert cnn.resolve_tasks("seed_baseline") == ("gender", "age")
    assert cnn.resolve_tasks("default", ["age", "gender"]) == ("gender", "age")


@pytest.mark.parametrize("architecture,tasks", [
    ("seed_baseline", ("ethnicity",)), ("default", ()), ("default", ("race",)), ("vgg", None),
])
def test_bad_architecture_or_tasks_are_refused(architecture, tasks):
    with pytest.raises(ValueError):
        build_model(architecture, (SIZE, SIZE, 1), tasks)


def test_frozen_trunk_leaves_only_head_weights_trainable():
    network = build_model("default", (SIZE, SIZE, 1), seed=0)
    set_trunk_trainable(network, False)
    names = {weight.path.split("/")[0] for weight in network.trainable_weights}
    assert names and all(name.split("_")[0] in TASKS for name in names)
    set_trunk_trainable(network, True)
    assert len(network.trainable_weights) > 2 * len(names)


# --- training ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_training_steps_lower_the_loss_on_a_fixed_batch(precision):
    images = np.random.default_rng(1).integers(0, 256, (16, SIZE, SIZE, 1)).astype(np.float32)
    targets = encode_targets(synthetic_labels(16), TASKS)
    network = set_precision(build_model("default", (SIZE, SIZE, 1), seed=0), precision,
                            OUTPUT_LAYERS)
    compile_network(network, total_steps=30)
    losses = [network.train_on_batch(images, targets)[0] for _ in range(30)]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ethnicity_loss_is_the_smoothed_cross_entropy_of_the_codes(smoothing):
    import keras

    codes = np.array([0, 3, 4, 1, 2], dtype=np.int32)
    probabilities = np.random.default_rng(2).dirichlet(np.ones(5), size=5).astype(np.float32)
    targets = np.eye(5)[codes] * (1 - smoothing) + smoothing / 5
    expected = -(targets * np.log(probabilities)).sum(axis=1)
    loss = np.asarray(cnn.training._sparse_crossentropy(smoothing)(codes, probabilities))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    if smoothing == 0.0:  # Keras' own sparse loss, which has no smoothing
        reference = keras.losses.SparseCategoricalCrossentropy(reduction=None)
        np.testing.assert_allclose(loss, reference(codes, probabilities), rtol=1e-6)


def test_augmentation_keeps_images_and_labels_paired():
    """The label is drawn into the image (bright top half = 1); augmentation keeps it."""
    count = 64
    labels = synthetic_labels(count, seed=2)
    labels["age"] = 10 * labels["ethnicity"] + 3 * labels["gender"] + 1
    images = np.zeros((count, SIZE, SIZE, 1), np.uint8)
    images[labels["gender"] == 1, : SIZE // 2] = 220
    images[labels["gender"] == 0, SIZE // 2:] = 220
    dataset = make_dataset(images, labels, TASKS, batch_size=16, training=True, seed=0)
    seen = 0
    for batch, targets in dataset:
        batch = batch.numpy()
        gender = targets["gender"].numpy()[:, 0]
        top_brighter = batch[:, : SIZE // 2].mean(axis=(1, 2, 3)) > batch[:, SIZE // 2:].mean(
            axis=(1, 2, 3))
        assert np.array_equal(top_brighter, gender == 1)
        assert np.array_equal(targets["age"].numpy()[:, 0],
                              10 * targets["ethnicity"].numpy() + 3 * gender + 1)
        assert not np.isin(batch, [0, 220]).all()  # the pixels really were distorted
        seen += len(batch)
    assert seen == count


def test_augmentation_flips_faces_about_their_centre(monkeypatch):
    """With the other distortions off, each face comes out as itself or as its exact
    mirror image: the composed affine map flips about the image centre, on the pixel grid."""
    import tensorflow as tf

    for name in ("AUGMENT_SHIFT", "AUGMENT_ROTATION_DEG", "AUGMENT_ZOOM",
                 "AUGMENT_BRIGHTNESS", "AUGMENT_CONTRAST"):
        monkeypatch.setattr(cnn.augmentation, name, 0.0)
    faces = np.random.default_rng(4).integers(0, 256, (64, SIZE, SIZE, 1)).astype(np.float32)
    out = cnn.augment_batch(tf.constant(faces), tf.random.Generator.from_seed(0)).numpy()
    same = np.isclose(out, faces, atol=1e-3).all(axis=(1, 2, 3))
    mirrored = np.isclose(out, faces[:, :, ::-1], atol=1e-3).all(axis=(1, 2, 3))
    assert (same | mirrored).all()
    assert 16 < mirrored.sum() < 48     # about half of the faces are flipped


def test_augmentation_keeps_pixel_values_in_range():
    import tensorflow as tf

    faces = np.zeros((32, SIZE, SIZE, 1), np.float32)
    faces[:, ::2] = 255
    out = cnn.augment_batch(tf.constant(faces), tf.random.Generator.from_seed(1)).numpy()
    assert out.shape == faces.shape
    assert out.min() >= 0 and out.max() <= 255
    assert len({out[i].tobytes() for i in range(len(out))}) == len(out)  # a draw per face


def test_seeded_pipeline_is_reproducible():
    images = np.random.default_rng(3).integers(0, 256, (32, SIZE, SIZE, 1), dtype=np.uint8)
    labels = synthetic_labels(32)

    def batches(seed: int) -> list[np.ndarray]:
        dataset = make_dataset(images, labels, TASKS, batch_size=8, training=True, seed=seed)
        return [batch.numpy() for _ in range(2) for batch, _ in dataset]

    first, again, other = batches(7), batches(7), batches(8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[0], first[4])  # reshuffled and redrawn each epoch
    weights = [build_model("default", (SIZE, SIZE, 1), seed=7).get_weights() for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(*weights))


def test_fit_schedule_checks_its_epochs():
    with pytest.raises(ValueError, match="freeze_trunk_epochs"):
        FitSchedule(epochs=1, batch_size=4, freeze_trunk_epochs=2)
    with pytest.raises(ValueError, match="epochs >= 1"):
        FitSchedule(epochs=0, batch_size=4)
    assert FitSchedule(epochs=5, batch_size=4, freeze_trunk_epochs=2, learning_rate=1e-4,
                       head_learning_rate=1e-3).phases() == ((2, True, 1e-3), (3, False, 1e-4))
    assert FitSchedule(epochs=5, batch_size=4).phases() == ((5, False, 1e-3),)


def test_early_stopping_waits_for_the_second_half_of_the_schedule(tmp_path):
    """Validation labels opposite to the training ones: the validation loss rises from the
    first epoch, yet training runs past half of its epochs before patience can stop it."""
    gender = np.tile([0, 1], 16)
    images = np.zeros((32, SIZE, SIZE, 1), np.uint8)
    images[gender == 1, : SIZE // 2] = 220     # an easy cue: bright top half = 1
    images[gender == 0, SIZE // 2:] = 220
    history = fit_network(build_model("default", (SIZE, SIZE, 1), ("gender",), seed=0),
                          (images, {"gender": gender}), (images, {"gender": 1 - gender}),
                          FitSchedule(epochs=8, batch_size=16, patience=1, seed=0, verbose=0),
                          checkpoint_path=tmp_path / "best.weights.h5")
    assert history["val_loss"][-1] > history["val_loss"][0]
    assert len(history["loss"]) >= 8 // 2 + 2


def test_sample_weights_travel_with_their_faces_and_reach_the_loss_with_its_smoothing(tmp_path):
    labels = synthetic_labels(48, seed=3)
    weights = {"gender": labels["age"] / 10.0, "ethnicity": np.ones(48)}
    images = np.random.default_rng(3).integers(0, 256, (48, SIZE, SIZE, 1)).astype(np.uint8)
    dataset = make_dataset(images, labels, TASKS, batch_size=16, training=True, seed=0,
                           sample_weight=weights)
    for _, targets, batch_weights in dataset:  # shuffled, yet each weight with its face
        np.testing.assert_allclose(batch_weights["gender"].numpy(),
                                   targets["age"].numpy()[:, 0] / 10.0, rtol=1e-6)
        np.testing.assert_array_equal(batch_weights["age"].numpy(), 1.0)  # not given: 1
    with pytest.raises(ValueError, match="gender: 3 sample weights for 48 faces"):
        cnn.training.output_weights({"gender": np.ones(3)}, TASKS, 48)
    # a task weighted 0 everywhere adds nothing to the training loss
    schedule = FitSchedule(epochs=1, batch_size=16, seed=0, verbose=0, label_smoothing=0.0)
    network = build_model("default", (SIZE, SIZE, 1), seed=0)
    history = fit_network(network, (images, labels), (images, labels), schedule,
                          checkpoint_path=tmp_path / "best.weights.h5",
                          sample_weight={"gender": np.zeros(48)})
    assert network.loss["gender"].label_smoothing == 0.0  # the schedule's, not the default
    assert CNNConfig(architecture="face-resnet").schedule(True, 0).label_smoothing == 0.0
    assert history["gender_loss"] == [0.0]
    assert history["ethnicity_loss"][0] > 0 and history["val_gender_loss"][0] > 0
    with pytest.raises(ValueError, match="balance must be one of"):
        CNNConfig(balance="ethnicity")


def test_freezing_needs_a_saved_network(tmp_path):
    with pytest.raises(ValueError, match="init_from"):
        CNNConfig(freeze_trunk_epochs=1)


@pytest.mark.parametrize("settings", [{}, {"distill": True}])
def test_distillation_without_dlib_fails_before_writing(tmp_path, monkeypatch, settings):
    monkeypatch.setitem(sys.modules, "dlib", None)
    # a new default network distils unless told not to
    with pytest.raises(ImportError, match=r"embeddings.*--no-distill"):
        train_cnn(tmp_path, tmp_path / "out", CNNConfig(**settings))
    assert not (tmp_path / "out").exists()


# --- distillation of a teacher's face descriptors ----------------------------------------


def test_descriptor_head_shares_the_network_and_leaves_it_unchanged():
    network = build_model("default", (SIZE, SIZE, 1), seed=0)
    student = cnn.with_descriptor_head(network, 7)
    images = np.random.default_rng(4).integers(0, 256, (3, SIZE, SIZE, 1)).astype(np.float32)
    outputs, alone = student(images), network(images)
    assert tuple(outputs[cnn.DESCRIPTOR_OUTPUT].shape) == (3, 7)
    for task in TASKS:
        np.testing.assert_array_equal(outputs[task], alone[task])
    assert student.get_layer("stem_conv") is network.get_layer("stem_conv")
    assert sorted(network.output_names) == sorted(TASKS)


@pytest.mark.slow
def test_distillation_judges_epochs_by_the_task_losses_and_keeps_the_best(tmp_path):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (48, SIZE, SIZE, 1), dtype=np.uint8)
    labels = synthetic_labels(48, seed=5)
    descriptors = rng.normal(size=(48, 8)).astype(np.float32)
    train = (images[:32], {task: values[:32] for task, values in labels.items()})
    val = (images[32:], {task: values[32:] for task, values in labels.items()})
    network = build_model("default", (SIZE, SIZE, 1), seed=0)
    stem = network.get_layer("stem_conv").get_weights()[0].copy()
    schedule = FitSchedule(epochs=3, batch_size=16, seed=0, verbose=0, descriptor_weight=0.5)
    history = fit_network(network, train, val, schedule,
                          descriptors=(descriptors[:32], descriptors[32:]),
                          checkpoint_path=tmp_path / "best.weights.h5")
    task_loss = np.array(history["val_task_loss"])
    np.testing.assert_allclose(
        task_loss, np.array(history["val_loss"]) - 0.5 * np.array(history["val_descriptor_loss"]),
        rtol=1e-6)
    np.testing.assert_allclose(
        task_loss, sum(cnn.LOSS_WEIGHTS[task] * np.array(history[f"val_{task}_loss"])
                       for task in TASKS), rtol=1e-4)
    assert not np.array_equal(stem, network.get_layer("stem_conv").get_weights()[0])
    assert sorted(network.output_names) == sorted(TASKS)
    # the network left behind is the best epoch's by the task losses
    compile_network(network, total_steps=1)
    restored = network.evaluate(make_dataset(*val, TASKS, batch_size=16, training=False),
                                verbose=0, return_dict=True)["loss"]
    assert restored == pytest.approx(task_loss.min(), rel=1e-4)


@pytest.mark.slow
def test_teacher_descriptors_are_dlibs_standardised_on_the_training_faces(face_dir, tmp_path):
    pytest.importorskip("dlib", reason="the embeddings extra is not installed")
    from features.embeddings import DlibFaceDescriptor
    from features.io import load_images
    from pipelines.cnn_training import Faces, TEACHER_SIZE, teacher_descriptors

    folder = tmp_path / "faces"
    folder.mkdir()
    for path in sorted(face_dir.iterdir())[:10]:
        (folder / path.name).symlink_to(path.resolve())
    blank = "30_0_0_20170101000000000.jpg.chip.jpg"   # no face: no descriptor
    Image.new("RGB", (200, 200), (128, 128, 128)).save(folder / blank, format="JPEG")
    index = index_folder(folder)
    real = [i for i, name in enumerate(index.file_names) if name != blank]
    parts = {"train": index.subset(real[:8] + [index.file_names.index(blank)]),
             "val": index.subset(real[8:])}
    rows, missing = teacher_descriptors({part: Faces(np.empty(0), part_index)
                                         for part, part_index in parts.items()}, n_jobs=1,
                                        progress=False)
    assert missing == 1 and rows["train"].shape == (9, 128) and rows["val"].shape == (2, 128)
    np.testing.assert_array_equal(rows["train"][-1], 0)
    raw = {part: DlibFaceDescriptor().transform(
        load_images(part_index.paths, size=TEACHER_SIZE, color="rgb", progress=False).images)
        for part, part_index in parts.items()}
    mean, scale = raw["train"][:8].mean(axis=0), raw["train"][:8].std(axis=0)
    np.testing.assert_allclose(rows["train"][:8], (raw["train"][:8] - mean) / scale,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rows["val"], (raw["val"] - mean) / scale, rtol=1e-4, atol=1e-4)


# --- end to end: train, save, load, fine-tune -------------------------------------------


@pytest.mark.slow
def test_train_cnn_writes_model_reports_and_summary(trained):
    out = Path(trained["model_path"]).parent
    for name in (CNN_MODEL_FILE, SPLIT_FILE, "training_curves.png", "cnn_summary.json",
                 "gender_metrics.json", "ethnicity_confusion.png", "age_error.png"):
        assert (out / name).is_file(), name
    assert not (out / "best.weights.h5").exists()
    assert trained["counts"] == {"train": 32, "val": 4, "test": 4}
    assert trained["epochs_run"] == 2 and 1 <= trained["best_epoch"] <= 2
    assert set(trained["test"]) == set(trained["validation"]) == set(TASKS)
    assert len(trained["history"]["val_age_mae"]) == 2
    assert trained["views"] == {"mirror": True, "jitter": True}
    assert trained["precision"] == "mixed_bfloat16"
    saved = load_model(trained["model_path"]).network
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}


@pytest.mark.slow
def test_predictor_reads_paths_and_arrays_alike(trained, face_dir):
    predictor = load_model(trained["model_path"])
    paths = sorted(str(path) for path in face_dir.iterdir())[:5]
    from_paths = predictor.predict(paths)
    from_arrays = predictor.predict([np.asarray(Image.open(path)) for path in paths])
    for task in TASKS:
        np.testing.assert_allclose(from_paths[task], from_arrays[task], rtol=1e-6)
    assert from_paths["gender"].dtype == np.int64 and (from_paths["age"] >= 0).all()
    proba = predictor.predict_proba(paths)
    assert proba["gender"].shape == (5, 2) and proba["ethnicity"].shape == (5, 5)
    np.testing.assert_allclose(proba["ethnicity"].sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(predictor.predict(paths, task="ethnicity"),
                                  proba["ethnicity"].argmax(axis=1))
    with pytest.raises(ValueError, match="regression"):
        predictor.predict_proba(paths, task="age")


def test_predictor_averages_each_face_with_its_mirror_image():
    network = build_model("default", (SIZE, SIZE, 1), seed=3)
    images = np.random.default_rng(5).integers(0, 256, (4, SIZE, SIZE, 1), dtype=np.uint8)
    views = [network(view.astype(np.float32), training=False)
             for view in (images, images[:, :, ::-1])]
    mean = {task: np.mean([np.asarray(view[task]) for view in views], axis=0)
            for task in TASKS}
    predictor = CNNPredictor(network, jitter=False)
    assert predictor.mirror
    proba = predictor.predict_proba(images)
    np.testing.assert_allclose(proba["gender"][:, 1], mean["gender"][:, 0], rtol=1e-5)
    np.testing.assert_allclose(proba["ethnicity"], mean["ethnicity"], rtol=1e-5)
    np.testing.assert_allclose(predictor.predict(images, task="age"), mean["age"][:, 0],
                               rtol=1e-5)
    # one view only: the network's own outputs
    single = CNNPredictor(network, mirror=False, jitter=False).predict_proba(
        images, task="ethnicity")
    np.testing.assert_allclose(single, np.asarray(views[0]["ethnicity"]), rtol=1e-5)
    assert not np.allclose(single, proba["ethnicity"])
    # a predictor pickled before mirroring existed keeps judging one view
    state = predictor.__getstate__()
    del state["mirror"], state["jitter"]
    old = CNNPredictor.__new__(CNNPredictor)
    old.__setstate__(state)
    assert old.mirror is False and old.jitter is False


def test_predictor_averages_twelve_jittered_views_by_default():
    network = build_model("default", (SIZE, SIZE, 1), seed=3)
    images = np.random.default_rng(6).integers(0, 256, (3, SIZE, SIZE, 1), dtype=np.uint8)
    m = round(SIZE / 32)
    padded = np.pad(images, ((0, 0), (m, m), (m, m), (0, 0)), mode="symmetric")
    zoomed = np.stack([np.asarray(Image.fromarray(image[m:-m, m:-m, 0]).resize(
        (SIZE, SIZE), Image.Resampling.BILINEAR)) for image in images])[..., None]
    views = [images, padded[:, :SIZE, m:m + SIZE], padded[:, 2 * m:, m:m + SIZE],
             padded[:, m:m + SIZE, :SIZE], padded[:, m:m + SIZE, 2 * m:], zoomed]
    views += [view[:, :, ::-1] for view in views]
    outputs = [network(view.astype(np.float32), training=False) for view in views]
    predictor = CNNPredictor(network)
    assert predictor.mirror and predictor.jitter
    np.testing.assert_allclose(
        predictor.predict_proba(images, task="ethnicity"),
        np.mean([np.asarray(output["ethnicity"]) for output in outputs], axis=0), rtol=1e-5)
    ages = np.mean([np.asarray(output["age"])[:, 0] for output in outputs], axis=0)
    np.testing.assert_allclose(predictor.predict(images, task="age"), ages, rtol=1e-5)
    # batches of 2 faces (the views of a batch go through the network together)
    np.testing.assert_allclose(predictor.predict(images, task="age", batch_size=2), ages,
                               rtol=1e-5)
    # a shifted view is the face moved by m pixels, the uncovered edge mirrored
    np.testing.assert_array_equal(views[1][:, m:], images[:, :-m])
    np.testing.assert_array_equal(views[1][:, :m], images[:, m - 1::-1])


ROUND_TRIP = """
import sys
import joblib, numpy as np
predictor = joblib.load(sys.argv[1])
assert "tensorflow" not in sys.modules, "unpickling imported tensorflow"
np.savez(sys.argv[3], **predictor.predict(np.load(sys.argv[2])))
"""


@pytest.mark.slow
def test_saved_predictor_predicts_the_same_in_a_fresh_process(trained, tmp_path):
    predictor = load_model(trained["model_path"])
    images = np.random.default_rng(4).integers(0, 256, (6, SIZE, SIZE, 1), dtype=np.uint8)
    expected = predictor.predict(images)
    np.save(tmp_path / "images.npy", images)
    predictor.save(tmp_path / "cnn.joblib")
    subprocess.run([sys.executable, "-c", ROUND_TRIP, str(tmp_path / "cnn.joblib"),
                    str(tmp_path / "images.npy"), str(tmp_path / "out.npz")],
                   check=True, cwd=Path(cnn.__file__).parents[2], capture_output=True)
    got = np.load(tmp_path / "out.npz")
    reloaded = load_model(tmp_path / "cnn.joblib")
    assert isinstance(reloaded, CNNPredictor) and reloaded.tasks == TASKS and reloaded.mirror
    for task in TASKS:
        np.testing.assert_array_equal(got[task], expected[task])


@pytest.mark.slow
def test_fine_tuning_starts_from_the_saved_weights_and_changes_them(trained, face_dir,
                                                                     tmp_path):
    # a seed baseline (quick to trace) saved untrained stands in for a trained network
    saved = CNNPredictor(build_model("seed_baseline", (BASELINE_SIZE, BASELINE_SIZE, 1), seed=1))
    saved.save(tmp_path / "saved.keras")
    out = tmp_path / "fine_tuned"
    result = train_cnn(face_dir, out, CNNConfig(
        init_from=tmp_path / "saved.keras", tasks=["gender"], epochs=2, freeze_trunk_epochs=1,
        batch_size=16, n_jobs=1, precision="float32"), progress=False)
    assert result["tasks"] == ["gender"] and result["architecture"] == "seed_baseline"
    assert result["size"] == [BASELINE_SIZE, BASELINE_SIZE]
    test_names = json.loads((out / SPLIT_FILE).read_text())["test"]
    before = saved.predict([str(face_dir / name) for name in test_names], task="gender")
    truth = index_folder(face_dir).subset(test_names).gender
    assert result["test_before"]["gender"]["accuracy"] == pytest.approx(np.mean(before == truth))
    assert result["history"]["trunk_frozen"] == [1.0, 0.0]
    original = saved.network
    tuned = load_model(out / CNN_MODEL_FILE).network

    def changed(layer: str) -> bool:
        return not np.array_equal(original.get_layer(layer).get_weights()[0],
                                  tuned.get_layer(layer).get_weights()[0])

    assert changed("gender_dense") and changed("gender")
    # the trunk was frozen in epoch 1, so it changed only if epoch 2 was the best
    assert changed("conv32") == (result["best_epoch"] == 2)
    with pytest.raises(ValueError, match="no head"):
        train_cnn(face_dir, tmp_path / "other",
                  CNNConfig(init_from=out / CNN_MODEL_FILE, tasks=["age"]))
    with pytest.raises(ValueError, match="size"):
        train_cnn(face_dir, tmp_path / "other",
                  CNNConfig(init_from=trained["model_path"], size=(64, 64)))
