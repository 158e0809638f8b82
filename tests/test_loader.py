"""The image loader: formats, colour conversions, resizing modes, crops, rescaling, errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from brevpipe.data.loader import ImageLoader
from brevpipe.data.pipeline import InputPipeline
from brevpipe.errors import ConfigError

RGB = np.random.default_rng(0).integers(0, 255, (20, 40, 3), dtype=np.uint8)
_y, _x = np.mgrid[0:20, 0:40]
SMOOTH = np.dstack([_y * 12, _x * 6, (_x + _y) * 4]).astype(np.uint8)  # JPEG-friendly


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "suffix"), [("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"),
                                             ("TIFF", "tif"), ("TIFF", "TIFF")])  # fmt: skip
def test_formats_decode_inside_tf_data(fmt: str, suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"image.{suffix}"
    path.write_bytes(encoded(SMOOTH, fmt))
    samples = pd.DataFrame({"path": [str(path)], "category": [("x",)]})
    pipe = InputPipeline(samples, ImageLoader(target_size=[20, 40], rescale="none"),
                         output_structure="image")  # fmt: skip
    (image,) = next(pipe.numpy_iterator())
    tolerance = 0 if fmt != "JPEG" else 3
    assert image.shape == (20, 40, 3)
    assert np.abs(image - SMOOTH).mean() <= tolerance


@pytest.mark.parametrize(
    ("array", "mode", "channels"),
    [(RGB[..., 0], "rgb", 3), (np.dstack([RGB, RGB[..., :1]]), "rgb", 3), (RGB, "greyscale", 1)],
    ids=["grey-to-rgb", "rgba-to-rgb", "rgb-to-grey"],
)
def test_channel_counts_are_converted(array: np.ndarray, mode: str, channels: int) -> None:
    loader = ImageLoader(target_size=[8, 8], color_mode=mode)
    assert loader.decode(tf.constant(encoded(array, "PNG"))).shape == (8, 8, channels)


@pytest.mark.parametrize("mode", ["constant", "reflect", "symmetric"])
def test_keep_aspect_ratio_pads_instead_of_stretching(mode: str) -> None:
    loader = ImageLoader(target_size=[32, 32], keep_aspect_ratio=True, padding_mode=mode,
                         rescale="none")  # fmt: skip
    image = loader.decode(tf.constant(encoded(RGB, "PNG"))).numpy()
    assert image.shape == (32, 32, 3)
    stretched = tf.image.resize(RGB, [16, 32], antialias=True).numpy()
    assert np.allclose(image[8:24], stretched, atol=1e-3), "content is resized to 16x32, centred"
    assert (image[:8] == 0).all() == (mode == "constant")
    elongated = np.full((200, 4, 3), 100, np.uint8)
    assert loader.decode(tf.constant(encoded(elongated, "PNG"))).shape == (32, 32, 3)


def test_roi_crops_before_resizing_and_rescale_options() -> None:
    loader = ImageLoader(target_size=[5, 10], roi=[5, 10, 10, 20], rescale="none")
    crop = loader.decode(tf.constant(encoded(RGB, "PNG"))).numpy()
    assert np.array_equal(crop, RGB[5:10, 10:20].astype(np.float32))
    ones = tf.fill([2, 2, 3], 255.0)
    assert ImageLoader(rescale="unit").normalize(ones).numpy().max() == 1.0
    custom = ImageLoader(rescale={"scale": 1 / 127.5, "offset": -1.0}).normalize(ones)
    assert np.allclose(custom.numpy(), 1.0)
    imagenet = ImageLoader(rescale="imagenet").normalize(ones).numpy()[0, 0]
    assert np.allclose(imagenet, (1 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"color_mode": "cmyk"}, "color_mode"), ({"rescale": "minmax"}, "rescale"),
     ({"rescale": {"gain": 2}}, "unknown keys"), ({"padding_mode": "wrap"}, "padding_mode"),
     ({"roi": [10, 0, 5, 5]}, "roi"), ({"target_size": [64]}, "target_size"),
     ({"on_error": "ignore"}, "on_error")],
)  # fmt: skip
def test_bad_loader_options_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ImageLoader(**kwargs)


def test_find_unreadable_names_files_and_reasons(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.tif", tmp_path / "bad.jpg"
    good.write_bytes(encoded(RGB, "TIFF"))
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    found = ImageLoader().find_unreadable([str(good), str(bad), str(tmp_path / "gone.png")])
    assert [url for url, _ in found] == [str(bad), str(tmp_path / "gone.png")]
    assert "Invalid JPEG data" in found[0][1] and "No such file" in found[1][1]
