"""Image loading inside tf.data: read, decode, resize, rescale."""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brevpipe import storage
from brevpipe.errors import ConfigError, DataError

RESCALES = ("none", "unit", "imagenet")
COLOR_MODES = {"rgb": 3, "greyscale": 1, "grayscale": 1}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _clean_tf_message(message: str) -> str:
    """The readable part of a TensorFlow op error (no node names, no ``[Op:...]``)."""
    message = re.sub(r"\{\{.*?\}\}", "", message.strip().splitlines()[0])
    return re.sub(r"\s*\[Op:\w+\]", "", message).strip() or "cannot decode"


@dataclass
class ImageLoader:
    """Turns a path tensor into a float32 image tensor of ``target_size`` (height, width).

    Local files are read with ``tf.io.read_file``; other URLs (``s3://``, ``memory://``) through
    fsspec. ``on_error``: ``raise`` names the unreadable files; ``skip`` drops them (see
    :meth:`find_unreadable`) and the pipeline counts them in output.json.
    """

    target_size: Sequence[int] = field(default_factory=lambda: [64, 64])
    color_mode: str = "rgb"
    rescale: str = "unit"
    antialias: bool = True
    on_error: str = "raise"

    def __post_init__(self) -> None:
        if self.color_mode not in COLOR_MODES:
            raise ConfigError(f"loader.color_mode={self.color_mode!r}: use rgb or greyscale.")
        if self.rescale not in RESCALES:
            raise ConfigError(f"loader.rescale={self.rescale!r}: use one of {RESCALES}.")
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"loader.on_error={self.on_error!r}: use raise or skip.")
        if len(self.target_size) != 2 or min(self.target_size) < 1:
            raise ConfigError(f"loader.target_size={list(self.target_size)}: use [height, width].")
        self.target_size = [int(s) for s in self.target_size]

    @property
    def channels(self) -> int:
        return COLOR_MODES[self.color_mode]

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (*self.target_size, self.channels)

    def metadata(self) -> dict[str, Any]:
        return {
            "target_size": list(self.target_size),
            "color_mode": self.color_mode,
            "rescale": self.rescale,
            "antialias": self.antialias,
        }

    # -- tf graph functions -----------------------------------------------------------------
    def read(self, path: Any, local: bool) -> Any:
        """Encoded bytes of one image (fsspec for remote URLs; see :meth:`read_many`)."""
        import tensorflow as tf

        if local:
            return tf.io.read_file(path)
        data = tf.py_function(
            lambda p: storage.read_bytes(p.numpy().decode()), [path], Tout=tf.string
        )
        data.set_shape([])
        return data

    @staticmethod
    def read_many(paths: Any) -> Any:
        """Encoded bytes of a batch of URLs, fetched concurrently in one fsspec call."""
        import tensorflow as tf

        def fetch(urls: np.ndarray) -> np.ndarray:
            names = [u.decode() for u in urls]
            fs, _ = storage.get_fs(names[0])
            keys = [storage.get_fs(name)[1] for name in names]
            contents = fs.cat(keys, on_error="return")
            for name, key in zip(names, keys, strict=True):
                if isinstance(contents.get(key), BaseException):
                    raise DataError(f"cannot read image {name}: {contents[key]}")
            return np.array([contents[key] for key in keys], dtype=object)

        data = tf.numpy_function(fetch, [paths], tf.string, stateful=False)
        data.set_shape(paths.shape)
        return data

    def decode(self, data: Any) -> Any:
        """Encoded bytes -> float32 image in [0, 255] of ``output_shape`` (not rescaled)."""
        import tensorflow as tf

        image = tf.io.decode_image(data, channels=self.channels, expand_animations=False)
        image = tf.image.resize(image, self.target_size, antialias=self.antialias)
        image.set_shape(self.output_shape)
        return image

    def normalize(self, image: Any) -> Any:
        """Apply ``rescale`` to a float32 image in [0, 255]."""
        import tensorflow as tf

        if self.rescale == "unit":
            return image / 255.0
        if self.rescale == "imagenet":
            mean = tf.constant(_IMAGENET_MEAN if self.channels == 3 else [0.449])
            std = tf.constant(_IMAGENET_STD if self.channels == 3 else [0.226])
            return (image / 255.0 - mean) / std
        return image

    def load(self, path: Any, local: bool = True) -> Any:
        """Path -> decoded, resized and rescaled image."""
        return self.normalize(self.decode(self.read(path, local)))

    # -- error handling ---------------------------------------------------------------------
    def find_unreadable(self, paths: Sequence[str]) -> list[tuple[str, str]]:
        """``(url, reason)`` for each image that cannot be read and decoded."""
        import tensorflow as tf

        def check(path: str) -> tuple[str, str] | None:
            try:
                data = storage.read_bytes(path)
                tf.io.decode_image(data, channels=self.channels, expand_animations=False)
                return None
            except Exception as exc:  # noqa: BLE001 - any failure makes the image unusable
                reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                return path, _clean_tf_message(reason)

        with ThreadPoolExecutor(max_workers=8) as pool:
            return [r for r in pool.map(check, paths) if r is not None]

    def unreadable_error(self, bad: list[tuple[str, str]]) -> DataError:
        listing = "; ".join(f"{url} ({reason})" for url, reason in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        return DataError(
            f"{len(bad)} image(s) cannot be decoded: {listing}{more}. Fix or remove them, or set "
            "loader.on_error=skip to leave them out (they are counted in output.json)."
        )
