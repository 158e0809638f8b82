"""Augmenters: seeded per sample, so parallel maps give the same result as serial ones.

An augmenter is called inside tf.data as ``augmenter(image, seed, mask)`` with ``image`` a
float32 tensor in [0, 255], ``seed`` a stateless seed (shape [2], int64) derived from
(root seed, epoch, sample index), and ``mask`` an optional int32 [h, w, 1] tensor that gets
the same spatial transforms (nearest-neighbour). It returns ``(image, mask)``. An augmenter
whose class sets ``batched = True`` is called per batch instead, as ``augment_batch(images,
seeds, masks)`` with the per-sample seeds ``[n, 2]``; each sample's result must not depend on
the batch it is in.
"""

from __future__ import annotations

import math
import queue
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brevpipe.errors import ConfigError


class NoAugmenter:
    """``augmenter=none``."""

    def __call__(self, image: Any, seed: Any, mask: Any = None) -> tuple[Any, Any]:
        return image, mask


def _pair(value: float | Sequence[float], centre: float = 0.0) -> tuple[float, float]:
    """``0.1`` -> ``(centre - 0.1, centre + 0.1)``; ``[a, b]`` -> ``(a, b)``."""
    if isinstance(value, int | float):
        return centre - float(value), centre + float(value)
    low, high = value
    return float(low), float(high)


@dataclass
class TfAugmenter:
    """TensorFlow-native stateless augmentation; every random draw has its own seed.

    ``rotate`` (max degrees), ``scale`` (max relative zoom, or [low, high] factors),
    ``translate`` (max fraction of the size) form one affine transform, applied to image and
    mask together. Colour: ``brightness`` (max delta, 0..1 units), ``contrast``,
    ``saturation`` (max relative change), ``hue`` (max delta, 0..0.5). ``noise``: Gaussian
    standard deviation (0..1 units). ``blur``: probability of a 3x3 Gaussian blur.

    Settings:
    ``flip_horizontal``: flip left-right with probability 0.5
    ``flip_vertical``: flip upside down with probability 0.5
    ``rotate``: max rotation in degrees
    ``translate``: max shift, a fraction of the size
    ``brightness``: max brightness delta (0..1 units)
    ``saturation``: max relative saturation change
    ``noise``: Gaussian noise standard deviation (0..1 units)
    ``blur``: probability of a 3x3 Gaussian blur
    ``scale``: max relative zoom, or [low, high] factors
    ``contrast``: max relative contrast change
    ``hue``: max hue delta (0..0.5)
    ``fill_mode``: how the affine fills the borders (reflect, constant, nearest, wrap)
    """

    flip_horizontal: bool = True
    flip_vertical: bool = False
    rotate: float = 0.0
    scale: float | Sequence[float] = 0.0
    translate: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    noise: float = 0.0
    blur: float = 0.0
    fill_mode: str = "reflect"

    DRAWS = 12  # number of independent seeds split from the sample seed

    def __post_init__(self) -> None:
        if self.fill_mode not in ("reflect", "constant", "nearest", "wrap"):
            raise ConfigError(f"augmenter.fill_mode={self.fill_mode!r}: use reflect, constant, "
                              "nearest or wrap.")  # fmt: skip
        self.scale_range = (
            _pair(self.scale, 1.0) if isinstance(self.scale, int | float) else _pair(self.scale)
        )

    def __call__(self, image: Any, seed: Any, mask: Any = None) -> tuple[Any, Any]:
        import tensorflow as tf

        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), self.DRAWS)
        uniform = lambda k, lo=0.0, hi=1.0: tf.random.stateless_uniform(  # noqa: E731
            [], seeds[k], lo, hi
        )
        if self.flip_horizontal:
            flip = uniform(0) < 0.5
            image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
            if mask is not None:
                mask = tf.cond(flip, lambda: tf.image.flip_left_right(mask), lambda: mask)
        if self.flip_vertical:
            flip = uniform(1) < 0.5
            image = tf.cond(flip, lambda: tf.image.flip_up_down(image), lambda: image)
            if mask is not None:
                mask = tf.cond(flip, lambda: tf.image.flip_up_down(mask), lambda: mask)
        if self.rotate or self.scale_range != (1.0, 1.0) or self.translate:
            angle = uniform(2, -self.rotate, self.rotate) * math.pi / 180.0
            zoom = uniform(3, *self.scale_range)
            shift = tf.stack([uniform(4, -self.translate, self.translate),
                              uniform(5, -self.translate, self.translate)])  # fmt: skip
            image, mask = self._affine(image, mask, angle, zoom, shift)
        image = image / 255.0
        if self.brightness:
            image = image + uniform(6, -self.brightness, self.brightness)
        if self.contrast:
            image = tf.image.adjust_contrast(
                image, uniform(7, 1 - self.contrast, 1 + self.contrast)
            )
        if image.shape[-1] == 3:
            if self.saturation:
                factor = uniform(8, 1 - self.saturation, 1 + self.saturation)
                image = tf.image.adjust_saturation(image, factor)
            if self.hue:
                image = tf.image.adjust_hue(image, uniform(9, -self.hue, self.hue))
        if self.noise:
            image = image + tf.random.stateless_normal(tf.shape(image), seeds[10], 0.0, self.noise)
        if self.blur:
            image = tf.cond(uniform(11) < self.blur, lambda: _blur3(image), lambda: image)
        return tf.clip_by_value(image, 0.0, 1.0) * 255.0, mask

    def _affine(self, image: Any, mask: Any, angle: Any, zoom: Any, shift: Any) -> tuple[Any, Any]:
        """Rotate by ``angle`` and zoom by ``zoom`` about the centre, then shift."""
        import tensorflow as tf

        h = tf.cast(tf.shape(image)[0], tf.float32)
        w = tf.cast(tf.shape(image)[1], tf.float32)
        cx, cy = (w - 1) / 2, (h - 1) / 2
        cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
        # output (x, y) -> input (a0 x + a1 y + a2, b0 x + b1 y + b2): the inverse mapping
        tx, ty = shift[0] * w, shift[1] * h
        a2 = cx - cos * (cx + tx) + sin * (cy + ty)
        b2 = cy - sin * (cx + tx) - cos * (cy + ty)
        transform = tf.stack([cos, -sin, a2, sin, cos, b2, 0.0, 0.0])[tf.newaxis]
        size = tf.shape(image)[:2]

        def apply(x: Any, interpolation: str) -> Any:
            out = tf.raw_ops.ImageProjectiveTransformV3(
                images=tf.cast(x, tf.float32)[tf.newaxis], transforms=transform,
                output_shape=size, fill_value=0.0, interpolation=interpolation,
                fill_mode=self.fill_mode.upper(),
            )[0]  # fmt: skip
            return tf.cast(out, x.dtype)

        return apply(image, "BILINEAR"), None if mask is None else apply(mask, "NEAREST")


def _blur3(image: Any) -> Any:
    import tensorflow as tf

    kernel = tf.constant([1.0, 2.0, 1.0])
    kernel = tf.tensordot(kernel, kernel, axes=0) / 16.0
    channels = image.shape[-1]
    kernel = tf.tile(kernel[:, :, tf.newaxis, tf.newaxis], [1, 1, channels, 1])
    padded = tf.pad(image[tf.newaxis], [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    return tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")[0]


def _reseed(part: Any, state: int, increment: int) -> None:
    """Seed an albumentations transform's generators in place: what ``set_random_seed`` does,
    without its cost (~0.1 ms per transform and sample, more than some transforms take)."""
    generator = getattr(part, "random_generator", None)
    py_random = getattr(part, "py_random", None)
    pcg = isinstance(getattr(generator, "bit_generator", None), np.random.PCG64)
    if not pcg or py_random is None:
        part.set_random_seed(state & 0xFFFFFFFF)
        return
    generator.bit_generator.state = {
        "bit_generator": "PCG64", "state": {"state": state, "inc": increment | 1},
        "has_uint32": 0, "uinteger": 0,
    }  # fmt: skip
    py_random.seed(state)


@dataclass
class AlbumentationsAugmenter:
    """Any albumentations pipeline, declared as a list of ``{name: Transform, **params}``.

    The input pipeline calls it once per batch (:meth:`augment_batch`, one
    ``tf.numpy_function`` per batch, not per image); each call borrows a ``Compose`` from a
    pool (one per concurrent call) and, before each sample, re-seeds every transform with its
    own seed derived from the sample seed, so results do not depend on batching or thread
    scheduling and draws of different transforms are not correlated. Images go to
    albumentations as uint8 (several times faster than float32 for most transforms) unless
    ``dtype: float32``.

    Settings:
    ``transforms``: [{name: HorizontalFlip, p: 0.5}, ...] albumentations classes and params
    ``dtype``: uint8 (fast; pixels rounded to whole values) or float32 (0..1)
    """

    transforms: Sequence[Mapping[str, Any]] = field(default_factory=list)
    dtype: str = "uint8"

    batched = True  # the input pipeline calls augment_batch after .batch()

    def __post_init__(self) -> None:
        if self.dtype not in ("uint8", "float32"):
            raise ConfigError(f"augmenter.dtype={self.dtype!r}: use uint8 or float32.")
        self.transforms = [dict(t) for t in self.transforms]
        # Not threading.local: TensorFlow runs numpy_function bodies under a fresh Python
        # thread state per call, so thread-local objects would be rebuilt for every call.
        self._pool: queue.SimpleQueue = queue.SimpleQueue()
        self._pool.put(self._build())  # fail early on unknown transforms or parameters

    def _build(self) -> Any:
        import albumentations as A

        steps = []
        for spec in self.transforms:
            params = dict(spec)
            name = params.pop("name", None)
            transform = getattr(A, str(name), None) if name else None
            # a config names transforms only: not A.save, A.load or any other module attribute
            if not (isinstance(transform, type) and issubclass(transform, A.BasicTransform)):
                raise ConfigError(
                    f"augmenter.transforms: unknown albumentations transform {name!r} "
                    "(use the class name, e.g. {name: HorizontalFlip, p: 0.5})."
                )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    steps.append(transform(**params))
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"augmenter.transforms: {name}: {exc}") from None
            # albumentations only warns about unknown arguments; a typo must not be ignored
            invalid = [str(w.message) for w in caught if "are not valid" in str(w.message)]
            if invalid:
                raise ConfigError(f"augmenter.transforms: {name}: {invalid[0]}")
        compose = A.Compose(steps)
        # Compose shares its generators with its transforms; give each its own, so that
        # reseeding them in place (below) keeps their draws independent.
        compose.set_random_seed(0)
        for transform in compose.transforms:
            transform.set_random_seed(0)
        return compose

    def _apply_batch(self, images: np.ndarray, seeds: np.ndarray, masks: np.ndarray) -> tuple:
        try:
            compose = self._pool.get_nowait()
        except queue.Empty:
            compose = self._build()
        try:
            out_images = np.empty_like(images)
            out_masks = np.empty_like(masks)
            for i in range(len(images)):
                mask = masks[i] if masks.size else masks
                image, new_mask = self._augment(compose, images[i], seeds[i], mask)
                out_images[i] = image
                if masks.size:
                    out_masks[i] = new_mask
            return out_images, out_masks
        finally:
            self._pool.put(compose)

    def _augment(
        self, compose: Any, image: np.ndarray, seed: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One sample, in ``dtype`` (uint8, or float32 in [0, 1]) and out in the same."""
        parts = [compose, *compose.transforms]
        words = np.random.SeedSequence([int(s) & 0xFFFFFFFF for s in seed]).generate_state(
            2 * len(parts), np.uint64
        )
        for i, part in enumerate(parts):
            _reseed(part, int(words[2 * i]), int(words[2 * i + 1]))
        inputs = {"image": image}
        if mask.size:
            inputs["mask"] = mask
        out = compose(**inputs)
        result = out["image"]
        if result.dtype != image.dtype:  # a transform that changed the type: back to ours
            high = 255 if image.dtype == np.uint8 else 1
            result = np.clip(np.rint(result) if high == 255 else result, 0, high)
        new_mask = np.asarray(out.get("mask", mask), dtype=np.int32).reshape(mask.shape)
        return result.astype(image.dtype).reshape(image.shape), new_mask

    def augment_batch(self, images: Any, seeds: Any, masks: Any = None) -> tuple[Any, Any]:
        """A batch ``[n, h, w, c]`` with its per-sample ``seeds`` ``[n, 2]`` (and masks ``[n,
        h, w, 1]``): the same result per sample as :meth:`__call__`, in one Python call; the
        conversions to and from ``dtype`` run in TensorFlow."""
        import tensorflow as tf

        if self.dtype == "uint8":
            pixels = tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.uint8)
        else:
            pixels = tf.clip_by_value(images / 255.0, 0.0, 1.0)
        empty = tf.zeros([0], tf.int32)
        new_pixels, new_masks = tf.numpy_function(
            self._apply_batch, [pixels, seeds, empty if masks is None else masks],
            [pixels.dtype, tf.int32], stateful=False,
        )  # fmt: skip
        if self.dtype == "uint8":
            new_images = tf.cast(new_pixels, tf.float32)
        else:
            new_images = tf.clip_by_value(new_pixels, 0.0, 1.0) * 255.0
        new_images.set_shape(images.shape)
        if masks is None:
            return new_images, None
        new_masks.set_shape(masks.shape)
        return new_images, new_masks

    def __call__(self, image: Any, seed: Any, mask: Any = None) -> tuple[Any, Any]:
        """One sample (see the module docstring); the input pipeline uses :meth:`augment_batch`."""
        import tensorflow as tf

        new_images, new_masks = self.augment_batch(
            image[tf.newaxis], seed[tf.newaxis], None if mask is None else mask[tf.newaxis]
        )
        return new_images[0], None if mask is None else new_masks[0]
