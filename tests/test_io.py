"""Image loading: every Pillow mode, EXIF orientation, and bad files skipped and reported."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from features import io as image_io
from features.io import (ImageLoadError, image_from_array, load_image, load_images,
                         map_image_chunks)
from features.loader import ImageLoader


def gradient_rgb(height: int = 60, width: int = 40) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows * 4, cols * 6, (rows + cols) * 2], axis=-1).astype(np.uint8)


@pytest.fixture
def bad_files(tmp_path) -> dict[str, str]:
    good = tmp_path / "good.png"
    Image.fromarray(gradient_rgb()).save(good)
    truncated = tmp_path / "truncated.jpg"
    buffer = io.BytesIO()
    Image.fromarray(gradient_rgb(200, 200)).save(buffer, "JPEG")
    truncated.write_bytes(buffer.getvalue()[:600])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("not an image at all")
    return {"good": str(good), "truncated": str(truncated), "empty": str(empty),
            "text": str(text), "missing": str(tmp_path / "missing.jpg")}


def test_real_face_gray_and_rgb(face_paths) -> None:
    gray = load_image(face_paths[0])
    rgb = load_image(face_paths[0], size=(64, 48), color="rgb")
    assert gray.shape == (128, 128, 1) and gray.dtype == np.uint8
    assert rgb.shape == (64, 48, 3) and rgb.dtype == np.uint8
    expected = Image.open(face_paths[0]).convert("L").resize((128, 128), Image.LANCZOS)
    np.testing.assert_array_equal(gray[..., 0], np.asarray(expected))


@pytest.mark.parametrize("reason,name", [("truncated", "truncated"), ("empty file", "empty"),
                                         ("not an image", "text"), ("no such file", "missing")])
def test_bad_file_error_names_file_and_cause(bad_files, reason, name) -> None:
    with pytest.raises(ImageLoadError, match=reason) as error:
        load_image(bad_files[name])
    assert bad_files[name] in str(error.value)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_batch_skips_and_reports_bad_files_keeping_order(bad_files, caplog, n_jobs) -> None:
    order = ["good", "truncated", "good", "empty", "text", "good", "missing"]
    with caplog.at_level(logging.WARNING):
        report = load_images([bad_files[name] for name in order], size=(32, 32),
                             n_jobs=n_jobs, progress=False)
    assert report.kept.tolist() == [0, 2, 5]
    assert report.images.shape == (3, 32, 32, 1)
    assert [path for path, _ in report.failures] == [
        bad_files[name] for name in ("truncated", "empty", "text", "missing")]
    assert "skipped 4 of 7 images" in caplog.text


def test_rows_of_chunks_stay_aligned_with_their_files(bad_files, face_paths) -> None:
    """Chunks of two files, one wholly unreadable and the last ending on a bad file:
    every transformed row is the one of its own file."""
    paths = [face_paths[0], bad_files["text"], bad_files["empty"], bad_files["missing"],
             face_paths[1], face_paths[2], face_paths[3], bad_files["truncated"]]
    report = map_image_chunks(paths, size=(24, 24), transform=lambda batch: batch.reshape(
        len(batch), -1).astype(np.float32), chunk_size=2, progress=False)
    assert report.kept.tolist() == [0, 4, 5, 6]
    expected = np.stack([load_image(paths[i], size=(24, 24)).ravel() for i in report.kept])
    np.testing.assert_array_equal(report.images, expected.astype(np.float32))


def test_all_bad_gives_empty_batch(bad_files) -> None:
    report = load_images([bad_files["text"]], size=(16, 16), progress=False)
    assert report.images.shape == (0, 16, 16, 1) and len(report.failures) == 1


def save(image: Image.Image, tmp_path, name: str, **options) -> str:
    path = tmp_path / name
    image.save(path, **options)
    return str(path)


def test_every_mode_gives_the_same_shape(tmp_path) -> None:
    rgb = Image.fromarray(gradient_rgb())
    rgba = rgb.copy()
    rgba.putalpha(128)
    sixteen = Image.fromarray((np.arange(60 * 40).reshape(60, 40) * 27).astype(np.uint16))
    files = [save(rgb, tmp_path, "rgb.jpg"), save(rgba, tmp_path, "rgba.png"),
             save(rgb.convert("P"), tmp_path, "p.png"), save(rgb.convert("CMYK"), tmp_path,
                                                             "cmyk.jpg"),
             save(rgb.convert("L"), tmp_path, "l.png"), save(rgb.convert("1"), tmp_path, "1.png"),
             save(sixteen, tmp_path, "sixteen.png"), save(rgb.convert("LA"), tmp_path, "la.png")]
    for color, channels in (("gray", 1), ("rgb", 3)):
        report = load_images(files, size=(20, 30), color=color, progress=False)
        assert not report.failures
        assert report.images.shape == (len(files), 20, 30, channels)


def test_16_bit_is_scaled_not_clipped(tmp_path) -> None:
    values = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = save(Image.fromarray(values), tmp_path, "sixteen.png")
    image = load_image(path, size=(32, 32))[..., 0]
    np.testing.assert_array_equal(image, np.rint(values / 257).astype(np.uint8))


def test_transparency_is_composited_on_white(tmp_path) -> None:
    transparent = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    image = load_image(save(transparent, tmp_path, "clear.png"), size=(16, 16))
    assert (image == 255).all()


def test_exif_orientation_is_applied(tmp_path) -> None:
    pixels = np.zeros((20, 40), np.uint8)
    pixels[:, :20] = 255  # bright left half, landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(Image.fromarray(pixels), tmp_path, "rotated.jpg", exif=exif, quality=95)
    image = load_image(path, size=(40, 20))[..., 0]  # displayed portrait: 40 rows, 20 cols
    assert image[:15].mean() > 200 and image[-15:].mean() < 50


def test_decompression_bomb_is_refused(tmp_path, monkeypatch) -> None:
    path = save(Image.new("L", (100, 100)), tmp_path, "big.png")
    monkeypatch.setattr(image_io, "MAX_PIXELS", 5000)
    with pytest.raises(ImageLoadError, match="decompression bomb") as error:
        load_image(path)
    assert "100x100" in str(error.value) and path in str(error.value)


def test_argument_validation() -> None:
    with pytest.raises(ValueError, match="color"):
        load_image("x.jpg", color="cmyk")
    with pytest.raises(ValueError, match="size"):
        load_image("x.jpg", size=(0, 5))


def test_loader_accepts_paths_and_arrays_identically(face_paths) -> None:
    loader = ImageLoader()
    from_paths = loader.transform(face_paths[:3])
    originals = [np.asarray(Image.open(path)) for path in face_paths[:3]]
    np.testing.assert_array_equal(loader.transform(originals), from_paths)
    np.testing.assert_array_equal(loader.transform(from_paths), from_paths)
    np.testing.assert_array_equal(loader.transform(face_paths[0]), from_paths[:1])
    assert ImageLoader(size=(32, 32), color="rgb").transform(from_paths).shape == (3, 32, 32, 3)


def test_loader_raises_on_bad_file_and_bad_array(bad_files) -> None:
    with pytest.raises(ImageLoadError, match="truncated.jpg"):
        ImageLoader().transform([bad_files["good"], bad_files["truncated"]])
    with pytest.raises(ValueError, match="uint8"):
        image_from_array(np.zeros((8, 8), np.float64))


def test_animation_is_refused_with_its_frame_count(tmp_path) -> None:
    frames = [Image.new("L", (20, 20), value) for value in (0, 255)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(ImageLoadError, match=r"animated or multi-frame GIF image \(2 frames\)"):
        load_image(path)
