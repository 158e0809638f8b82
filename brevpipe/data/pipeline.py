"""The input pipeline (the DataGenerator role): a tf.data dataset from a sample table.

Per epoch the sampler picks the rows and their order; per sample a stateless seed is derived
from (seed, epoch, row), so augmentation is identical with parallel or serial maps. Each
element goes: read -> decode/resize -> augment -> rescale -> encode -> user ``.map``
components; ``output_structure`` picks what a batch holds. An augmenter with a Python body
(``batched = True``, e.g. albumentations) runs once per batch on the per-sample seeds.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brevpipe.config.compose import stable_hash
from brevpipe.data import image_cache
from brevpipe.data.augment import NoAugmenter
from brevpipe.data.loader import ImageLoader
from brevpipe.data.mirror import local_copies
from brevpipe.data.sampler import Sampler
from brevpipe.errors import ConfigError, DataError
from brevpipe.io import cache as data_cache
from brevpipe.io import storage

Component = Callable[[dict[str, Any]], dict[str, Any]]
# Elements in flight per map. tf.data's AUTOTUNE keeps it near the core count, which leaves
# cores idle while elements wait on file reads: 4 per core reads and decodes ~1.3x faster on
# 2 cores (bench/input_pipeline.py); results are the same, the maps being deterministic.
MAP_PARALLELISM = 4 * (os.cpu_count() or 1)


def batch_sizes(count: int, batch_size: int, replicas: int = 1) -> list[int]:
    """The sizes of an epoch's batches: full ones, then the rest.

    Split between ``replicas`` (multi-worker training), every batch needs a sample for each
    replica: a replica with an empty share fails (TensorFlow's oneDNN convolution gives an
    empty batch the input's shape, "input depth must be evenly divisible by filter depth").
    So a last batch smaller than ``replicas`` is evened out with the one before it: the same
    samples in the same order, and as many batches."""
    full, rest = divmod(count, batch_size)
    sizes = [batch_size] * full + ([rest] if rest else [])
    if replicas <= 1 or sizes[-1] >= replicas:
        return sizes
    pair = batch_size + rest
    if full == 0 or pair < 2 * replicas:
        raise DataError(
            f"an epoch of {count} samples in batches of {batch_size} ends with a batch of "
            f"{sizes[-1]}, which {replicas} workers cannot share (each needs a sample): "
            + ("add samples" if full == 0 else f"use trainer.batch_size>={2 * replicas - 1}")
            + " or fewer workers."
        )
    return [*sizes[:-2], pair - pair // 2, pair // 2]


class InputPipeline:
    """Batches of ``output_structure`` features from ``samples``.

    Features available to ``output_structure`` and ``.map`` components: ``image``, ``label``
    (when an encoder is given), ``mask`` (with a ``mask_loader``: int32 class indices that got
    the image's crop, resize and augmentation), ``path``, ``index`` (row in ``samples``),
    ``epoch``, ``seed``.
    """

    def __init__(
        self,
        samples: pd.DataFrame,
        loader: ImageLoader,
        *,
        encoder: Any = None,
        augmenter: Any = None,
        sampler: Sampler | None = None,
        batch_size: int = 32,
        seed: int = 0,
        output_structure: Sequence[str] | str = ("image", "label"),
        mask_loader: Any = None,
        cache: str | None = None,
        shared_cache: bool = True,
    ) -> None:
        if samples.empty:
            raise ConfigError("the input pipeline got no samples.")
        self.samples = samples.reset_index(drop=True)
        self.loader = loader
        self.encoder = encoder
        self.augmenter = augmenter or NoAugmenter()
        self.sampler = sampler or Sampler(shuffle=False)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.output_structure = output_structure
        self.mask_loader = mask_loader
        if mask_loader is not None and "mask_path" not in self.samples:
            raise ConfigError("a mask loader needs a 'mask_path' column (see attach_masks).")
        if cache is not None and mask_loader is not None:
            raise ConfigError("cache works for images only; drop cache or the mask loader.")
        self.cache = cache
        self.shared_cache = shared_cache and mask_loader is None
        self._cached: image_cache.CachedImages | None = None
        self._store: np.ndarray | None = None
        self._local: dict[str, list[str]] = {}
        self.components: list[Component] = []
        self.labels = encoder.transform(self.samples["category"]) if encoder is not None else None

    def map(self, component: Component) -> InputPipeline:
        """A new pipeline that also applies ``component`` (features dict -> features dict)."""
        new = copy.copy(self)
        new.components = [*self.components, component]
        return new

    def decoded_images(self) -> np.ndarray:
        """Every row decoded and resized once (no augmentation): ``cache=memory`` keeps them
        in memory, ``cache=<local folder>`` in a ``.npy`` file named by the data's identity
        (paths, content hashes, loader geometry), reused by later runs."""
        if self._store is not None:
            return self._store
        identity = {
            "paths": self.samples["path"].tolist(),
            "etags": self.samples["etag"].tolist() if "etag" in self.samples else None,
            "loader": {k: v for k, v in self.loader.metadata().items() if k != "rescale"},
        }
        file = None
        if self.cache != "memory":
            folder = Path(storage.normalize(str(self.cache)))
            file = folder / f"decoded-{stable_hash(identity)}.npy"
            if file.exists():
                self._store = np.load(file, mmap_mode="r")
                return self._store
        images = self._decode_rows(self.samples)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            partial = file.with_suffix(f".tmp-{os.getpid()}.npy")
            np.save(partial, images)
            os.replace(partial, file)
            images = np.load(file, mmap_mode="r")
        self._store = images
        return images

    def _decode_rows(self, samples: pd.DataFrame) -> np.ndarray:
        """The loader's decoded, resized images of these rows (no augmentation, no rescaling)."""
        unscaled = copy.copy(self.loader)
        unscaled.rescale = "none"
        plain = InputPipeline(samples, unscaled, batch_size=64, output_structure="image",
                              shared_cache=False)  # fmt: skip
        return np.concatenate(list(plain.numpy_iterator()))

    def cached_images(self) -> image_cache.CachedImages | None:
        """The rows' decoded images through the data cache that jobs share
        (``runtime.cache_root``), when one is set: decoded once, by whichever job first needs
        them, then read by every job on the same data and loader settings."""
        cache = data_cache.active() if self.shared_cache else None
        if cache is not None and self._cached is None:
            self._cached = image_cache.cached_images(cache, self.samples, self.loader,
                                                     self._decode_rows)  # fmt: skip
        return self._cached

    def local_files(self, column: str) -> list[str]:
        """Local paths of the files in ``column`` (``path`` or ``mask_path``): remote ones are
        copied to local disk once, here, in the calling thread (see :mod:`brevpipe.data.mirror`)."""
        if column not in self._local:
            urls = self.samples[column].tolist()
            etags = self.samples["etag"].tolist() if column == "path" and "etag" in self.samples \
                else None  # fmt: skip
            self._local[column] = local_copies(urls, etags)
        return self._local[column]

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.sampler.batches(self.samples, self.batch_size)

    def get_samples(self, epoch: int = 0) -> pd.DataFrame:
        """The rows of ``epoch`` in the order the dataset yields them."""
        return self.samples.iloc[self.sampler.epoch_indices(self.samples, epoch)]

    def get_dataset(
        self, epochs: int | None = 1, start_epoch: int = 0, replicas: int = 1
    ) -> Any:
        """``epochs`` epochs of batches (``None``: endless, for ``fit(steps_per_epoch=...)``);
        with ``replicas`` > 1, batches that many replicas can share (:func:`batch_sizes`)."""
        import tensorflow as tf

        sizes = batch_sizes(self.sampler.epoch_size(self.samples), self.batch_size, replicas)
        evened = len(sizes) > 1 and sizes[-2] != self.batch_size  # the last two batches
        head_rows = (len(sizes) - 2) * self.batch_size

        paths = tf.constant(self.samples["path"].tolist())
        labels = None if self.labels is None else tf.constant(self.labels)
        masks = self.mask_loader is not None
        mask_is_json = tf.constant(
            self.samples["mask_path"].str.lower().str.endswith(".json").tolist()
            if masks
            else [False]
        )
        base_seed = tf.constant([self.seed, 0], tf.int64)
        batched = bool(getattr(self.augmenter, "batched", False))
        cached = None if self.cache else self.cached_images()
        if self.cache:
            store = self.decoded_images()
        elif cached is not None:
            entry_files, entry_is_uint8 = tf.constant(cached.files), tf.constant(cached.is_uint8)
        else:  # tf.data reads local files only: remote ones are copied first (data.mirror)
            files, mask_files, decode_sized = self._local_reading(masks)

        def element(epoch: Any, row: Any) -> Any:
            seed = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(base_seed, epoch), row
            )
            mask = None
            if self.cache:
                image = tf.numpy_function(lambda r: np.asarray(store[r]), [row], tf.float32,
                                          stateful=False)  # fmt: skip
                image.set_shape(self.loader.output_shape)
            elif cached is not None:
                image = self._read_entry(entry_files[row], entry_is_uint8[row])
            else:  # read here, in the parallel map: files are read concurrently
                image, size = decode_sized(tf.io.read_file(files[row]))
                if masks:
                    raw = self.mask_loader.load(tf.io.read_file(mask_files[row]),
                                                mask_is_json[row], size[0], size[1])  # fmt: skip
                    mask = self.loader.resize_mask(raw)
            if not batched:
                image, mask = self.augmenter(image, seed, mask)
            features = {"image": image, "path": paths[row], "index": row, "epoch": epoch,
                        "seed": seed}  # fmt: skip
            if mask is not None:
                features["mask"] = mask
            if labels is not None:
                features["label"] = labels[row]
            return features if batched else self._finish(features)

        plain = self._graph_function()

        def batches(rows: Any, size: int) -> Any:
            parallel = {"num_parallel_calls": MAP_PARALLELISM, "deterministic": True}
            ds = rows.map(plain(element), **parallel).batch(size)
            if not batched:
                return ds
            # augmenters with a Python body run once per batch, not once per image
            ds = ds.map(plain(self._augment_batch), **parallel)
            if not self.components:  # rescaling is elementwise: the same on a batch
                return ds.map(plain(self._finish))
            return ds.unbatch().map(plain(self._finish), **parallel).batch(size)

        def one_epoch(epoch: Any) -> Any:
            rows = self._epoch_rows(epoch)
            if not evened:
                return batches(rows, self.batch_size)
            return batches(rows.take(head_rows), self.batch_size).concatenate(
                batches(rows.skip(head_rows), sizes[-2])
            )

        if epochs is None:
            epoch_ids = tf.data.Dataset.counter(start_epoch, dtype=tf.int64)
        else:
            epoch_ids = tf.data.Dataset.range(start_epoch, start_epoch + epochs)
        # Without tf.data's autotuning model: the maps' parallelism is fixed, and prefetch's
        # buffer still grows as needed. With it, deleting an iterator that lived a few epochs
        # waits for the model's thread, asleep for up to its optimisation period: Keras deletes
        # the training iterator at the end of fit, and jobs stalled there 0-9 s.
        options = tf.data.Options()
        options.autotune.enabled = False
        return epoch_ids.flat_map(plain(one_epoch)).prefetch(tf.data.AUTOTUNE).with_options(options)

    def _graph_function(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """How the maps' functions go to tf.data: as they are when all the code they run is
        brevpipe's (written with ``tf.cond``, no Python control flow on tensors), which saves
        AutoGraph's conversion (~2 s at a job's start); converted when a user's augmenter,
        loader or ``.map`` component runs in them, which may rely on AutoGraph."""
        import tensorflow as tf

        parts = [self.loader, self.augmenter, self.mask_loader, *self.components]
        own = all(
            (getattr(p, "__module__", None) or type(p).__module__).startswith("brevpipe.")
            for p in parts if p is not None
        )  # fmt: skip
        return tf.autograph.experimental.do_not_convert if own else (lambda function: function)

    def _local_reading(self, masks: bool) -> tuple[Any, Any, Callable[[Any], tuple[Any, Any]]]:
        """The local images and masks as tensors, and the decode for these images."""
        import tensorflow as tf

        images = self.local_files("path")
        mask_files = self.local_files("mask_path") if masks else [""]
        return tf.constant(images), tf.constant(mask_files), self.loader.decoder_for(images)

    def _read_entry(self, file: Any, is_uint8: Any) -> Any:
        """A decoded image from its data cache entry (raw uint8 or float32 bytes)."""
        import tensorflow as tf

        data = tf.io.read_file(file)
        image = tf.cond(is_uint8, lambda: tf.cast(tf.io.decode_raw(data, tf.uint8), tf.float32),
                        lambda: tf.io.decode_raw(data, tf.float32, little_endian=True))  # fmt: skip
        return tf.reshape(image, self.loader.output_shape)

    def _epoch_rows(self, epoch: Any) -> Any:
        """``(epoch, row)`` pairs of one epoch, in the sampler's order."""
        import tensorflow as tf

        rows = tf.numpy_function(
            lambda e: self.sampler.epoch_indices(self.samples, int(e)).astype(np.int64),
            [epoch], tf.int64, stateful=False,
        )  # fmt: skip
        rows.set_shape([None])
        return tf.data.Dataset.from_tensor_slices((tf.fill(tf.shape(rows), epoch), rows))

    def _augment_batch(self, features: dict[str, Any]) -> dict[str, Any]:
        image, mask = self.augmenter.augment_batch(
            features["image"], features["seed"], features.get("mask")
        )
        return {**features, "image": image, **({} if mask is None else {"mask": mask})}

    def _finish(self, features: dict[str, Any]) -> Any:
        """Rescale, the ``.map`` components, ``output_structure``: per element or batch."""
        features = {**features, "image": self.loader.normalize(features["image"])}
        for component in self.components:
            features = component(features)
        return self._structure(features)

    def _structure(self, features: dict[str, Any]) -> Any:
        structure = self.output_structure
        if isinstance(structure, str):
            return features[structure]
        missing = [k for k in structure if k not in features]
        if missing:
            raise ConfigError(
                f"output_structure asks for {missing}; available: {sorted(features)}."
            )
        return tuple(features[k] for k in structure)

    def numpy_iterator(self, epoch: int = 0) -> Iterator[Any]:
        """The batches of one epoch as NumPy arrays."""
        return self.get_dataset(epochs=1, start_epoch=epoch).as_numpy_iterator()
