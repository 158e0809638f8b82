"""Decoding and resizing one image in TensorFlow graph functions, which :class:`ImageLoader`
uses with its settings (:mod:`brevpipe.data.loader`), and the text of a decode error."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_RATIOS = (8, 4, 2)  # libjpeg's DCT-domain downscales that decode_jpeg offers


def error_text(message: str) -> str:
    """The readable part of a TensorFlow op error (no node names, no ``[Op:...]``)."""
    message = re.sub(r"\{\{.*?\}\}|\s*\[Op:[^\]]*\]", "", message)
    # graph errors put the op's message, after its status code, below a trace of the caller
    coded = re.search(r"\b(?:INVALID_ARGUMENT|DATA_LOSS|NOT_FOUND|UNKNOWN|INTERNAL|"
                      r"OUT_OF_RANGE|FAILED_PRECONDITION): (.+)", message)  # fmt: skip
    if coded:
        return coded.group(1).strip()
    first = message.strip().splitlines()[0].strip() if message.strip() else ""
    return "cannot decode" if not first or first.startswith("Graph execution") else first


# JPEG frame headers (SOF0-SOF15 but DHT, JPG and DAC, which share the range): height, width
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(path: str) -> tuple[int, int] | None:
    """[height, width] from a JPEG file's frame header, as ``tf.io.extract_jpeg_shape`` reads
    it; None for a file that is not a JPEG or whose header cannot be read."""
    with open(path, "rb") as f:
        if f.read(3) != JPEG_MAGIC:
            return None
        f.seek(2)
        while True:
            marker = f.read(2)
            while len(marker) == 2 and marker[0] == 0xFF and marker[1] == 0xFF:
                marker = marker[1:] + f.read(1)  # fill bytes before a marker
            if len(marker) < 2 or marker[0] != 0xFF or marker[1] == 0xDA:
                return None  # not a marker, or the scan starts before any frame header
            if marker[1] == 0x01 or 0xD0 <= marker[1] <= 0xD8:
                continue  # markers without a length
            length = int.from_bytes(f.read(2), "big")
            if marker[1] in _SOF:
                header = f.read(5)
                height, width = (int.from_bytes(header[i:i + 2], "big") for i in (1, 3))
                return (height, width) if len(header) == 5 and height and width else None
            if length < 2:
                return None
            f.seek(length - 2, 1)


def scale_index_of(size: Sequence[int], wanted: Sequence[int]) -> int:
    """:func:`jpeg_scale_index` in Python, for sizes known before decoding."""
    return sum((size[0] + r - 1) // r >= wanted[0] and (size[1] + r - 1) // r >= wanted[1]
               for r in sorted(JPEG_RATIOS))  # fmt: skip


def one_jpeg_ratio(paths: Sequence[str], wanted: Sequence[int]) -> tuple[int, bool] | None:
    """``(ratio, whether every file decodes at exactly wanted)`` when every local file of
    ``paths`` is a JPEG that takes the same ratio for ``wanted`` [height, width]; else None."""
    sizes = {jpeg_size(path) for path in paths}
    if not sizes or None in sizes:
        return None
    indices = {scale_index_of(size, wanted) for size in sizes}
    if len(indices) != 1:
        return None
    ratio = 2 ** indices.pop()
    decoded = {(-(-height // ratio), -(-width // ratio)) for height, width in sizes}
    return ratio, decoded == {tuple(wanted)}


def is_jpeg(data: Any) -> Any:
    """Whether encoded bytes start as a JPEG does (bool tensor)."""
    import tensorflow as tf

    return tf.strings.substr(data, 0, 3) == JPEG_MAGIC


def decode_source(data: Any, channels: int) -> Any:
    """Encoded bytes -> uint8 image at the file's own size with ``channels``: PNG, JPEG, BMP
    and GIF in TensorFlow, TIFF through Pillow."""
    import tensorflow as tf

    is_tiff = tf.reduce_any([tf.strings.substr(data, 0, 4) == magic for magic in TIFF_MAGIC])
    image = tf.cond(
        is_tiff,
        lambda: decode_with_pillow(data, channels),
        lambda: tf.io.decode_image(data, channels=channels, expand_animations=False),
    )
    image.set_shape([None, None, channels])
    return image


def decode_with_pillow(data: Any, channels: int) -> Any:
    import tensorflow as tf

    mode = "RGB" if channels == 3 else "L"

    def decode(raw: Any) -> np.ndarray:

        raw = raw if isinstance(raw, bytes) else raw.item()  # a 0-d array in eager mode
        with Image.open(io.BytesIO(raw)) as picture:
            array = np.asarray(picture.convert(mode), dtype=np.uint8)
        return array.reshape(*array.shape[:2], channels)

    return tf.numpy_function(decode, [data], tf.uint8, stateful=False)


def jpeg_scale_index(size: Any, wanted: Any) -> Any:
    """How many of the ratios 2, 4, 8 keep a JPEG of ``size`` [height, width] at least
    ``wanted`` [height, width] (int32 tensor; the ratio is 2 to that power)."""
    import tensorflow as tf

    height, width = size[0], size[1]
    fitting = [
        tf.logical_and((height + r - 1) // r >= wanted[0], (width + r - 1) // r >= wanted[1])
        for r in sorted(JPEG_RATIOS)
    ]  # if a ratio fits, the smaller ones do too
    return tf.add_n([tf.cast(f, tf.int32) for f in fitting])


def decode_jpeg_reduced(data: Any, channels: int, scale_index: Any) -> Any:
    """A JPEG decoded at 1 / 2**``scale_index`` of its size, scaled by libjpeg."""
    import tensorflow as tf

    ratios = (1, *sorted(JPEG_RATIOS))
    branches = [lambda r=r: tf.io.decode_jpeg(data, channels=channels, ratio=r) for r in ratios]
    return tf.switch_case(scale_index, branches)


def fitted_size(size: Any, target_size: Sequence[int]) -> Any:
    """[height, width] that an image of ``size`` gets inside ``target_size`` keeping its
    aspect ratio: tf.image.resize's own rule for ``preserve_aspect_ratio``."""
    import tensorflow as tf

    height, width = tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)
    scale = tf.minimum(target_size[0] / height, target_size[1] / width)
    return tf.cast(tf.round(tf.stack([scale * height, scale * width])), tf.int32)


def resize_to(image: Any, size: Any, antialias: bool) -> Any:
    """Bilinear resize to ``size``; an image already of that size (a JPEG decoded at reduced
    size often is) is only converted: the antialias kernel costs as much as the decode even
    when it has nothing to do."""
    import tensorflow as tf

    if not antialias:
        return tf.image.resize(image, size)
    return tf.cond(
        tf.reduce_all(tf.shape(image)[:2] == size),
        lambda: tf.cast(image, tf.float32),
        lambda: tf.image.resize(image, size, antialias=True),
    )


def pad_to(image: Any, target_size: Sequence[int], padding_mode: str) -> Any:
    """Pad an image that fits inside ``target_size`` to it, centred (``padding_mode``:
    constant, reflect or symmetric)."""
    import tensorflow as tf

    height, width = target_size
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    top, left = (height - h) // 2, (width - w) // 2
    paddings = [[top, height - h - top], [left, width - w - left], [0, 0]]
    if padding_mode == "constant":
        return tf.pad(image, paddings)
    # reflect/symmetric can mirror at most the image's own size (less one for reflect);
    # an extremely elongated image gets the rest as zeros
    limit_h = h - 1 if padding_mode == "reflect" else h
    limit_w = w - 1 if padding_mode == "reflect" else w
    mirrored = [
        [tf.minimum(top, limit_h), tf.minimum(height - h - top, limit_h)],
        [tf.minimum(left, limit_w), tf.minimum(width - w - left, limit_w)],
        [0, 0],
    ]
    image = tf.pad(image, mirrored, mode=padding_mode.upper())
    rest_h, rest_w = height - tf.shape(image)[0], width - tf.shape(image)[1]
    return tf.pad(image, [[rest_h // 2, rest_h - rest_h // 2],
                          [rest_w // 2, rest_w - rest_w // 2], [0, 0]])  # fmt: skip
