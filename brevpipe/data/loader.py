"""Image loading inside tf.data: read, decode, resize, rescale."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

from brevpipe.data import decode
from brevpipe.data.decode import JPEG_RATIOS
from brevpipe.errors import ConfigError, DataError

RESCALES = ("none", "unit", "imagenet")
PADDING_MODES = ("constant", "reflect", "symmetric")
# what records written before a setting existed imply (model.json, output.json): they still
# decode, predict and rerun exactly as they were trained
LEGACY_SETTINGS = {"reduced_jpeg_decode": False}
COLOR_MODES = {"rgb": 3, "greyscale": 1, "grayscale": 1}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageLoader:
    """Turns a path tensor into a float32 image tensor of ``target_size`` (height, width).

    tf.data reads local files with ``tf.io.read_file``; the input pipeline copies remote URLs
    (``s3://``, ``memory://``) to local disk first. ``on_error``: ``raise`` names the
    unreadable files; ``skip`` drops them (see :meth:`find_unreadable`) and the pipeline counts
    them in output.json.

    Settings:
    ``target_size``: [height, width] of the images the model gets
    ``color_mode``: rgb or greyscale (grey, RGB and RGBA files are converted)
    ``rescale``: none, unit (0..1), imagenet, or {scale, offset} (x * scale + offset)
    ``antialias``: low-pass filter when shrinking (quality) or not (speed)
    ``keep_aspect_ratio``: fit inside target_size without distortion, then pad
    ``padding_mode``: constant (zeros), reflect or symmetric
    ``roi``: crop [top, left, bottom, right] in source pixels before resizing
    ``on_error``: raise (names the unreadable files) or skip (counted in output.json)
    ``reduced_jpeg_decode``: decode JPEGs at 1/2, 1/4 or 1/8 size (libjpeg's DCT scaling:
    faster, already low-pass filtered) when that keeps them at least target_size; no roi
    """

    LEGACY_SETTINGS: ClassVar[dict[str, Any]] = LEGACY_SETTINGS  # what a rerun fills in
    target_size: Sequence[int] = field(default_factory=lambda: [64, 64])
    color_mode: str = "rgb"
    rescale: str | Mapping[str, float] = "unit"
    antialias: bool = True
    keep_aspect_ratio: bool = False
    padding_mode: str = "constant"
    roi: Sequence[int] | None = None
    on_error: str = "raise"
    reduced_jpeg_decode: bool = True

    @classmethod
    def from_record(cls, settings: Mapping[str, Any]) -> ImageLoader:
        """The loader a model.json or output.json records; settings it predates take the
        value that reproduces it (:data:`LEGACY_SETTINGS`)."""
        return cls(**{**LEGACY_SETTINGS, **settings})

    def __post_init__(self) -> None:
        if self.color_mode not in COLOR_MODES:
            raise ConfigError(f"loader.color_mode={self.color_mode!r}: use rgb or greyscale.")
        if isinstance(self.rescale, Mapping):
            unknown = set(self.rescale) - {"scale", "offset"}
            if unknown:
                raise ConfigError(f"loader.rescale: unknown keys {sorted(unknown)}; use "
                                  "{scale: ..., offset: ...}.")  # fmt: skip
            self.rescale = {"scale": float(self.rescale.get("scale", 1.0)),
                            "offset": float(self.rescale.get("offset", 0.0))}  # fmt: skip
        elif self.rescale not in RESCALES:
            raise ConfigError(
                f"loader.rescale={self.rescale!r}: use one of {RESCALES} or {{scale, offset}}."
            )
        if self.padding_mode not in PADDING_MODES:
            raise ConfigError(
                f"loader.padding_mode={self.padding_mode!r}: use one of {PADDING_MODES}."
            )
        if self.roi is not None:
            if len(self.roi) != 4 or not (self.roi[0] < self.roi[2] and self.roi[1] < self.roi[3]):
                raise ConfigError(
                    f"loader.roi={list(self.roi)}: use [top, left, bottom, right] in pixels."
                )
            self.roi = [int(v) for v in self.roi]
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
            "keep_aspect_ratio": self.keep_aspect_ratio,
            "padding_mode": self.padding_mode,
            "roi": self.roi,
            "reduced_jpeg_decode": self.reduced_jpeg_decode,
        }

    def rescale_numbers(self) -> tuple[list[float], list[float]]:
        """``rescale`` as per-channel ``(scale, offset)``: the image is ``x * scale + offset``
        for x in [0, 255] (imagenet: ``(x / 255 - mean) / std`` folded into the two)."""
        channels = self.channels
        if isinstance(self.rescale, Mapping):
            return [self.rescale["scale"]] * channels, [self.rescale["offset"]] * channels
        if self.rescale == "unit":
            return [1 / 255] * channels, [0.0] * channels
        if self.rescale == "imagenet":
            mean = _IMAGENET_MEAN if channels == 3 else (0.449,)
            std = _IMAGENET_STD if channels == 3 else (0.226,)
            return ([1 / (255 * s) for s in std], [-m / s for m, s in zip(mean, std, strict=True)])
        return [1.0] * channels, [0.0] * channels

    def recipe(self) -> dict[str, Any]:
        """The preprocessing as numbers and TensorFlow calls, for model.json: enough to score
        the exported model with TensorFlow alone (see docs/serving.md's plain-TensorFlow script)."""
        scale, offset = self.rescale_numbers()
        jpeg = {
            "op": "tf.io.decode_jpeg",
            "ratios": list(JPEG_RATIOS) if self.reduces_jpeg else [],
            "rule": "files starting with FF D8 FF: the largest of ratios r with ceil(height / r) "
            ">= the resized height and ceil(width / r) >= the resized width (target size, or "
            "the fitted size with keep_aspect_ratio), height and width from "
            "tf.io.extract_jpeg_shape; else r = 1",
        }
        return {
            "decode": {"op": "tf.io.decode_image", "channels": self.channels,
                       "expand_animations": False,
                       "color_order": "RGB" if self.channels == 3 else "grey",
                       "jpeg": jpeg,
                       "tiff": "Pillow, converted to the same channels"},  # fmt: skip
            "crop": {"roi": self.roi},  # [top, left, bottom, right] before resizing, or null
            "resize": {"op": "tf.image.resize", "size": list(self.target_size),
                       "method": "bilinear", "antialias": self.antialias,
                       "keep_aspect_ratio": self.keep_aspect_ratio,
                       "padding_mode": self.padding_mode},  # fmt: skip
            "rescale": {"formula": "x * scale + offset", "scale": scale, "offset": offset},
            "dtype": "float32",
            "layout": "NHWC",
        }

    # -- tf graph functions -----------------------------------------------------------------
    def read(self, path: Any) -> Any:
        """Encoded bytes of one local image file (remote URLs are copied to local disk first,
        outside tf.data: see :mod:`brevpipe.data.mirror`)."""
        import tensorflow as tf

        return tf.io.read_file(path)

    @property
    def reduces_jpeg(self) -> bool:
        """Whether JPEGs decode at reduced size (``reduced_jpeg_decode`` and no ``roi``: a
        crop is given in the file's own pixels)."""
        return bool(self.reduced_jpeg_decode) and self.roi is None

    def decode(self, data: Any) -> Any:
        """Encoded bytes -> float32 image in [0, 255] of ``output_shape`` (not rescaled).

        PNG, JPEG, BMP and GIF decode in TensorFlow; TIFF through Pillow. Grey, RGB and RGBA
        files are converted to ``color_mode``.
        """
        return self.decode_sized(data)[0]

    def decode_sized(self, data: Any) -> tuple[Any, Any]:
        """``(image, source size)``: :meth:`decode`'s image and the file's own [height,
        width], to which a mask of the image belongs."""
        import tensorflow as tf

        if not self.reduces_jpeg:
            source = self.decode_source(data)
            return self.resize(source), tf.shape(source)[:2]

        def jpeg() -> tuple[Any, Any]:
            size = tf.io.extract_jpeg_shape(data)[:2]
            index = self._jpeg_scale_index(size)
            return decode.decode_jpeg_reduced(data, self.channels, index), size

        def other() -> tuple[Any, Any]:
            source = self.decode_source(data)
            return source, tf.shape(source)[:2]

        image, size = tf.cond(decode.is_jpeg(data), jpeg, other)
        image.set_shape([None, None, self.channels])
        return self.resize(image, size), size

    def decoder_for(self, paths: Sequence[str]) -> Callable[[Any], tuple[Any, Any]]:
        """The :meth:`decode_sized` of these local files. When every one is a JPEG that takes
        the same reduced-size ratio (headers read here), the ratio is fixed in the graph: no
        per-image branch, and no resize where the decoded size is already the target size.
        Same bytes as :meth:`decode_sized`, at a fraction of its per-image cost."""
        import tensorflow as tf

        plan = self._jpeg_plan(paths)
        if plan is None:
            return self.decode_sized
        ratio, at_target_size = plan

        def decode_known_jpeg(data: Any) -> tuple[Any, Any]:
            image = tf.io.decode_jpeg(data, channels=self.channels, ratio=ratio)
            size = tf.io.extract_jpeg_shape(data)[:2]
            if not at_target_size:
                return self.resize(image, size), size
            image = tf.cast(image, tf.float32)  # what resize does at the target size
            image.set_shape(self.output_shape)
            return image, size

        return decode_known_jpeg

    def _jpeg_plan(self, paths: Sequence[str]) -> tuple[int, bool] | None:
        """:func:`~brevpipe.data.decode.one_jpeg_ratio` where it applies (the aspect-keeping
        fit is computed in TF); without antialias, resize runs even at the target size."""
        if not self.reduces_jpeg or self.keep_aspect_ratio:
            return None
        plan = decode.one_jpeg_ratio(paths, self.target_size)
        return plan and (plan[0], plan[1] and self.antialias)

    def jpeg_ratio(self, size: Any) -> Any:
        """The largest of :data:`JPEG_RATIOS` (else 1) that keeps a JPEG of ``size`` [height,
        width] at least the size :meth:`resize` makes of it; int32 tensor."""
        return 2 ** self._jpeg_scale_index(size)

    def _jpeg_scale_index(self, size: Any) -> Any:
        """log2 of :meth:`jpeg_ratio`: how many of the ratios 2, 4, 8 fit."""
        import tensorflow as tf

        wanted = self.fitted_size(size) if self.keep_aspect_ratio else tf.constant(
            self.target_size, tf.int32)  # fmt: skip
        return decode.jpeg_scale_index(size, wanted)

    def decode_source(self, data: Any) -> Any:
        """Encoded bytes -> uint8 image at the file's own size and ``channels``."""
        return decode.decode_source(data, self.channels)

    def fitted_size(self, size: Any) -> Any:
        """[height, width] that an image of ``size`` gets inside ``target_size`` keeping its
        aspect ratio (tf.image.resize's rule)."""
        return decode.fitted_size(size, self.target_size)

    def resize(self, image: Any, source_size: Any = None) -> Any:
        """Crop to ``roi``, then resize (and pad) to ``target_size``: float32 in [0, 255].
        ``source_size``: the file's own [height, width] when ``image`` was decoded smaller
        (the aspect-keeping fit is computed from it, as for its mask)."""
        import tensorflow as tf

        if self.roi is not None:
            top, left, bottom, right = self.roi
            image = image[top:bottom, left:right]
        if self.keep_aspect_ratio:
            size = tf.shape(image)[:2] if source_size is None or self.roi is not None \
                else source_size  # fmt: skip
            image = decode.resize_to(image, self.fitted_size(size), self.antialias)
            image = decode.pad_to(image, self.target_size, self.padding_mode)
        else:
            size = tf.constant(self.target_size, tf.int32)
            image = decode.resize_to(image, size, self.antialias)
        image.set_shape(self.output_shape)
        return image

    def resize_mask(self, mask: Any) -> Any:
        """The geometry of :meth:`resize` for an int32 class mask: nearest neighbour, pads 0."""
        import tensorflow as tf

        if self.roi is not None:
            top, left, bottom, right = self.roi
            mask = mask[top:bottom, left:right]
        nearest = tf.image.ResizeMethod.NEAREST_NEIGHBOR
        if self.keep_aspect_ratio:
            mask = tf.image.resize(mask, self.fitted_size(tf.shape(mask)[:2]), nearest)
            mask = decode.pad_to(mask, self.target_size, "constant")
        else:
            mask = tf.image.resize(mask, self.target_size, nearest)
        mask = tf.cast(mask, tf.int32)
        mask.set_shape([*self.target_size, 1])
        return mask

    def normalize(self, image: Any) -> Any:
        """Apply ``rescale`` to a float32 image in [0, 255]: ``x * scale + offset`` with the
        per-channel numbers that model.json records (:meth:`rescale_numbers`)."""
        import tensorflow as tf

        if self.rescale == "none":
            return image
        scale, offset = self.rescale_numbers()
        # a scalar where all channels agree: broadcasting a per-channel vector costs more
        # than the decode (same numbers either way)
        image = image * tf.constant(scale[0] if len(set(scale)) == 1 else scale, tf.float32)
        if any(offset):
            image = image + tf.constant(offset[0] if len(set(offset)) == 1 else offset, tf.float32)
        return image

    def load(self, path: Any) -> Any:
        """Local path -> decoded, resized and rescaled image."""
        return self.normalize(self.decode(self.read(path)))

    # -- error handling ---------------------------------------------------------------------
    def find_unreadable(
        self, paths: Sequence[str], etags: Sequence[str | None] | None = None
    ) -> list[tuple[str, str]]:
        """``(url, reason)`` for each image that cannot be read and decoded (remote ones are
        checked on their local copies; ``etags`` as in the sample table)."""
        import tensorflow as tf

        from brevpipe.data.mirror import local_copies

        def check(pair: tuple[str, str]) -> tuple[str, str] | None:
            url, local = pair
            try:
                with open(local, "rb") as f:
                    self.decode(tf.constant(f.read()))
                return None
            except Exception as exc:  # noqa: BLE001 - any failure makes the image unusable
                reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                return url, decode.error_text(reason)

        missing: dict[str, str] = {}  # remote files that cannot be read at all
        pairs = list(zip(paths, local_copies(paths, etags, failures=missing), strict=True))
        pairs = [(url, local) for url, local in pairs if url not in missing]
        with ThreadPoolExecutor(max_workers=8) as pool:
            found = [r for r in pool.map(check, pairs) if r is not None]
        return [*missing.items(), *found]

    def unreadable_error(self, bad: list[tuple[str, str]]) -> DataError:
        listing = "; ".join(f"{url} ({reason})" for url, reason in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        return DataError(
            f"{len(bad)} image(s) cannot be decoded: {listing}{more}. Fix or remove them, or set "
            "loader.on_error=skip to leave them out (they are counted in output.json)."
        )
